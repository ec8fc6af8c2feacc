"""Per-example transforms that alignment objectives add to the train pipeline.

Passed as ``make_train_iterator(..., extra_transforms=...)`` (``alignjax.train`` asks the
objective for them: ``losses.build(config.loss).objective.data_transforms``). They run in the
grain workers after decoding and before the crop, tokenisation and normalisation; each is a
module-level dataclass (picklable) with ``random_map(example, rng)``, the rng seeded by
``(seed, global example position)`` so that a resumed run draws the same views/sentences.

* :class:`TwoViews` (PyramidCLIP): ``'image'`` <- a global random crop (large area),
  ``'image_local'`` <- a local random crop (smaller area), both at the decoded size.
* :class:`TokenizeSummary` (PyramidCLIP): ``'summary_tokens'`` [L] from ``'summary'``
  (the caption when the source gives no summary).
* :class:`TokenizeNegative` (NegCLIP): ``'neg_tokens'`` [L] from a hard negative caption
  (``'neg_caption'``; required: a negative must never silently be the caption itself).
* :class:`SampleSubCaptions` (DreamLIP): ``'sub_tokens'`` [K, L] from K sentences sampled
  from ``'long_caption'`` (else the caption), split on newlines, ``</s>`` and ``.``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from alignjax.data import transforms as T

__all__ = [
    "SampleSubCaptions",
    "TokenizeNegative",
    "TokenizeSummary",
    "TwoViews",
    "split_sentences",
]

_SENTENCE_RE = re.compile(r"\n|</s>|\.")


def split_sentences(text: str) -> list[str]:
    """DreamLIP's splitting: newline, ``</s>`` and ``.``; empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_RE.split(str(text)) if s.strip()]


@dataclasses.dataclass(frozen=True)
class TwoViews:
    """Global and local random-resized crops of ``'image'`` (area fractions in ``*_crop``)."""

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
    """``'summary_tokens'`` = tokenizer(summary or caption) (int32 [L])."""

    tokenizer: Any
    key: str = "summary"

    def map(self, example: dict[str, Any]) -> dict[str, Any]:
        out = dict(example)
        text = example.get(self.key) or example["caption"]
        out["summary_tokens"] = np.asarray(self.tokenizer([str(text)])[0], np.int32)
        return out


@dataclasses.dataclass(frozen=True)
class TokenizeNegative:
    """``'neg_tokens'`` = tokenizer(example[key]) (int32 [L]); a missing or empty negative is
    an error (the source must provide one, e.g. ``synthetic:shapes?hard_negatives=true``)."""

    tokenizer: Any
    key: str = "neg_caption"

    def map(self, example: dict[str, Any]) -> dict[str, Any]:
        text = example.get(self.key)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"NegCLIP needs a hard negative caption in field {self.key!r} of every example, "
                f"got {text!r}. Use a source that writes one (synthetic:shapes?"
                f"hard_negatives=true, or a CSV/JSONL column named by loss.negclip.neg_key)."
            )
        out = dict(example)
        out["neg_tokens"] = np.asarray(self.tokenizer([text])[0], np.int32)
        return out


@dataclasses.dataclass(frozen=True)
class SampleSubCaptions:
    """``'sub_tokens'`` int32 [num, L]: ``num`` sub-captions sampled from a long caption.

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
