"""Training machinery shared by crl, lm and sae: the scan-chunk loop, the outer driver with
its callbacks (progress, evaluation, checkpoints, source refresh, non-finite guard), exact
resume, and the one optimizer builder."""

from jaxcrl.train.driver import (
    Callback,
    Checkpoint,
    ConfigMismatchError,
    DriveResult,
    Evaluate,
    Event,
    NonFiniteError,
    NonFiniteGuard,
    ProgressBar,
    Refresh,
    Update,
    drive,
)
from jaxcrl.train.loop import RetraceError, run, vmap_runs
from jaxcrl.train.optim import build_optimizer

__all__ = [
    "Callback", "Checkpoint", "ConfigMismatchError", "DriveResult", "Evaluate", "Event",
    "NonFiniteError", "NonFiniteGuard", "ProgressBar", "Refresh", "RetraceError", "Update",
    "build_optimizer", "drive", "run", "vmap_runs",
]
