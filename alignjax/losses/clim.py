"""CLIM (Wu et al., AAAI 2024, arXiv:2312.11376): mosaics as pseudo region-text pairs.

``s×s`` images of the batch are tiled into one mosaic (image ``k`` at row ``k // s``, column
``k % s``) and downsampled to the training size; each tile is a pseudo-region whose caption
is its image's caption. Region features are pooled from the mosaic's patch-token grid over
the tile's box and contrasted with the captions together with the remaining single images::

    L = CLIP([region features ; single-image embeddings], captions)

Region pooling is the exact area-weighted mean of the (piecewise-constant) token map over
the box: RoIAlign 1×1 with dense sampling. The MaskCLIP-style "last block without attention"
of the reference code is not applied (the towers stay unmodified); the text tower is frozen
in the paper (it fine-tunes a pre-trained CLIP): ``freeze_text`` (a stop-gradient here).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from alignjax.models.two_tower import l2_normalize

__all__ = ["make_mosaics", "mosaic_boxes", "region_features", "region_pool"]


def make_mosaics(images: jax.Array, grid: int) -> jax.Array:
    """[g·s², H, W, C] -> [g, H, W, C]: s×s tiles per mosaic, each image box-downsampled by s.

    Needs ``H`` and ``W`` divisible by ``s`` (the mosaic keeps the training size, so the
    model needs no position-embedding resize).
    """
    n, h, w, c = images.shape
    s = int(grid)
    if n % (s * s):
        raise ValueError(f"make_mosaics: {n} images is not a multiple of grid²={s * s}.")
    if h % s or w % s:
        raise ValueError(f"make_mosaics: image size {h}x{w} is not divisible by grid={s}.")
    small = images.reshape(n, h // s, s, w // s, s, c).mean(axis=(2, 4))  # [n, h/s, w/s, c]
    g = n // (s * s)
    tiles = small.reshape(g, s, s, h // s, w // s, c)  # [g, row, col, y, x, c]
    return tiles.transpose(0, 1, 3, 2, 4, 5).reshape(g, h, w, c)


def mosaic_boxes(grid: int) -> jax.Array:
    """Normalised ``(x0, y0, x1, y1)`` boxes of the s² tiles, row-major: [s², 4]."""
    s = int(grid)
    k = jnp.arange(s * s)
    r, c = (k // s).astype(jnp.float32), (k % s).astype(jnp.float32)
    return jnp.stack([c / s, r / s, (c + 1) / s, (r + 1) / s], axis=-1)


def _overlap(lo, hi, cells: int) -> jax.Array:
    """[R] box extents in [0, 1] -> [R, cells] fraction of each cell covered, row-normalised."""
    edges = jnp.arange(cells + 1, dtype=jnp.float32) / cells
    cover = jnp.clip(
        jnp.minimum(hi[:, None], edges[None, 1:]) - jnp.maximum(lo[:, None], edges[None, :-1]),
        0.0,
    )
    return cover / jnp.maximum(jnp.sum(cover, -1, keepdims=True), 1e-12)


def region_pool(grid_tokens: jax.Array, boxes: jax.Array) -> jax.Array:
    """Area-weighted mean of a token map over boxes: [B, gh, gw, D], [R, 4] -> [B, R, D]."""
    _, gh, gw, _ = grid_tokens.shape
    wy = _overlap(boxes[:, 1], boxes[:, 3], gh)  # [R, gh]
    wx = _overlap(boxes[:, 0], boxes[:, 2], gw)  # [R, gw]
    return jnp.einsum("ry,rx,byxd->brd", wy, wx, grid_tokens.astype(jnp.float32))


def region_features(mosaic_tokens: jax.Array, grid: int) -> jax.Array:
    """Mosaic patch tokens [g, N, D] (square grid) -> unit-norm tile features [g·s², D]."""
    g, n, d = mosaic_tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"region_features needs a square token grid, got {n} tokens.")
    pooled = region_pool(mosaic_tokens.reshape(g, side, side, d), mosaic_boxes(grid))
    return l2_normalize(pooled.reshape(g * grid * grid, d))
