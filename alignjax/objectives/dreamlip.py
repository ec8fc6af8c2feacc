"""DreamLIP (Zheng et al., ECCV 2024): K sub-captions per image as extra positives.

Each image comes with its caption and K sentences sampled from its long caption
(:class:`SampleSubCaptions`). With texts ``Y [B, 1+K, D]``
(:mod:`alignjax.losses.dreamlip`)::

    L_mp = ½ [ (1/B) Σ_i KL(T_i ‖ softmax_j(t x_i·y_j)) + (1/(B(1+K))) Σ_j CE_i(t y_j·x_i) ]
    L = w_mp L_mp + w_circle L_circle + w_group L_group

``L_mp`` is exactly CLIP's loss with K = 0. The grouping loss pools, for each (sub)caption,
the patch tokens it matches into a grouped image embedding contrasted with the text over
all ``B(1+K)`` pairs, with its own temperature (a head, ``group_log_scale``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from alignjax.losses import dreamlip as dreamlip_lib
from alignjax.objectives import base

_SENTENCE_RE = re.compile(r"\n|</s>|\.")


def split_sentences(text: str) -> list[str]:
    """DreamLIP's splitting: newline, ``</s>`` and ``.``; empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_RE.split(str(text)) if s.strip()]


@dataclasses.dataclass(frozen=True)
class SampleSubCaptions:
    """Grain transform: ``'sub_tokens'`` int32 [num, L], ``num`` sub-captions sampled from
    ``'long_caption'`` (else the caption).

    Sub-captions are ``merge`` consecutive sentences; sampled without replacement while
    there are enough, with replacement otherwise (so K is fixed and batches stack).
    """

    tokenizer: Any
    num: int = 3
    merge: int = 1
    key: str = "long_caption"

    def random_map(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = dict(example)
        sentences = split_sentences(example.get(self.key) or example["caption"])
        if not sentences:
            sentences = [str(example["caption"])]
        m = max(1, int(self.merge))
        pieces = [". ".join(sentences[i : i + m]) for i in range(max(1, len(sentences) - m + 1))]
        if self.num <= 0:
            tokens = np.zeros((0, self.tokenizer.context_length), np.int32)
        else:
            idx = rng.choice(len(pieces), self.num, replace=len(pieces) < self.num)
            tokens = np.asarray(self.tokenizer([pieces[i] for i in idx]), np.int32)
        out["sub_tokens"] = tokens
        return out


def _group_scale(m):
    """DreamLIP grouping temperature ``t``, clamped to <= 100 like CLIP's."""
    return jnp.exp(jnp.minimum(m.group_log_scale, math.log(100.0)))


@base.register
class DreamLip(base.Objective):
    """DreamLIP: multi-positive InfoNCE over caption + sub-captions (+ grouping, Circle)."""

    name = "dreamlip"
    defaults = {
        "num_sub_captions": 3,  # K sampled sentences per image (DreamLIP: 6).
        "merge_sentences": 1,  # Consecutive sentences joined into one sub-caption.
        "multipos_weight": 1.0,
        "circle_weight": 0.0,  # The released code's Circle loss (scaled 1/10 there).
        "circle_gamma": 32.0,
        "circle_margin": 0.25,
        "group_weight": 1.0,
        "group_delta": 0.0,  # < 0: 1/M.
        "group_norm": "minmax",
        "group_scale_init": 1.0 / 0.07,
    }
    choices = {"group_norm": dreamlip_lib.GROUP_NORMS}

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        self.group = self.cfg["group_weight"] > 0
        self.needs_tokens = self.group  # Patch tokens feed the grouping loss only.

    def heads(self, model):
        if not self.group:
            return {}
        init = nn.initializers.constant(math.log(float(self.cfg["group_scale_init"])))
        return {"group_log_scale": base.Head(param=(init, (), jnp.float32))}

    def data_transforms(self, tokenizer, seed=0):
        c = self.cfg
        return (
            SampleSubCaptions(
                tokenizer, num=int(c["num_sub_captions"]), merge=int(c["merge_sentences"])
            ),
        )

    def forward(self, apply, batch, ctx):
        main = super().forward(apply, batch, ctx)
        out = {"main": main}
        sub = batch.get("sub_tokens")
        if sub is not None and sub.shape[1] > 0:
            b, k, length = sub.shape
            z = apply(None, sub.reshape(b * k, length), train=True).ztxt
            out["ztxt_sub"] = z.reshape(b, k, -1)
        if self.group:
            out["group_scale"] = apply(method=_group_scale)
        return out

    def loss(self, out, batch, ctx):
        c = self.cfg
        main = out["main"]
        texts = main.ztxt[:, None, :]
        if "ztxt_sub" in out:
            texts = jnp.concatenate([texts, out["ztxt_sub"]], axis=1)  # [B, 1+K, D]
        parts = {"multipos": dreamlip_lib.multi_positive_loss(main.zimg, texts, main.logit_scale)}
        loss = c["multipos_weight"] * parts["multipos"]
        if c["circle_weight"]:
            parts["circle"] = dreamlip_lib.circle_loss(
                main.zimg, texts, c["circle_gamma"], c["circle_margin"]
            )
            loss = loss + c["circle_weight"] * parts["circle"]
        if self.group:
            parts["group"] = dreamlip_lib.grouping_loss(
                texts, main.img_tokens, out["group_scale"], c["group_delta"], c["group_norm"]
            )
            loss = loss + c["group_weight"] * parts["group"]
        return loss, self.metrics(loss, main, **parts)
