"""NegCLIP (Yuksekgonul et al., ICLR 2023, arXiv:2210.01936): hard negative captions.

Each image ``i`` comes with its caption ``y_i`` and a hard negative ``n_i``: the caption
with one attribute swapped ("a red circle" -> "a red square"), which a bag-of-words text
match cannot tell apart. The negatives join the texts of the image->text softmax; the
text->image direction is CLIP's::

    L = ½ [ (1/B) Σ_i CE_j∈[Y; N](t x_i·z_j, target i) + (1/B) Σ_j CE_i(t y_j·x_i, target j) ]

so ``L - L_clip = ½ (1/B) Σ_i log(1 + Σ_j exp(t x_i·n_j) / Σ_j exp(t x_i·y_j)) >= 0``,
and ``L -> L_clip`` when every negative is far from every image (``t x·n -> -inf``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses.contrastive import as_f32_scalar

__all__ = ["negclip_loss"]


def negclip_loss(zimg: jax.Array, ztxt: jax.Array, zneg: jax.Array, logit_scale: Any) -> jax.Array:
    """zimg, ztxt, zneg: [B, D] (L2-normalised; row i of zneg is image i's hard negative)
    -> float32 scalar. ``logit_scale`` is the multiplier t."""
    t = as_f32_scalar(logit_scale, "logit_scale")
    x = zimg.astype(jnp.float32)
    pos = t * (x @ ztxt.astype(jnp.float32).T)  # [B, B]
    neg = t * (x @ zneg.astype(jnp.float32).T)  # [B, B]: every image against every negative
    labels = jnp.arange(x.shape[0])
    i2t = jax.nn.log_softmax(jnp.concatenate([pos, neg], axis=1), axis=1)[labels, labels]
    t2i = jax.nn.log_softmax(pos, axis=0)[labels, labels]
    return -0.5 * (jnp.mean(i2t) + jnp.mean(t2i))
