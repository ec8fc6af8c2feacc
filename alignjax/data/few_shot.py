"""k-shot subsets of a labelled source, and base / new class splits (CoOp, CoCoOp).

`k_shot_indices(labels, shots, seed)` picks `shots` examples of each class: class c's
candidates are shuffled by `default_rng([seed, c])` and the first `shots` kept, so the
draw is a pure function of (labels, shots, seed), it does not depend on the other classes,
and the sets are nested (the 2-shot set contains the 1-shot set; CoOp's protocol draws
them independently, but nesting makes a shots curve measure shots, not draws). A class
with fewer candidates keeps them all.

`FewShotSource(source, label_key, shots, seed, pool)` is the subset as a random-access
source (`len`, `[i]`, `load_example`): the trainer's grain pipeline shuffles, repeats and
checkpoints its position over it like over any source, so a few-shot run resumes exactly.
Its labels are read once from the first `pool` examples of the source (all by default).

`base_new_split(num_classes)` -> (base, new): the first ceil(C/2) class indices and the
rest, CoCoOp's split (Zhou et al., CVPR 2022): train on base, report base, new and their
harmonic mean `2 b n / (b + n)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HALVES = ('base', 'new')


def k_shot_indices(labels: np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to `shots` examples per class of `labels` ([N] int, < 0 =
    unlabelled and never picked)."""
    if shots < 1:
        raise ValueError(f'shots must be >= 1, got {shots}.')
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in 'iu':
        raise ValueError(f'labels must be a 1-D integer array, got {labels.dtype} {labels.shape}.')
    picked = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        picked.append(np.random.default_rng([int(seed), int(c)]).permutation(idx)[:shots])
    return np.sort(np.concatenate(picked)) if picked else np.zeros((0,), np.int64)


def base_new_split(num_classes: int) -> tuple[list[int], list[int]]:
    """(base classes, new classes): the first ceil(C/2) class indices, then the rest."""
    if num_classes < 2:
        raise ValueError(f'A base/new split needs >= 2 classes, got {num_classes}.')
    half = (num_classes + 1) // 2
    return list(range(half)), list(range(half, num_classes))


def harmonic_mean(base: float, new: float) -> float:
    """`2 b n / (b + n)` (0 when both are 0)."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def example_label(example: dict[str, Any], label_key: str) -> Any:
    """The label `label_key` of a source example (`{'labels': {key: value}}`, the layout
    every alignjax source yields); a KeyError naming the labels there are."""
    labels = example.get('labels') or {}
    key = label_key.removeprefix('label_')
    if key not in labels:
        raise KeyError(
            f'label_key={label_key!r}: the source has no label {key!r}; its labels are '
            f'{sorted(labels) or "none"}.'
        )
    return labels[key]


class FewShotSource:
    """`shots` examples per class of `source`'s label `label_key`, as a source.

    Args:
      source: a random-access source (`len`, `[i]`) whose examples carry `labels`.
      label_key: the label to balance ('shape', 'label', ...): integer labels (class
        indices) or strings (class names; the classes are then the sorted names).
      shots: examples per class.
      seed: the draw (`k_shot_indices`).
      pool: read labels from the first `pool` examples only (None: all). For generated
        sources such as `synthetic:shapes` (1M rendered examples) a pool of a few thousand
        covers every class.
      classes: keep only these classes: label values, or 'base' / 'new' for the halves of
        `base_new_split` over the classes found in the pool (in sorted order).
    """

    def __init__(
        self,
        source,
        label_key: str,
        shots: int,
        seed: int = 0,
        pool: int | None = None,
        classes: Sequence[Any] | str | None = None,
    ):
        self.source = source
        self.label_key = label_key
        n = len(source) if pool is None else min(int(pool), len(source))
        raw = np.asarray([example_label(source[i], label_key) for i in range(n)])
        values = np.unique(raw)
        # Integer labels are the class ids themselves (so the draw of class c is the same
        # whichever classes the pool holds: the `fewshot` evaluator's); names are numbered
        # in sorted order.
        ids = raw.astype(np.int64) if raw.dtype.kind in 'iu' else np.searchsorted(values, raw)
        if isinstance(classes, str):
            if classes not in HALVES:
                raise ValueError(f'classes={classes!r}: use {HALVES}, or a list of labels.')
            base, new = base_new_split(len(values))
            keep = values[base if classes == 'base' else new]
        elif classes is not None:
            wanted = {str(c) for c in classes}
            keep = [v for v in values if str(v) in wanted]
        if classes is not None:
            ids = np.where(np.isin(raw, np.asarray(keep)), ids, -1)
        self.indices = k_shot_indices(ids, shots, seed)
        if self.indices.size == 0:
            raise ValueError(
                f'No example of the requested classes among the first {n} of {source!r}; '
                'raise pool or check classes.'
            )
        self.labels = raw[self.indices]
        self.classes = sorted(set(self.labels.tolist()))
        self.preprocess = getattr(source, 'preprocess', None)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.source[int(self.indices[i])]

    def load_example(self, i: int, pil: bool = False) -> dict[str, Any]:
        load = getattr(self.source, 'load_example', None)
        j = int(self.indices[i])
        return dict(load(j, pil=pil) if load is not None else self.source[j])

    def __repr__(self) -> str:
        return f'FewShotSource({self.source!r}, label_key={self.label_key!r}, {len(self)} examples)'
