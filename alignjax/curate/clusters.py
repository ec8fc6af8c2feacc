"""Spherical k-means on device, and subsets balanced over clusters (TL;DR-style).

k-means (`kmeans`) is the spherical (cosine) variant, for unit-norm embeddings x_i ([N, D]):

  assignment   a_i = argmax_c <x_i, mu_c>                 (ties: the lower cluster index)
  update       mu_c = sum_{a_i = c} x_i / || sum_{a_i = c} x_i ||
  inertia      sum_i (1 - <x_i, mu_{a_i}>)

which for unit vectors is Euclidean k-means with the centroids projected back onto the
sphere (||x - mu||^2 = 2 - 2 <x, mu>). A cluster left empty keeps its previous centroid.

Initialisation is k-means++ (Arthur & Vassilvitskii 2007): the first centre is drawn
uniformly, each next one with probability proportional to d(x)^2 = 2 - 2 max_c <x, mu_c>,
the squared distance to the nearest centre so far (uniform again if every point is already a
centre). The draws use a jax PRNG key (an int seed is turned into `jax.random.key(seed)`),
so a seed gives the same centres, and then the same result, on a given backend; the init
does not depend on `chunk_size`.

Each Lloyd iteration is one jitted `lax.scan` over chunks of C rows: a chunk's [C, k]
similarities, its one-hot assignments and the [k, D] running sums are all that is live, so
device memory is O(C k + k D) beyond the embeddings themselves (4 N D bytes). Iterations
stop when no assignment changes (`converged`) or after `max_iter`; the returned assignments
are always the argmax against the returned centroids. A different chunk size changes only
the order of the float32 sums (centroids equal to ~1e-6, the same assignments but for
points on a tie).

`balanced_subset` samples K = target_count(N, fraction) samples spread evenly over the
clusters: the quota of cluster c is

  q_c = min(n_c, L)  (+1 for the r largest clusters with n_c > L)

with the level L the largest for which sum_c min(n_c, L) <= K and r the remainder, so every
cluster gives the same number unless it is too small, and the quota a small cluster cannot
fill goes to the larger ones. Within a cluster it takes a uniform random choice (numpy
generator of `seed`), or with `scores` the highest-scored members (ties: the lower index).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.curate.filters import check_embeddings, check_scores, target_count

__all__ = ['KMeansResult', 'balanced_subset', 'cluster_quotas', 'kmeans', 'kmeans_plus_plus']


@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """Spherical k-means of N unit-norm embeddings.

    Attributes:
      centroids: [k, D] float32 unit-norm centres.
      assignments: [N] int32 cluster of each sample (argmax cosine to the centroids).
      inertia: sum over samples of 1 - cosine to its centroid.
      iterations: Lloyd iterations run.
      converged: True if the last iteration changed no assignment.
    """

    centroids: np.ndarray
    assignments: np.ndarray
    inertia: float
    iterations: int
    converged: bool

    @property
    def sizes(self) -> np.ndarray:
        """[k] int, samples per cluster."""
        return np.bincount(self.assignments, minlength=self.centroids.shape[0])


def _as_key(seed):
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return jax.random.key(int(seed))
    if isinstance(seed, jax.Array):
        return seed
    raise ValueError(f'seed={seed!r} must be an int or a jax PRNG key.')


def _draw(key, weights):
    """An index drawn with probability weights / sum(weights) (inverse CDF; sum > 0)."""
    cdf = jnp.cumsum(weights)
    u = jax.random.uniform(key, (), jnp.float32) * cdf[-1]
    i = jnp.searchsorted(cdf, u, side='right')
    # u < cdf[-1] lands on a positive weight; clamp against float round-off at the end.
    return jnp.minimum(i, weights.shape[0] - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('k',))
def _plus_plus(x, valid, key, k: int):
    """[k] int32 row indices of x chosen by k-means++ (padding rows have valid = False)."""
    uniform = valid.astype(jnp.float32)

    def dist2(i):
        cos = jnp.matmul(x, x[i], precision=jax.lax.Precision.HIGHEST)
        return jnp.where(valid, jnp.maximum(2.0 - 2.0 * cos, 0.0), 0.0)

    first = _draw(jax.random.fold_in(key, 0), uniform)
    chosen = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def body(step, carry):
        chosen, d2 = carry
        # Every point already a centre (duplicates): fall back to a uniform draw.
        w = jnp.where(jnp.sum(d2) > 0, d2, uniform)
        i = _draw(jax.random.fold_in(key, step), w)
        return chosen.at[step].set(i), jnp.minimum(d2, dist2(i))

    chosen, _ = jax.lax.fori_loop(1, k, body, (chosen, dist2(first)))
    return chosen


@jax.jit
def _lloyd_step(xc, validc, centroids):
    """One Lloyd iteration over chunks xc [n_chunks, C, D]: (new centroids, [n_chunks * C]
    assignments against `centroids`, inertia)."""
    k, d = centroids.shape

    def body(carry, inp):
        sums, counts, inertia = carry
        xb, vb = inp
        s = jnp.matmul(xb, centroids.T, precision=jax.lax.Precision.HIGHEST)  # [C, k]
        a = jnp.argmax(s, axis=1).astype(jnp.int32)
        onehot = ((a[:, None] == jnp.arange(k)[None, :]) & vb[:, None]).astype(jnp.float32)
        sums = sums + jnp.matmul(onehot.T, xb, precision=jax.lax.Precision.HIGHEST)
        counts = counts + jnp.sum(onehot, axis=0)
        inertia = inertia + jnp.sum(jnp.where(vb, 1.0 - jnp.max(s, axis=1), 0.0))
        return (sums, counts, inertia), a

    init = (jnp.zeros((k, d), jnp.float32), jnp.zeros((k,), jnp.float32), jnp.float32(0))
    (sums, counts, inertia), assign = jax.lax.scan(body, init, (xc, validc))
    norm = jnp.linalg.norm(sums, axis=1, keepdims=True)
    new = jnp.where(counts[:, None] > 0, sums / jnp.where(norm > 0, norm, 1.0), centroids)
    return new, assign.reshape(-1), inertia


def _padded(x: np.ndarray, chunk: int):
    n, d = x.shape
    n_chunks = math.ceil(n / chunk)
    pad = n_chunks * chunk - n
    xp = np.concatenate([x, np.zeros((pad, d), np.float32)])
    valid = np.arange(n + pad) < n
    return xp, valid, n_chunks


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f'k={k!r} must be a positive int (the number of clusters).')
    if k > n:
        raise ValueError(f'k={k} > {n} samples: ask for at most as many clusters as samples.')
    return int(k)


def kmeans_plus_plus(embeddings, k: int, seed=0) -> np.ndarray:
    """[k, D] float32 k-means++ initial centres (rows of `embeddings`), seeded."""
    x = check_embeddings(embeddings)
    k = _check_k(k, x.shape[0])
    idx = _plus_plus(jnp.asarray(x), jnp.ones(x.shape[0], bool), _as_key(seed), k)
    return x[np.asarray(idx)]


def kmeans(
    embeddings, k: int, seed=0, max_iter: int = 50, chunk_size: int = 4096, init=None
) -> KMeansResult:
    """Spherical k-means (see the module docstring), deterministic for a seed.

    Args:
      embeddings: [N, D] unit-norm float embeddings.
      k: the number of clusters, 1 <= k <= N.
      seed: int or jax PRNG key of the k-means++ initialisation.
      max_iter: at most this many Lloyd iterations.
      chunk_size: rows per step of the scan (memory O(chunk_size * k) per iteration).
      init: optional [k, D] unit-norm initial centroids instead of k-means++.
    """
    x = check_embeddings(embeddings)
    n = x.shape[0]
    k = _check_k(k, n)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f'max_iter={max_iter!r} must be a positive int.')
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f'chunk_size={chunk_size!r} must be a positive int (rows per step).')
    chunk = min(chunk_size, n)
    xp, valid, n_chunks = _padded(x, chunk)
    xd, vd = jnp.asarray(xp), jnp.asarray(valid)
    if init is None:
        centroids = xd[_plus_plus(xd, vd, _as_key(seed), k)]
    else:
        init = check_embeddings(init, 'init centroids')
        if init.shape != (k, x.shape[1]):
            raise ValueError(f'init has shape {init.shape}, expected [k, D] = {(k, x.shape[1])}.')
        centroids = jnp.asarray(init)
    xc = xd.reshape(n_chunks, chunk, -1)
    vc = vd.reshape(n_chunks, chunk)
    prev, converged, iterations = None, False, 0
    for _ in range(max_iter):
        new, assign, inertia = _lloyd_step(xc, vc, centroids)
        iterations += 1
        # `centroids` are the means of `prev`; if nothing moved they are final as they are.
        if prev is not None and bool(jnp.all(assign == prev)):
            converged = True
            break
        prev, centroids = assign, new
    if not converged:  # assignments against the centroids being returned
        _, assign, inertia = _lloyd_step(xc, vc, centroids)
    return KMeansResult(
        centroids=np.asarray(centroids, np.float32),
        assignments=np.asarray(assign)[:n].astype(np.int32),
        inertia=float(inertia),
        iterations=iterations,
        converged=converged,
    )


def cluster_quotas(sizes, target: int) -> np.ndarray:
    """[m] int quotas summing to `target` for clusters of `sizes`, balanced (module docstring)."""
    sizes = np.asarray(sizes, np.int64)
    if target > sizes.sum():
        raise ValueError(f'target {target} > {int(sizes.sum())} samples in the clusters.')
    m = sizes.shape[0]
    quota = np.zeros(m, np.int64)
    remaining, left = int(target), m
    rest = list(np.argsort(sizes, kind='stable'))  # ascending size, ties by cluster order
    while rest:
        share = remaining // left
        if sizes[rest[0]] > share:
            break
        c = rest.pop(0)  # too small for an equal share: takes all it has
        quota[c] = sizes[c]
        remaining -= int(sizes[c])
        left -= 1
    if rest:
        share = remaining // left
        extra = remaining - share * left
        rest = np.asarray(rest)
        quota[rest] = share
        # The leftover goes to the largest clusters (ties: the lower cluster index); each
        # has more than `share` members, so it has room for one more.
        largest = rest[np.lexsort((rest, -sizes[rest]))][:extra]
        quota[largest] += 1
    return quota


def balanced_subset(assignments, fraction: float, seed: int = 0, scores=None) -> np.ndarray:
    """[N] bool mask of K = target_count(N, fraction) samples balanced over clusters.

    Args:
      assignments: [N] int cluster of each sample (any labels, e.g. `kmeans(...).assignments`).
      fraction: in (0, 1], the share of samples to keep; exactly K are kept.
      seed: seed of the uniform choice within clusters (unused with `scores`).
      scores: optional [N] scores (e.g. CLIP scores): each cluster keeps its highest-scored
        members (ties: the lower index) instead of a random choice.
    """
    a = np.asarray(assignments)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f'assignments must be a 1-D int array [N], got {a.dtype} {a.shape}: pass the '
            'cluster index of each sample.'
        )
    n = a.shape[0]
    if n == 0:
        raise ValueError('assignments is empty: pass the cluster of at least one sample.')
    target = target_count(n, fraction)
    _, label_of, sizes = np.unique(a, return_inverse=True, return_counts=True)
    quota = cluster_quotas(sizes, target)
    idx = np.arange(n)
    if scores is None:
        key = np.random.default_rng(seed).random(n)
        order = np.lexsort((idx, key, label_of))
    else:
        s = check_scores(scores, n)
        order = np.lexsort((idx, -s, label_of))
    # `order` runs through cluster 0's members, then cluster 1's, ... each in preference order.
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(n) - np.repeat(starts, sizes)
    keep = np.zeros(n, bool)
    keep[order[rank < quota[label_of[order]]]] = True
    return keep
