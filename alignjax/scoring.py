"""How an image and a text are scored at evaluation: global cosine or token-wise late interaction.

An objective names the similarity it trains (``Objective.scorers``); the zero-shot and
retrieval evaluators rank with each of them. A :class:`Scorer` is three pure functions:

* ``image_features(apply, images [B, H, W, 3]) -> pytree of [B, ...] arrays``
* ``text_features(apply, tokens [B, L]) -> pytree of [B, ...] arrays``
* ``score(image_feats of n, text_feats of m) -> (s_i2t [n, m], s_t2i [n, m])`` float32,
  both indexed ``[image, text]``: ``s_i2t`` ranks texts for an image (zero-shot
  classification, text retrieval), ``s_t2i`` ranks images for a text (image retrieval).

``apply(*args, **kwargs)`` is ``model.apply({'params': params}, *args, **kwargs)`` of the
run's model (heads included), so a scorer may call a head, e.g. Wukong's token reduction.

Global cosine: ``s_ij = <x_i, y_j>`` of the unit-norm pooled embeddings, the same matrix in
both directions. Token-wise (FILIP, Wukong; :func:`alignjax.losses.tokenwise.token_similarity`):
``s_i2t = (1/|x_i|) Σ_k max_r <x_ik, y_jr>`` and ``s_t2i = (1/|y_j|) Σ_r max_k <x_ik, y_jr>``
over valid tokens only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from alignjax.losses import tokenwise

__all__ = ["GLOBAL", "Scorer", "tokenwise_scorer"]


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A similarity between images and texts, computed from per-sample features.

    ``name`` suffixes the metrics of every scorer but the global one (``GLOBAL.name``),
    whose metric names are the evaluators' plain ones.
    """

    name: str
    image_features: Callable[[Callable, jax.Array], Any]
    text_features: Callable[[Callable, jax.Array], Any]
    score: Callable[[Any, Any], tuple[jax.Array, jax.Array]]


def _global_score(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    s = x.astype("float32") @ y.astype("float32").T
    return s, s


GLOBAL = Scorer(
    name="global",
    image_features=lambda apply, images: apply(images, method="encode_image"),
    text_features=lambda apply, tokens: apply(tokens, method="encode_text"),
    score=_global_score,
)


def _image_tokens(apply: Callable, images: jax.Array) -> dict[str, Any]:
    return {"tokens": apply(images, None, return_tokens=True).img_tokens}


def _text_tokens(apply: Callable, tokens: jax.Array) -> dict[str, Any]:
    out = apply(None, tokens, return_tokens=True)
    return {"tokens": out.txt_tokens, "mask": out.txt_mask}


def tokenwise_scorer(
    name: str = "tokenwise",
    image_features: Callable[[Callable, jax.Array], Any] | None = None,
    *,
    zero_pad_floor: bool = False,
) -> Scorer:
    """FILIP's token-wise late interaction as a :class:`Scorer`.

    Args:
      name: metric suffix.
      image_features: ``(apply, images) -> {'tokens': [B, n1, D], 'mask': [B, n1] or
        absent}``; default: the image tower's unit-norm patch tokens. Wukong passes its
        learned token reduction here.
      zero_pad_floor: as in :func:`alignjax.losses.tokenwise.token_similarity`.
    """

    def score(img: dict[str, Any], txt: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
        return tokenwise.token_similarity(
            img["tokens"],
            img.get("mask"),
            txt["tokens"],
            txt.get("mask"),
            zero_pad_floor=zero_pad_floor,
        )

    return Scorer(name, image_features or _image_tokens, _text_tokens, score)
