"""A crash while saving never loses the previous complete checkpoint.

The format promises atomic writes: an overwrite leaves the old checkpoint loadable until
the new one is complete, and a manager's latest complete step survives a crash during the
next save. A process completes saves 0, 1, 2 and dies during save 3 — at a random moment
(SIGKILL), or deterministically right after the k-th rename/replace/remove it performs at
the top level of the checkpoint's directory (each step of the commit sequence in turn,
whatever the implementation's order). Afterwards step 2 or step 3 must load, intact.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxcrl import checkpoint as ckpt

# argv: mode ("plain" | "manager"), directory, crash_at (0 = never)
_SCRIPT = textwrap.dedent(
    """
    import os, shutil, sys
    from pathlib import Path
    import jax.numpy as jnp
    from jaxcrl import checkpoint as ckpt

    mode, root, crash_at = sys.argv[1], Path(sys.argv[2]).absolute(), int(sys.argv[3])
    top = root if mode == "manager" else root.parent
    calls = [0]

    def dying(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            if ARMED[0] and Path(os.fspath(args[0])).absolute().parent == top:
                calls[0] += 1
                if calls[0] == crash_at:
                    sys.stdout.write("dying\\n"); sys.stdout.flush(); os._exit(9)
            return out
        return wrapped

    ARMED = [False]
    os.rename, os.replace, shutil.rmtree = (dying(os.rename), dying(os.replace),
                                           dying(shutil.rmtree))
    shutil.move = dying(shutil.move)
    mgr = ckpt.CheckpointManager(root, kind="crl", save_every=1, keep_last=2) \\
        if mode == "manager" else None
    for i in range(10 ** 6):
        ARMED[0] = crash_at > 0 and i == 3
        state = {"w": jnp.full((128, 128), float(i))}
        if mgr is None:
            ckpt.save(root, state, config={"i": i}, kind="crl", step=i, overwrite=True)
        else:
            mgr.save(i, state, config={"i": i})
        print(i, flush=True)
        if crash_at > 0 and i == 3:
            print("survived", flush=True)
            break
    """
)


def _load_latest(mode, path):
    if mode == "manager":
        c = ckpt.CheckpointManager(path, kind="crl").latest()
        assert c is not None, "no complete checkpoint left in the workdir"
        return c
    return ckpt.load(path)


def _assert_intact(c, at_least):
    assert c.step >= at_least, f"step {c.step} loaded, but step {at_least} had completed"
    np.testing.assert_array_equal(c.state["w"], np.full((128, 128), float(c.step)))
    assert c.config == {"i": c.step}


@pytest.mark.parametrize("mode", ["plain", "manager"])
@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_crash_at_each_commit_step_keeps_the_previous_checkpoint(tmp_path, mode, crash_at):
    path = tmp_path / "ckpt"
    r = subprocess.run([sys.executable, "-c", _SCRIPT, mode, str(path), str(crash_at)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 9), r.stderr
    done = [int(t) for t in r.stdout.split() if t.isdigit()]
    assert done[:3] == [0, 1, 2], r.stdout
    _assert_intact(_load_latest(mode, path), at_least=max(done))


@pytest.mark.parametrize("mode", ["plain", "manager"])
def test_sigkill_after_completed_saves_keeps_the_last_completed_one(tmp_path, mode):
    path = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, mode, str(path), "0"],
                            stdout=subprocess.PIPE, text=True)
    done = [int(proc.stdout.readline()) for _ in range(3)]  # saves 0, 1, 2 completed
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _assert_intact(_load_latest(mode, path), at_least=done[-1])
