"""Contrastive image-text losses: softmax (CLIP) and pairwise sigmoid (SigLIP).

All functions here are pure functions of arrays. They work unchanged on one device and
under ``jax.jit`` on globally sharded arrays: because they are written as the loss over the
*global* batch, XLA inserts the collectives and the gradient is the exact global gradient
(unlike a per-device "local loss" whose gradients must be averaged by hand). This holds
for meshes with Auto axes and with Explicit axes (``jax.make_mesh``'s default), for which
the dense bodies run under ``jax.sharding.auto_axes``. The memory-lean multi-device sigmoid
loss lives in :mod:`alignjax.losses.ring`.

Notation (docs/OBJECTIVES.md): ``B`` batch size, ``D`` embedding size,
``x_i`` / ``y_j`` the (already L2-normalised) image / text embeddings, ``s_ij = <x_i, y_j>``,
``t`` the logit scale (a multiplier, i.e. ``exp`` of the stored log-temperature) and
``b`` the SigLIP logit bias. Every loss is computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "as_f32_scalar",
    "check_pair",
    "clip_loss",
    "in_batch_accuracy",
    "info_nce",
    "run_auto",
    "siglip_loss",
    "sigmoid_block_sum",
]


# ----------------------------------------------------------------------------------------
# Helpers shared by the losses of this package (public: ring.py, targets.py, ... use them).
# ----------------------------------------------------------------------------------------
def as_f32_scalar(value: Any, what: str) -> jax.Array:
    """Returns ``value`` as a float32 scalar; accepts shape ``()`` or any one-element shape.

    Models commonly store the temperature as a ``(1,)`` parameter (big_vision); reshaping
    keeps the gradient flowing to it.
    """
    value = jnp.asarray(value, jnp.float32)
    if value.size != 1:
        raise ValueError(
            f"{what} must be a scalar (or have exactly one element); got shape {value.shape}."
        )
    return value.reshape(())


def check_pair(zimg: jax.Array, ztxt: jax.Array, fn: str) -> None:
    if zimg.ndim != 2 or ztxt.ndim != 2:
        raise ValueError(f"{fn}: zimg and ztxt must be [B, D]; got {zimg.shape} and {ztxt.shape}.")
    if zimg.shape != ztxt.shape:
        raise ValueError(
            f"{fn}: zimg {zimg.shape} and ztxt {ztxt.shape} must have the same "
            "[B, D] shape (one caption per image, positives on the diagonal)."
        )


def _explicit_mesh(*arrays):
    """The abstract mesh of the first array whose type carries Explicit mesh axes, else None.

    ``jax.make_mesh`` creates ``AxisType.Explicit`` axes by default in recent jax. Under such
    a mesh, sharding is part of an array's type and ``x @ y.T`` with both operands sharded
    over the batch is a type error (the [B, B] result would be sharded twice over the same
    axes). The dense losses therefore run their body under ``jax.sharding.auto_axes``, which
    hands the partitioning to XLA exactly as for Auto axes; the gradient is still exact.
    """
    explicit = jax.sharding.AxisType.Explicit
    for a in arrays:
        mesh = getattr(getattr(jax.typeof(a), "sharding", None), "mesh", None)
        if mesh is not None and explicit in tuple(getattr(mesh, "axis_types", ())):
            return getattr(mesh, "abstract_mesh", mesh)
    return None


def run_auto(fn: Callable, out_sharding, *args):
    """``fn(*args)``, with Explicit mesh axes (if any) switched to Auto inside ``fn``."""
    mesh = _explicit_mesh(*args[:2])
    if mesh is None:
        return fn(*args)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.sharding.auto_axes(fn, out_sharding=out_sharding)(*args)


def sigmoid_block_sum(
    x: jax.Array, y: jax.Array, t: jax.Array, b: jax.Array, *, positives_on_diagonal: bool
) -> jax.Array:
    """Σ_ij −log σ(z_ij (t·x_i·y_j + b)) over one block of pairs (float32 scalar).

    ``z_ij = +1`` on the diagonal when ``positives_on_diagonal`` (the block of a batch with
    itself) and ``−1`` everywhere else. Uses ``−log σ(z·l) = softplus(−z·l)``, which is stable
    for large |l| and does not cancel on the positives.

    Args:
      x: [n, D] float32 image embeddings.
      y: [m, D] float32 text embeddings (``m == n`` when ``positives_on_diagonal``).
      t, b: float32 scalars.
    """
    logits = t * (x @ y.T) + b  # [n, m]
    if positives_on_diagonal:
        n, m = logits.shape
        eye = jnp.arange(n)[:, None] == jnp.arange(m)[None, :]
        logits = jnp.where(eye, -logits, logits)  # −z_ij · l_ij
    return jnp.sum(jax.nn.softplus(logits))


def in_batch_accuracy(zimg: jax.Array, ztxt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """In-batch top-1 retrieval accuracy in both directions (float32 scalars, no gradient).

    ``i2t = mean_i [argmax_j s_ij == i]`` and ``t2i = mean_j [argmax_i s_ij == j]``; ties go
    to the lowest index (``jnp.argmax``). Uses similarities, not logits, so it is defined
    for ``t = 0`` too.
    """

    def accuracy(x, y):
        sim = x.astype(jnp.float32) @ y.astype(jnp.float32).T  # [B, B]
        idx = jnp.arange(sim.shape[0])
        i2t = jnp.mean((jnp.argmax(sim, axis=1) == idx).astype(jnp.float32))
        t2i = jnp.mean((jnp.argmax(sim, axis=0) == idx).astype(jnp.float32))
        return i2t, t2i

    replicated = jax.sharding.PartitionSpec()
    return run_auto(
        accuracy, (replicated, replicated), jax.lax.stop_gradient(zimg), jax.lax.stop_gradient(ztxt)
    )


# ----------------------------------------------------------------------------------------
# Public losses.
# ----------------------------------------------------------------------------------------
def info_nce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax cross-entropy with (soft) target distributions, averaged over rows.

    ``L = −(1/N) Σ_i Σ_j T_ij · log softmax_j(logits_i)_j``

    Args:
      logits: [N, M] scores; entries may be ``−inf`` (masked out) as long as their target
        is 0.
      targets: [N, M] target distributions, each row non-negative and summing to 1
        (one-hot rows give the usual hard-label cross-entropy). Not normalised here.

    Returns:
      float32 scalar. Entries with ``T_ij == 0`` contribute exactly 0 even where
      ``logits_ij = −inf``, in the value and in the gradients.
    """
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"info_nce: logits and targets must both be [N, M]; got "
            f"{logits.shape} and {targets.shape}."
        )
    logp = jax.nn.log_softmax(logits, axis=-1)
    # Select before multiplying so that 0 · (−inf) never appears, in value or gradient.
    logp = jnp.where(targets > 0, logp, 0.0)
    return -jnp.mean(jnp.sum(targets * logp, axis=-1))


def clip_loss(zimg: jax.Array, ztxt: jax.Array, logit_scale: Any) -> jax.Array:
    """Symmetric InfoNCE (CLIP), the mean of the image→text and text→image directions.

    ``l_ij = t · <x_i, y_j>``;
    ``L = ½ [ −(1/B) Σ_i log softmax_j(l_i·)_i  −(1/B) Σ_j log softmax_i(l_·j)_j ]``
    which equals ``½ (info_nce(l, I) + info_nce(lᵀ, I))``.

    Args:
      zimg: [B, D] image embeddings (L2-normalised by the model; not renormalised here).
      ztxt: [B, D] text embeddings; ``ztxt[i]`` is the caption of ``zimg[i]``.
      logit_scale: the multiplier ``t = exp(t')`` (scalar or one-element array).

    Returns:
      float32 scalar; computed in float32 whatever the input dtype. ``t = 0`` gives
      ``log B``; ``B = 1`` gives 0. Under ``jax.jit`` with the batch sharded over devices the
      value and gradient are those of the global batch.
    """
    check_pair(zimg, ztxt, "clip_loss")
    return run_auto(
        _clip_dense,
        jax.sharding.PartitionSpec(),
        zimg,
        ztxt,
        as_f32_scalar(logit_scale, "logit_scale"),
    )


def _clip_dense(zimg, ztxt, t):
    x = zimg.astype(jnp.float32)
    y = ztxt.astype(jnp.float32)
    logits = t * (x @ y.T)  # [B, B]
    pos = jnp.diagonal(logits)  # [B]
    i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)
    t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - pos)
    return 0.5 * (i2t + t2i)


def siglip_loss(zimg: jax.Array, ztxt: jax.Array, logit_scale: Any, logit_bias: Any) -> jax.Array:
    """Pairwise sigmoid loss (SigLIP), dense over the whole batch.

    ``l_ij = t · <x_i, y_j> + b``, ``z_ij = +1 if i == j else −1``;
    ``L = −(1/B) Σ_i Σ_j log σ(z_ij · l_ij)`` (a sum over all B² pairs divided by B, i.e.
    the mean over images of the sum over texts).

    Args:
      zimg: [B, D] image embeddings (L2-normalised).
      ztxt: [B, D] text embeddings, positives on the diagonal.
      logit_scale: the multiplier ``t`` (scalar or one-element array).
      logit_bias: the bias ``b`` (scalar or one-element array).

    Returns:
      float32 scalar. Memory is O(B²) on one device, O(B²/n) per device when the batch is
      sharded over n devices under jit; for O((B/n)²) use
      :func:`alignjax.losses.ring.siglip_loss_ring`.
    """
    check_pair(zimg, ztxt, "siglip_loss")
    return run_auto(
        _siglip_dense,
        jax.sharding.PartitionSpec(),
        zimg,
        ztxt,
        as_f32_scalar(logit_scale, "logit_scale"),
        as_f32_scalar(logit_bias, "logit_bias"),
    )


def _siglip_dense(zimg, ztxt, t, b):
    x = zimg.astype(jnp.float32)
    y = ztxt.astype(jnp.float32)
    total = sigmoid_block_sum(x, y, t, b, positives_on_diagonal=True)
    return total / x.shape[0]
