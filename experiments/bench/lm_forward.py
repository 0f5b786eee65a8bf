"""Benchmark: forward throughput of Hugging Face-shaped models in jaxcrl vs transformers/torch,
and the peak host memory of ``jaxcrl.lm.from_pretrained``.

Command (the full-size default; ``--small`` for a quick run)::

    python experiments/bench/lm_forward.py --out out/bench_lm_forward.json

Models: random-init ``transformers`` models of two shapes, saved with ``save_pretrained``
(float32 safetensors) and loaded back with ``from_pretrained``: a GPT-2-small-shaped model
(12 layers, width 768, 12 heads, vocab 50257) and a Llama-shaped one (RMSNorm, SwiGLU, GQA,
RoPE; ``--llama-*`` flags, default 8 layers, width 1024, 16 heads / 4 KV heads, MLP 2816,
vocab 32000). ``--layers`` overrides both layer counts.

Arms, same tokens ``[batch, seq]``, each warmed up (compiled) once, best of ``--repeats``
rounds that alternate between arms so load from other processes hits both alike:
``jaxcrl`` (``model.apply`` under jit, float32), ``jaxcrl_bf16`` (the same with bfloat16
parameters and activations; CPUs without native bfloat16 matmuls run it slower),
``jaxcrl_all_hooks_layer0`` (``run_with_cache``
of every hook of block 0, incl. ``hook_result``), ``torch`` (``transformers`` eager forward under
``torch.no_grad``, float32, sdpa attention, ``torch.get_num_threads()`` threads). Reported:
tokens/s and the ratio jaxcrl / torch (> 1: jaxcrl faster).

Memory: ``from_pretrained`` runs in a fresh subprocess per target dtype; reported is the peak
RSS during the call (``VmHWM`` after resetting the mark through ``/proc/self/clear_refs``;
``ru_maxrss`` would carry the forking parent's peak across ``exec``) minus the RSS just before
it (after importing jax and jaxcrl and initialising the CPU backend), next to the size of
the loaded weights in that dtype (``peak_over_weights``; about 1 means no second copy).
Expected runtime on 2 CPU cores: 2-4 minutes with defaults, under a minute with ``--small``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_MEM_CHILD = r"""
import json, sys
import jax, jax.numpy as jnp
import jaxcrl.lm as lm
jnp.zeros(1).block_until_ready()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
try:  # reset the peak-RSS mark (Linux >= 4.0), so VmHWM is the peak of the load alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
before = status("VmRSS")
model, params = lm.from_pretrained(sys.argv[1], dtype=getattr(jnp, sys.argv[2]))
jax.block_until_ready(params)
peak = status("VmHWM")
nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
print(json.dumps({"rss_before": before, "peak": peak, "hwm_reset": reset,
                  "params_bytes": int(nbytes)}))
"""


def best_times(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def load_memory(path: Path, dtype: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(path), dtype], env=env,
                         capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    added = m["peak"] - m["rss_before"]
    return {"dtype": dtype, "weights_bytes": m["params_bytes"], "peak_added_bytes": added,
            "peak_mark_reset": m["hwm_reset"],
            "peak_over_weights": added / m["params_bytes"]}


def bench_model(name: str, hf_cfg, args, tmp: Path) -> dict:
    import jax
    import numpy as np
    import torch
    import transformers

    import jaxcrl.lm as lm

    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa").eval()
    path = tmp / name
    hf.save_pretrained(path, safe_serialization=True)
    file_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    model, params = lm.from_pretrained(path)
    tokens = np.random.default_rng(0).integers(0, model.cfg.vocab_size,
                                               (args.batch, args.seq)).astype(np.int32)
    tt = torch.as_tensor(tokens, dtype=torch.long)
    layer0 = [n for n in model.hook_names if n.startswith("blocks.0.")] + \
        ["blocks.0.attn.hook_result"]

    def run_torch():
        with torch.no_grad():
            return hf(tt).logits

    # numerical agreement of the two arms on this very input
    diff = float(np.abs(np.asarray(model.apply(params, tokens)) - run_torch().numpy()).max())
    params16 = jax.tree_util.tree_map(lambda x: x.astype(jax.numpy.bfloat16), params)
    times = best_times({
        "jaxcrl": lambda: jax.block_until_ready(model.apply(params, tokens)),
        "jaxcrl_bf16": lambda: jax.block_until_ready(model.apply(params16, tokens)),
        "jaxcrl_all_hooks_layer0": lambda: jax.block_until_ready(
            model.run_with_cache(params, tokens, layer0)),
        "torch": run_torch,
    }, args.repeats)
    n_tok = args.batch * args.seq
    res = {"model": name, "n_params": lm.count_params(params), "file_bytes": file_bytes,
           "batch": args.batch, "seq": args.seq, "max_abs_logit_diff_vs_torch": diff,
           "seconds": times, "tokens_per_s": {k: n_tok / v for k, v in times.items()},
           "ratio_jaxcrl_over_torch": times["torch"] / times["jaxcrl"],
           "all_hooks_layer0_overhead": times["jaxcrl_all_hooks_layer0"] / times["jaxcrl"]}
    params = params16 = None  # free the loaded weights before the memory subprocesses
    res["from_pretrained_memory"] = [load_memory(path, d) for d in ("float32", "bfloat16")]
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench_lm_forward.json")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", type=int, default=None, help="override both layer counts")
    p.add_argument("--llama-d", type=int, default=1024)
    p.add_argument("--llama-layers", type=int, default=8)
    p.add_argument("--llama-heads", type=int, default=16)
    p.add_argument("--llama-kv-heads", type=int, default=4)
    p.add_argument("--llama-mlp", type=int, default=2816)
    p.add_argument("--llama-vocab", type=int, default=32000)
    p.add_argument("--small", action="store_true", help="tiny shapes for a smoke run")
    args = p.parse_args(argv)
    import torch
    import transformers

    if args.small:
        args.layers, args.seq, args.batch, args.repeats = 2, 32, 2, 2
        args.llama_d, args.llama_mlp, args.llama_vocab = 128, 256, 1000
        args.llama_heads, args.llama_kv_heads = 4, 2
    g_layers = args.layers or 12
    gpt2 = transformers.GPT2Config(n_layer=g_layers, n_embd=128 if args.small else 768,
                                   n_head=4 if args.small else 12,
                                   vocab_size=1000 if args.small else 50257,
                                   n_positions=max(1024, args.seq))
    llama = transformers.LlamaConfig(
        num_hidden_layers=args.layers or args.llama_layers, hidden_size=args.llama_d,
        num_attention_heads=args.llama_heads, num_key_value_heads=args.llama_kv_heads,
        intermediate_size=args.llama_mlp, vocab_size=args.llama_vocab,
        max_position_embeddings=max(2048, args.seq))
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(n, c, args, Path(tmp)) for n, c in (("gpt2_small_shaped", gpt2),
                                                                   ("llama_shaped", llama))]
    import jax

    out = {"benchmark": "lm_forward", "argv": sys.argv[1:], "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "jax": jax.__version__, "torch": torch.__version__,
           "transformers": transformers.__version__, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    for r in results:
        tps = r["tokens_per_s"]
        print(f"{r['model']:18s} params {r['n_params'] / 1e6:6.1f}M  jaxcrl {tps['jaxcrl']:8.0f} "
              f"tok/s  (bf16 {tps['jaxcrl_bf16']:6.0f})  torch {tps['torch']:8.0f} tok/s  "
              f"ratio {r['ratio_jaxcrl_over_torch']:.2f}"
              f"  all hooks of layer 0: x{r['all_hooks_layer0_overhead']:.2f}  "
              f"|dlogits| {r['max_abs_logit_diff_vs_torch']:.1e}")
        for m in r["from_pretrained_memory"]:
            print(f"    from_pretrained {m['dtype']:8s} weights {m['weights_bytes'] / 2**20:7.1f} "
                  f"MiB  peak added {m['peak_added_bytes'] / 2**20:7.1f} MiB "
                  f"({m['peak_over_weights']:.2f}x)")
    return out


if __name__ == "__main__":
    main()
