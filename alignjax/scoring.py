"""How an image and a text are scored at evaluation: global cosine or token-wise late interaction.

An objective names the similarity it trains (``Objective.scorers``); the zero-shot and
retrieval evaluators rank with each of them. A :class:`Scorer` is three pure functions:

* ``image_features(apply, images [B, H, W, 3]) -> pytree of [B, ...] arrays``
* ``text_features(apply, tokens [B, L]) -> pytree of [B, ...] arrays``
* ``score(image_feats of n, text_feats of m) -> (s_i2t [n, m], s_t2i [n, m])`` float32,
  both indexed ``[image, text]``: ``s_i2t`` ranks texts for an image (zero-shot
  classification, text retrieval), ``s_t2i`` ranks images for a text (image retrieval).

``apply(*args, **kwargs)`` is ``model.apply({'params': params}, *args, **kwargs)`` of the
run's model (heads included), so a scorer may call a head, e.g. Wukong's token reduction:
``apply(images, method=lambda m, x: m.reduce(m.img(x)[1]))``.

Global cosine: ``s_ij = <x_i, y_j>`` of the unit-norm pooled embeddings, the same matrix in
both directions. Token-wise (FILIP, Wukong; :func:`alignjax.losses.tokenwise.token_similarity`):
``s_i2t = (1/|x_i|) Σ_k max_r <x_ik, y_jr>`` and ``s_t2i = (1/|y_j|) Σ_r max_k <x_ik, y_jr>``
over valid tokens only.

How the evaluators use a scorer (docs/EVALUATION.md, "Scorers"):

* ``score`` runs on device inside ``shard_map``: the queries of one chunk (at most
  ``query_chunk``) are replicated, the gallery is sharded over the mesh's batch axes, and
  each device scores its gallery shard ``gallery_chunk`` items at a time, so the live token
  interaction per device is ``[query_chunk, gallery_chunk, n1, n2]``.
* Zero-shot with T templates per class combines them by ``combine_templates``:
  ``'embeddings'`` (the features are one [B, D] array: ``w_c = normalize(mean_t
  normalize(z_ct))``, CLIP's prompt ensembling) or ``'scores'`` (``s_ic = mean_t s_i,ct``).
* Metrics of the scorer named ``GLOBAL.name`` keep the evaluators' plain names; every other
  scorer's are ``<kind>/<eval>@<scorer name>/<metric>`` (:meth:`Scorer.qualify`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax

from alignjax.losses import tokenwise

__all__ = ["GLOBAL", "Scorer", "check_scorers", "tokenwise_scorer"]

COMBINE_TEMPLATES = ("embeddings", "scores")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A similarity between images and texts, computed from per-sample features.

    Attributes:
      name: suffixes the metrics of every scorer but the global one (``GLOBAL.name``),
        whose metric names are the evaluators' plain ones. Letters, digits, ``_.-``.
      image_features, text_features, score: see the module docstring.
      combine_templates: ``'embeddings'`` or ``'scores'``: how zero-shot combines the
        templates of a class (module docstring).
      query_chunk: at most this many queries per device call (caps the evaluator's
        ``chunk_size``); None: the evaluator's.
      gallery_chunk: gallery items scored at a time on each device; None: the whole shard.
    """

    name: str
    image_features: Callable[[Callable, jax.Array], Any]
    text_features: Callable[[Callable, jax.Array], Any]
    score: Callable[[Any, Any], tuple[jax.Array, jax.Array]]
    combine_templates: str = "scores"
    query_chunk: int | None = None
    gallery_chunk: int | None = None

    def __post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"Scorer name {self.name!r}: use letters, digits and '_.-' only.")
        if self.combine_templates not in COMBINE_TEMPLATES:
            raise ValueError(
                f"Scorer {self.name!r}: combine_templates={self.combine_templates!r}, expected "
                f"one of {COMBINE_TEMPLATES}."
            )
        for field in ("query_chunk", "gallery_chunk"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ValueError(f"Scorer {self.name!r}: {field}={value} must be positive.")

    def qualify(self, group: str) -> str:
        """The metric prefix of this scorer: ``group`` for the global one, else
        ``group@name`` (``'zeroshot/inet'`` -> ``'zeroshot/inet@tokenwise'``)."""
        return group if self.name == GLOBAL.name else f"{group}@{self.name}"

    def i2t(self, images: Any, texts: Any) -> jax.Array:
        """[n, m]: image queries [n] against texts [m] (``s_i2t``)."""
        return self.score(images, texts)[0]

    def t2i(self, texts: Any, images: Any) -> jax.Array:
        """[m, n]: text queries [m] against images [n] (``s_t2i`` transposed)."""
        return self.score(images, texts)[1].T


def _global_score(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    s = x.astype("float32") @ y.astype("float32").T
    return s, s


GLOBAL = Scorer(
    name="global",
    image_features=lambda apply, images: apply(images, method="encode_image"),
    text_features=lambda apply, tokens: apply(tokens, method="encode_text"),
    score=_global_score,
    combine_templates="embeddings",
)


def check_scorers(scorers: Sequence[Scorer]) -> tuple[Scorer, ...]:
    """``scorers`` as a tuple, checked: at least one, all :class:`Scorer`, distinct names."""
    scorers = tuple(scorers)
    if not scorers:
        raise ValueError("At least one scorer is needed (e.g. alignjax.scoring.GLOBAL).")
    names = [s.name if isinstance(s, Scorer) else None for s in scorers]
    if None in names:
        raise TypeError(f"Scorers must be alignjax.scoring.Scorer instances, got {scorers}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Scorer names must be distinct (they name the metrics): {names}.")
    return scorers


def _image_tokens(apply: Callable, images: jax.Array) -> dict[str, Any]:
    return {"tokens": apply(images, None, return_tokens=True).img_tokens}


def _text_tokens(apply: Callable, tokens: jax.Array) -> dict[str, Any]:
    out = apply(None, tokens, return_tokens=True)
    return {"tokens": out.txt_tokens, "mask": out.txt_mask}


def tokenwise_scorer(
    name: str = "tokenwise",
    image_features: Callable[[Callable, jax.Array], Any] | None = None,
    *,
    text_features: Callable[[Callable, jax.Array], Any] | None = None,
    zero_pad_floor: bool = False,
    query_chunk: int | None = 128,
    gallery_chunk: int | None = 16,
) -> Scorer:
    """FILIP's token-wise late interaction as a :class:`Scorer`.

    Zero-shot averages the per-template scores (``combine_templates='scores'``): token sets
    have no mean embedding.

    Args:
      name: metric suffix.
      image_features: ``(apply, images) -> {'tokens': [B, n1, D], 'mask': [B, n1] or
        absent}``; default: the image tower's unit-norm patch tokens. Wukong passes its
        learned token reduction here.
      text_features: the same for texts; default: the text tower's unit-norm tokens and
        their validity mask.
      zero_pad_floor: as in :func:`alignjax.losses.tokenwise.token_similarity`.
      query_chunk, gallery_chunk: bound the live token interaction per device to
        ``[query_chunk, gallery_chunk, n1, n2]`` float32 (128 x 16 x 197 x 77: 124 MiB).
    """

    def score(img: dict[str, Any], txt: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
        return tokenwise.token_similarity(
            img["tokens"],
            img.get("mask"),
            txt["tokens"],
            txt.get("mask"),
            zero_pad_floor=zero_pad_floor,
        )

    return Scorer(
        name,
        image_features or _image_tokens,
        text_features or _text_tokens,
        score,
        combine_templates="scores",
        query_chunk=query_chunk,
        gallery_chunk=gallery_chunk,
    )
