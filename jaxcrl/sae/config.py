"""Configuration of a sparse autoencoder and of its training (frozen, hashable, JSON-able)."""

from __future__ import annotations

import dataclasses

from jaxcrl.checkpoint import register_config
from jaxcrl.sae import architectures as arch_lib

B_DEC_INITS = ("mean", "geometric_median", "zeros")
DECODERS = ("auto", "dense", "sparse")
COMPUTE_DTYPES = ("float32", "bfloat16")


def check_prefix_widths(widths: tuple[int, ...], n: int, name: str) -> None:
    """ValueError unless ``widths`` are strictly increasing integers in ``[1, n)``."""
    if any(not 1 <= w < n for w in widths) or any(
            b <= a for a, b in zip(widths, widths[1:], strict=False)):
        raise ValueError(f"{name} must be strictly increasing widths in [1, {n}) (the full "
                         f"width is the last level), got {widths}")


@register_config
@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """One SAE: architecture, sizes, sparsity, optimisation.

    Attributes:
      architecture: a key of :data:`jaxcrl.sae.architectures.ARCHITECTURES`: ``relu`` (ReLU +
        L1 weighted by decoder row norms, Anthropic's April 2024 update), ``topk`` (Gao et
        al. 2024), ``batchtopk`` (Bussmann et al. 2024), ``jumprelu`` (Rajamanoharan et al.
        2024 / Gemma Scope), or any registered architecture (:attr:`arch` is the object).
      d_in: width of the activations.
      d_sae: number of latents.
      k: active latents per example for ``topk`` (per example on average for ``batchtopk``;
        for ``jumprelu`` the expected L0, which sizes its sparse path's slots).
        In a sweep over ``k`` the per-run value is traced (:class:`~jaxcrl.sae.training.HParams`).
      l1_coefficient: weight of the norm-weighted L1 penalty (``relu``).
      l0_coefficient: weight of the L0 penalty (``jumprelu``).
      bandwidth: width ε of the rectangle kernel of JumpReLU's straight-through estimator.
      threshold_init: initial JumpReLU threshold.
      aux_k: latents used by the AuxK dead-latent loss (0 turns it off); ``None`` means
        ``d_in // 2``. Used by every architecture (see :mod:`jaxcrl.sae.training`).
      aux_coefficient: weight α of the AuxK loss (Gao et al.: 1/32).
      dead_tokens: a latent is dead once it has not fired for this many training tokens.
      lr: Adam learning rate; ``adam_b1``, ``adam_b2``, ``adam_eps`` its other settings.
      warmup: linear learning-rate warmup steps.
      lr_decay: fraction of the final steps over which the learning rate decays linearly to 0.
      coefficient_warmup: steps over which the L1/L0 coefficient ramps linearly from 0.
      grad_clip: clip the global gradient norm at this value (0: off).
      steps: training steps.
      batch_size: activations per step.
      b_dec_init: ``mean``, ``geometric_median`` or ``zeros`` (of a sample of the data).
      normalize_activations: scale inputs by a fixed factor so that E‖x‖ = √d_in (estimated
        from the data at init; folded into the weights at export).
      dec_init_norm: initial decoder row norm for ``relu`` (unit-norm architectures use 1).
      apply_b_dec_to_input: subtract ``b_dec`` before encoding (SAELens' flag of that name).
      batchtopk_threshold_lr: rate of the running estimate of BatchTopK's inference
        threshold (the smallest kept activation of each batch).
      dense_threshold: firing rate above which a latent counts as dense in evaluation.
      hook_name: where the activations come from (written to the SAELens ``cfg.json``).
      matryoshka_widths: nested prefix widths of a Matryoshka dictionary (strictly
        increasing, in ``[1, d_sae)``; the full width is the last level): each prefix of the
        latents is trained to reconstruct on its own. Empty: the architecture's default
        (``matryoshka_batchtopk``: ``d_sae/8, d_sae/4, d_sae/2``); other architectures take
        none.
      ortho_coefficient: weight of the decoder-orthogonality penalty
        ``mean_{i≠j} cos²(W_dec[i], W_dec[j])`` (:func:`jaxcrl.sae.penalties.ortho_penalty`),
        for any architecture; 0 turns it off.
      decoder: ``dense``, ``sparse`` (architectures with a sparse selection, the TopK kinds
        and JumpReLU: decode and differentiate only the active latents,
        :mod:`jaxcrl.sae.sparse`) or ``auto`` (sparse when ``d_sae`` is at least
        ``sparse.SPARSE_MIN_RATIO`` times the slots per example ``k``; for JumpReLU 64 times
        its ``4k`` slots).
        Same numbers up to float reassociation.
      compute_dtype: dtype of the dense matmuls (``float32`` or ``bfloat16``, accumulated
        in float32); params and optimizer state stay float32.
    """

    architecture: str = "topk"
    d_in: int = 512
    d_sae: int = 4096
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1e-3
    bandwidth: float = 1e-3
    threshold_init: float = 1e-3
    aux_k: int | None = None
    aux_coefficient: float = 1.0 / 32
    dead_tokens: int = 10_000_000
    lr: float = 3e-4
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    warmup: int = 100
    lr_decay: float = 0.0
    coefficient_warmup: int = 0
    grad_clip: float = 0.0
    steps: int = 10_000
    batch_size: int = 4096
    b_dec_init: str = "mean"
    normalize_activations: bool = True
    dec_init_norm: float = 0.1
    apply_b_dec_to_input: bool = True
    batchtopk_threshold_lr: float = 0.01
    dense_threshold: float = 0.1
    hook_name: str = ""
    matryoshka_widths: tuple[int, ...] = ()
    ortho_coefficient: float = 0.0
    decoder: str = "auto"
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.architecture not in arch_lib.ARCHITECTURES:
            raise ValueError(f"SAEConfig.architecture must be one of "
                             f"{tuple(arch_lib.ARCHITECTURES)}, got {self.architecture!r}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"SAEConfig.b_dec_init must be one of {B_DEC_INITS}, "
                             f"got {self.b_dec_init!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"SAEConfig.decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.decoder == "sparse" and not self.arch.has_sparse_path:
            raise ValueError(f"SAEConfig.decoder='sparse' needs an architecture with a sparse "
                             f"selection (topk, batchtopk, jumprelu), not {self.architecture!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"SAEConfig.compute_dtype must be one of {COMPUTE_DTYPES}, "
                             f"got {self.compute_dtype!r}")
        for name in ("d_in", "d_sae", "k", "steps", "batch_size", "dead_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"SAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.k > self.d_sae:
            raise ValueError(f"SAEConfig.k={self.k} exceeds d_sae={self.d_sae}")
        if self.aux_k is not None and not 0 <= self.aux_k <= self.d_sae:
            raise ValueError(f"SAEConfig.aux_k must be in [0, d_sae], got {self.aux_k}")
        for name in ("lr", "bandwidth", "threshold_init"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SAEConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("l1_coefficient", "l0_coefficient", "aux_coefficient", "warmup",
                     "coefficient_warmup", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"SAEConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"SAEConfig.lr_decay must be in [0, 1], got {self.lr_decay}")
        if self.ortho_coefficient < 0:
            raise ValueError(f"SAEConfig.ortho_coefficient must be >= 0, got "
                             f"{self.ortho_coefficient}")
        object.__setattr__(self, "matryoshka_widths",
                           tuple(int(w) for w in self.matryoshka_widths))
        check_prefix_widths(self.matryoshka_widths, self.d_sae, "SAEConfig.matryoshka_widths")
        if self.matryoshka_widths and not self.arch.nested:
            raise ValueError(f"SAEConfig.matryoshka_widths only act on Matryoshka "
                             f"architectures, not {self.architecture!r}")

    @property
    def effective_aux_k(self) -> int:
        """``aux_k`` with ``None`` resolved to ``d_in // 2`` (capped at ``d_sae``)."""
        return min(self.d_in // 2 if self.aux_k is None else self.aux_k, self.d_sae)

    @property
    def arch(self) -> arch_lib.Architecture:
        """The registered :class:`~jaxcrl.sae.architectures.Architecture` object."""
        return arch_lib.get(self.architecture)

    @property
    def unit_norm_decoder(self) -> bool:
        """Decoder rows are kept at unit norm (all built-ins but ``relu``)."""
        return self.arch.unit_norm_decoder

    @property
    def prefix_widths(self) -> tuple[int, ...]:
        """The inner Matryoshka widths the loss trains (empty for plain architectures)."""
        return self.arch.prefix_widths(self)

    @property
    def coefficient(self) -> float:
        """The sparsity coefficient this architecture uses (L1, L0, or 0 for TopK kinds)."""
        return self.arch.coefficient(self)

    @classmethod
    def tiny(cls, **override) -> SAEConfig:
        """For tests: d_in 16, 64 latents, k 4, 200 steps of 256."""
        return cls(**{"d_in": 16, "d_sae": 64, "k": 4, "steps": 200, "batch_size": 256,
                      "lr": 3e-3, "warmup": 10, **override})
