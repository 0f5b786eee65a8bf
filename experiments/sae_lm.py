"""TopK SAE sweeps on a pretrained language model's activations over real text.

Command::

    python experiments/sae_lm.py --model DIR --text FILE [FILE ...] \\
        --hooks blocks.6.hook_resid_post,blocks.6.hook_mlp_out --out out/sae_lm

``DIR`` is a Hugging Face model directory (``config.json``, ``model.safetensors``,
``tokenizer.json``); ``FILE`` are text files (``--split file|paragraph|line``) or JSON lines
(``{"text": ...}``). The text is tokenized with the model's own tokenizer, packed into
``--context``-token contexts (BOS first where the family expects it) and shuffled by
``--seed``; the last ``--eval-seqs`` contexts are held out. One forward pass caches the
activations at all ``--hooks`` under ``OUT/acts``, a vmapped TopK sweep over ``--ks`` trains
per hook from that cache (checkpoints in ``OUT/ckpt``; rerunning the same command resumes the
cache and the sweeps), and every SAE is
evaluated on the held-out text (L0, FVU, CE loss recovered with the SAE spliced in, against
zero-ablation) and exported in the SAELens layout under ``OUT/saes``. Writes
``OUT/results.json`` (:mod:`jaxcrl.results`) and prints a table. Logic:
:mod:`jaxcrl.sae.lm_sweep`.

Expected runtime: the test's tiny model and text take seconds; GPT-2 small on 1M tokens of
text with 3 hooks and 2000 steps per sweep takes tens of minutes on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax

from jaxcrl.lm import HookedTransformer
from jaxcrl.lm.text import load_tokenizer, read_documents, token_dataset
from jaxcrl.results import write_results
from jaxcrl.sae.lm_sweep import LMSweepConfig, run
from jaxcrl.train.mesh import initialize_distributed


def _load_model(path: str | Path):
    """``(HookedTransformer, params)`` of a Hugging Face model directory.

    ``jaxcrl.lm.from_pretrained`` (every issue-11 family) when this jaxcrl has it, else the
    GPT-2 loader. Once ``from_pretrained`` is in main this is ``return from_pretrained(path)``.
    """
    try:
        from jaxcrl.lm import from_pretrained
    except ImportError:
        from jaxcrl.lm.gpt2 import load_hf_gpt2

        cfg, params = load_hf_gpt2(path)
        return HookedTransformer(cfg), params
    return from_pretrained(path)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face model directory")
    p.add_argument("--text", required=True, nargs="+", help="text or JSON-lines files")
    p.add_argument("--hooks", required=True, help="comma-separated hook names")
    p.add_argument("--out", default="out/sae_lm")
    p.add_argument("--split", default="paragraph", choices=["file", "paragraph", "line"])
    p.add_argument("--text-field", default="text")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--max-contexts", type=int, default=None)
    p.add_argument("--eval-seqs", type=int, default=64)
    p.add_argument("--ks", default="16,32,64")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--start-pos", type=int, default=1, help="1 skips the BOS position")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (tests)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    initialize_distributed()  # joins a multi-host launch; results are written by process 0
    t0 = time.perf_counter()
    model, params = _load_model(args.model)
    if args.context > model.cfg.n_ctx:
        raise ValueError(f"--context {args.context} exceeds the model's n_ctx "
                         f"{model.cfg.n_ctx}")
    tok = load_tokenizer(args.model)
    tokens = token_dataset(tok, read_documents(args.text, text_field=args.text_field,
                                               split=args.split),
                           context_size=args.context, key=jax.random.key(args.seed),
                           vocab_size=model.cfg.vocab_size, max_contexts=args.max_contexts)
    if len(tokens) <= args.eval_seqs:
        raise ValueError(f"the text gives {len(tokens)} contexts of {args.context} tokens, "
                         f"not more than --eval-seqs {args.eval_seqs}")
    train_tokens, eval_tokens = tokens[:-args.eval_seqs], tokens[-args.eval_seqs:]
    hooks = tuple(h.strip() for h in args.hooks.split(",") if h.strip())
    model.run_with_cache(params, eval_tokens[:1], names=hooks)  # unknown hooks fail here
    common = {"hooks": hooks, "ks": tuple(int(k) for k in args.ks.split(",")),
              "start_pos": args.start_pos, "seed": args.seed}
    if args.tiny:
        cfg = LMSweepConfig.tiny(**common)
    else:
        cfg = LMSweepConfig(expansion=args.expansion, steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, **common)
    res = run(model, params, train_tokens, eval_tokens, cfg, args.out,
              progress=not args.no_progress)
    methods = {f"{h} k={r['k']}": {m: r[m] for m in ("l0", "fvu", "mse", "dead_fraction",
                                                     "ce_sae", "ce_loss_recovered")}
               for h, hr in res["hooks"].items() for r in hr["runs"]}
    setup = {**vars(args), "sweep": dataclasses.asdict(cfg), "model_config":
             dataclasses.asdict(model.cfg), "n_train_contexts": len(train_tokens),
             "n_eval_contexts": len(eval_tokens), "bos_id": tok.bos_id}
    write_results(args.out, setup, methods, ce_clean=res["ce_clean"], hooks=res["hooks"],
                  cache=res["cache"], wall_s=time.perf_counter() - t0)
    print(f"{len(train_tokens)} training contexts of {args.context} tokens; clean CE "
          f"{res['ce_clean']:.4f}")
    head = f"{'hook':32s} {'k':>4s} {'L0':>7s} {'FVU':>7s} {'dead':>6s} {'CE sae':>8s} " \
           f"{'CE zero':>8s} {'CE rec':>7s}"
    print(head + "\n" + "-" * len(head))
    for h, hr in res["hooks"].items():
        for r in hr["runs"]:
            print(f"{h:32s} {r['k']:4d} {r['l0']:7.2f} {r['fvu']:7.3f} "
                  f"{r['dead_fraction']:6.2f} {r['ce_sae']:8.4f} {hr['ce_zero']:8.4f} "
                  f"{r['ce_loss_recovered']:7.3f}")
    print(f"wrote {args.out}/results.json ({time.perf_counter() - t0:.0f} s)")
    return res


if __name__ == "__main__":
    main()
