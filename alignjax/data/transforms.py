"""Grain map transforms for image-text examples.

All transforms are module-level dataclasses holding only picklable state, so grain can ship
them to spawned worker processes (``mp_prefetch`` uses the ``spawn`` start method). They
operate on one example (a dict) and return a new dict; batching happens afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

__all__ = [
    "NORMALIZATIONS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "normalize_image",
    "NormalizeImage",
    "TokenizeText",
    "FlattenLabels",
    "KeepArrays",
]

#: OpenAI CLIP image statistics (RGB, on the [0, 1] scale).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Valid ``normalize`` values: 'minus_one_one' maps uint8 to [-1, 1] (big_vision
#: ``value_range(-1, 1)``, SigLIP); 'clip' applies OpenAI's mean/std; 'zero_one' to [0, 1].
NORMALIZATIONS = ("minus_one_one", "clip", "zero_one")


def normalize_image(image: np.ndarray, normalize: str = "minus_one_one") -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 normalised as named by ``normalize``."""
    x = np.asarray(image, np.float32) * np.float32(1.0 / 255.0)
    if normalize == "minus_one_one":
        return x * np.float32(2.0) - np.float32(1.0)
    if normalize == "clip":
        mean = np.asarray(OPENAI_CLIP_MEAN, np.float32)
        std = np.asarray(OPENAI_CLIP_STD, np.float32)
        return (x - mean) / std
    if normalize == "zero_one":
        return x
    raise ValueError(f"Unknown normalize={normalize!r}; valid: {list(NORMALIZATIONS)}.")


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"Unknown normalize={normalize!r}; valid: {list(NORMALIZATIONS)}.")


@dataclasses.dataclass(frozen=True)
class NormalizeImage(grain.transforms.Map):
    """``element[key]``: uint8 [H, W, 3] -> float32 [H, W, 3] (see ``normalize_image``)."""

    normalize: str = "minus_one_one"
    key: str = "image"

    def __post_init__(self):
        _check_normalize(self.normalize)

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        out = dict(element)
        out[self.key] = normalize_image(element[self.key], self.normalize)
        return out


@dataclasses.dataclass(frozen=True)
class TokenizeText(grain.transforms.Map):
    """``element[out_key] = tokenizer([element[key]])[0]``: int32 [context_length].

    Runs inside the grain workers; the tokenizer must pickle (all alignjax tokenizers do).
    """

    tokenizer: Any
    key: str = "caption"
    out_key: str = "tokens"

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        out = dict(element)
        text = element[self.key]
        if isinstance(text, np.ndarray):
            text = text.item()
        out[self.out_key] = self.tokenizer([text])[0]
        return out


@dataclasses.dataclass(frozen=True)
class FlattenLabels(grain.transforms.Map):
    """``{'labels': {attr: int}}`` -> ``{'label_<attr>': np.int32 scalar}`` (drops 'labels')."""

    key: str = "labels"
    prefix: str = "label_"

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        out = dict(element)
        labels = out.pop(self.key, None) or {}
        for name, value in labels.items():
            out[f"{self.prefix}{name}"] = np.asarray(value, np.int32)
        return out


@dataclasses.dataclass(frozen=True)
class KeepArrays(grain.transforms.Map):
    """Keeps numeric array / scalar values (drops strings, dicts, ...).

    With ``keys`` set, keeps only those keys (a missing one is a KeyError naming the
    available keys); non-numeric values are dropped either way.
    """

    keys: Sequence[str] | None = None

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        if self.keys is not None:
            missing = [k for k in self.keys if k not in element]
            if missing:
                raise KeyError(f"Keys {missing} missing from example with keys {sorted(element)}.")
            items = [(k, element[k]) for k in self.keys]
        else:
            items = element.items()
        out = {}
        for k, v in items:
            if isinstance(v, (str, bytes, dict, list, tuple)) or v is None:
                continue
            arr = np.asarray(v)
            if arr.dtype.kind in "biuf":
                out[k] = arr
        return out
