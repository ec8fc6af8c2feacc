"""Grain map transforms for image-text examples.

All transforms are module-level dataclasses holding only picklable state, so grain can ship
them to spawned worker processes (``mp_prefetch`` uses the ``spawn`` start method). They
operate on one example (a dict) and return a new dict; batching happens afterwards.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

__all__ = [
    "CROPS",
    "NORMALIZATIONS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "FlattenLabels",
    "KeepArrays",
    "NormalizeImage",
    "Preprocess",
    "TokenizeText",
    "center_crop_box",
    "crop_resize",
    "normalize_image",
    "random_resized_crop_box",
]

#: OpenAI CLIP image statistics (RGB, on the [0, 1] scale).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Valid ``normalize`` values: 'minus_one_one' maps uint8 to [-1, 1] (big_vision
#: ``value_range(-1, 1)``, SigLIP); 'clip' applies OpenAI's mean/std; 'zero_one' to [0, 1].
NORMALIZATIONS = ("minus_one_one", "clip", "zero_one")


def normalize_image(image: np.ndarray, normalize: str = "minus_one_one") -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 normalised as named by ``normalize``.

    One fused multiply-add per pixel: ``x * scale + offset`` with ``scale = 1 / (255 std)``
    and ``offset = -mean / std`` (std 1/2 and mean 1/2 for [-1, 1]).
    """
    if normalize == "minus_one_one":
        scale, offset = np.float32(2.0 / 255.0), np.float32(-1.0)
    elif normalize == "clip":
        std = np.asarray(OPENAI_CLIP_STD, np.float64)
        scale = (1.0 / (255.0 * std)).astype(np.float32)
        offset = (-np.asarray(OPENAI_CLIP_MEAN, np.float64) / std).astype(np.float32)
    elif normalize == "zero_one":
        scale, offset = np.float32(1.0 / 255.0), np.float32(0.0)
    else:
        raise ValueError(f"Unknown normalize={normalize!r}; valid: {list(NORMALIZATIONS)}.")
    x = np.multiply(np.asarray(image), scale, dtype=np.float32)  # a new array, never the input
    x += offset
    return x


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


# --- geometry and per-source options -------------------------------------------------------
#: Valid crop modes: 'random_resized' (Inception crop: area fraction in ``scale``, aspect
#: ratio log-uniform in ``ratio``, then resize; open_clip's train transform), 'center'
#: (resize the shortest side to ``image_size``, then center-crop; the eval transform of
#: CLIP and open_clip), 'resize' (squash to ``image_size`` x ``image_size``), 'none'.
CROPS = ("random_resized", "center", "resize", "none")
_INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Per-source decode/crop/caption options (file sources build one from spec parameters).

    ``image_size`` None keeps the source's images as they are (they must then share one
    size, as the synthetic ones do). Train examples use ``train_crop``, eval examples
    ``eval_crop``. Captions: with several (``'captions'``), training picks one uniformly at
    random, evaluation the first; ``clean_captions`` applies ``decode.clean_caption``;
    captions longer than ``max_caption_chars`` characters (0: no limit) are skipped.
    """

    image_size: int | None = None
    train_crop: str = "random_resized"
    eval_crop: str = "center"
    scale: tuple[float, float] = (0.9, 1.0)  # open_clip's default RandomResizedCrop scale
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    caption_choice: str = "random"  # or 'first'
    clean_captions: bool = True
    max_caption_chars: int = 2000
    min_image_size: int = 1
    draft: bool = True  # JPEG DCT-scaled decoding when the target is >= 2x smaller

    def __post_init__(self):
        for name in ("train_crop", "eval_crop"):
            if getattr(self, name) not in CROPS:
                raise ValueError(f"Unknown {name}={getattr(self, name)!r}; valid: {list(CROPS)}.")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Unknown interpolation={self.interpolation!r}; valid: {list(_INTERPOLATIONS)}."
            )
        if self.caption_choice not in ("random", "first"):
            raise ValueError(
                f"caption_choice must be 'random' or 'first', got {self.caption_choice!r}."
            )
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}.")
        if self.image_size is None and (self.train_crop, self.eval_crop) != ("none", "none"):
            object.__setattr__(self, "train_crop", "none")
            object.__setattr__(self, "eval_crop", "none")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Preprocess:
        """Pops this class's fields (and ``crop``, ``min_scale``, ``max_scale``) from kwargs."""
        fields = {f.name for f in dataclasses.fields(cls)}
        args = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        if "crop" in kwargs:
            args["train_crop"] = kwargs.pop("crop")
        if "min_scale" in kwargs or "max_scale" in kwargs:
            lo, hi = args.get("scale", cls.scale)
            args["scale"] = (float(kwargs.pop("min_scale", lo)), float(kwargs.pop("max_scale", hi)))
        for k in ("scale", "ratio"):
            if k in args and isinstance(args[k], str):
                args[k] = tuple(float(v) for v in args[k].split(","))
        return cls(**args)

    def draft_side(self, train: bool) -> int | None:
        """Smallest shorter side a decoded image needs for this crop (for JPEG draft)."""
        if not self.draft or self.image_size is None:
            return None
        crop = self.train_crop if train else self.eval_crop
        if crop == "random_resized":  # a crop of area fraction s has side ~ sqrt(s)
            return math.ceil(self.image_size / math.sqrt(self.scale[0]))
        if crop in ("center", "resize"):
            return self.image_size
        return None


def random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of an Inception-style crop (torchvision's algorithm).

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); 10 tries, then the largest
    center crop whose aspect ratio is clamped into ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return (x0, y0, x0 + w, y0 + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    x0, y0 = (width - w) // 2, (height - h) // 2
    return (x0, y0, x0 + w, y0 + h)


def center_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The central square: resize-shortest-side-then-center-crop expressed as one box."""
    side = min(width, height)
    x0, y0 = (width - side) / 2.0, (height - side) / 2.0
    return (x0, y0, x0 + side, y0 + side)


def crop_resize(
    image,
    crop: str,
    size: int | None,
    rng: np.random.Generator | None = None,
    scale=(0.9, 1.0),
    ratio=(3 / 4, 4 / 3),
    interpolation: str = "bicubic",
) -> np.ndarray:
    """uint8 [H, W, 3] (or PIL image) -> uint8 [size, size, 3] with the named crop.

    The crop box and the resize are one PIL ``resize(box=...)`` call (no intermediate copy).
    """
    if crop == "none" or size is None:
        return np.asarray(image, np.uint8)
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    w, h = img.size
    if crop == "random_resized":
        if rng is None:
            raise ValueError("crop='random_resized' needs an rng.")
        box = random_resized_crop_box(w, h, rng, scale, ratio)
    elif crop == "center":
        box = center_crop_box(w, h)
    elif crop == "resize":
        box = (0, 0, w, h)
    else:
        raise ValueError(f"Unknown crop={crop!r}; valid: {list(CROPS)}.")
    resample = _INTERPOLATIONS[interpolation]
    if (w, h) == (size, size) and box == (0, 0, w, h):
        return np.asarray(img, np.uint8)
    # reducing_gap: PIL first shrinks by an integer factor (box filter) when downscaling a
    # lot, then resamples; visually identical and several times faster for big images.
    out = img.resize((size, size), resample, box=box, reducing_gap=3.0)
    return np.asarray(out, np.uint8)
