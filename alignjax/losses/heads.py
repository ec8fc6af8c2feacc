"""Trainable heads some objectives add to the two-tower model (Wukong, LightCLIP, DreamLIP).

The heads are Flax modules whose parameters live in the train state next to the towers':
:func:`with_heads` returns a subclass of the model (:class:`TwoTowerWithHeads`) that creates
them at ``init`` and exposes them as methods for ``model.apply(..., method=...)``. The towers,
``encode_image``/``encode_text`` and the parameter paths of the towers are unchanged, so
evaluators, converters and freezing regexes see the same model; the heads add top-level
parameters (``wukong_reduce``, ``mlm_head``, ``group_log_scale``) and are never used at
inference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from alignjax.models.two_tower import TwoTower, l2_normalize

__all__ = ["MLMFusionHead", "TokenReduction", "TwoTowerWithHeads", "with_heads"]

HEAD_NAMES = ("wukong", "mlm", "group_scale")


class TokenReduction(nn.Module):
    """Wukong's reduced-token interaction (TokenLearner-like), arXiv:2202.06767.

    ``a = LN(X); a = Conv1x1_grouped(a); a = Conv1x1(a) -> K maps; A = softmax over the
    positions; F = Conv1x1_grouped(X); Z = A F``: [B, N, D] -> [B, K, D] (unit-norm rows).
    The 1×1 convolutions over the patch grid are position-wise linear maps, so they are
    applied to the flattened [B, N, D] tokens (same parameters, no bias, as in Wukong).
    """

    num_tokens: int
    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, return_attention: bool = False):
        x = x.astype(jnp.float32)
        d = x.shape[-1]
        groups = math.gcd(self.groups, d)  # A group count that divides D.
        a = nn.LayerNorm(name="norm")(x)
        a = nn.Conv(d, (1,), feature_group_count=groups, use_bias=False, name="attn_in")(a)
        a = nn.Conv(self.num_tokens, (1,), use_bias=False, name="attn_out")(a)  # [B, N, K]
        attn = jax.nn.softmax(jnp.swapaxes(a, 1, 2), axis=-1)  # [B, K, N], rows sum to 1
        f = nn.Conv(d, (1,), feature_group_count=groups, use_bias=False, name="value")(x)
        z = l2_normalize(jnp.einsum("bkn,bnd->bkd", attn, f))
        return (z, attn) if return_attention else z


class MLMFusionHead(nn.Module):
    """LightCLIP's auxiliary MLM head with image fusion (arXiv:2312.00674).

    Masked-text token features attend to the (unmasked) image tokens in one cross-attention
    block, then a linear layer predicts the vocabulary. The paper fuses at several text
    encoder stages; this head fuses once, after the encoder (the text tower stays a plain
    CLIP text tower; see docs/OBJECTIVES.md). [B, L, D], [B, N, D] -> [B, L, V] logits.
    """

    vocab_size: int
    num_heads: int = 2

    @nn.compact
    def __call__(self, txt: jax.Array, img: jax.Array) -> jax.Array:
        txt, img = txt.astype(jnp.float32), img.astype(jnp.float32)
        d = txt.shape[-1]
        heads = math.gcd(self.num_heads, d)
        y = nn.MultiHeadDotProductAttention(num_heads=heads, name="cross_attn")(
            nn.LayerNorm(name="ln_q")(txt), nn.LayerNorm(name="ln_kv")(img)
        )
        x = txt + y
        h = nn.Dense(2 * d, name="mlp_in")(nn.LayerNorm(name="ln_mlp")(x))
        x = x + nn.Dense(d, name="mlp_out")(nn.gelu(h))
        return nn.Dense(self.vocab_size, name="vocab")(nn.LayerNorm(name="ln_out")(x))


class TwoTowerWithHeads(TwoTower):
    """:class:`TwoTower` plus objective heads (``heads``: name -> settings)."""

    heads: flax.core.FrozenDict | None = None

    def setup(self):
        super().setup()
        spec = dict(self.heads or {})
        if "wukong" in spec:
            self.wukong_reduce = TokenReduction(**dict(spec["wukong"]))
        if "mlm" in spec:
            mlm = dict(spec["mlm"])
            mlm.setdefault("vocab_size", int(self.text["vocab_size"]))
            self.mlm_head = MLMFusionHead(**mlm)
        if "group_scale" in spec:
            init = float(dict(spec["group_scale"]).get("init", 1.0 / 0.07))
            self.group_log_scale = self.param(
                "group_log_scale", nn.initializers.constant(math.log(init)), (), jnp.float32
            )

    def __call__(self, images, tokens, *, return_tokens: bool = False, train: bool = False):
        init = self.is_initializing() and images is not None and tokens is not None
        out = super().__call__(images, tokens, return_tokens=return_tokens or init, train=train)
        if init:  # Create the heads' parameters from example inputs of the right shapes.
            self.reduce_tokens(out.img_tokens)
            self.mlm_logits(out.txt_tokens, out.img_tokens)
            self.group_logit_scale()
        return out

    def reduce_tokens(self, img_tokens: jax.Array) -> jax.Array | None:
        """Wukong: [B, N, D] unit-norm patch tokens -> [B, K, D] reduced unit-norm tokens."""
        return self.wukong_reduce(img_tokens) if self.heads and "wukong" in self.heads else None

    def mlm_logits(self, txt_tokens: jax.Array, img_tokens: jax.Array) -> jax.Array | None:
        """LightCLIP MLM: masked text tokens [B, L, D] + image tokens -> [B, L, V] logits."""
        if not (self.heads and "mlm" in self.heads):
            return None
        return self.mlm_head(txt_tokens, img_tokens)

    def group_logit_scale(self) -> jax.Array | None:
        """DreamLIP grouping loss temperature ``t`` (clamped to <= 100 like CLIP's)."""
        if not (self.heads and "group_scale" in self.heads):
            return None
        return jnp.exp(jnp.minimum(self.group_log_scale, math.log(100.0)))


def with_heads(model: TwoTower, heads: dict[str, Any]) -> TwoTower:
    """``model`` unchanged when ``heads`` is empty, else the same model plus the heads."""
    if not heads:
        return model
    unknown = sorted(set(heads) - set(HEAD_NAMES))
    if unknown:
        raise ValueError(f"Unknown head(s) {unknown}; valid heads: {list(HEAD_NAMES)}.")
    if not isinstance(model, TwoTower):
        raise TypeError(f"Objective heads need a TwoTower model, got {type(model).__name__}.")
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.init and f.name not in ("parent", "name")
    }
    frozen = flax.core.FrozenDict({k: flax.core.FrozenDict(v) for k, v in heads.items()})
    return TwoTowerWithHeads(**{**fields, "heads": frozen})
