"""Configuration of a CRL fit (frozen, hashable, JSON-serializable into checkpoints)."""

from __future__ import annotations

import dataclasses

from jaxcrl.checkpoint import register_config

METHODS = ("latent_scm", "latent_scm_vae", "contrastive", "beta_vae", "ivae")
TARGETS = ("known", "unknown", "unknown_distinct")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"CRLConfig.{name} must be one of {options}, got {value!r}")


@register_config
@dataclasses.dataclass(frozen=True)
class CRLConfig:
    """What to fit and how.

    Attributes:
      method: ``latent_scm`` (flow encoder, exact likelihood), ``latent_scm_vae``,
        ``contrastive`` (MLP encoder + environment classifier whose logits are the latent
        SCM's exact log-density ratios, Buchholz et al. 2023; any D >= d, no
        invertibility), ``beta_vae`` or ``ivae`` (see :mod:`jaxcrl.crl.models`).
      latent_dim: number of latents d.
      n_envs: number of environments E (0 observational, 1..E-1 interventional).
      scm: latent SCM family of the model prior: ``linear``, ``nonlinear`` (per-node tanh
        MLP means, Gaussian noise; normalized only for a DAG, so the acyclicity penalty
        must stop the likelihood from using cycles) or ``flow`` (:mod:`jaxcrl.crl.flow_prior`:
        location-scale MLPs and a learned monotone noise flow per node, parents restricted
        by a causal order, a normalized density for any ``W``; ``method="latent_scm"``).
      scm_order: how the ``flow`` prior's causal order is chosen: ``targets`` (implied by
        the known interventions on every minibatch, :func:`jaxcrl.crl.flow_prior.implied_order`;
        needs ``targets="known"``) or ``index`` (latent 0 first, ...: when the latents'
        order is known).
      intervention: ``perfect`` or ``soft``.
      targets: ``known`` (given per environment), ``unknown`` (single-node, learned as a
        per-environment mixture over the nodes; any number of environments per node) or
        ``unknown_distinct`` (single-node, each environment a different node, which one
        unknown: the setting of CauCA's and contrastive CRL's unknown-target experiments).
        ``unknown_distinct`` is fitted exactly, not relaxed: the model's latents carry no
        labels, and relabeling them (permuting the encoder's outputs and the prior's
        nodes) maps a fit with targets ``e -> pi(e)`` onto one with ``e -> e - 1`` of the
        same likelihood, so the maximum over all injective assignments is the
        known-target fit with the canonical assignment
        (:func:`jaxcrl.crl.targets.canonical_targets`); which true node each environment
        hit is then read off the learned latents (``target_accuracy`` through the MCC
        matching). Needs ``n_envs - 1 <= latent_dim``.
      flow_layers, flow_terms: flow encoder depth and tanh terms per elementwise layer
        (``flow_terms`` is also the number of tanh terms of the ``flow`` prior's 1-D noise
        flows). ``flow_layers=0``: a linear encoder (one invertible ``LULinear`` map; for
        ``latent_scm`` this is linear ICA-like CRL with the latent SCM prior).
      flow_linear: the flow encoder's invertible linear layers: ``lu`` (LU-factored,
        :class:`jaxcrl.crl.nets.LULinear`) or ``dense`` (a plain matrix with ``slogdet``,
        :class:`jaxcrl.crl.nets.DenseLinear`). The LU layer (no permutation, positive
        diagonal) can only represent matrices whose leading principal minors are all
        positive; a dense one can represent any invertible matrix. ``lu`` stays the
        library default (stored fits and figures use it); the experiments' default
        (:class:`jaxcrl.crl.synthetic.SyntheticConfig`) is ``dense`` with 8 layers, 8 terms
        and lr 3e-2, which took the default row from MCC 0.917 to 0.985 at 10k steps
        (BENCHMARKS.md, "The default since issue 13").
      warm_steps, warm_scm: a warm start (``method="latent_scm"``): before the ``steps``
        of the fit, ``warm_steps`` steps with the prior family ``warm_scm`` (same encoder,
        data, keys and optimizer settings, its own learning-rate schedule); the fit then
        starts from the warm encoder and a fresh prior. For ``scm="flow"`` a linear warm
        start moves the flow encoder near the true latents before the flexible prior can
        settle into a local optimum with a latent stuck (issue 13). 0: no warm start.
      warm_restarts: candidate warm starts per run (``warm_steps > 0``): each run's warm
        phase trains ``warm_restarts`` restarts in the same program and the run starts
        from the one with the lowest final training loss under ``warm_scm`` (no ground
        truth). 1: one warm start per run.
      warm_encoder: the warm phase's encoder. ``same`` (default): the fit's own flow
        encoder. ``linear``: one dense linear map (``flow_layers=0``), fitted from
        ``warm_restarts`` starts (the identity, then random rotations: each start pairs the
        inputs with the environments differently) in one program; the one with the
        lowest final training loss becomes the flow's last linear layer, every other layer
        starting as usual. The linear fit settles which direction is tied to which
        environment before the flow can commit to a wrong pairing (the default row's
        stuck fits are label swaps). Measured a wash on the default row's six roots (MCC
        0.964 -> 0.965 over 30 data sets, 8 better and 8 worse, at twice the time) and worse
        at d = 8 (0.916 -> 0.903 over 15), so off by default (BENCHMARKS, "A linear start
        against label swaps"). Needs ``flow_linear="dense"``.
      reduce: how ``latent_scm`` maps ``D > d`` observations to the flow's ``d`` inputs
        (:func:`jaxcrl.crl.svi.make_preprocess`): ``pca`` (whitened top-``d`` variance
        directions; the default) or ``envs`` (the ``d`` directions that best separate the
        environment means relative to the pooled within-environment covariance, i.e.
        multi-class LDA on the environment labels, then whitened; needs ``n_envs > d``).
        ``envs`` is for data where the latents are a small linear subspace beside
        larger-variance nuisance directions (a transformer's residual stream): the
        interventions move the latents, so the environment means span their subspace. No
        ground truth is used. Ignored when ``D == d``.
      hidden: hidden widths of the VAE encoder/decoder and contrastive encoder MLPs.
      scm_hidden: hidden width of the ``nonlinear``/``flow`` priors' per-node MLPs.
      beta: KL weight of ``beta_vae``/``ivae``.
      steps, batch_size, lr, warmup: optimization (Adam, linear warmup then cosine decay,
        gradients clipped at norm ``clip``).
      weight_decay: AdamW decoupled weight decay of the networks' weights (encoder, decoder;
        not the latent SCM's parameters); 0: plain Adam.
      penalty_max: final weight of the acyclicity penalty ``rho (h + h^2/2)``; it ramps up
        geometrically from ``penalty_min`` over the first ``penalty_ramp`` of the steps.
        Kept small by default: the linear prior is a normalized density for any ``W`` (the
        ``log|det(I - W)|`` term), and a strong penalty during training was measured to
        pull the encoder away from the true latents (MCC fell as the penalty rose; at the
        dense 8-layer encoder, ``penalty_max=1`` on the default row's eight roots ends every
        fit a DAG and frees no stuck fit: MCC 0.963 -> 0.954, BENCHMARKS.md, "Cycles in the
        fitted SCM"). The fitted ``W`` can so end cyclic; ``score_run`` records its
        ``acyclicity``. The DAG then comes from the exact search of
        :meth:`FitResult.discover_graph`.
      l1: L1 weight on the learned adjacency.
      recon: weight of the reconstruction term of ``contrastive`` (an MLP decoder, mean
        squared error per standardized input dimension). The classifier only sees the
        log-density ratios, which depend on an intervened latent through a quadratic, so
        a *folded* encoder (``|z_i - c|``) fits them as well as the true one; requiring
        ``x`` to be decodable from ``z`` makes folds costly. It does not rule them out: a
        fold survived with ``recon=1`` on d = 10, D = 100 (the latent's information was
        spread over the other slots; BENCHMARKS.md), which ``gauss_moments`` targets.
      gauss_moments: weight of a penalty on the ``contrastive`` latents' departure from
        Gaussian marginals: within each environment of the minibatch every latent is
        standardized, and the pooled skewness ``S_i`` and excess kurtosis ``K_i`` enter as
        the Jarque-Bera statistic ``sum_i (S_i^2 + K_i^2 / 4) / 6`` per sample. Under the
        linear-Gaussian SCM every latent is Gaussian in every environment, so the truth
        pays nothing; a *fold* ``|z_i - c|`` (skewness near 1) does. The ratio objective
        alone cannot see it. 0: off. Other methods ignore it (like ``recon``: a
        :class:`jaxcrl.crl.synthetic.SyntheticConfig` shares one config across methods).
      encoder_norm, encoder_skip: the ``contrastive`` encoder MLP with LayerNorm before every
        activation, and with a linear path from input to output (:class:`jaxcrl.crl.nets.MLP`).
      pca_dim: methods without a flow encoder: feed the encoder the top-``pca_dim`` principal
        components of ``x``, whitened (0: all ``D`` dimensions, standardized). Observations
        on a ``d``-dimensional manifold in ``R^D`` have most of their variance in few
        directions; whitening them conditions the encoder's first layer.
      edge_threshold: |standardized weight| above which an edge counts as learned (for the
        continuous ``W`` and to prune the linear exact-search DAG).
      graph_search: the exact search of :meth:`FitResult.discover_graph`: ``"linear"``
        (linear-Gaussian interventional BIC, :func:`jaxcrl.crl.discovery.exact_dag_search`),
        ``"nonlinear"`` (location-scale random-feature regressions,
        :func:`jaxcrl.crl.discovery.nonlinear_dag_search`) or ``"auto"``: nonlinear when the
        prior is (``scm`` not ``"linear"``).
      graph_min_r2: linear search only: the effect size a parent must have to be chosen
        (``min_r2`` of :func:`jaxcrl.crl.discovery.exact_dag_search`, a charge per parent
        inside the search, whatever the sample size); 0 is plain BIC.
      encoder_freeze: the encoder's parameters get no updates for the first
        ``encoder_freeze`` steps, while the prior (and decoder) adapt to it. For a fit that
        starts from a given encoder (``init_params``, the consensus refit): without it the
        random prior's first gradients pull a good encoder away (on d = 10, D = 100 a start
        at the true latents fell from MCC 0.999 to 0.81 in 1000 steps; with 2000 frozen
        steps it ends at 0.99). From a random encoder it hurts (BENCHMARKS.md).
      consensus_runs, consensus_steps: ``method="contrastive"`` with ``consensus_runs = R
        >= 2`` (other methods ignore it) is fitted by
        :func:`jaxcrl.crl.consensus.consensus_fit`: R independent fits of
        ``consensus_steps`` steps, a per-latent consensus of their latents (each slot from
        the run that agrees best with the others' same slot; the known or canonical targets
        align the slots), an encoder regressed onto it, and a refit of ``steps``
        steps from that encoder with ``encoder_freeze`` frozen steps. No ground truth is
        used. 0: an ordinary fit.
      consensus_average: the consensus's ``average`` (:func:`jaxcrl.crl.consensus.slot_consensus`):
        0 takes each slot from its medoid run; ``tau`` in (0, 1] averages the medoid's slot
        with every run's same slot at |Pearson| >= ``tau`` with it.
      effect_threshold: nonlinear search only: an edge's partial R² (the fraction of the
        child's residual variance it explains; for the location-scale model its likelihood
        analogue) below which it is pruned.
      restarts: random restarts per seed (trained together by vmap); the one with the best
        final training loss is kept (with ``holdout > 0``: the best held-out loss). Flow
        maximum likelihood has label-swap local optima; the likelihood tells some of them
        apart (at 10k steps on d = 5 it did not rank restarts by MCC: BENCHMARKS.md).
      permute_restarts: restart ``r >= 1`` of ``method="latent_scm"`` (a flow encoder
        initialized near the identity) sees its (preprocessed) inputs in a random order,
        so it starts from another pairing of input directions with latents, hence with
        environments (restart 0 keeps the original order: ``restarts=1`` is unchanged).
        Label-swap optima are the fit's main failure, and restarts differing only in
        small random weights all start from the same pairing. Off by default: it fixed a
        label swap on d = 3 with shuffled targets (a test), but on the default d = 5 data
        its restarts ended worse than unpermuted ones on all five seeds (BENCHMARKS.md,
        "Unknown targets, one per node").
      screen_restarts, screen_steps: successive halving of the restarts. ``screen_restarts
        = R0 > restarts``: each seed starts R0 restarts (all vmapped), trains them
        ``screen_steps`` steps, and keeps the ``restarts`` with the lowest training loss
        (mean over the last 10% of those steps); only they train on, and the best of them
        at the end is kept as usual. A restart's trajectory is the same as without
        screening (its key is ``fold_in(k_seed, r)`` either way). Checkpoints start after
        the screening (a resumed run that had not finished it repeats it,
        deterministically). 0 (the default): off. Off by default because it did not help
        on the default row (BENCHMARKS.md, "Screening restarts"): 16 screened to 4 at step
        3000 of 40k lowered MCC on root seed 0 (0.964 -> 0.924); the loss at 3000 steps
        barely ranks the restarts' final MCC, and at 40k steps fits with MCC 0.87-0.90 can
        have a *lower* training loss than near-perfect ones, so more candidates chosen by
        likelihood can end worse.
      polish: after training, :func:`jaxcrl.crl.polish.polish_fit`: each run's latents
        mapped by the linear map that maximizes the linear-Gaussian SCM likelihood (a DAG)
        in full batch, folded into the encoder's last layer, with the prior refitted in
        closed form; a run keeps it only where its exact likelihood of the data does not
        fall. Needs ``method="latent_scm"``, the linear prior, known perfect targets and
        ``flow_linear="dense"``. Off by default (the tables were measured without it); its
        effect on the default and d = 8 rows: BENCHMARKS.md, "A linear polish".
      holdout: fraction of the samples (a fixed random split) kept out of training; the
        restart with the lowest loss on them (the negative held-out log-likelihood for the
        exact-likelihood and contrastive models) is kept. 0: select by training loss.
      restart_choice: what keeps one of each seed's ``restarts``: ``loss`` (the final
        training loss, or the held-out loss with ``holdout``) or ``acyclicity``: the
        restart whose fitted ``W`` is closest to a DAG (lowest
        :func:`jaxcrl.crl.prior.acyclicity`; no ground truth). The linear prior is a
        normalized density for any ``W``, and on the default row a restart stuck in a
        label-swap optimum tends to end with a cyclic ``W``, which its likelihood does not
        reveal (over 160 restarts of eight roots, Spearman -0.74 between ``h`` and MCC; four
        restarts chosen by it: MCC 0.977, SHD 0.90, against 0.959, 1.40 by loss; BENCHMARKS.md,
        "Cycles in the fitted SCM"). Off by default; the generalization row "default, four
        restarts by acyclicity, polished" (:mod:`jaxcrl.crl.synthetic`) uses it. Needs a
        method with a latent SCM whose ``W`` can be cyclic (not ``scm="flow"``) and no
        ``holdout``.
    """

    method: str = "latent_scm"
    latent_dim: int = 5
    n_envs: int = 6
    scm: str = "linear"
    scm_order: str = "targets"
    intervention: str = "perfect"
    targets: str = "known"
    flow_layers: int = 4
    flow_terms: int = 4
    flow_linear: str = "lu"
    hidden: tuple[int, ...] = (64, 64)
    scm_hidden: int = 16
    beta: float = 1.0
    steps: int = 20000
    batch_size: int = 2048
    lr: float = 1e-2
    warmup: int = 200
    clip: float = 10.0
    weight_decay: float = 0.0
    penalty_min: float = 1e-4
    penalty_max: float = 1e-2
    penalty_ramp: float = 0.6
    l1: float = 0.0
    recon: float = 0.0
    gauss_moments: float = 0.0
    encoder_norm: bool = False
    encoder_skip: bool = False
    pca_dim: int = 0
    edge_threshold: float = 0.3
    graph_search: str = "auto"
    graph_min_r2: float = 0.0
    effect_threshold: float = 0.05
    restarts: int = 2
    holdout: float = 0.0
    restart_choice: str = "loss"
    polish: bool = False
    screen_restarts: int = 0
    screen_steps: int = 3000
    permute_restarts: bool = False
    reduce: str = "pca"
    warm_steps: int = 0
    warm_scm: str = "linear"
    warm_restarts: int = 1
    warm_encoder: str = "same"
    encoder_freeze: int = 0
    consensus_runs: int = 0
    consensus_steps: int = 5000
    consensus_average: float = 0.0

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("scm", self.scm, ("linear", "nonlinear", "flow"))
        _choice("scm_order", self.scm_order, ("targets", "index"))
        _choice("graph_search", self.graph_search, ("auto", "linear", "nonlinear"))
        if self.gauss_moments < 0:
            raise ValueError(f"gauss_moments must be >= 0, got {self.gauss_moments}")
        if not 0.0 <= self.graph_min_r2 < 1.0:
            raise ValueError(f"graph_min_r2 must be in [0, 1), got {self.graph_min_r2}")
        if not 0.0 <= self.effect_threshold < 1.0:
            raise ValueError(f"effect_threshold must be in [0, 1), got {self.effect_threshold}")
        if self.scm == "flow" and self.method != "latent_scm":
            raise ValueError(f"CRLConfig.scm='flow' is implemented for method='latent_scm' "
                             f"only, got method={self.method!r}")
        _choice("targets", self.targets, TARGETS)
        if self.scm == "flow" and self.scm_order == "targets" and self.targets == "unknown":
            raise ValueError("CRLConfig.scm='flow' with scm_order='targets' reads the causal "
                             "order off the interventions' targets; with targets='unknown' use "
                             "targets='unknown_distinct' (one environment per node), "
                             "scm_order='index' or another scm")
        _choice("intervention", self.intervention, ("perfect", "soft"))
        if self.targets == "unknown_distinct" and self.n_envs - 1 > self.latent_dim:
            raise ValueError(f"CRLConfig.targets='unknown_distinct' means one interventional "
                             f"environment per node: n_envs - 1 = {self.n_envs - 1} exceeds "
                             f"latent_dim = {self.latent_dim} (use targets='unknown')")
        for name in ("latent_dim", "n_envs", "steps", "batch_size", "restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"CRLConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.screen_restarts and not (
                self.screen_restarts > self.restarts and 0 < self.screen_steps <= self.steps // 2):
            raise ValueError(f"CRLConfig.screen_restarts={self.screen_restarts} must exceed "
                             f"restarts={self.restarts}, and screen_steps="
                             f"{self.screen_steps} must be in [1, steps // 2 = "
                             f"{self.steps // 2}]")
        if self.screen_restarts < 0:
            raise ValueError(f"CRLConfig.screen_restarts must be >= 0, got "
                             f"{self.screen_restarts}")
        _choice("flow_linear", self.flow_linear, ("lu", "dense"))
        _choice("restart_choice", self.restart_choice, ("loss", "acyclicity"))
        if self.restart_choice == "acyclicity" and (
                not self.learns_graph or self.scm == "flow" or self.holdout > 0):
            raise ValueError(f"CRLConfig.restart_choice='acyclicity' reads the fitted W's "
                             f"cycles: it needs a method with a latent SCM, a W that can be "
                             f"cyclic and no holdout; got method={self.method!r}, scm="
                             f"{self.scm!r}, holdout={self.holdout}")
        if self.flow_layers < 0:
            raise ValueError(f"CRLConfig.flow_layers must be >= 0, got {self.flow_layers}")
        _choice("reduce", self.reduce, ("pca", "envs"))
        if self.pca_dim < 0:
            raise ValueError(f"CRLConfig.pca_dim must be >= 0, got {self.pca_dim}")
        _choice("warm_scm", self.warm_scm, ("linear", "nonlinear", "flow"))
        if self.warm_steps < 0:
            raise ValueError(f"CRLConfig.warm_steps must be >= 0, got {self.warm_steps}")
        if self.warm_restarts < 1:
            raise ValueError(f"CRLConfig.warm_restarts must be >= 1, got {self.warm_restarts}")
        if self.warm_restarts > 1 and self.warm_steps == 0:
            raise ValueError(f"CRLConfig.warm_restarts={self.warm_restarts} needs a warm start "
                             f"(warm_steps > 0)")
        if self.warm_steps > 0 and self.method != "latent_scm":
            raise ValueError(f"CRLConfig.warm_steps > 0 (a warm start of the flow encoder) "
                             f"needs method='latent_scm', got method={self.method!r}")
        _choice("warm_encoder", self.warm_encoder, ("same", "linear"))
        if self.warm_encoder == "linear" and not (self.warm_steps > 0
                                                  and self.flow_linear == "dense"):
            raise ValueError(f"CRLConfig.warm_encoder='linear' needs a warm start "
                             f"(warm_steps > 0, got {self.warm_steps}) and dense flow layers "
                             f"(flow_linear='dense', got {self.flow_linear!r}): the linear "
                             f"fit becomes the flow's last linear layer")
        if self.warm_steps > 0 and self.permute_restarts:
            raise ValueError("CRLConfig.permute_restarts with warm_steps > 0: the warm start's "
                             "encoder is fitted on the unpermuted inputs; use one or the other")
        if self.reduce == "envs" and self.method != "latent_scm":
            raise ValueError(f"CRLConfig.reduce='envs' chooses the flow encoder's input "
                             f"subspace (method='latent_scm'), got method={self.method!r}")
        if self.reduce == "envs" and self.n_envs <= self.latent_dim:
            raise ValueError(f"CRLConfig.reduce='envs' needs n_envs > latent_dim (the "
                             f"n_envs - 1 environment-mean differences span the d-dim "
                             f"subspace), got n_envs={self.n_envs}, "
                             f"latent_dim={self.latent_dim}")
        if not 0 <= self.encoder_freeze < self.steps:
            raise ValueError(f"CRLConfig.encoder_freeze must be in [0, steps = {self.steps}), "
                             f"got {self.encoder_freeze}")
        if self.consensus_runs and not (self.consensus_runs >= 2 and self.trains_with_targets
                                        and self.consensus_steps >= 1):
            raise ValueError(f"CRLConfig.consensus_runs={self.consensus_runs} needs >= 2 runs "
                             f"of consensus_steps >= 1 (got {self.consensus_steps}) and targets "
                             f"that align the runs' latents, 'known' or 'unknown_distinct' "
                             f"(got {self.targets!r})")
        if not 0.0 <= self.consensus_average <= 1.0:
            raise ValueError(f"CRLConfig.consensus_average must be in [0, 1], got "
                             f"{self.consensus_average}")
        if self.polish and not self.can_polish:
            raise ValueError(
                f"CRLConfig.polish needs method='latent_scm', scm='linear', targets='known', "
                f"intervention='perfect' and flow_linear='dense'; got method={self.method!r}, "
                f"scm={self.scm!r}, targets={self.targets!r}, intervention="
                f"{self.intervention!r}, flow_linear={self.flow_linear!r}")
        if not 0.0 <= self.holdout < 0.5:
            raise ValueError(f"CRLConfig.holdout must be in [0, 0.5), got {self.holdout}")
        if self.lr <= 0 or self.beta < 0:
            raise ValueError(f"CRLConfig: lr must be > 0 and beta >= 0 (lr={self.lr}, "
                             f"beta={self.beta})")
        object.__setattr__(self, "hidden", tuple(self.hidden))

    @property
    def trains_with_targets(self) -> bool:
        """The model is trained with a target mask (``known``, or the canonical one of
        ``unknown_distinct``) rather than the mixture over targets (``unknown``)."""
        return self.targets != "unknown"

    @property
    def can_polish(self) -> bool:
        """The setting :func:`jaxcrl.crl.polish.polish_fit` needs: a ``latent_scm`` flow with
        dense linear layers, the linear prior, known perfect targets."""
        return (self.method == "latent_scm" and self.scm == "linear" and self.targets == "known"
                and self.intervention == "perfect" and self.flow_linear == "dense")

    @property
    def learns_graph(self) -> bool:
        return self.method in ("latent_scm", "latent_scm_vae", "contrastive")
