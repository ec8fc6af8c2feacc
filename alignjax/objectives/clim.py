"""CLIM (Wu et al., AAAI 2024): mosaics of batch images as pseudo region-text pairs.

``s x s`` images of the batch are tiled into one mosaic; each tile is a pseudo-region whose
caption is its image's caption. Region features are pooled from the mosaic's patch-token
grid over the tile's box (:mod:`alignjax.losses.clim`) and contrasted with the captions
together with the remaining single images::

    L = CLIP([region features ; single-image embeddings], captions) (+ w_global L_clip)

The forward pass mixes examples (a mosaic holds several), so GradCache accumulation would
not reproduce the full-batch gradient: ``supports_accumulation = False``. Fields: ``grid``
s, ``num_mosaics`` (0: as many as use half the batch), ``freeze_text`` (CLIM fine-tunes a
pre-trained CLIP with the text tower frozen: a stop-gradient here), ``global_weight``.
"""

from __future__ import annotations

import jax

from alignjax.losses import clim as clim_lib
from alignjax.losses.contrastive import clip_loss
from alignjax.objectives import base


@base.register
class Clim(base.Objective):
    """CLIM: mosaics of batch images; tile features from the mosaic's token grid."""

    name = "clim"
    defaults = {"grid": 2, "num_mosaics": 0, "freeze_text": False, "global_weight": 0.0}
    supports_accumulation = False

    def _split(self, batch_size):
        c = self.cfg
        s2 = int(c["grid"]) ** 2
        g = int(c["num_mosaics"]) or (batch_size // 2) // s2
        if g * s2 > batch_size:
            raise ValueError(
                f"loss.num_mosaics={g} with grid={c['grid']} needs {g * s2} images, more than "
                f"the batch of {batch_size}."
            )
        return g * s2

    def forward(self, apply, batch, ctx):
        main = super().forward(apply, batch, ctx)
        n = self._split(batch["image"].shape[0])
        out = {"main": main}
        if n:
            mosaics = clim_lib.make_mosaics(batch["image"][:n], int(self.cfg["grid"]))
            out["mosaic_tokens"] = apply(mosaics, None, return_tokens=True, train=True).img_tokens
        return out

    def loss(self, out, batch, ctx):
        c = self.cfg
        main = out["main"]
        ztxt = jax.lax.stop_gradient(main.ztxt) if c["freeze_text"] else main.ztxt
        zimg = main.zimg
        if "mosaic_tokens" in out:
            regions = clim_lib.region_features(out["mosaic_tokens"], int(c["grid"]))
            zimg = jax.numpy.concatenate([regions, main.zimg[regions.shape[0] :]], axis=0)
        region = clip_loss(zimg, ztxt, main.logit_scale)
        loss = region
        parts = {"region": region}
        if c["global_weight"]:
            parts["global"] = clip_loss(main.zimg, ztxt, main.logit_scale)
            loss = loss + c["global_weight"] * parts["global"]
        return loss, self.metrics(loss, main, **parts)
