"""``mix:W1*SPEC1;W2*SPEC2;...``: weighted mixtures of sources.

``mix:0.7*csv:/data/cc12m.tsv?caption_key=caption;0.3*tfds:coco_captions`` draws 70% of the
examples from the first source and 30% from the second, *exactly* per block of
``block`` (default 1000) consecutive positions, not just in expectation. Components keep
their own parameters (crop, caption keys, ...); ``image_size``/``seed`` given to
``get_source`` reach every component. Mixtures are all random access (csv, jsonl, tfds,
synthetic) or all streams (wds).

Slot pattern: each block of ``block`` positions gives component ``c`` ``m_c`` slots
(largest-remainder rounding of ``w_c * block``, each >= 1), shuffled once by a fixed rng.
Position ``n`` -> component ``c = pattern[n % block]`` and its ``r``-th own position
``(n // block) * m_c + rank(n % block)`` -- O(1), so a random-access mixture is itself
random access (component index modulo its length: small components repeat, i.e. are
upsampled), and a stream mixture knows where every component stream stands after ``n``
samples, which keeps resumption exact.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from alignjax.data import transforms as T

__all__ = ["MixtureSource", "MixtureStream", "parse_mixture", "slot_pattern"]


def parse_mixture(body: str) -> list[tuple[float, str]]:
    """``'0.7*csv:a.csv;0.3*wds:b.tar'`` -> ``[(0.7, 'csv:a.csv'), (0.3, 'wds:b.tar')]``."""
    parts = [p.strip() for p in body.split(";") if p.strip()]
    if not parts:
        raise ValueError("mix: needs at least one 'WEIGHT*SPEC' component.")
    out = []
    for p in parts:
        weight, star, spec = p.partition("*")
        try:
            w = float(weight) if star else 1.0
        except ValueError:
            w, spec = 1.0, p
        if not star:
            spec = p
        if w <= 0:
            raise ValueError(f"mix: weight of {spec!r} must be positive, got {w}.")
        out.append((w, spec))
    return out


def slot_pattern(weights, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pattern [block], slots per component [C], rank of each slot within its component)."""
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    if block < len(w):
        raise ValueError(f"mix: block={block} must be >= the number of components {len(w)}.")
    ideal = w * block
    m = np.maximum(np.floor(ideal).astype(np.int64), 1)
    while m.sum() < block:  # largest remainder
        m[np.argmax(ideal - m)] += 1
    while m.sum() > block:
        m[np.argmax(m - ideal)] -= 1
    pattern = np.repeat(np.arange(len(w)), m)
    pattern = np.random.default_rng(0).permutation(pattern)
    rank = np.zeros(block, np.int64)
    seen = np.zeros(len(w), np.int64)
    for s, c in enumerate(pattern):
        rank[s], seen[c] = seen[c], seen[c] + 1
    return pattern, m, rank


def component_position(n: int, c: int, pattern, m, rank) -> int:
    """How many of the first ``n`` mixture positions belong to component ``c``."""
    block = len(pattern)
    full, rest = divmod(int(n), block)
    return full * int(m[c]) + int(np.count_nonzero(pattern[:rest] == c))


class MixtureSource:
    """Random-access weighted mixture; length covers every component at least once."""

    def __init__(self, components, weights, *, block: int = 1000):
        self.components = list(components)
        self.weights = [float(w) for w in weights]
        self.pattern, self.slots, self.rank = slot_pattern(self.weights, int(block))
        blocks = max(-(-len(s) // int(m)) for s, m in zip(self.components, self.slots))
        self._len = blocks * len(self.pattern)
        pres = [getattr(s, "preprocess", None) for s in self.components]
        # The pipeline's crop/caption settings come from the first component; each component
        # already decoded with its own settings.
        self.preprocess = next((p for p in pres if isinstance(p, T.Preprocess)), T.Preprocess())

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        parts = ";".join(f"{w}*{c!r}" for w, c in zip(self.weights, self.components))
        return f"MixtureSource({parts})"

    def locate(self, i: int) -> tuple[int, int]:
        block, slot = divmod(int(i), len(self.pattern))
        c = int(self.pattern[slot])
        local = block * int(self.slots[c]) + int(self.rank[slot])
        return c, local % len(self.components[c])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.load_example(i)

    def load_example(self, i: int, pil: bool = False) -> dict[str, Any]:
        c, local = self.locate(i)
        comp = self.components[c]
        load = getattr(comp, "load_example", None)
        ex = dict(load(local, pil=pil) if load is not None else comp[local])
        ex["source_id"] = np.asarray(c, np.int32)
        return ex


class MixtureStream:
    """Weighted mixture of streams (``wds:``): component positions follow from ``n``."""

    is_stream = True

    def __init__(self, components, weights, *, block: int = 1000):
        self.components = list(components)
        self.weights = [float(w) for w in weights]
        self.pattern, self.slots, self.rank = slot_pattern(self.weights, int(block))
        pres = [getattr(s, "preprocess", None) for s in self.components]
        self.preprocess = next((p for p in pres if isinstance(p, T.Preprocess)), T.Preprocess())

    def __repr__(self) -> str:
        parts = ";".join(f"{w}*{c!r}" for w, c in zip(self.weights, self.components))
        return f"MixtureStream({parts})"

    @property
    def num_streams(self) -> int:
        """Streams of the mixture: the fewest of any component (each component then has
        enough shards for every stream)."""
        return min(c.num_streams for c in self.components)

    def readers_per_stream(self, readers: int) -> int:
        return readers // math.gcd(readers, self.num_streams)

    def iter_stream(self, stream: int, streams: int, *, start: int, processor, max_attempts: int):
        """``(n, take)`` per mixture position ``n >= start`` of ``stream`` (as
        ``WdsSource.iter_stream``); every component stream advances past the positions it
        serves, decoding only those taken."""
        its = {}
        n = int(start)
        while True:
            c = int(self.pattern[n % len(self.pattern)])
            if c not in its:
                pos = component_position(n, c, self.pattern, self.slots, self.rank)
                its[c] = self.components[c].iter_stream(
                    stream, streams, start=pos, processor=processor, max_attempts=max_attempts
                )
            _, take = next(its[c])
            yield n, functools.partial(_with_source_id, take, c)
            n += 1


def _with_source_id(take, c: int):
    ex, counts = take()
    ex["source_id"] = np.asarray(c, np.int32)
    return ex, counts
