"""Training-loop machinery shared by crl, lm and sae."""

from jaxcrl.train.loop import run, vmap_runs

__all__ = ["run", "vmap_runs"]
