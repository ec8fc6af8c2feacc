"""Target distributions and soft-target contrastive losses (docs/OBJECTIVES.md).

Every alignment method below reduces to one pattern: row-wise softmax cross-entropy between
a logit matrix and a *target distribution* per row. The builders here return [N, M] float32
matrices whose rows sum to 1:

=====================  =====================================================================
``hard_targets``       identity (CLIP): ``T = I``
``softened_targets``   PyramidCLIP/LightCLIP: diag ``1 - α``, off-diagonal ``α / (N - 1)``
``smoothed_targets``   label smoothing (optax/timm, Huawei FILIP): ``(1 - α) I + α / N``
``label_targets``      UniCL: ``T_ij = [l_i == l_j] / Σ_j [l_i == l_j]``
``multi_positive``     DreamLIP: a boolean positive mask, normalised per row
=====================  =====================================================================

``symmetric_contrastive`` is ``½ (info_nce(t·XYᵀ, T) + info_nce(t·YXᵀ, Tᵀ))`` with any
targets; ``kl_soft`` is the batch-mean KL divergence to soft teacher distributions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses.contrastive import as_f32_scalar, info_nce

__all__ = [
    "contrastive_from_logits",
    "hard_targets",
    "kl_soft",
    "label_targets",
    "multi_positive_targets",
    "smoothed_targets",
    "softened_targets",
    "symmetric_contrastive",
]


def hard_targets(n: int, m: int | None = None) -> jax.Array:
    """One-hot rows: [n, m] float32 with ``T_ii = 1`` (CLIP's positives on the diagonal)."""
    return jnp.eye(n, m if m is not None else n, dtype=jnp.float32)


def softened_targets(n: int, alpha: Any) -> jax.Array:
    """Softened negatives (PyramidCLIP, LightCLIP): [n, n] float32.

    ``T_ii = 1 - α``, ``T_ij = α / (n - 1)`` for ``j != i``; rows sum to 1. ``α`` may be a
    traced scalar (LightCLIP's schedule). ``n = 1`` gives ``[[1]]`` whatever ``α``: a lone
    sample has no negatives to soften towards.
    """
    alpha = jnp.asarray(alpha, jnp.float32)
    eye = jnp.eye(n, dtype=jnp.float32)
    if n == 1:
        return eye
    return eye * (1.0 - alpha) + (1.0 - eye) * (alpha / (n - 1))


def smoothed_targets(n: int, alpha: Any) -> jax.Array:
    """Label smoothing as in optax/timm (and the Huawei FILIP code): ``(1 - α) I + α / n``.

    Unlike :func:`softened_targets`, the positive also receives ``α / n``.
    """
    alpha = jnp.asarray(alpha, jnp.float32)
    return jnp.eye(n, dtype=jnp.float32) * (1.0 - alpha) + alpha / n


def label_targets(labels: jax.Array, labels_cols: jax.Array | None = None) -> jax.Array:
    """UniCL targets: ``T_ij = [l_i == l'_j] / Σ_j [l_i == l'_j]`` ([N] -> [N, M] float32).

    Rows without any match (impossible when ``labels_cols`` is None) are all zero.
    """
    cols = labels if labels_cols is None else labels_cols
    return multi_positive_targets(labels[:, None] == cols[None, :])


def multi_positive_targets(pos_mask: jax.Array) -> jax.Array:
    """Boolean [N, M] positive mask -> uniform distribution over each row's positives."""
    pos = jnp.asarray(pos_mask, jnp.float32)
    return pos / jnp.maximum(jnp.sum(pos, axis=-1, keepdims=True), 1.0)


def contrastive_from_logits(
    logits_i2t: jax.Array, logits_t2i: jax.Array, targets: jax.Array | None = None
) -> jax.Array:
    """``½ (info_nce(L_i2t, T) + info_nce(L_t2iᵀ, Tᵀ))``, both logits indexed [image, text].

    The two directions may use *different* score matrices (FILIP: ``s^I`` for rows,
    ``s^T`` for columns). ``targets`` defaults to the identity.

    Args:
      logits_i2t: [B, B] scores used for image -> text (softmax over axis 1).
      logits_t2i: [B, B] scores used for text -> image (softmax over axis 0).
      targets: [B, B] rows sum to 1, or None for hard targets.
    """
    n = logits_i2t.shape[0]
    if targets is None:
        targets = hard_targets(n, logits_i2t.shape[1])
    return 0.5 * (info_nce(logits_i2t, targets) + info_nce(logits_t2i.T, targets.T))


def symmetric_contrastive(
    x: jax.Array, y: jax.Array, logit_scale: Any, targets: jax.Array | None = None
) -> jax.Array:
    """Symmetric InfoNCE with soft targets: ``½ (CE(t·XYᵀ, T) + CE(t·YXᵀ, Tᵀ))``.

    Args:
      x: [N, D] unit-norm embeddings (e.g. images).
      y: [M, D] unit-norm embeddings (e.g. texts).
      logit_scale: multiplier ``t``.
      targets: [N, M] target distributions (rows sum to 1); None: identity (needs N == M),
        which gives exactly :func:`alignjax.losses.clip_loss`.

    Returns:
      float32 scalar. For the text->image direction each *column* of ``T`` is renormalised
      to a distribution (it already is one for the symmetric builders above).
    """
    t = as_f32_scalar(logit_scale, "logit_scale")
    logits = t * (x.astype(jnp.float32) @ y.astype(jnp.float32).T)
    if targets is None:
        targets = hard_targets(*logits.shape)
    tt = targets.T / jnp.maximum(jnp.sum(targets.T, axis=-1, keepdims=True), 1e-12)
    return 0.5 * (info_nce(logits, targets) + info_nce(logits.T, tt))


def kl_soft(student_logits: jax.Array, teacher_probs: jax.Array) -> jax.Array:
    """``(1/N) Σ_i KL(p_i ‖ softmax(s_i))`` (PyTorch ``kl_div(reduction='batchmean')``).

    Args:
      student_logits: [N, M] logits.
      teacher_probs: [N, M] target distributions (rows sum to 1; no gradient is stopped
        here, wrap them in ``jax.lax.stop_gradient`` for a fixed teacher).
    """
    p = jnp.asarray(teacher_probs, jnp.float32)
    logq = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32), axis=-1)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    return jnp.sum(plogp - jnp.where(p > 0, p * logq, 0.0)) / p.shape[0]
