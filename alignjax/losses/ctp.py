"""CTP (Zhu et al., ICCV 2023) loss math: MoCo against a feature queue, topology KL.

Pure functions of arrays; the wiring (momentum and reference models, the queue buffers,
config fields) is :mod:`alignjax.objectives.ctp`. Notation: ``x``/``y`` [B, D] unit-norm
image/text embeddings of the model being trained, ``x_m``/``y_m`` those of the momentum
model, ``x_r``/``y_r`` those of the frozen previous-task (reference) model, ``Q_x``/``Q_y``
[Q, D] the queues of earlier momentum features, ``t`` the logit scale (``1 / tau``).

=====================  ====================================================================
``moco_targets``       [B, B + Q] one-hot on the diagonal of the first B columns
``moco_loss``          ``½ [CE(t x [y_m; Q_y]ᵀ, T) + CE(t y [x_m; Q_x]ᵀ, T)]``
``mask_self``          the diagonal of a square logit matrix set to ``-1000``
``topology_kl``        cross-modal and same-modal KL to the reference model's similarities
``enqueue``            FIFO write of B rows at the pointer; pointer ``(p + B) mod Q``
``compatible_momentum`` ``θ_m ← m θ_m + (1-m)/2 θ + (1-m)/2 θ_ref``
=====================  ====================================================================
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses.contrastive import as_f32_scalar, info_nce
from alignjax.losses.targets import kl_soft

__all__ = [
    "SELF_MASK",
    "compatible_momentum",
    "enqueue",
    "mask_self",
    "moco_loss",
    "moco_targets",
    "topology_kl",
]

#: The logit a self-similarity gets in the same-modal topology rows (CTP's value): its
#: softmax weight is ``exp(-1000 - max)``, exactly 0 in float32.
SELF_MASK = -1000.0


def moco_targets(batch: int, queue: int) -> jax.Array:
    """[B, B + Q] float32: row i is one-hot at column i (its own momentum feature).

    The first B columns are the momentum features of this batch, the last Q the queue.
    """
    return jnp.eye(batch, batch + queue, dtype=jnp.float32)


def moco_loss(
    x: jax.Array,
    y: jax.Array,
    x_m: jax.Array,
    y_m: jax.Array,
    queue_x: jax.Array,
    queue_y: jax.Array,
    logit_scale: Any,
) -> jax.Array:
    """Momentum contrast of the trained features against momentum features and the queue.

    ``L = ½ [ CE(t · x [y_m; Q_y]ᵀ, T) + CE(t · y [x_m; Q_x]ᵀ, T) ]``, ``T = moco_targets``:
    image i must pick its caption's momentum feature among the batch's momentum text
    features and the Q queued ones, and text i its image's among the image ones.

    Args:
      x, y: [B, D] trained image / text embeddings (unit norm).
      x_m, y_m: [B, D] momentum-model embeddings of the same batch (constants).
      queue_x, queue_y: [Q, D] queued momentum image / text embeddings (constants).
      logit_scale: ``t`` (``1 / tau``).

    Returns:
      float32 scalar. With Q = 0 and momentum == trained features it is CLIP's loss.
    """
    t = as_f32_scalar(logit_scale, "logit_scale")
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    keys_y = jax.lax.stop_gradient(jnp.concatenate([f32(y_m), f32(queue_y)], axis=0))
    keys_x = jax.lax.stop_gradient(jnp.concatenate([f32(x_m), f32(queue_x)], axis=0))
    targets = moco_targets(x.shape[0], queue_x.shape[0])
    i2t = info_nce(t * (f32(x) @ keys_y.T), targets)
    t2i = info_nce(t * (f32(y) @ keys_x.T), targets)
    return 0.5 * (i2t + t2i)


def mask_self(logits: jax.Array, value: float = SELF_MASK) -> jax.Array:
    """[N, N] ``logits`` with the diagonal replaced by ``value`` (self-similarity out)."""
    n = logits.shape[0]
    return jnp.where(jnp.eye(n, dtype=bool), jnp.float32(value), logits)


def _row_kl(student_logits: jax.Array, reference_logits: jax.Array) -> jax.Array:
    """``(1/N) Σ_i KL(softmax(r_i) ‖ softmax(s_i))``, the reference a constant."""
    p = jax.nn.softmax(jax.lax.stop_gradient(reference_logits), axis=-1)
    return kl_soft(student_logits, p)


def topology_kl(
    x: jax.Array, y: jax.Array, x_r: jax.Array, y_r: jax.Array, logit_scale: Any
) -> tuple[jax.Array, jax.Array]:
    """Topology preservation: the batch's similarity rows stay those of the reference model.

    With ``S_ab = t · a bᵀ`` (trained) and ``R_ab = t · a_r b_rᵀ`` (reference), rows as
    distributions (softmax) and ``KL(R ‖ S)`` batch-mean over rows::

        cross = ½ [ KL(R_xy ‖ S_xy) + KL(R_yx ‖ S_yx) ]
        same  = ½ [ KL(m(R_xx) ‖ m(S_xx)) + KL(m(R_yy) ‖ m(S_yy)) ]

    ``m`` = :func:`mask_self`: an embedding's similarity to itself (1, the largest) would
    dominate every same-modal row and carries no structure.

    Args:
      x, y: [B, D] trained image / text embeddings.
      x_r, y_r: [B, D] reference-model embeddings of the same batch (constants).
      logit_scale: ``t`` (``1 / tau``).

    Returns:
      (cross, same): float32 scalars, both exactly 0 when ``x == x_r`` and ``y == y_r``.
    """
    t = as_f32_scalar(logit_scale, "logit_scale")
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    x_r, y_r = (jax.lax.stop_gradient(jnp.asarray(a, jnp.float32)) for a in (x_r, y_r))
    s_xy, r_xy = t * (x @ y.T), t * (x_r @ y_r.T)
    cross = 0.5 * (_row_kl(s_xy, r_xy) + _row_kl(s_xy.T, r_xy.T))
    same = 0.5 * (
        _row_kl(mask_self(t * (x @ x.T)), mask_self(t * (x_r @ x_r.T)))
        + _row_kl(mask_self(t * (y @ y.T)), mask_self(t * (y_r @ y_r.T)))
    )
    return cross, same


def enqueue(queue: jax.Array, ptr: jax.Array, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FIFO queue write: ``features`` [B, D] replace rows ``ptr .. ptr + B - 1`` of ``queue``.

    Args:
      queue: [Q, D]; Q must be a multiple of B (checked by the objective's config check), so
        a write never wraps around the end.
      ptr: int32 scalar in ``[0, Q)``, a multiple of B: the oldest rows.
      features: [B, D] the newest features (gradient stopped here).

    Returns:
      (new queue [Q, D] in the queue's dtype, new pointer ``(ptr + B) mod Q``).
    """
    q, b = queue.shape[0], features.shape[0]
    if q % b:
        raise ValueError(f"enqueue: queue size {q} is not a multiple of the batch {b}.")
    rows = jax.lax.stop_gradient(features).astype(queue.dtype)
    new = jax.lax.dynamic_update_slice(queue, rows, (ptr, jnp.zeros_like(ptr)))
    return new, ((ptr + b) % q).astype(ptr.dtype)


def compatible_momentum(momentum: Any, params: Any, reference: Any, decay: Any) -> Any:
    """CTP's compatible momentum update, leaf by leaf in float32 (cast back)::

        θ_m ← m θ_m + (1 - m)/2 θ + (1 - m)/2 θ_ref

    With ``θ_ref == θ`` it is the plain EMA ``m θ_m + (1 - m) θ``.
    """
    m = jnp.asarray(decay, jnp.float32)
    half = 0.5 * (1.0 - m)

    def one(w, p, r):
        f = lambda a: a.astype(jnp.float32)
        return (m * f(w) + half * f(p) + half * f(r)).astype(w.dtype)

    return jax.tree_util.tree_map(one, momentum, params, reference)
