"""CLIP (Radford et al. 2021): symmetric InfoNCE over the global embeddings.

``l_ij = t <x_i, y_j>``; ``L = ½ (CE_rows(l, I) + CE_cols(l, I))``
(:func:`alignjax.losses.clip_loss`). No fields.
"""

from __future__ import annotations

from alignjax.losses.contrastive import clip_loss
from alignjax.objectives import base


@base.register
class Clip(base.Objective):
    """CLIP: symmetric InfoNCE on the pooled image and text embeddings."""

    name = "clip"

    def loss(self, out, batch, ctx):
        loss = clip_loss(out.zimg, out.ztxt, out.logit_scale)
        return loss, self.metrics(loss, out)
