"""Representational similarity of two feature sets of the same samples, and layer selection.

STRUCTURE (Gröger et al., NeurIPS 2025) aligns the pair of layers, one per frozen encoder,
whose representations are most alike, rather than the two last layers. Similarity is
measured on ``n`` paired samples with features ``X`` [n, d_x] and ``Y`` [n, d_y]:

  mutual_knn(X, Y, k) = (1/n) Σ_i |N_k^X(i) ∩ N_k^Y(i)| / k          (Huh et al. 2024)
      N_k^X(i): the k nearest neighbours of sample i by cosine similarity in X, i itself
      excluded. 1 when both spaces rank neighbours alike, about k/(n-1) when unrelated.
  knn_k(n):   'rice' ceil(2 n^(1/3)) (default; 35 for n = 5000), 'sqrt' ceil(sqrt n),
              'sturges' ceil(log2 n) + 1, or a given int.
  linear_cka(X, Y)   = ||Ỹᵀ X̃||_F² / (||X̃ᵀ X̃||_F ||Ỹᵀ Ỹ||_F),  X̃ = X - mean   (Kornblith 2019)
  unbiased_cka(X, Y) = HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L)),  K = X Xᵀ, L = Y Yᵀ,
      HSIC_u the unbiased estimator of Song et al. (2012, Eq. 5), n >= 4:
      HSIC_u = [tr(K̃ L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃ L̃1] / (n(n-3)),
      K̃ = K with a zero diagonal. Computed from the features (no [n, n] matrix).

Both CKAs are 1 for ``Y = c X Q`` (Q orthogonal, c > 0) and are invariant to translations.
:func:`select_layer_pair` scores every (image layer, text layer) pair and returns the best;
it L2-normalises every layer's rows first, as Huh et al.'s ``measure_alignment`` does.

All computation is ``jnp`` in float32 on the default device; the k-NN search runs in blocks
of rows so that no [n, n] matrix is ever formed (a [block, n] one at a time).

References: M. Huh, B. Cheung, T. Wang, P. Isola, "The Platonic Representation Hypothesis",
ICML 2024. S. Kornblith, M. Norouzi, H. Lee, G. Hinton, "Similarity of Neural Network
Representations Revisited", ICML 2019. L. Song, A. Smola, A. Gretton, J. Bedo, K. Borgwardt,
"Feature Selection via Dependence Maximization", JMLR 2012. F. Gröger, S. Wen, H. Le,
M. Brbić, "With Limited Data for Multimodal Alignment, Let the STRUCTURE Guide You",
NeurIPS 2025.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "KNN_RULES",
    "METRICS",
    "knn_indices",
    "knn_k",
    "linear_cka",
    "mutual_knn",
    "select_layer_pair",
    "unbiased_cka",
]

KNN_RULES = ("rice", "sqrt", "sturges")
METRICS = ("mutual_knn", "cka", "unbiased_cka")

# Rows per block of the k-NN search: a [512, n] float32 block is 10 MB at n = 5000.
_BLOCK = 512


def knn_k(n: int, rule: str | int = "rice") -> int:
    """The number of neighbours ``k`` for ``n`` samples, capped at ``n - 1``.

    ``'rice'``: ``ceil(2 n^(1/3))`` (35 for n = 5000), ``'sqrt'``: ``ceil(sqrt n)``,
    ``'sturges'``: ``ceil(log2 n) + 1``; an int is returned as it is (1 <= k <= n - 1).
    Computed in integers, so there is no rounding at perfect powers.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"knn_k: n must be an int >= 2 (samples), got {n!r}.")
    n = int(n)
    if isinstance(rule, (int, np.integer)) and not isinstance(rule, bool):
        if not 1 <= rule <= n - 1:
            raise ValueError(f"knn_k: k = {rule} must be in [1, n - 1 = {n - 1}] for n = {n}.")
        return int(rule)
    if rule == "rice":
        # The least k with k >= 2 n^(1/3), i.e. k^3 >= 8 n; the float guess is corrected.
        k = math.ceil(2.0 * n ** (1.0 / 3.0))
        while (k - 1) ** 3 >= 8 * n:
            k -= 1
        while k**3 < 8 * n:
            k += 1
    elif rule == "sqrt":
        r = math.isqrt(n)
        k = r + (r * r < n)
    elif rule == "sturges":
        k = (n - 1).bit_length() + 1  # ceil(log2 n) + 1
    else:
        raise ValueError(f"knn_k: unknown rule {rule!r}; use one of {KNN_RULES} or an int k.")
    return min(k, n - 1)


def _features(x: Any, what: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what} must be [n, d] features (one row per sample), got {x.shape}.")
    return x.astype(jnp.float32)


def _check_same_n(x: jax.Array, y: jax.Array, fn: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{fn}: x {x.shape} and y {y.shape} must hold the same n samples in the same "
            "order (rows are paired)."
        )


def _l2n(x: jax.Array) -> jax.Array:
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _knn_blocks(x: jax.Array, k: int, block: int) -> jax.Array:
    n = x.shape[0]
    x = _l2n(x)
    n_blocks = -(-n // block)
    rows = jnp.arange(n_blocks * block).reshape(n_blocks, block)
    cols = jnp.arange(n)

    def one(r):  # r [block] row ids; the padding past n repeats row n - 1 and is cut below.
        r = jnp.minimum(r, n - 1)
        sim = x[r] @ x.T  # [block, n]
        sim = jnp.where(r[:, None] == cols[None, :], -jnp.inf, sim)  # i is not its neighbour
        return jax.lax.top_k(sim, k)[1]

    return jax.lax.map(one, rows).reshape(n_blocks * block, k)[:n]


def knn_indices(x: Any, k: int) -> jax.Array:
    """int32 [n, k]: row i lists i's k nearest neighbours by cosine similarity, nearest first.

    ``x`` [n, d] (rows L2-normalised here); ``i`` itself is excluded. Runs on device in
    blocks of rows, never forming the [n, n] similarity matrix.
    """
    x = _features(x, "knn_indices: x")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"knn_indices: need at least 2 samples, got {n}.")
    return _knn_blocks(x, knn_k(n, k), min(_BLOCK, n))


@jax.jit
def _overlap(a: jax.Array, b: jax.Array) -> jax.Array:
    # [n, k, k] comparisons: k is small (35 for n = 5000), cheaper than a scatter into [n, n].
    hits = jnp.sum(jnp.any(a[:, :, None] == b[:, None, :], axis=-1), axis=-1)
    return jnp.mean(hits.astype(jnp.float32)) / a.shape[1]


def mutual_knn(x: Any, y: Any, k: int) -> jax.Array:
    """Mutual k-NN alignment ``(1/n) Σ_i |N_k^X(i) ∩ N_k^Y(i)| / k`` (float32 scalar in [0, 1]).

    Args:
      x: [n, d_x] features of n samples; y: [n, d_y] features of the same samples.
      k: neighbours per sample, ``1 <= k <= n - 1`` (see :func:`knn_k`).

    1 for ``y = x`` (or any rotation/scaling of it); about ``k / (n - 1)`` for unrelated
    spaces, the expected overlap of two random k-subsets.
    """
    x, y = _features(x, "mutual_knn: x"), _features(y, "mutual_knn: y")
    _check_same_n(x, y, "mutual_knn")
    return _overlap(knn_indices(x, k), knn_indices(y, k))


def _center(x: jax.Array) -> jax.Array:
    # Every HSIC here is translation-invariant; centering first keeps float32 sums small.
    return x - jnp.mean(x, axis=0, keepdims=True)


@jax.jit
def _hsic_linear(x: jax.Array, y: jax.Array) -> jax.Array:
    """``tr(Kc Lc) = ||yᵀ x||_F²`` for centered x, y (the biased HSIC times (n-1)²)."""
    return jnp.sum(jnp.square(y.T @ x))


@jax.jit
def _hsic_unbiased(x: jax.Array, y: jax.Array) -> jax.Array:
    """Song et al.'s HSIC_u for K = x xᵀ, L = y yᵀ, from the features (O(n d_x d_y))."""
    n = x.shape[0]
    kd, ld = jnp.sum(x * x, axis=1), jnp.sum(y * y, axis=1)  # diag(K), diag(L)
    trace = jnp.sum(jnp.square(y.T @ x)) - jnp.sum(kd * ld)  # tr(K̃ L̃) = Σ_{i≠j} K_ij L_ij
    k1 = x @ jnp.sum(x, axis=0) - kd  # K̃ 1
    l1 = y @ jnp.sum(y, axis=0) - ld  # L̃ 1
    value = trace + jnp.sum(k1) * jnp.sum(l1) / ((n - 1) * (n - 2)) - 2.0 * (k1 @ l1) / (n - 2)
    return value / (n * (n - 3))


def _cka_ratio(hxy: jax.Array, hxx: jax.Array, hyy: jax.Array) -> jax.Array:
    # A constant layer has HSIC 0 with itself: score it 0 rather than NaN (argmax-safe).
    den = jnp.sqrt(jnp.maximum(hxx * hyy, 0.0))
    return jnp.where(den > 0, hxy / jnp.where(den > 0, den, 1.0), 0.0)


def linear_cka(x: Any, y: Any) -> jax.Array:
    """Linear CKA ``||Ỹᵀ X̃||_F² / (||X̃ᵀ X̃||_F ||Ỹᵀ Ỹ||_F)`` (float32 scalar in [0, 1]).

    ``x`` [n, d_x], ``y`` [n, d_y], rows paired; columns are centered here. Invariant to
    orthogonal transforms, isotropic scaling and translations of either side; 0 when one
    side is constant.
    """
    x, y = _features(x, "linear_cka: x"), _features(y, "linear_cka: y")
    _check_same_n(x, y, "linear_cka")
    x, y = _center(x), _center(y)
    return _cka_ratio(_hsic_linear(x, y), _hsic_linear(x, x), _hsic_linear(y, y))


def unbiased_cka(x: Any, y: Any) -> jax.Array:
    """Debiased linear CKA from Song et al.'s unbiased HSIC estimator (float32 scalar).

    ``x`` [n, d_x], ``y`` [n, d_y] with ``n >= 4``. Unlike :func:`linear_cka` it is not
    inflated for small n or large d (it can be slightly negative for unrelated features).
    """
    x, y = _features(x, "unbiased_cka: x"), _features(y, "unbiased_cka: y")
    _check_same_n(x, y, "unbiased_cka")
    if x.shape[0] < 4:
        raise ValueError(f"unbiased_cka: the unbiased HSIC needs n >= 4 samples, got {x.shape[0]}.")
    x, y = _center(x), _center(y)
    return _cka_ratio(_hsic_unbiased(x, y), _hsic_unbiased(x, x), _hsic_unbiased(y, y))


def select_layer_pair(
    image_layers: Sequence[Any],
    text_layers: Sequence[Any],
    metric: str = "mutual_knn",
    k: int | str | None = None,
) -> tuple[tuple[int, int], np.ndarray]:
    """The (image layer, text layer) pair of highest representational similarity.

    Args:
      image_layers: per image-encoder layer, [n, d_i] features of the n samples.
      text_layers: per text-encoder layer, [n, d_t] features of the same n samples (same
        order: row r of every layer is pair r).
      metric: ``'mutual_knn'`` (default, STRUCTURE's), ``'cka'`` (linear) or
        ``'unbiased_cka'``.
      k: neighbours for ``'mutual_knn'``: an int or a rule of :func:`knn_k` (default
        ``'rice'``); only that metric takes it.

    Returns:
      ``((i, j), scores)``: the best pair (the first in row-major order on ties) and the
      float32 [n_image_layers, n_text_layers] numpy array of every pair's score. Rows are
      L2-normalised first; for mutual k-NN each layer's neighbours are searched once.
    """
    if metric not in METRICS:
        raise ValueError(f"select_layer_pair: unknown metric {metric!r}; use one of {METRICS}.")
    if k is not None and metric != "mutual_knn":
        raise ValueError(
            f"select_layer_pair: k is a parameter of metric='mutual_knn' only; drop it for "
            f"{metric!r}."
        )
    if len(image_layers) == 0 or len(text_layers) == 0:
        raise ValueError("select_layer_pair: give at least one image layer and one text layer.")
    image = [
        _features(x, f"select_layer_pair: image_layers[{i}]") for i, x in enumerate(image_layers)
    ]
    text = [_features(y, f"select_layer_pair: text_layers[{j}]") for j, y in enumerate(text_layers)]
    sizes = {x.shape[0] for x in image + text}
    if len(sizes) != 1:
        raise ValueError(
            f"select_layer_pair: every layer must hold the same n samples; got n in "
            f"{sorted(sizes)} (extract all layers from the same batch)."
        )
    n = sizes.pop()
    image, text = [_l2n(x) for x in image], [_l2n(y) for y in text]
    if metric == "mutual_knn":
        kk = knn_k(n, "rice" if k is None else k)
        a = [knn_indices(x, kk) for x in image]
        b = [knn_indices(y, kk) for y in text]
        scores = [[_overlap(ai, bj) for bj in b] for ai in a]
    else:
        if metric == "unbiased_cka" and n < 4:
            raise ValueError(f"select_layer_pair: 'unbiased_cka' needs n >= 4 samples, got {n}.")
        hsic = _hsic_linear if metric == "cka" else _hsic_unbiased
        image, text = [_center(x) for x in image], [_center(y) for y in text]
        self_x = [hsic(x, x) for x in image]  # once per layer, not per pair
        self_y = [hsic(y, y) for y in text]
        scores = [
            [_cka_ratio(hsic(x, y), hx, hy) for y, hy in zip(text, self_y, strict=True)]
            for x, hx in zip(image, self_x, strict=True)
        ]
    scores = np.asarray(jnp.asarray(scores), np.float32)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return (int(i), int(j)), scores
