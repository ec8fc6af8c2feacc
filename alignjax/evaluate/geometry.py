"""Embedding geometry: modality gap, alignment and uniformity.

All functions take L2-normalised embeddings as `jnp` or `np` arrays of shape [N, D] (rows
are unit vectors; pairs share a row index) and return a scalar of the input's array type
(a 0-d `jax.Array` for `jnp` input, a Python-convertible `np.floating` for `np` input).

  modality_gap(x, y)       = || mean_i x_i - mean_i y_i ||_2            (Liang et al. 2022)
  alignment(x, y, alpha)   = mean_i || x_i - y_i ||_2^alpha              (Wang & Isola 2020)
  uniformity(z, t)         = log mean_{i != j} exp(-t || z_i - z_j ||_2^2)  (Wang & Isola 2020)

Lower alignment = paired embeddings closer; lower (more negative) uniformity = embeddings
spread more evenly over the sphere (the minimum for N -> inf points on S^{D-1} is reached by
the uniform distribution). The modality gap is 0 when both modalities share a centroid and
at most 2 for unit vectors.

References: W. Liang, Y. Zhang, Y. Kwon, S. Yeung, J. Zou, "Mind the Gap: Understanding the
Modality Gap in Multi-modal Contrastive Representation Learning", NeurIPS 2022.
T. Wang, P. Isola, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere", ICML 2020.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _xp(*arrays):
    """numpy for all-numpy inputs (no device transfer), jax.numpy otherwise."""
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def _f32(xp, a):
    # Half-precision embeddings would lose the small differences these metrics measure.
    return xp.asarray(a).astype(xp.promote_types(xp.asarray(a).dtype, xp.float32))


def modality_gap(zimg, ztxt):
    """|| mean(zimg) - mean(ztxt) ||_2 for zimg [N, D], ztxt [M, D] (N, M may differ).

    Liang et al. (2022) define the gap as the distance between the two modalities'
    centroids of the normalised embeddings.
    """
    xp = _xp(zimg, ztxt)
    x, y = _f32(xp, zimg), _f32(xp, ztxt)
    return xp.linalg.norm(x.mean(axis=0) - y.mean(axis=0))


def alignment(zimg, ztxt, alpha: float = 2):
    """mean_i || zimg_i - ztxt_i ||_2^alpha over paired rows: zimg, ztxt [N, D].

    Wang & Isola's L_align with alpha=2 (their default). For unit vectors with alpha=2 this
    equals 2 - 2 * mean_i <zimg_i, ztxt_i>.
    """
    xp = _xp(zimg, ztxt)
    x, y = _f32(xp, zimg), _f32(xp, ztxt)
    if x.shape != y.shape:
        raise ValueError(
            f'alignment needs paired rows, got shapes {x.shape} and {y.shape}; pass one '
            'embedding per image and per its caption (same N).'
        )
    return (xp.linalg.norm(x - y, axis=-1) ** alpha).mean()


def uniformity(z, t: float = 2):
    """log mean_{i != j} exp(-t || z_i - z_j ||^2) over the N (N - 1) ordered pairs, z [N, D].

    Wang & Isola's L_uniform with t=2 (their default). Computed with a log-sum-exp over
    the pairwise squared distances ||z_i - z_j||^2 = 2 - 2 <z_i, z_j> (unit rows), which
    materialises an [N, N] matrix: subsample large sets (N = 10k -> 400 MB in float32).
    Needs N >= 2.
    """
    xp = _xp(z)
    z = _f32(xp, z)
    n = z.shape[0]
    if n < 2:
        raise ValueError(f'uniformity needs at least 2 embeddings, got {n}.')
    sq = xp.sum(z * z, axis=-1)
    d2 = xp.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    logits = -t * d2
    off_diag = ~xp.eye(n, dtype=bool)
    logits = xp.where(off_diag, logits, -xp.inf)
    m = xp.max(logits)
    lse = m + xp.log(xp.sum(xp.exp(logits - m)))
    return lse - xp.log(float(n * (n - 1)))


def geometry_metrics(zimg, ztxt, max_uniformity: int = 4096) -> dict[str, float]:
    """All four metrics for paired [N, D] embeddings, as Python floats.

    Keys: modality_gap, alignment, uniformity_image, uniformity_text. Uniformity uses the
    first `max_uniformity` rows of each modality (its cost is quadratic).
    """
    k = max_uniformity
    return {
        'modality_gap': float(modality_gap(zimg, ztxt)),
        'alignment': float(alignment(zimg, ztxt)),
        'uniformity_image': float(uniformity(zimg[:k])),
        'uniformity_text': float(uniformity(ztxt[:k])),
    }
