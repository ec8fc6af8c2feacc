"""CLIP loss + UNITER's word-region alignment (Chen et al., ECCV 2020) via IPOT.

``L = L_clip + w L_WRA`` with ``L_WRA`` the optimal-transport distance between a caption's
token features and its image's patch features for positive pairs (image i, caption i) minus
that of negatives (image i, caption i+1), the plan from IPOT on the detached cost
(:func:`alignjax.losses.uniter.wra_loss`). Fields: ``weight`` w, IPOT's ``beta``,
``iterations`` and ``inner`` steps.
"""

from __future__ import annotations

import jax.numpy as jnp

from alignjax.losses import uniter as uniter_lib
from alignjax.losses.contrastive import clip_loss
from alignjax.objectives import base


@base.register
class UniterWra(base.Objective):
    """CLIP loss + UNITER word-region alignment (IPOT) between tokens and patches."""

    name = "uniter"
    defaults = {"weight": 0.1, "beta": 0.5, "iterations": 50, "inner": 1}
    needs_tokens = True

    def loss(self, out, batch, ctx):
        c = self.cfg
        clip = clip_loss(out.zimg, out.ztxt, out.logit_scale)
        wra, (d_pos, d_neg) = uniter_lib.wra_loss(
            out.txt_tokens,
            out.txt_mask,
            out.img_tokens,
            beta=c["beta"],
            iterations=int(c["iterations"]),
            inner=int(c["inner"]),
        )
        loss = clip + c["weight"] * wra
        m = self.metrics(loss, out, clip=clip, wra=wra)
        m["ot_pos"], m["ot_neg"] = base.stop(jnp.mean(d_pos)), base.stop(jnp.mean(d_neg))
        return loss, m
