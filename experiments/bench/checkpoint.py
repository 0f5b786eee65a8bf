"""Checkpoint safety and cost: injected faults, concurrent readers/writers, save/load vs orbax.

    python experiments/bench/checkpoint.py --out out/bench_checkpoint.json

Three parts, all on this machine in one run:

1. **Crash matrix.** For every fault point of save/finalize/prune (``jaxcrl.checkpoint``'s
   ``_FAULT_HOOK``), a simulated crash (the process "dies": no cleanup) and an I/O error
   (ENOSPC), over a fresh path, an overwrite, and a ``CheckpointManager`` run, ``--rounds``
   times each. After each fault: a reader must load one complete save (the previous one, or
   the new one once committed), never a mixture; the next writer must recover and leave no
   leftovers.
2. **Concurrency.** A writer process overwrites one path (and another runs a manager with
   pruning) while this process reads in a loop; every read is checked for consistency
   (metadata, config and arrays from the same save). Threads too.
3. **Cost.** Save and load of an SAE-sized state (W_enc, W_dec, biases + Adam moments) with
   jaxcrl (manifest with SHA-256, fsync, atomic renames; load with and without verification)
   against plain ``orbax.checkpoint.StandardCheckpointer`` on the same state.

Expected on 2 CPU cores: a few minutes; zero lost or mixed reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl import checkpoint as ckpt

POINTS = ["save:state", "save:config", "save:meta", "save:manifest", "finalize:old_moved",
          "finalize:new_moved", "finalize:done", "prune:renamed"]
COMMITTED = {"finalize:new_moved", "finalize:done", "prune:renamed"}


def _state(v: int, n: int = 16):
    return {"w": jnp.full((n, n), float(v)), "b": jnp.arange(n) + v}


def _consistent(c: ckpt.Checkpoint) -> bool:
    v = c.step
    cfg_v = c.config.get("v") if isinstance(c.config, dict) else None
    return (cfg_v == v and bool(np.all(np.asarray(c.state["w"]) == v))
            and bool(np.all(np.asarray(c.state["b"]) == np.arange(c.state["b"].shape[0]) + v)))


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if any(t in p.name for t in (".tmp-", ".old-",
                                                                     ".trash-"))]


def _arm(point, exc, fired: list):
    def hook(p, path):
        if p == point:
            fired.append(p)
            raise exc

    ckpt._FAULT_HOOK = hook


def crash_matrix(rounds: int) -> dict:
    out = {"faults_injected": 0, "reads_checked": 0, "lost": 0, "mixed": 0, "leftovers": 0,
           "unexpected": []}
    faults = [("crash", lambda p: ckpt.SimulatedCrash(p)),
              ("enospc", lambda p: OSError(errno.ENOSPC, "No space left on device"))]
    for _ in range(rounds):
        for point in POINTS:
            for fault_name, make in faults:
                for scenario in ("fresh", "overwrite", "manager"):
                    if scenario == "fresh" and point == "finalize:old_moved":
                        continue  # a fresh save has no previous copy to move
                    with tempfile.TemporaryDirectory() as d:
                        _one_fault(Path(d), point, fault_name, make, scenario, out)
    return out


def _one_fault(d: Path, point, fault_name, make, scenario, out) -> None:
    path = d / ("run" if scenario == "manager" else "c")
    mgr = None
    if scenario == "overwrite":
        ckpt.save(path, _state(1), config={"v": 1}, kind="crl", step=1)
    if scenario == "manager":
        mgr = ckpt.CheckpointManager(path, kind="crl", save_every=1, keep_last=2)
        for v in (1, 2):
            mgr.save(v, _state(v), config={"v": v})
    prev = {"fresh": None, "overwrite": 1, "manager": 2}[scenario]
    new = 2 if scenario != "manager" else (2 if point == "finalize:old_moved" else 3)
    fired: list = []
    _arm(point, make(point), fired)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failed prune warns; the save stands
            if mgr is not None:
                mgr.save(new, _state(new), config={"v": new})
            else:
                ckpt.save(path, _state(new), config={"v": new}, kind="crl", step=new,
                          overwrite=True)
    except (ckpt.SimulatedCrash, ckpt.CheckpointError):
        pass
    finally:
        ckpt._FAULT_HOOK = None
        if mgr is not None:
            mgr.close()  # a dead process's lock is dropped by the kernel
    if not fired:  # this point is not on this scenario's path (e.g. prune-only)
        return
    out["faults_injected"] += 1
    committed = point in COMMITTED and (fault_name == "crash" or point.startswith("prune"))
    expected = new if committed else prev

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            c = (ckpt.CheckpointManager(path, kind="crl").latest() if mgr is not None
                 else ckpt.load(path))
        except ckpt.CheckpointError:
            c = None
    out["reads_checked"] += 1
    if c is None:
        if expected is not None:
            out["lost"] += 1
            out["unexpected"].append(f"{scenario}/{fault_name}/{point}: nothing loads")
    elif not _consistent(c):
        out["mixed"] += 1
        out["unexpected"].append(f"{scenario}/{fault_name}/{point}: mixed")
    elif expected is not None and c.step < expected:
        out["lost"] += 1
        out["unexpected"].append(f"{scenario}/{fault_name}/{point}: step {c.step} < {expected}")
    # the next writer recovers
    if mgr is not None:
        with ckpt.CheckpointManager(path, kind="crl", keep_last=2) as owner:
            owner.save(9, _state(9), config={"v": 9})
        left = _leftovers(path)
    else:
        ckpt.save(path, _state(9), config={"v": 9}, kind="crl", step=9, overwrite=True)
        left = _leftovers(d)
    if left:
        out["leftovers"] += 1
        out["unexpected"].append(f"{scenario}/{fault_name}/{point}: left {left}")


_WRITER = textwrap.dedent(
    """
    import sys, jax.numpy as jnp
    from jaxcrl import checkpoint as ckpt
    path, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    mgr = (ckpt.CheckpointManager(path, kind="crl", save_every=1, keep_last=2)
           if mode == "manager" else None)
    for i in range(1, n + 1):
        state = {"w": jnp.full((32, 32), float(i)), "b": jnp.arange(32) + i}
        if mgr is not None:
            mgr.save(i, state, config={"v": i})
        else:
            ckpt.save(path, state, config={"v": i}, kind="crl", step=i, overwrite=True)
    print("WROTE", n, flush=True)
    """
)


def concurrency(n_writes: int) -> dict:
    out = {}
    for mode in ("path", "manager"):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "c"
            proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n_writes),
                                     mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            reads = mixed = errors = 0
            while proc.poll() is None:
                try:
                    if mode == "manager":
                        mgr = ckpt.CheckpointManager(path, kind="crl")
                        if mgr.latest_step() is None:
                            continue
                        c = mgr.latest()
                    else:
                        if not path.exists():
                            continue
                        c = ckpt.load(path)
                except ckpt.CheckpointError:
                    errors += 1
                    continue
                reads += 1
                mixed += not _consistent(c)
            stdout, stderr = proc.communicate()
            out[f"process_{mode}"] = {"writes": n_writes, "writer_ok": proc.returncode == 0
                                      and f"WROTE {n_writes}" in stdout, "reads": reads,
                                      "mixed": mixed, "read_errors": errors,
                                      "writer_stderr_tail": stderr[-300:] if proc.returncode
                                      else ""}
    # threads: one writer, two readers
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c"
        ckpt.save(path, _state(0), config={"v": 0}, kind="crl", step=0)
        stop, counts, errs = threading.Event(), {"reads": 0, "mixed": 0}, []

        def writer():
            try:
                for v in range(1, n_writes + 1):
                    ckpt.save(path, _state(v), config={"v": v}, kind="crl", step=v,
                              overwrite=True)
            except BaseException as e:  # noqa: BLE001
                errs.append(repr(e))
            finally:
                stop.set()

        def reader():
            while not stop.is_set():
                try:
                    c = ckpt.load(path)
                except BaseException as e:  # noqa: BLE001
                    errs.append(repr(e))
                    return
                counts["reads"] += 1
                counts["mixed"] += not _consistent(c)

        ts = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                  for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        out["threads"] = {"writes": n_writes, **counts, "errors": errs[:3]}
    return out


def cost(d_in: int, d_sae: int, repeats: int) -> dict:
    import optax
    import orbax.checkpoint as ocp

    k = jax.random.split(jax.random.key(0), 2)
    params = {"W_enc": jax.random.normal(k[0], (d_in, d_sae)),
              "W_dec": jax.random.normal(k[1], (d_sae, d_in)),
              "b_enc": jnp.zeros(d_sae), "b_dec": jnp.zeros(d_in)}
    opt = optax.adam(1e-3).init(params)
    opt = jax.tree.map(lambda x: x + 0.5 if x.ndim else x, opt)  # non-trivial moments
    state = {"params": params, "opt_state": opt}
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    target = jax.eval_shape(lambda: state)
    times: dict[str, list[float]] = {k: [] for k in ("jaxcrl_save", "jaxcrl_load_verify",
                                                     "jaxcrl_load_noverify", "orbax_save",
                                                     "orbax_load")}
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            t = time.perf_counter()
            ckpt.save(d / "j", state, config={"r": r}, kind="sae")
            times["jaxcrl_save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            c = ckpt.load(d / "j", target=target)
            jax.block_until_ready(c.state)
            times["jaxcrl_load_verify"].append(time.perf_counter() - t)
            t = time.perf_counter()
            c = ckpt.load(d / "j", target=target, verify=False)
            jax.block_until_ready(c.state)
            times["jaxcrl_load_noverify"].append(time.perf_counter() - t)
            cp = ocp.StandardCheckpointer()
            t = time.perf_counter()
            cp.save(d / "o", state)
            cp.wait_until_finished()
            times["orbax_save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            s = cp.restore(d / "o", target)
            jax.block_until_ready(s)
            times["orbax_load"].append(time.perf_counter() - t)
            cp.close()
            shutil.rmtree(d, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"state_mb": nbytes / 2**20, "d_in": d_in, "d_sae": d_sae, "repeats": repeats,
            "median_s": med,
            "save_ratio_vs_orbax": med["jaxcrl_save"] / med["orbax_save"],
            "load_verify_ratio_vs_orbax": med["jaxcrl_load_verify"] / med["orbax_load"],
            "load_noverify_ratio_vs_orbax": med["jaxcrl_load_noverify"] / med["orbax_load"]}


@dataclasses.dataclass(frozen=True)
class Args:
    out: str = "out/bench_checkpoint.json"
    rounds: int = 3
    writes: int = 40
    d_in: int = 512
    d_sae: int = 4096
    repeats: int = 3


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Args):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    a = Args(**vars(p.parse_args(argv)))
    t0 = time.perf_counter()
    res = {"crash_matrix": crash_matrix(a.rounds), "concurrency": concurrency(a.writes),
           "cost": cost(a.d_in, a.d_sae, a.repeats), "args": dataclasses.asdict(a)}
    res["wall_s"] = time.perf_counter() - t0
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    cm, cc = res["crash_matrix"], res["cost"]
    print(f"faults injected {cm['faults_injected']}, reads checked {cm['reads_checked']}, "
          f"lost {cm['lost']}, mixed {cm['mixed']}, leftovers {cm['leftovers']}")
    for k, v in res["concurrency"].items():
        print(k, {kk: vv for kk, vv in v.items() if kk != "writer_stderr_tail"})
    print(f"state {cc['state_mb']:.1f} MiB: save {cc['median_s']['jaxcrl_save']:.3f}s vs orbax "
          f"{cc['median_s']['orbax_save']:.3f}s ({cc['save_ratio_vs_orbax']:.2f}x); load "
          f"{cc['median_s']['jaxcrl_load_verify']:.3f}s verified / "
          f"{cc['median_s']['jaxcrl_load_noverify']:.3f}s unverified vs orbax "
          f"{cc['median_s']['orbax_load']:.3f}s")
    return res


if __name__ == "__main__":
    main()
