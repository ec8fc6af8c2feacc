"""NegCLIP (Yuksekgonul et al., ICLR 2023): hard negative captions in the image->text softmax.

Each image's hard negative caption joins the texts of the image->text direction
(:func:`alignjax.losses.negclip.negclip_loss`)::

    L = ½ [ (1/B) Σ_i CE_{j in [Y; N]}(t x_i·z_j, target i) + (1/B) Σ_j CE_i(t y_j·x_i, j) ]

The negative is the example's ``neg_key`` field (``synthetic:shapes?hard_negatives=true``
writes one; a CSV / JSONL source names a column); a missing or empty negative is an error,
never silently the caption itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from alignjax.losses import negclip as negclip_lib
from alignjax.losses.contrastive import clip_loss
from alignjax.objectives import base


@dataclasses.dataclass(frozen=True)
class TokenizeNegative:
    """Grain transform: ``'neg_tokens'`` int32 [L] = tokenizer(example[key])."""

    tokenizer: Any
    key: str = "neg_caption"

    def map(self, example: dict[str, Any]) -> dict[str, Any]:
        text = example.get(self.key)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"NegCLIP needs a hard negative caption in field {self.key!r} of every example, "
                f"got {text!r}. Use a source that writes one (synthetic:shapes?"
                f"hard_negatives=true, or a CSV/JSONL column named by config.loss.neg_key)."
            )
        out = dict(example)
        out["neg_tokens"] = np.asarray(self.tokenizer([text])[0], np.int32)
        return out


@base.register
class NegClip(base.Objective):
    """NegCLIP: hard negative captions in the image->text softmax."""

    name = "negclip"
    defaults = {"neg_key": "neg_caption"}  # Example field holding the hard negative caption.

    def data_transforms(self, tokenizer, seed=0):
        return (TokenizeNegative(tokenizer, key=self.cfg["neg_key"]),)

    def forward(self, apply, batch, ctx):
        main = super().forward(apply, batch, ctx)
        return {"main": main, "zneg": apply(None, batch["neg_tokens"], train=True).ztxt}

    def loss(self, out, batch, ctx):
        main = out["main"]
        loss = negclip_lib.negclip_loss(main.zimg, main.ztxt, out["zneg"], main.logit_scale)
        clip = clip_loss(main.zimg, main.ztxt, main.logit_scale)
        return loss, self.metrics(loss, main, clip=clip)
