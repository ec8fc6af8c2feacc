"""CLIP-score selection, row-wise cosine, and the input checks shared by `alignjax.curate`.

For image embeddings x_i and text embeddings y_i of the same N samples ([N, D] each) the
CLIP score of sample i is

  s_i = <x_i, y_i> / (|x_i| |y_i|)                        [N] float32

and a sample is kept by threshold (s_i >= t) or by fraction: the K = target_count(N, f)
highest scores, ties broken by the lower index (a stable descending sort), so the result is
exactly K samples whatever the ties. `target_count` rounds half up and keeps at least one:
K = max(1, floor(f * N + 1/2)) for f in (0, 1].
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    'check_embeddings',
    'check_fraction',
    'check_scores',
    'rowwise_cosine',
    'select_by_score',
    'target_count',
]

# Unit-norm check: |‖x‖ - 1| <= this. Loose enough for bfloat16 embeddings cast to float32.
UNIT_NORM_ATOL = 1e-2


def check_embeddings(x, what: str = 'embeddings', unit_norm: bool = True) -> np.ndarray:
    """`x` as a float32 [N, D] array; ValueError naming the problem (and fix) otherwise."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f'{what} must be 2-D [N, D], got shape {x.shape}: stack the vectors.')
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f'{what} must be floating point, got {x.dtype}.')
    x = x.astype(np.float32, copy=False)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f'{what} is empty (shape {x.shape}): pass at least one vector.')
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f'{what} has a NaN or infinite value (row {row}): drop that sample.')
    if unit_norm:
        norms = np.linalg.norm(x, axis=1)
        bad = np.abs(norms - 1.0) > UNIT_NORM_ATOL
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f'{what} must be unit norm, row {row} has norm {norms[row]:.4g} '
                f'({int(bad.sum())} rows off): normalise them, x / ||x||.'
            )
    return x


def check_fraction(fraction, what: str = 'fraction') -> float:
    """`fraction` as a float in (0, 1]; ValueError otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
        raise ValueError(f'{what}={fraction!r} must be a number in (0, 1].')
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f'{what}={fraction!r} must be in (0, 1], e.g. 0.25 to keep a quarter.')
    return float(fraction)


def target_count(n: int, fraction: float) -> int:
    """max(1, round-half-up(fraction * n)): how many of n samples a fraction keeps."""
    fraction = check_fraction(fraction)
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def check_scores(scores, n: int | None = None, what: str = 'scores') -> np.ndarray:
    """`scores` as a finite float64 [N] array (of length n if given); ValueError otherwise."""
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f'{what} must be 1-D [N], got shape {s.shape}.')
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f'{what} must be numbers, got {s.dtype}.')
    s = s.astype(np.float64)
    if n is not None and s.shape[0] != n:
        raise ValueError(f'{what} has {s.shape[0]} entries for {n} samples: pass one per sample.')
    if not np.isfinite(s).all():
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(
            f'{what} has a NaN or infinite value (index {i}): score or drop that sample first.'
        )
    return s


def rowwise_cosine(image_emb, text_emb) -> np.ndarray:
    """[N] float32 cosine of row i of `image_emb` with row i of `text_emb` ([N, D] each).

    The rows need not be unit norm (they are normalised here); a zero row is an error.
    """
    x = check_embeddings(image_emb, 'image embeddings', unit_norm=False)
    y = check_embeddings(text_emb, 'text embeddings', unit_norm=False)
    if x.shape != y.shape:
        raise ValueError(
            f'image embeddings {x.shape} and text embeddings {y.shape} differ: pass one row '
            'per sample, of the same embedding size.'
        )
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    zero = (nx == 0) | (ny == 0)
    if zero.any():
        raise ValueError(
            f'row {int(np.flatnonzero(zero)[0])} has a zero embedding (no direction, no '
            'cosine): drop that sample.'
        )
    # Accumulate in float64: the score of a pair must not depend on how it was batched.
    dot = np.einsum('nd,nd->n', x.astype(np.float64), y.astype(np.float64))
    return (dot / (nx.astype(np.float64) * ny)).astype(np.float32)


def select_by_score(scores, threshold: float | None = None, keep_fraction: float | None = None):
    """[N] bool mask of the samples kept by CLIP score; give exactly one of the two rules.

    Args:
      scores: [N] per-sample scores (e.g. `rowwise_cosine`), finite.
      threshold: keep s_i >= threshold.
      keep_fraction: keep the `target_count(N, keep_fraction)` highest scores, ties broken by
        the lower index, so exactly that many are kept.
    """
    if (threshold is None) == (keep_fraction is None):
        raise ValueError(
            'select_by_score needs exactly one of threshold= and keep_fraction= '
            f'(got threshold={threshold!r}, keep_fraction={keep_fraction!r}).'
        )
    s = check_scores(scores)
    if threshold is not None:
        if not np.isfinite(threshold):
            raise ValueError(f'threshold={threshold!r} must be a finite number.')
        return s >= threshold
    k = target_count(s.shape[0], keep_fraction)
    # Stable sort of -s: equal scores keep index order, so the lower index wins a tie.
    order = np.argsort(-s, kind='stable')
    keep = np.zeros(s.shape[0], bool)
    keep[order[:k]] = True
    return keep
