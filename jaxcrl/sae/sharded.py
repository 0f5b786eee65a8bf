"""SAEs with the latent axis sharded across devices and one global TopK.

For a dictionary too wide for one device (a 16M-latent SAE), ``W_enc [d_in, d_sae]``,
``b_enc [d_sae]`` and ``W_dec [d_sae, d_in]`` (and their Adam moments) are split along the
latent axis over the mesh's ``"model"`` axis, so per-device memory falls with the shard
count. The batch is split over ``"data"``. Each device:

1. computes its shard's pre-activations ``[B/data, d_sae/model]``;
2. takes its local top ``k`` values per row, all-gathers them over ``"model"``
   (``[B/data, k * model]``: k values per shard, a few KB) and finds the global k-th largest —
   the threshold that the single-device TopK would use (OpenAI's 2024 sharded top-k);
3. keeps its own latents above that threshold and decodes them with its decoder shard;
4. sums the partial reconstructions over ``"model"`` (one all-reduce of ``[B/data, d_in]``).

So the latents and the reconstruction equal the single-device TopK SAE's
(:func:`jaxcrl.sae.model.forward` with ``architecture="topk"``), ties included, and
autodiff through :func:`jax.shard_map` gives the same gradients. ``k`` is static here
(``lax.top_k``) and must not exceed the shard width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcrl.train.mesh import DATA, MODEL

# Placement of each SAE parameter: the latent axis over "model".
PARAM_SPECS = {"W_enc": P(None, MODEL), "b_enc": P(MODEL), "W_dec": P(MODEL, None),
               "b_dec": P()}


def param_shardings(mesh: Mesh, params: dict) -> dict:
    """``NamedSharding`` per SAE parameter (latent axis over ``"model"``)."""
    unknown = set(params) - set(PARAM_SPECS)
    if unknown:
        raise ValueError(f"latent sharding supports W_enc, b_enc, W_dec, b_dec; got also "
                         f"{sorted(unknown)}")
    return {n: NamedSharding(mesh, PARAM_SPECS[n]) for n in params}


def shard_params(mesh: Mesh, params: dict) -> dict:
    """Places SAE params with the latent axis over ``"model"``.

    Raises:
      ValueError: ``d_sae`` not divisible by the model axis size.
    """
    d_sae = params["W_dec"].shape[0]
    if d_sae % mesh.shape[MODEL]:
        raise ValueError(f"d_sae={d_sae} is not divisible by the mesh model axis "
                         f"({mesh.shape[MODEL]} shards)")
    return jax.device_put(params, param_shardings(mesh, params))


def topk_forward(params: dict, x: jax.Array, k: int, mesh: Mesh, *,
                 apply_b_dec_to_input: bool = True) -> tuple[jax.Array, jax.Array]:
    """TopK SAE forward with latents sharded over ``"model"`` and a global TopK.

    Args:
      params: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
        ``b_dec [d_in]`` (placed by :func:`shard_params`, or any placement: jit reshards).
      x: ``[B, d_in]`` activations, ``B`` divisible by the data axis.
      k: active latents per row (static), at most ``d_sae / model``.
      mesh: a ``("data", "model")`` mesh (:func:`jaxcrl.train.mesh.make_mesh`).

    Returns:
      ``(x_hat [B, d_in], z [B, d_sae])``, sharded over data (and model for ``z``).
    """
    d_sae = params["W_dec"].shape[0]
    n_model, n_data = mesh.shape[MODEL], mesh.shape[DATA]
    if d_sae % n_model:
        raise ValueError(f"d_sae={d_sae} is not divisible by the mesh model axis ({n_model})")
    if not 1 <= k <= d_sae // n_model:
        raise ValueError(f"k={k} must be in [1, d_sae/model = {d_sae // n_model}]")
    if x.ndim != 2 or x.shape[1] != params["W_enc"].shape[0]:
        raise ValueError(f"x must be [batch, d_in={params['W_enc'].shape[0]}], got {x.shape}")
    if x.shape[0] % n_data:
        raise ValueError(f"batch {x.shape[0]} is not divisible by the mesh data axis ({n_data})")

    def local(w_enc, b_enc, w_dec, b_dec, x):
        xc = x - b_dec if apply_b_dec_to_input else x
        acts = jax.nn.relu(xc @ w_enc + b_enc)  # [B/data, d_sae/model]
        top = jax.lax.top_k(jax.lax.stop_gradient(acts), k)[0]  # local candidates [., k]
        cands = jax.lax.all_gather(top, MODEL, axis=1, tiled=True)  # [., k * model]
        thr = jax.lax.top_k(cands, k)[0][:, -1:]  # the global k-th largest
        z = jnp.where((acts >= thr) & (acts > 0), acts, 0.0)
        x_hat = jax.lax.psum(z @ w_dec, MODEL) + b_dec
        return x_hat, z

    fn = jax.shard_map(local, mesh=mesh,
                       in_specs=(PARAM_SPECS["W_enc"], PARAM_SPECS["b_enc"],
                                 PARAM_SPECS["W_dec"], PARAM_SPECS["b_dec"], P(DATA, None)),
                       out_specs=(P(DATA, None), P(DATA, MODEL)))
    return fn(params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"], x)


def mse_loss(params: dict, x: jax.Array, k: int, mesh: Mesh) -> jax.Array:
    """Mean over the batch of ``‖x_hat − x‖²`` for the sharded TopK SAE (scalar)."""
    x_hat, _ = topk_forward(params, x, k, mesh)
    return ((x_hat - x) ** 2).sum(-1).mean()


def make_train_step(mesh: Mesh, k: int, optimizer: Any):
    """A jitted ``(params, opt_state, x) -> (params, opt_state, loss)`` Adam step whose
    params, optimizer moments and batch stay sharded (latents over ``"model"``, batch over
    ``"data"``); decoder rows renormalised to unit norm after the update (TopK SAEs).

    Initialise the optimizer eagerly on the placed params (``optimizer.init(params)``, not
    under ``jit``) so that its moments inherit the params' placement.
    """
    import optax

    def step(params, opt_state, x):
        loss, grads = jax.value_and_grad(mse_loss)(params, x, k, mesh)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        w = params["W_dec"]
        params = {**params, "W_dec": w / jnp.linalg.norm(w, axis=1, keepdims=True)}
        return params, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))
