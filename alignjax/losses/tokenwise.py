"""Token-wise late interaction (FILIP, Wukong, LightCLIP): masked max-similarity.

For token sets ``x_i = {x_ik}`` (image patches) and ``y_j = {y_jr}`` (words), with
``A_ij[k, r] = <x_ik, y_jr>``::

    s^x_ij = (1 / |x_i|) Σ_{k valid in i}  max_{r valid in j} A_ij[k, r]     (image -> text)
    s^y_ij = (1 / |y_j|) Σ_{r valid in j}  max_{k valid in i} A_ij[k, r]     (text -> image)

(docs/OBJECTIVES.md). Padding is excluded from the max by a large negative
fill (not by zeroing features, which turns pads into a similarity floor of 0 — available as
``zero_pad_floor=True`` for parity with the Huawei FILIP/Wukong code) and from the mean by
the mask.

Memory: the dense interaction tensor is ``[B1, B2, n1, n2]``. ``chunk_size`` evaluates it over
the second batch axis (the gallery) ``chunk_size`` columns at a time with ``lax.map``, so the
live part is ``[B1, chunk, n1, n2]`` (per device: ``B1`` is the local share when the first
batch is sharded). The values are identical to the dense computation.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses.contrastive import as_f32_scalar
from alignjax.losses.targets import contrastive_from_logits, smoothed_targets

__all__ = ["filip_loss", "select_top_tokens", "token_similarity"]

_NEG = -1e9  # Finite "-inf": masked entries never win a max, and no inf - inf appears.


def _mask_or_ones(mask, x):
    if mask is None:
        return jnp.ones(x.shape[:2], bool)
    return jnp.asarray(mask, bool)


def _sim_block(x, xm, y, ym, fill):
    """Both directional scores for all of x against one block of y: ([B1, c], [B1, c])."""
    a = jnp.einsum("ikd,jrd->ijkr", x, y)  # [B1, c, n1, n2]
    valid = xm[:, None, :, None] & ym[None, :, None, :]
    a = jnp.where(valid, a, fill)
    best_r = jnp.max(a, axis=3)  # [B1, c, n1]: each x token's best y token
    best_k = jnp.max(a, axis=2)  # [B1, c, n2]: each y token's best x token
    nx = jnp.maximum(jnp.sum(xm, axis=1), 1).astype(jnp.float32)  # [B1]
    ny = jnp.maximum(jnp.sum(ym, axis=1), 1).astype(jnp.float32)  # [c]
    s_x = jnp.sum(jnp.where(xm[:, None, :], best_r, 0.0), axis=2) / nx[:, None]
    s_y = jnp.sum(jnp.where(ym[None, :, :], best_k, 0.0), axis=2) / ny[None, :]
    return s_x, s_y


def token_similarity(
    x: jax.Array,
    x_mask: jax.Array | None,
    y: jax.Array,
    y_mask: jax.Array | None,
    *,
    chunk_size: int | None = None,
    zero_pad_floor: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Masked token-wise max-similarity in both directions.

    Args:
      x: [B1, n1, D] token features (unit-norm for cosines), e.g. image patches.
      x_mask: [B1, n1] bool valid tokens, or None (all valid).
      y: [B2, n2, D] token features, e.g. text tokens.
      y_mask: [B2, n2] bool, or None.
      chunk_size: evaluate ``chunk_size`` columns (y samples) at a time; None: all at once.
        B2 need not be a multiple: the last chunk is padded with masked rows.
      zero_pad_floor: invalid tokens score 0 instead of being excluded from the max
        (the Huawei reference zeroes pad features); they stay excluded from the mean.

    Returns:
      ``(s_x, s_y)``, both [B1, B2] float32 indexed ``[i, j]``: ``s_x`` averages over the
      valid tokens of ``x_i`` their best match in ``y_j``; ``s_y`` averages over the valid
      tokens of ``y_j`` their best match in ``x_i``. With one token per side both equal
      ``<x_i, y_j>``.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if x.ndim != 3 or y.ndim != 3 or x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"token_similarity: x and y must be [B, n, D] with the same D; got {x.shape} "
            f"and {y.shape}."
        )
    xm, ym = _mask_or_ones(x_mask, x), _mask_or_ones(y_mask, y)
    fill = 0.0 if zero_pad_floor else _NEG
    b2 = y.shape[0]
    if chunk_size is None or chunk_size >= b2:
        return _sim_block(x, xm, y, ym, fill)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}.")
    n_chunks = math.ceil(b2 / chunk_size)
    pad = n_chunks * chunk_size - b2
    if pad:
        y = jnp.pad(y, ((0, pad), (0, 0), (0, 0)))
        ym = jnp.pad(ym, ((0, pad), (0, 0)))  # Padded rows: no valid tokens, dropped below.
    yc = y.reshape((n_chunks, chunk_size) + y.shape[1:])
    ymc = ym.reshape((n_chunks, chunk_size) + ym.shape[1:])
    # lax.map runs the chunks one after another: only one [B1, chunk, n1, n2] block is live,
    # and under autodiff each chunk's block is recomputed from its inputs (checkpoint).
    block = jax.checkpoint(lambda args: _sim_block(x, xm, args[0], args[1], fill))
    s_x, s_y = jax.lax.map(block, (yc, ymc))  # [n_chunks, B1, chunk] each

    def merge(s):
        return jnp.moveaxis(s, 0, 1).reshape(x.shape[0], n_chunks * chunk_size)[:, :b2]

    return merge(s_x), merge(s_y)


def select_top_tokens(
    x: jax.Array,
    x_mask: jax.Array | None,
    y: jax.Array,
    y_mask: jax.Array | None,
    ratio: float,
    group_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """FILIP token selection: keep each sample's ``⌈ratio·n⌉`` most useful tokens of ``x``.

    A token's score is its max similarity to any valid token of any ``y`` sample in its
    *local group* (``group_size`` consecutive samples; None: the whole batch) — FILIP ranks
    against the local batch so that only the kept tokens need gathering. Invalid tokens are
    ranked last. The ranking is under ``stop_gradient``; the kept tokens carry gradients.

    Args:
      x: [B, n, D]; x_mask: [B, n] bool or None.
      y: [B, m, D]; y_mask: [B, m] bool or None.
      ratio: fraction of tokens kept, in (0, 1]; 1 returns the inputs unchanged.
      group_size: divides B; None: one group.

    Returns:
      ``(x_kept [B, k, D], mask_kept [B, k])`` with ``k = ⌈ratio·n⌉``, in descending score.
    """
    xm, ym = _mask_or_ones(x_mask, x), _mask_or_ones(y_mask, y)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"Token selection ratio must be in (0, 1], got {ratio}.")
    if ratio == 1.0:
        return x, xm
    b, n, _ = x.shape
    k = max(1, math.ceil(ratio * n))
    g = b if group_size is None else int(group_size)
    if b % g:
        raise ValueError(f"group_size={g} must divide the batch size {b}.")
    xs = jax.lax.stop_gradient(x.astype(jnp.float32)).reshape((b // g, g) + x.shape[1:])
    ys = jax.lax.stop_gradient(y.astype(jnp.float32)).reshape((b // g, g) + y.shape[1:])
    sim = jnp.einsum("gikd,gjrd->gikjr", xs, ys)  # [G, g, n, g, m]
    sim = jnp.where(ym.reshape(b // g, 1, 1, g, -1), sim, _NEG)
    score = jnp.max(sim, axis=(3, 4)).reshape(b, n)
    score = jnp.where(xm, score, 2 * _NEG)  # Invalid tokens last.
    _, idx = jax.lax.top_k(score, k)  # [B, k]
    kept = jnp.take_along_axis(x, idx[..., None], axis=1)
    return kept, jnp.take_along_axis(xm, idx, axis=1)


def filip_loss(
    img_tokens: jax.Array,
    txt_tokens: jax.Array,
    txt_mask: jax.Array | None,
    logit_scale: Any,
    *,
    img_mask: jax.Array | None = None,
    chunk_size: int | None = None,
    label_smoothing: float = 0.0,
    zero_pad_floor: bool = False,
    img_keep_ratio: float = 1.0,
    txt_keep_ratio: float = 1.0,
    group_size: int | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """FILIP (Yao et al., ICLR 2022, arXiv:2111.07783): token-wise contrastive loss.

    ``L = ½ [CE_rows(t·s^I, T) + CE_cols(t·s^T, T)]`` with ``s^I`` (image→text, mean over
    image tokens) for the image→text direction and ``s^T`` (text→image, mean over valid text
    tokens) for the text→image direction; ``T`` = identity, or label smoothing ``α``
    spread over all B classes (``smoothed_targets``, as in the Huawei reference).

    Args:
      img_tokens: [B, n1, D] unit-norm patch tokens; txt_tokens: [B, n2, D] unit-norm.
      txt_mask: [B, n2] bool (padding False); img_mask: [B, n1] or None.
      logit_scale: multiplier ``t``.
      chunk_size: gallery chunk for :func:`token_similarity` (bounded memory).
      img_keep_ratio / txt_keep_ratio: FILIP token selection (:func:`select_top_tokens`)
        against the local group of ``group_size`` samples; 1.0 = all tokens.

    Returns:
      ``(loss, (s_I, s_T))``, the scores as [B, B] float32 (for metrics).
    """
    t = as_f32_scalar(logit_scale, "logit_scale")
    x, xm = select_top_tokens(
        img_tokens, img_mask, txt_tokens, txt_mask, img_keep_ratio, group_size
    )
    y, ym = select_top_tokens(
        txt_tokens, txt_mask, img_tokens, img_mask, txt_keep_ratio, group_size
    )
    s_i, s_t = token_similarity(x, xm, y, ym, chunk_size=chunk_size, zero_pad_floor=zero_pad_floor)
    targets = smoothed_targets(s_i.shape[0], label_smoothing) if label_smoothing else None
    return contrastive_from_logits(t * s_i, t * s_t, targets), (s_i, s_t)
