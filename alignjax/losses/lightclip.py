"""LightCLIP (Nie et al. 2023, arXiv:2312.00674): progressive softened labels, relaxed
bipartite token alignment and an auxiliary image-fused MLM head.

No public code exists, and the paper leaves the schedule, the weights and the fusion
placement open, so all are config fields (see ``configs/lightclip.py``)::

    α(step) = α_max · ramp(step / total_steps)         ramp: linear or cosine, α(0) = 0
    L_inst  = symmetric InfoNCE with softened targets α(step)
    L_tok   = symmetric InfoNCE on s^T_ij = mean over valid words of max over patches
              (each word takes its best patch: the relaxed one-to-many matching)
    L_mlm   = CE over masked positions of a fusion head's vocabulary logits
    L = L_inst + λ_tok L_tok + λ_mlm L_mlm
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses.contrastive import as_f32_scalar, info_nce
from alignjax.losses.targets import contrastive_from_logits, softened_targets
from alignjax.losses.tokenwise import token_similarity

__all__ = [
    "alpha_schedule",
    "instance_loss",
    "mask_tokens",
    "mlm_loss",
    "relaxed_token_loss",
]

SCHEDULES = ("linear", "cosine", "constant")
NEG_WEIGHTINGS = ("uniform", "similarity")
IGNORE = -100  # MLM label of positions that are not predicted.


def alpha_schedule(step, total_steps: int, alpha_max: float, schedule: str = "linear"):
    """Softening weight at ``step``: 0 at step 0, ``alpha_max`` at ``total_steps``, monotone."""
    p = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(total_steps), 1), 0.0, 1.0)
    if schedule == "linear":
        ramp = p
    elif schedule == "cosine":
        ramp = 0.5 * (1.0 - jnp.cos(math.pi * p))
    elif schedule == "constant":
        ramp = jnp.ones_like(p)
    else:
        raise ValueError(f"Unknown LightCLIP schedule {schedule!r}; valid: {list(SCHEDULES)}.")
    return alpha_max * ramp


def _similarity_targets(logits: jax.Array, alpha: jax.Array) -> jax.Array:
    """Diag ``1-α``; the off-diagonal mass α spread ∝ softmax of the (detached) logits."""
    n = logits.shape[0]
    eye = jnp.eye(n, dtype=bool)
    w = jax.nn.softmax(jnp.where(eye, -jnp.inf, jax.lax.stop_gradient(logits)), axis=-1)
    return jnp.where(eye, 1.0 - alpha, alpha * w)


def instance_loss(
    zimg: jax.Array, ztxt: jax.Array, logit_scale: Any, alpha: Any, neg_weighting: str = "uniform"
) -> jax.Array:
    """Symmetric InfoNCE with softened targets (``α = 0``: the CLIP loss)."""
    t = as_f32_scalar(logit_scale, "logit_scale")
    logits = t * (zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T)
    alpha = jnp.asarray(alpha, jnp.float32)
    if neg_weighting == "uniform" or logits.shape[0] == 1:
        ti = tt = softened_targets(logits.shape[0], alpha)
    elif neg_weighting == "similarity":
        ti, tt = _similarity_targets(logits, alpha), _similarity_targets(logits.T, alpha)
    else:
        raise ValueError(f"Unknown neg_weighting {neg_weighting!r}; valid: {list(NEG_WEIGHTINGS)}.")
    return 0.5 * (info_nce(logits, ti) + info_nce(logits.T, tt))


def relaxed_token_loss(
    img_tokens, txt_tokens, txt_mask, logit_scale, *, chunk_size=None
) -> jax.Array:
    """Word -> best patch matching (several words may share a patch), contrasted both ways.

    ``s_ij`` = mean over the valid words of caption ``j`` of their max cosine with the
    patches of image ``i``; ``L = ½ (CE_rows(t·S) + CE_cols(t·S))``. One token per side
    gives the global cosine, i.e. the CLIP loss.
    """
    t = as_f32_scalar(logit_scale, "logit_scale")
    _, s_t = token_similarity(img_tokens, None, txt_tokens, txt_mask, chunk_size=chunk_size)
    return contrastive_from_logits(t * s_t, t * s_t)


def mask_tokens(
    tokens: jax.Array, rng, prob: float, mask_id: int, pad_id: int = 0, bos_id: int = 1
):
    """BERT-style masking for the MLM head (all chosen positions get ``mask_id``).

    Maskable: not padding, not BOS, and not the row's EOT (the largest id of the row, the
    CLIP convention the text tower pools at — masking it would move the pooled position).

    Returns ``(masked_tokens [B, L], labels [B, L])`` with ``labels = IGNORE`` (-100) where
    nothing is predicted.
    """
    tokens = jnp.asarray(tokens)
    eot = jnp.arange(tokens.shape[1])[None, :] == jnp.argmax(tokens, axis=1)[:, None]
    maskable = (tokens != pad_id) & (tokens != bos_id) & ~eot
    chosen = maskable & (jax.random.uniform(rng, tokens.shape) < prob)
    return jnp.where(chosen, mask_id, tokens), jnp.where(chosen, tokens, IGNORE)


def mlm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean CE over positions with ``labels != -100`` (0 when nothing is masked)."""
    logits = logits.astype(jnp.float32)
    valid = labels != IGNORE
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
