"""Caption and image rules: small pure functions, and `Rules`, which names the first failure.

Captions are split into words language-free: whitespace-separated tokens, lowercased, with
leading and trailing punctuation stripped; a token of punctuation only is no word. (Scripts
written without spaces, e.g. Chinese or Japanese, give one word per run of text: use the word
rules only on sources whose captions separate words.) For words w_1 ... w_n:

  word count        n
  top fraction      max_t #{i : w_i = t} / n            (0 for n = 0)
  longest run       max length of a run w_i = w_{i+1} = ... = w_{i+r-1}

so 'a dog a dog a dog a dog' has top fraction 0.5 and longest run 1, and 'sale sale sale
sale' has 1.0 and 4. The top fraction is only judged on captions of at least
`repeat_min_words` words, because every short caption repeats something ('a dog and a cat':
0.4).

Images are judged on their size (width, height) in pixels:

  min side          min(w, h)
  aspect            max(w, h) / min(w, h)               (>= 1)

`Rules` holds the thresholds; a field left at its default (None, or False) keeps everything.
`Rules.reason(caption, size)` returns the name of the FIRST rule that fails, in the order of
`REASONS`, or None if the sample passes; `count_reasons` tallies a stream of samples for the
statistics table.
"""

from __future__ import annotations

import collections
import dataclasses
import unicodedata
from collections.abc import Iterable

__all__ = [
    'KEPT',
    'REASONS',
    'Rules',
    'aspect_ratio',
    'caption_words',
    'count_reasons',
    'is_empty',
    'longest_run',
    'min_side',
    'top_token_fraction',
]

#: Every reason `Rules.reason` can return, in the order the rules are checked: caption rules
#: before image rules, cheap before expensive.
REASONS = (
    'caption_empty',
    'caption_too_short',
    'caption_too_long',
    'caption_repetitive',
    'image_too_small',
    'image_aspect',
)
#: The key `count_reasons` uses for samples that pass every rule.
KEPT = 'kept'


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith(('P', 'S'))


def _strip_punctuation(token: str) -> str:
    start, end = 0, len(token)
    while start < end and _is_punctuation(token[start]):
        start += 1
    while end > start and _is_punctuation(token[end - 1]):
        end -= 1
    return token[start:end]


def caption_words(caption: str | None) -> list[str]:
    """The caption's words: whitespace tokens, lowercased, outer punctuation stripped."""
    if not caption:
        return []
    words = (_strip_punctuation(t) for t in caption.lower().split())
    return [w for w in words if w]


def is_empty(caption: str | None) -> bool:
    """True for None, '' and captions of whitespace (or punctuation) only."""
    return not caption_words(caption)


def top_token_fraction(words: list[str]) -> float:
    """The share of the most frequent word, in [0, 1]; 0.0 for no words."""
    if not words:
        return 0.0
    return max(collections.Counter(words).values()) / len(words)


def longest_run(words: list[str]) -> int:
    """The length of the longest run of one word repeated in a row; 0 for no words."""
    best, run = 0, 0
    for i, w in enumerate(words):
        run = run + 1 if i and w == words[i - 1] else 1
        best = max(best, run)
    return best


def _check_size(size) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(
            f'Image size {size!r} is not a (width, height) pair: pass the decoded size in pixels.'
        ) from None
    if w <= 0 or h <= 0:
        raise ValueError(f'Image size {size!r} has a side <= 0: pass the decoded size in pixels.')
    return w, h


def min_side(size) -> int:
    """min(width, height) of a (width, height) size in pixels."""
    return min(_check_size(size))


def aspect_ratio(size) -> float:
    """max(w, h) / min(w, h) of a (width, height) size, >= 1."""
    w, h = _check_size(size)
    return max(w, h) / min(w, h)


def _positive(value, field: str, minimum: float, integer: bool) -> None:
    if value is None:
        return
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f'Rules.{field}={value!r} must be an int (or None to disable the rule).')
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f'Rules.{field}={value!r} must be >= {minimum} (or None to disable the rule).'
        )


@dataclasses.dataclass(frozen=True)
class Rules:
    """Thresholds of the caption and image rules; the defaults keep every sample.

    Attributes:
      drop_empty: drop captions without a word ('caption_empty').
      min_words: drop captions of fewer words ('caption_too_short').
      max_words: drop captions of more words ('caption_too_long').
      max_top_fraction: drop captions whose most frequent word makes up more than this share
        of the words, judged on captions of >= `repeat_min_words` words ('caption_repetitive').
      repeat_min_words: the shortest caption `max_top_fraction` judges.
      max_run: drop captions with one word repeated this many times in a row, or more
        ('caption_repetitive'); >= 2.
      min_side: drop images whose shorter side is below this, in pixels ('image_too_small').
      max_aspect: drop images with max(w, h) / min(w, h) above this ('image_aspect'); >= 1.
    """

    drop_empty: bool = False
    min_words: int | None = None
    max_words: int | None = None
    max_top_fraction: float | None = None
    repeat_min_words: int = 4
    max_run: int | None = None
    min_side: int | None = None
    max_aspect: float | None = None

    def __post_init__(self):
        _positive(self.min_words, 'min_words', 1, integer=True)
        _positive(self.max_words, 'max_words', 1, integer=True)
        _positive(self.repeat_min_words, 'repeat_min_words', 1, integer=True)
        _positive(self.max_run, 'max_run', 2, integer=True)
        _positive(self.min_side, 'min_side', 1, integer=True)
        _positive(self.max_aspect, 'max_aspect', 1, integer=False)
        _positive(self.max_top_fraction, 'max_top_fraction', 0, integer=False)
        if self.max_top_fraction is not None and self.max_top_fraction >= 1:
            raise ValueError(
                f'Rules.max_top_fraction={self.max_top_fraction!r} must be below 1 (1.0 would '
                'keep every caption): use None to disable the rule.'
            )
        if (
            self.min_words is not None
            and self.max_words is not None
            and self.min_words > self.max_words
        ):
            raise ValueError(
                f'Rules.min_words={self.min_words} > max_words={self.max_words}: no caption '
                'could pass; swap or widen them.'
            )

    @property
    def uses_caption(self) -> bool:
        """True if any caption rule is enabled."""
        return bool(
            self.drop_empty
            or self.min_words is not None
            or self.max_words is not None
            or self.max_top_fraction is not None
            or self.max_run is not None
        )

    @property
    def uses_image(self) -> bool:
        """True if any image rule is enabled (then `reason` needs the image size)."""
        return self.min_side is not None or self.max_aspect is not None

    def caption_reason(self, caption: str | None) -> str | None:
        """The first caption rule `caption` fails, or None."""
        if not self.uses_caption:
            return None
        words = caption_words(caption)
        n = len(words)
        if self.drop_empty and n == 0:
            return 'caption_empty'
        if self.min_words is not None and n < self.min_words:
            return 'caption_too_short'
        if self.max_words is not None and n > self.max_words:
            return 'caption_too_long'
        if (
            self.max_top_fraction is not None
            and n >= self.repeat_min_words
            and top_token_fraction(words) > self.max_top_fraction
        ):
            return 'caption_repetitive'
        if self.max_run is not None and longest_run(words) >= self.max_run:
            return 'caption_repetitive'
        return None

    def image_reason(self, size) -> str | None:
        """The first image rule an image of `size` (width, height) fails, or None."""
        if not self.uses_image:
            return None
        if size is None:
            raise ValueError(
                'Image rules (min_side / max_aspect) need the image size: pass size=(width, '
                'height), or disable the image rules.'
            )
        if self.min_side is not None and min_side(size) < self.min_side:
            return 'image_too_small'
        if self.max_aspect is not None and aspect_ratio(size) > self.max_aspect:
            return 'image_aspect'
        return None

    def reason(self, caption: str | None, size=None) -> str | None:
        """The name of the first rule (order of `REASONS`) the sample fails, or None."""
        return self.caption_reason(caption) or self.image_reason(size)


def count_reasons(rules: Rules, samples: Iterable[tuple[str | None, object]]) -> dict[str, int]:
    """{reason: count} over a stream of (caption, size) pairs, for the statistics table.

    Every name of `REASONS` is present (0 if no sample failed it), then `KEPT`; each sample is
    counted once, under its first failing rule. The stream is read once (constant memory).
    """
    counts = dict.fromkeys((*REASONS, KEPT), 0)
    for caption, size in samples:
        counts[rules.reason(caption, size) or KEPT] += 1
    return counts
