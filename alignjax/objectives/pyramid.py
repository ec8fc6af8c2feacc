"""PyramidCLIP (Gao et al., NeurIPS 2022): global/local views x original/summary captions.

Each image gives a global view (a large random crop) and a local view (a smaller one); each
caption an original and a summary text. Pairs of (view, text) are aligned with the symmetric
contrastive loss and softened targets (:func:`alignjax.losses.pyramid.pyramid_loss`)::

    y_ij = 1 - α if i == j else α / (N - 1)
    L = Σ_peer L_pair + λ Σ_cross L_pair

Fields: ``alpha`` (softening), ``peer_pairs`` / ``cross_pairs`` ('view:text' pairs; the
paper's exact pairing is not certain, so it is configurable), ``cross_weight`` λ, and the
area fractions ``global_crop`` / ``local_crop`` of the two random-resized crops. The summary
is the example's ``summary`` field (the caption when the source has none).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from alignjax.data import transforms as T
from alignjax.losses import pyramid as pyramid_lib
from alignjax.objectives import base


@dataclasses.dataclass(frozen=True)
class TwoViews:
    """Grain transform: ``'image'`` <- a global random crop, ``'image_local'`` <- a local one
    (area fractions ``*_crop``), both at the decoded size."""

    global_crop: tuple[float, float] = (0.9, 1.0)
    local_crop: tuple[float, float] = (0.5, 1.0)

    def random_map(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = dict(example)
        image = np.asarray(example["image"], np.uint8)
        size = image.shape[0]
        out["image"] = T.crop_resize(image, "random_resized", size, rng, self.global_crop)
        out["image_local"] = T.crop_resize(image, "random_resized", size, rng, self.local_crop)
        return out


@dataclasses.dataclass(frozen=True)
class TokenizeSummary:
    """Grain transform: ``'summary_tokens'`` int32 [L] = tokenizer(summary or caption)."""

    tokenizer: Any
    key: str = "summary"

    def map(self, example: dict[str, Any]) -> dict[str, Any]:
        out = dict(example)
        text = example.get(self.key) or example["caption"]
        out["summary_tokens"] = np.asarray(self.tokenizer([str(text)])[0], np.int32)
        return out


@base.register
class Pyramid(base.Objective):
    """PyramidCLIP: multi-level views and texts with softened targets."""

    name = "pyramid"
    defaults = {
        "alpha": 0.2,
        "peer_pairs": ("global:summary", "local:original"),
        "cross_pairs": ("global:original", "local:summary"),
        "cross_weight": 1.0,
        "global_crop": (0.9, 1.0),
        "local_crop": (0.5, 1.0),
    }

    def data_transforms(self, tokenizer, seed=0):
        c = self.cfg
        return (
            TwoViews(global_crop=tuple(c["global_crop"]), local_crop=tuple(c["local_crop"])),
            TokenizeSummary(tokenizer),
        )

    def forward(self, apply, batch, ctx):
        main = super().forward(apply, batch, ctx)
        local = apply(batch["image_local"], batch["summary_tokens"], train=True)
        return {"main": main, "local": local}

    def loss(self, out, batch, ctx):
        c = self.cfg
        main, local = out["main"], out["local"]
        loss, parts = pyramid_lib.pyramid_loss(
            {"global": main.zimg, "local": local.zimg},
            {"original": main.ztxt, "summary": local.ztxt},
            main.logit_scale,
            peer_pairs=pyramid_lib.parse_pairs(c["peer_pairs"]),
            cross_pairs=pyramid_lib.parse_pairs(c["cross_pairs"]),
            cross_weight=c["cross_weight"],
            alpha=c["alpha"],
        )
        parts = {k.replace(":", "_"): v for k, v in parts.items()}
        return loss, self.metrics(loss, main, **parts)
