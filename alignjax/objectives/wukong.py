"""Wukong (Gu et al., NeurIPS 2022 D&B): FILIP's token-wise loss on K learned image tokens.

A TokenLearner-like reduction turns the N patch tokens into K tokens before the token-wise
similarity, so each pair costs ``K n2`` instead of ``N n2``::

    a = LN(X); a = Conv1x1_grouped(a); a = Conv1x1(a) -> K maps   (no bias)
    A = softmax over the N positions   [B, K, N]
    Z = l2n(A Conv1x1_grouped(X))      [B, K, D]

The 1x1 convolutions are position-wise linear maps, applied to the flattened [B, N, D]
tokens. The reduction is a head of the model (``wukong_reduce``); evaluation scores with
the token-wise similarity on the reduced tokens (``...@tokenwise``) and the global cosine.
Wukong locks a pre-trained image tower (LiT): set ``optim.freeze`` to do the same.

Fields: ``num_tokens`` K (12 for ViT-B/32), ``groups`` of the grouped convolutions,
``chunk_size`` and ``label_smoothing`` as FILIP's.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignjax import scoring
from alignjax.losses import tokenwise
from alignjax.models.two_tower import l2_normalize
from alignjax.objectives import base


class TokenReduction(nn.Module):
    """[B, N, D] tokens -> [B, K, D] unit-norm reduced tokens (and the [B, K, N] attention)."""

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


def reduce_tokens(apply, img_tokens: jax.Array) -> jax.Array:
    """The model's Wukong head on [B, N, D] patch tokens -> [B, K, D]."""
    return apply(img_tokens, method=lambda m, t: m.wukong_reduce(t))


def _reduced_image_features(apply, images):
    return {"tokens": reduce_tokens(apply, apply(images, None, return_tokens=True).img_tokens)}


@base.register
class Wukong(base.Objective):
    """Wukong: learned token reduction, then FILIP's token-wise loss."""

    name = "wukong"
    defaults = {"num_tokens": 12, "groups": 8, "chunk_size": 0, "label_smoothing": 0.0}
    needs_tokens = True

    def heads(self, model):
        k, g = int(self.cfg["num_tokens"]), int(self.cfg["groups"])
        return {
            "wukong_reduce": base.Head(
                make=lambda: TokenReduction(num_tokens=k, groups=g),
                init_args=lambda out: (out.img_tokens,),
            )
        }

    def forward(self, apply, batch, ctx):
        main = super().forward(apply, batch, ctx)
        return {"main": main, "img_reduced": reduce_tokens(apply, main.img_tokens)}

    def loss(self, out, batch, ctx):
        main = out["main"]
        loss, _ = tokenwise.filip_loss(
            out["img_reduced"],
            main.txt_tokens,
            main.txt_mask,
            main.logit_scale,
            chunk_size=self.cfg["chunk_size"] or None,
            label_smoothing=self.cfg["label_smoothing"],
        )
        return loss, self.metrics(loss, main)

    @property
    def scorers(self):
        return (scoring.GLOBAL, scoring.tokenwise_scorer(image_features=_reduced_image_features))
