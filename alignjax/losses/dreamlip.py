"""DreamLIP (Zheng et al., ECCV 2024, arXiv:2403.17007): long captions as K sub-captions.

Each image comes with its caption and K sub-captions (sentences sampled from a long
caption, ``alignjax.objectives.dreamlip.SampleSubCaptions``). Texts: ``Y [B, 1+K, D]``.

* Multi-positive contrastive loss over all ``B(1+K)`` texts: image ``i``'s positives are its
  own ``1+K`` texts (uniform target), each text's positive is its image::

      L_mp = ½ [ (1/B) Σ_i KL(T_i ‖ softmax_j(t x_i·y_j)) + (1/(B(1+K))) Σ_j CE_i(t y_j·x_i) ]

  The image->text term is the cross-entropy minus the target entropy ``log(1+K)`` (same
  gradient), so with K = 0, or with all sub-captions equal to the caption, ``L_mp`` is
  exactly the CLIP loss.
* Circle loss (the released code's multi-positive loss; γ = 32, m = 0.25), optional.
* Sub-caption-specific grouping loss: each (sub)caption pools the patch tokens it matches
  (min-max normalised similarities, threshold δ, renormalised) into a grouped image
  embedding, contrasted with the text over all ``B(1+K)`` pairs with its own temperature.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses.contrastive import as_f32_scalar
from alignjax.losses.targets import symmetric_contrastive
from alignjax.models.two_tower import l2_normalize

__all__ = ["circle_loss", "grouping_loss", "grouping_weights", "multi_positive_loss"]

GROUP_NORMS = ("minmax", "softmax")


def multi_positive_loss(zimg: jax.Array, ztxt_all: jax.Array, logit_scale: Any) -> jax.Array:
    """Multi-positive InfoNCE: zimg [B, D], ztxt_all [B, 1+K, D] -> float32 scalar."""
    t = as_f32_scalar(logit_scale, "logit_scale")
    b, p, d = ztxt_all.shape
    y = ztxt_all.reshape(b * p, d).astype(jnp.float32)
    logits = t * (zimg.astype(jnp.float32) @ y.T)  # [B, B(1+K)]
    owner = jnp.repeat(jnp.arange(b), p)  # [B(1+K)]: the image of each text
    logp_i2t = jax.nn.log_softmax(logits, axis=1)
    pos = owner[None, :] == jnp.arange(b)[:, None]
    # KL(uniform over positives || p) = −mean_pos log p − log(1+K).
    i2t = -jnp.mean(jnp.sum(jnp.where(pos, logp_i2t, 0.0), axis=1) / p) - jnp.log(p)
    logp_t2i = jax.nn.log_softmax(logits, axis=0)  # over images, for each text
    t2i = -jnp.mean(logp_t2i[owner, jnp.arange(b * p)])
    return 0.5 * (i2t + t2i)


def circle_loss(
    zimg: jax.Array, ztxt_all: jax.Array, gamma: float = 32.0, margin: float = 0.25
) -> jax.Array:
    """Circle loss (Sun et al. 2020) on cosines, averaged over images (DreamLIP code).

    ``α_p = relu(1 + m − s_p)``, ``α_n = relu(s_n + m)``;
    ``L_i = softplus(lse(−γ α_p (s_p − (1 − m))) + lse(γ α_n (s_n − m)))``; the weights α
    are constants (detached), as in the reference.
    """
    b, p, d = ztxt_all.shape
    s = zimg.astype(jnp.float32) @ ztxt_all.reshape(b * p, d).astype(jnp.float32).T
    pos = jnp.repeat(jnp.arange(b), p)[None, :] == jnp.arange(b)[:, None]
    a_p = jax.lax.stop_gradient(jax.nn.relu(1.0 + margin - s))
    a_n = jax.lax.stop_gradient(jax.nn.relu(s + margin))
    lp = jnp.where(pos, -gamma * a_p * (s - (1.0 - margin)), -jnp.inf)
    ln = jnp.where(pos, -jnp.inf, gamma * a_n * (s - margin))
    lse_n = jax.nn.logsumexp(ln, axis=1) if b > 1 else jnp.full((b,), -jnp.inf)
    return jnp.mean(jax.nn.softplus(jax.nn.logsumexp(lp, axis=1) + lse_n))


def grouping_weights(
    ztxt_all: jax.Array, patches: jax.Array, delta: float = 0.0, norm: str = "minmax"
) -> jax.Array:
    """Per-text weights over its own image's patches: [B, P, D], [B, M, D] -> [B, P, M].

    ``S = <text, patch>``; ``minmax``: ``(S − min) / (max − min + 1e-10)`` over patches (or
    ``softmax``); entries below δ are zeroed (δ < 0 means δ = 1/M) and rows renormalised
    to sum to 1 (a row with nothing left falls back to uniform, avoiding 0/0).
    """
    s = jnp.einsum("bpd,bmd->bpm", ztxt_all.astype(jnp.float32), patches.astype(jnp.float32))
    m = patches.shape[1]
    if norm == "minmax":
        lo, hi = jnp.min(s, -1, keepdims=True), jnp.max(s, -1, keepdims=True)
        sn = (s - lo) / (hi - lo + 1e-10)
    elif norm == "softmax":
        sn = jax.nn.softmax(s, axis=-1)
    else:
        raise ValueError(f"Unknown DreamLIP group norm {norm!r}; valid: {list(GROUP_NORMS)}.")
    thr = 1.0 / m if delta < 0 else delta
    w = jnp.where(sn < thr, 0.0, sn)
    total = jnp.sum(w, -1, keepdims=True)
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 1.0 / m)


def grouping_loss(
    ztxt_all: jax.Array,
    patches: jax.Array,
    logit_scale: Any,
    delta: float = 0.0,
    norm: str = "minmax",
) -> jax.Array:
    """Sub-caption-specific grouping loss: InfoNCE over all B(1+K) (text, grouped patches).

    ``G = l2n(W P)`` with ``W = grouping_weights(...)`` (not detached, as in the code).
    """
    b, p, d = ztxt_all.shape
    w = grouping_weights(ztxt_all, patches, delta, norm)
    g = l2_normalize(jnp.einsum("bpm,bmd->bpd", w, patches.astype(jnp.float32)))
    return symmetric_contrastive(g.reshape(b * p, d), ztxt_all.reshape(b * p, d), logit_scale)
