"""PyramidCLIP (Gao et al., NeurIPS 2022, arXiv:2204.14095): softened multi-level alignment.

Views of an image (``global`` = a large crop, ``local`` = a smaller crop, optionally ``roi``)
and texts (``original`` caption, ``summary`` caption, optionally ``tags``) are aligned pair by
pair with the symmetric contrastive loss and *softened* targets::

    y_ij = 1 - α if i == j else α / (N - 1)
    L_pair(v, u) = ½ (CE_rows(t·V Uᵀ, Y) + CE_rows(t·U Vᵀ, Y))
    L = Σ_peer L_pair + λ Σ_cross L_pair

Which pairs are peer-level and which cross-level is configurable (the paper's exact pairing
is not certain); the ROI branch needs detector features and is optional.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax

from alignjax.losses.targets import softened_targets, symmetric_contrastive

__all__ = ["pair_loss", "parse_pairs", "pyramid_loss"]


def pair_loss(v: jax.Array, u: jax.Array, logit_scale: Any, alpha: Any = 0.0) -> jax.Array:
    """Symmetric contrastive loss between [N, D] ``v`` and [N, D] ``u``, softened targets α.

    ``α = 0`` is exactly :func:`alignjax.losses.clip_loss`; uniform logits give ``log N``
    for any α; the i2t term equals ``(1-α)·CE_pos + α·mean_{j≠i}(−log p_ij)``.
    """
    return symmetric_contrastive(v, u, logit_scale, softened_targets(v.shape[0], alpha))


def parse_pairs(pairs: Sequence[str]) -> list[tuple[str, str]]:
    """``['global:summary', ...]`` -> ``[('global', 'summary'), ...]`` (view:text)."""
    out = []
    for p in pairs:
        view, sep, text = str(p).partition(":")
        if not sep or not view or not text:
            raise ValueError(
                f"PyramidCLIP pair {p!r} must read 'view:text', e.g. 'global:summary'."
            )
        out.append((view, text))
    return out


def pyramid_loss(
    views: Mapping[str, jax.Array],
    texts: Mapping[str, jax.Array],
    logit_scale: Any,
    *,
    peer_pairs: Sequence[tuple[str, str]],
    cross_pairs: Sequence[tuple[str, str]] = (),
    cross_weight: float = 1.0,
    alpha: Any = 0.2,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``Σ_peer L_pair + λ Σ_cross L_pair`` over named [N, D] views and texts.

    Returns the total and each pair's loss keyed ``'view:text'``.
    """
    parts = {}
    total = 0.0
    for pairs, w in ((peer_pairs, 1.0), (cross_pairs, cross_weight)):
        for view, text in pairs:
            if view not in views or text not in texts:
                raise ValueError(
                    f"PyramidCLIP pair {view}:{text} is not available: views "
                    f"{sorted(views)}, texts {sorted(texts)}."
                )
            parts[f"{view}:{text}"] = pair_loss(views[view], texts[text], logit_scale, alpha)
            total = total + w * parts[f"{view}:{text}"]
    return total, parts
