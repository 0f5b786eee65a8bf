"""Device meshes and shardings: JAX's own SPMD for every trainer.

A mesh has two named axes:

- ``"data"``: the batch axis (data parallelism) or the vmapped run axis of a sweep;
- ``"model"``: parameters (FSDP-style rows of the transformer's matrices, or the latent axis
  of an SAE, whose TopK is then taken globally across shards: :mod:`jaxcrl.sae.sharded`).

Nothing here is a distribution layer of its own: arrays are placed with
``jax.sharding.NamedSharding`` and the existing pure, jitted steps run unchanged; XLA inserts
the collectives. On one device every function is the identity placement, so single-device
code paths stay exactly as they were.

Example (8 devices: 4-way data parallel x 2-way parameter sharding)::

    mesh = make_mesh(MeshConfig(model=2))
    params = shard_params(mesh, params)          # largest divisible axis over "model"
    batch = shard_batch(mesh, batch)             # leading axis over "data"
    state, metrics = step(state, batch, key)     # the same jitted step
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcrl.checkpoint import register_config

DATA, MODEL = "data", "model"


@register_config
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape.

    Attributes:
      data: size of the ``"data"`` axis; 0 means all devices left after ``model``.
      model: size of the ``"model"`` axis (1: parameters replicated).
    """

    data: int = 0
    model: int = 1

    def __post_init__(self):
        if not isinstance(self.data, int) or self.data < 0:
            raise ValueError(f"MeshConfig.data must be an int >= 0 (0: all), got {self.data!r}")
        if not isinstance(self.model, int) or self.model < 1:
            raise ValueError(f"MeshConfig.model must be an int >= 1, got {self.model!r}")


def make_mesh(cfg: MeshConfig | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``("data", "model")`` mesh over ``devices`` (default: all of them).

    Raises:
      ValueError: the axis sizes do not multiply to the device count (named in the message).
    """
    cfg = cfg or MeshConfig()
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if n % cfg.model:
        raise ValueError(f"mesh model axis {cfg.model} does not divide the {n} devices")
    data = cfg.data or n // cfg.model
    if data * cfg.model != n:
        raise ValueError(f"mesh shape data={data} x model={cfg.model} = {data * cfg.model} "
                         f"does not match the {n} devices")
    return Mesh(np.asarray(devices, dtype=object).reshape(data, cfg.model), (DATA, MODEL))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int, axis: int = 0) -> NamedSharding:
    """Axis ``axis`` of an ``ndim``-array split over ``"data"``, the rest replicated."""
    spec = [None] * ndim
    spec[axis] = DATA
    return NamedSharding(mesh, PartitionSpec(*spec))


def shard_batch(mesh: Mesh, tree: Any, axis: int = 0) -> Any:
    """Places every array of ``tree`` with its ``axis`` split over ``"data"``.

    Raises:
      ValueError: an array whose ``axis`` is not divisible by the data axis size.
    """
    size = mesh.shape[DATA]

    def put(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim <= axis or x.shape[axis] % size:
            name = jax.tree_util.keystr(path) or "batch"
            raise ValueError(f"{name}: axis {axis} of shape {tuple(x.shape)} is not divisible "
                             f"by the mesh data axis ({size} devices)")
        return jax.device_put(x, batch_sharding(mesh, x.ndim, axis))

    return jax.tree_util.tree_map_with_path(put, tree)


def shard_runs(mesh: Mesh, tree: Any) -> Any:
    """The leading run axis (seeds, restarts, sweep values) of ``tree`` over ``"data"``."""
    return shard_batch(mesh, tree, axis=0)


def runs_mesh(n_runs: int, devices: Sequence[Any] | None = None) -> Mesh | None:
    """A ``("data", "model")`` mesh over all local devices for an axis of ``n_runs`` (the
    vmapped runs of a sweep, seeds × restarts, or a batch): ``"data"`` is the largest size
    dividing both ``n_runs`` and the device count, ``"model"`` the rest (where the runs
    are replicated, or a single run's parameters split). None on one device.

    Every trainer's default placement spans the same devices, so what one returns (a
    transformer's parameters) combines with what another returns (a sweep of SAEs on
    them) in one jitted call. With 8 devices: 8 or 16 runs -> 8 x 1, 4 or 12 -> 4 x 2,
    2 or 6 -> 2 x 4, 1 or 3 -> 1 x 8.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    n = len(devices)
    if n == 1:
        return None
    d = max(k for k in range(1, n + 1) if n_runs % k == 0 and n % k == 0)
    return make_mesh(MeshConfig(data=d, model=n // d), devices)


def place_runs(tree: Any, mesh: Mesh) -> Any:
    """Places every array of ``tree`` with its leading (run) axis over ``"data"`` (scalars
    and arrays without that axis are replicated)."""
    size = mesh.shape[DATA]

    def put(x):
        if not hasattr(x, "shape") or not x.shape or x.shape[0] % size:
            return jax.device_put(x, replicated(mesh))
        return jax.device_put(x, batch_sharding(mesh, len(x.shape), 0))

    return jax.tree_util.tree_map(put, tree)


def resolve_mesh(mesh: Mesh | None | bool, size: int, what: str = "batch") -> Mesh | None:
    """The mesh of a trainer's ``mesh=`` argument.

    Args:
      mesh: None: automatic, all local devices with ``"data"`` the largest size that
        divides ``size`` (:func:`runs_mesh`; None on one device, so single-device code
        paths stay as they are); False: no mesh; a ``Mesh``: used as given.
      size: the length of the axis split over ``"data"`` (batch size, or number of runs).
      what: its name, for the error.

    Raises:
      ValueError: ``size`` is not divisible by the mesh's data axis (before compiling).
    """
    if mesh is False:
        return None
    if mesh is None or mesh is True:  # multi-host: every process's devices
        return runs_mesh(size, jax.devices() if jax.process_count() > 1 else None)
    if size % mesh.shape[DATA]:
        raise ValueError(f"{what} {size} is not divisible by the mesh data axis "
                         f"({mesh.shape[DATA]} devices)")
    return mesh


def constrain_batch(tree: Any, mesh: Mesh | None, axis: int = 0) -> Any:
    """Inside a jitted step: constrains every array of ``tree`` (a batch drawn on device) to
    be split along ``axis`` over ``"data"``, so XLA runs the step data-parallel and
    all-reduces the gradients. The identity without a mesh."""
    if mesh is None:
        return tree
    return jax.tree_util.tree_map(
        lambda x: jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim, axis)), tree)


def place_state(mesh: Mesh | None, tree: Any, *, min_size: int = 1024) -> Any:
    """Places a training state on ``mesh``: parameters and optimizer moments FSDP-style over
    ``"model"`` (:func:`fsdp_spec`; replicated when the model axis is 1), replicated over
    ``"data"``; scalars and keys replicated. The identity without a mesh."""
    if mesh is None:
        return tree
    size = mesh.shape[MODEL]

    def put(x):
        if not hasattr(x, "shape"):
            return x
        spec = PartitionSpec() if _is_key(x) else fsdp_spec(np.shape(x), size, min_size=min_size)
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(put, tree)


def onto(mesh: Mesh | None, tree: Any) -> Any:
    """Replicates over ``mesh`` every array of ``tree`` that is not already placed on its
    devices (e.g. a source's buffer made by a jitted init on one device), so that one jitted
    step can take it with arrays sharded on the mesh; arrays already on the mesh keep their
    sharding. The identity without a mesh."""
    if mesh is None:
        return tree
    devices = set(mesh.devices.flat)

    def put(x):
        if not hasattr(x, "shape"):
            return x
        if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
            return x
        return jax.device_put(x, replicated(mesh))

    return jax.tree_util.tree_map(put, tree)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def fsdp_spec(shape: Sequence[int], model_size: int, *, min_size: int = 1024) -> PartitionSpec:
    """FSDP placement of one parameter: its largest axis divisible by ``model_size`` over
    ``"model"``; arrays smaller than ``min_size`` elements (biases, norms) replicated."""
    if model_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % model_size == 0:
            spec = [None] * len(shape)
            spec[i] = MODEL
            return PartitionSpec(*spec)
    return PartitionSpec()


def param_shardings(mesh: Mesh, tree: Any, *, min_size: int = 1024) -> Any:
    """``NamedSharding`` per leaf of a params (or optimizer-state) tree, FSDP style."""
    size = mesh.shape[MODEL]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), size, min_size=min_size)), tree)


def shard_params(mesh: Mesh, tree: Any, *, min_size: int = 1024) -> Any:
    """Places a params tree with :func:`param_shardings`."""
    return jax.device_put(tree, param_shardings(mesh, tree, min_size=min_size))


def per_device_bytes(tree: Any) -> dict[str, int]:
    """Bytes each device holds of ``tree``'s arrays: ``{str(device): bytes}``."""
    out: dict[str, int] = {}
    for x in jax.tree_util.tree_leaves(tree):
        for s in x.addressable_shards:
            out[str(s.device)] = out.get(str(s.device), 0) + s.data.nbytes
    return out


_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                    "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` when the usual cluster variables are set
    (a coordinator address, SLURM, Open MPI or a TPU pod), once per process.

    Returns:
      Whether this is a multi-process run.
    """
    if any(os.environ.get(v) for v in _DISTRIBUTED_ENV) and not _initialized():
        jax.distributed.initialize()
    return jax.process_count() > 1


def _initialized() -> bool:
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except (ImportError, AttributeError):
        return False


def is_primary() -> bool:
    """True on the process that writes results and logs (process 0)."""
    return jax.process_index() == 0
