"""Wukong (Gu et al., NeurIPS 2022 D&B, arXiv:2202.06767): reduced-token interaction.

The image's patch tokens are reduced to K learned tokens by
:class:`alignjax.objectives.wukong.TokenReduction` (a TokenLearner-like attention over the patch
grid) before the FILIP token-wise similarity, which is the same function as FILIP's
(:func:`alignjax.losses.tokenwise.filip_loss`): the interaction costs ``K·n2`` instead of
``N·n2`` per pair. Wukong locks a pre-trained image tower (LiT); set ``optim.freeze``.
"""

from __future__ import annotations

from typing import Any

import jax

from alignjax.losses.tokenwise import filip_loss

__all__ = ["wukong_loss"]


def wukong_loss(
    reduced_img_tokens: jax.Array,
    txt_tokens: jax.Array,
    txt_mask: jax.Array,
    logit_scale: Any,
    **filip_kwargs,
):
    """FILIP loss on the reduced image tokens [B, K, D]; returns ``(loss, (s_I, s_T))``."""
    return filip_loss(reduced_img_tokens, txt_tokens, txt_mask, logit_scale, **filip_kwargs)
