"""Robust decoding of images and captions from real data, with named reasons for skipping.

Real image-text data is dirty: truncated JPEGs, HTML in captions, grayscale, palette, RGBA,
CMYK and 16-bit images, missing files. Everything here either *converts* (image modes to
8-bit RGB, caption whitespace and HTML entities) or raises ``SkipExample(reason)``; the
pipeline catches it, substitutes another example (so batches stay full) and counts the
reason (``TrainIterator.skipped_counts()``, logged as ``data/skipped``).

Image conversions (``decode_image``):

==================  ===================================================================
mode                conversion to uint8 RGB
==================  ===================================================================
RGB                 as is (EXIF orientation applied for JPEGs)
L, 1, P, YCbCr      ``convert('RGB')``
LA, PA, RGBA, P+t   alpha-composited onto white (open_clip's plain ``convert('RGB')``
                    turns transparent pixels into whatever colour they hide, often black)
CMYK                ``convert('RGB')`` (PIL handles Adobe's inverted CMYK JPEGs)
I;16*, I, F         16/32-bit grey: scaled by 255/65535 (by the max for float) to 8 bit
==================  ===================================================================
"""

from __future__ import annotations

import html
import io
import logging
import math
import re
import unicodedata
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "SKIP_REASONS",
    "SkipExample",
    "check_caption",
    "clean_caption",
    "decode_image",
    "log_skip",
    "read_bytes",
    "skip_error",
]

log = logging.getLogger("alignjax.data")

#: Reasons an example is skipped, in the order of the per-example skip-count vector.
SKIP_REASONS = (
    "undecodable_image",  # PIL cannot decode the bytes (truncated, not an image, bomb)
    "missing_file",  # the image file does not exist / cannot be opened
    "missing_image",  # the record has no image (e.g. a tar sample with only .txt)
    "missing_caption",  # the record has no caption field / .txt / .json caption
    "empty_caption",  # the caption is empty after cleanup
    "long_caption",  # the caption is longer than ``max_caption_chars`` (likely garbage)
    "small_image",  # an image side is below ``min_image_size``
    "error",  # any other exception raised while reading the example
)
_REASON_INDEX = {r: i for i, r in enumerate(SKIP_REASONS)}


class SkipExample(Exception):
    """Raised by sources/decoders for an unusable example; ``reason`` is in SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in _REASON_INDEX:
            raise ValueError(f"Unknown skip reason {reason!r}; valid: {SKIP_REASONS}.")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def reason_index(reason: str) -> int:
    return _REASON_INDEX[reason]


#: Unusable examples logged per process (each once); the rest are only counted.
MAX_LOGGED_SKIPS = 20
_logged: set[str] = set()


def log_skip(where: str, error: BaseException) -> None:
    """Logs an unusable example once, naming it and the reason (``logging.warning``).

    ``where``: the file, URL or shard key of the example (what a user would open to look).
    At most ``MAX_LOGGED_SKIPS`` distinct examples are logged per process, then one line
    says the rest are only counted, so a broken shard or a table of missing files does not
    flood the log; ``TrainIterator.skipped_counts()`` (``data/skipped``) counts every one.
    """
    if where in _logged or len(_logged) > MAX_LOGGED_SKIPS:
        return
    _logged.add(where)
    if len(_logged) > MAX_LOGGED_SKIPS:
        log.warning(
            "data: more than %d unusable examples; further ones are only counted "
            "(data/skipped/<reason> in metrics.jsonl).",
            MAX_LOGGED_SKIPS,
        )
        return
    reason = error if isinstance(error, SkipExample) else f"error: {type(error).__name__}: {error}"
    log.warning("data: skipped %s (%s)", where, reason)


class NoUsableDataError(ValueError):
    """A source whose examples are all unusable: a data problem the user fixes (paths,
    columns, permissions), reported as one line by the command lines."""


def skip_error(
    source, attempts: int, counts: np.ndarray, last: Exception | None
) -> NoUsableDataError:
    """The error for a source that yields nothing usable: ``attempts`` examples in a row
    were skipped.

    Args:
      source: the source (its repr names it in the message).
      attempts: how many examples in a row were tried.
      counts: int [len(SKIP_REASONS)] skips by reason over those attempts.
      last: the last exception caught (``SkipExample`` or another), or None.
    """
    reasons = {r: int(c) for r, c in zip(SKIP_REASONS, counts) if c}
    return NoUsableDataError(
        f"Data source {source!r} yields nothing usable: {attempts} examples in a row were "
        f"skipped (reasons: {reasons}; last: {last}). Check the spec's paths, image and "
        f"caption columns/fields, and that the files are readable."
    )


def read_bytes(path: str) -> bytes:
    """Bytes of a local path or an fsspec URL (``gs://``, ``s3://``, ``https://``...).

    Raises SkipExample('missing_file') if it cannot be opened.
    """
    try:
        if "://" in path and not path.startswith("file://"):
            import fsspec  # pylint: disable=g-import-not-at-top

            with fsspec.open(path, "rb") as f:
                return f.read()
        path = path.removeprefix("file://")
        with open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError) as e:
        raise SkipExample("missing_file", f"{path}: {e}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            top = float(arr.max()) if arr.size and arr.max() > 0 else 1.0
            arr = arr / top * 255.0
        else:
            # 16-bit data (PNG 'I;16' or 'I'): full range is 0..65535.
            arr = arr.astype(np.float64) * (255.0 / 65535.0)
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes, *, min_side: int | None = None, min_image_size: int = 1
) -> Image.Image:
    """Encoded bytes (JPEG, PNG, WebP, GIF, ...) -> PIL RGB image (8 bit).

    Args:
      data: the encoded file.
      min_side: if set, JPEGs are decoded with DCT scaling (``Image.draft``) to the smallest
        size whose shorter side is still >= ``min_side`` -- 2-4x faster for 256-512 px
        sources resized to 224 px, and no visible loss since the result is downscaled anyway.
      min_image_size: images with a side below this are skipped ('small_image').

    Raises:
      SkipExample: 'undecodable_image' or 'small_image'.
    """
    if not data:
        raise SkipExample("undecodable_image", "empty file")
    try:
        img = Image.open(io.BytesIO(data))
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = min(w, h) / float(min_side)
            if scale >= 2:
                img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
        img.load()
        if img.format == "JPEG" and img.getexif():
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except SkipExample:
        raise
    except Exception as e:  # noqa: BLE001  (PIL raises many kinds)
        raise SkipExample("undecodable_image", f"{type(e).__name__}: {e}") from None
    if min(img.size) < max(1, int(min_image_size)):
        raise SkipExample("small_image", f"size {img.size} < {min_image_size}")
    return img


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")


def clean_caption(text: Any) -> str:
    """Caption cleanup: bytes -> str, HTML entities unescaped, NFC, no control characters,
    whitespace collapsed and stripped. ``'  A&amp;B\\n\\tcat '`` -> ``'A&B cat'``."""
    if isinstance(text, np.ndarray):
        text = text.item()
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = html.unescape(str(text))
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def check_caption(text: str, max_caption_chars: int) -> str:
    """Raises SkipExample for an empty caption or one longer than ``max_caption_chars``."""
    if not text:
        raise SkipExample("empty_caption")
    if max_caption_chars and len(text) > max_caption_chars:
        raise SkipExample("long_caption", f"{len(text)} > {max_caption_chars} characters")
    return text
