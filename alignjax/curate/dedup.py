"""Near-duplicate removal on unit-norm embeddings: exact or LSH pairs, one representative a group.

For unit-norm embeddings x_1 ... x_N ([N, D], e.g. image embeddings) and a threshold t in
(0, 1], the duplicate pairs are

  E = { (i, j) : i < j, <x_i, x_j> >= t }

and the duplicate groups are the connected components of the graph (N, E) (so a chain of
near-duplicates a ~ b ~ c is one group even if <a, c> < t). Each group keeps ONE sample, its
representative, chosen deterministically: the lowest index, or with `scores` the highest
score, ties broken by the lower index. `DedupResult.group[i]` is the representative of i's
group (i itself for a sample without duplicates), `keep = group == arange(N)`.

Exact (`exact_duplicates`): every pair is scored on device, one chunk of C rows at a time,

  S = X[r : r + C] X^T                  [C, N] float32 (Precision.HIGHEST), jitted

and only the indices (and cosines) of the entries >= t with j > i come back to the host,
through a fixed-capacity `jnp.nonzero` that is re-run with a larger capacity when a chunk
holds more pairs. Nothing of size N x N exists anywhere; the device holds X (4 N D bytes)
and about two [C, N] blocks (8 C N bytes: C = 1024, N = 1M is 8 GiB, so for N in the
millions use LSH, or a smaller chunk). The host holds only E. Rows are padded to a multiple
of C with zero vectors, which score 0 < t, so one compilation serves every chunk.

Approximate (`lsh_duplicates`): random-hyperplane LSH (Charikar 2002). `num_tables` tables
of `bits` hyperplanes r ~ N(0, I_D) each (numpy, seeded), and the code of x in table l is
the bit string [<x, r_{l,b}> > 0]_b. Two vectors at angle theta agree on one bit with
probability 1 - theta / pi, so a pair at cosine c lands in a common bucket of at least one
table with probability

  P(c) = 1 - (1 - (1 - arccos(c) / pi) ** bits) ** num_tables.

Candidates are the pairs that share a bucket in any table; only they get the exact cosine
check (float32 on the host), so every LSH pair is a true pair (precision 1 up to float
rounding at the threshold) and recall is the share of E found. The defaults (bits = 16,
num_tables = 16) give P = 0.96 at c = 0.95 and 0.994 at c = 0.97, while two unrelated
vectors (c ~ 0) share a bucket of one table with probability 2^-16. A bucket of more than
`max_bucket` members (clustered data) is checked exactly, as its own small exact problem,
instead of listing its pairs. Memory: the codes ([N, num_tables] uint32) and the candidate
pairs, on the host.

`compare(reference, candidate)` measures an approximate result against the exact one: the
recall and precision of its duplicate pairs E, and of its same-group pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.curate.filters import check_embeddings, check_scores

__all__ = [
    'DedupResult',
    'PairAgreement',
    'compare',
    'duplicate_pairs',
    'exact_duplicates',
    'groups_from_pairs',
    'lsh_codes',
    'lsh_duplicates',
    'lsh_pair_probability',
]

_MIN_CAPACITY = 1024  # first capacity of a chunk's pair list; doubled (to fit) as needed
_VERIFY_BATCH = 1 << 16  # candidate pairs checked per host batch (bounds the gathers)


@dataclasses.dataclass(frozen=True)
class DedupResult:
    """Near-duplicate groups of N samples.

    Attributes:
      keep: [N] bool, True for each group's representative (and every sample without a
        duplicate).
      group: [N] int64, the index of the representative of the sample's group.
      pairs: [P, 2] int64 duplicate pairs (i < j, <x_i, x_j> >= threshold), sorted.
      similarities: [P] float32 cosine of each pair.
      num_candidates: pairs whose cosine was computed (N (N - 1) / 2 for exact).
      threshold: the cosine threshold used.
    """

    keep: np.ndarray
    group: np.ndarray
    pairs: np.ndarray
    similarities: np.ndarray
    num_candidates: int
    threshold: float

    @property
    def num_pairs(self) -> int:
        return int(self.pairs.shape[0])

    @property
    def num_kept(self) -> int:
        return int(self.keep.sum())

    @property
    def num_removed(self) -> int:
        return int(self.keep.shape[0] - self.keep.sum())

    @property
    def num_groups(self) -> int:
        """Groups of two or more samples."""
        sizes = np.bincount(self.group, minlength=self.group.shape[0])
        return int((sizes > 1).sum())


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise ValueError(f'threshold={threshold!r} must be a cosine in (0, 1].')
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(
            f'threshold={threshold!r} must be a cosine in (0, 1] (e.g. 0.95 for near-duplicates).'
        )
    return float(threshold)


def _check_chunk(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f'chunk_size={chunk_size!r} must be a positive int (rows per call).')
    return chunk_size


# ----------------------------------------------------------------------------------------
# Exact pairs, chunked on device.
# ----------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=('chunk', 'capacity'))
def _chunk_pairs(gallery, row0, threshold, chunk: int, capacity: int):
    """Pairs (i, j > i) with cosine >= threshold for rows [row0, row0 + chunk) of gallery.

    Returns (count, rows, cols, sims) with `capacity` slots; count may exceed capacity
    (then the caller re-runs with more).
    """
    block = jax.lax.dynamic_slice_in_dim(gallery, row0, chunk, axis=0)  # [C, D]
    s = jnp.matmul(block, gallery.T, precision=jax.lax.Precision.HIGHEST)  # [C, M]
    rows = row0 + jnp.arange(chunk, dtype=jnp.int32)[:, None]
    cols = jnp.arange(gallery.shape[0], dtype=jnp.int32)[None, :]
    hit = (s >= threshold) & (cols > rows)
    count = jnp.sum(hit, dtype=jnp.int32)
    r, c = jnp.nonzero(hit, size=capacity, fill_value=0)
    return count, r.astype(jnp.int32) + row0, c.astype(jnp.int32), s[r, c]


def duplicate_pairs(embeddings, threshold: float = 0.95, chunk_size: int = 1024):
    """All pairs (i < j) with cosine >= threshold, exactly: ([P, 2] int64, [P] float32).

    The pairs are sorted (by i, then j). See the module docstring for the memory.
    """
    x = check_embeddings(embeddings)
    threshold = _check_threshold(threshold)
    chunk = _check_chunk(chunk_size)
    n = x.shape[0]
    # Small inputs (LSH's big buckets) pad to a power of two: few shapes, few compilations.
    chunk = min(chunk, 1 << (n - 1).bit_length())
    n_pad = math.ceil(n / chunk) * chunk
    gallery = jax.device_put(np.concatenate([x, np.zeros((n_pad - n, x.shape[1]), np.float32)]))
    t = jnp.float32(threshold)
    capacity = _MIN_CAPACITY
    rows, cols, sims = [], [], []
    for row0 in range(0, n_pad, chunk):
        count, r, c, s = _chunk_pairs(gallery, jnp.int32(row0), t, chunk, capacity)
        count = int(count)
        if count > capacity:  # rare: grow to the next power of two and redo this chunk
            capacity = 1 << (count - 1).bit_length()
            count, r, c, s = _chunk_pairs(gallery, jnp.int32(row0), t, chunk, capacity)
            count = int(count)
        rows.append(np.asarray(r[:count]))
        cols.append(np.asarray(c[:count]))
        sims.append(np.asarray(s[:count]))
    pairs = np.stack([np.concatenate(rows), np.concatenate(cols)], axis=1).astype(np.int64)
    sims = np.concatenate(sims).astype(np.float32)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], sims[order]


# ----------------------------------------------------------------------------------------
# Groups: connected components and their representatives.
# ----------------------------------------------------------------------------------------
def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """[N] the lowest index of each sample's connected component (vectorised union-find).

    Each round hooks the root of every edge's endpoints onto the smaller of the two roots,
    then compresses paths by pointer jumping. parent[x] <= x throughout and only roots are
    re-hooked, so at the fixed point every component's root is its lowest index.
    """
    parent = np.arange(n, dtype=np.int64)
    if pairs.shape[0] == 0:
        return parent
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        ra, rb = ra[differ], rb[differ]
        low = np.minimum(ra, rb)
        np.minimum.at(parent, ra, low)
        np.minimum.at(parent, rb, low)
        while True:  # pointer jumping until every node points at a root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def groups_from_pairs(n: int, pairs, scores=None) -> np.ndarray:
    """[N] int64 representative of each sample's group (see the module docstring).

    Args:
      n: the number of samples.
      pairs: [P, 2] int duplicate pairs (any order).
      scores: optional [N] scores; the representative is the highest-scored member (ties:
        the lowest index) instead of the lowest index.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f'pairs index outside [0, {n}): pass indices of the {n} samples.')
    root = _components(n, pairs)
    if scores is None:
        return root
    s = check_scores(scores, n)
    idx = np.arange(n)
    order = np.lexsort((idx, -s, root))  # by component, then highest score, then index
    first = np.ones(n, bool)
    first[1:] = root[order][1:] != root[order][:-1]
    rep_of_root = np.empty(n, np.int64)
    rep_of_root[root[order][first]] = order[first]
    return rep_of_root[root]


def _result(n, pairs, sims, scores, num_candidates, threshold) -> DedupResult:
    group = groups_from_pairs(n, pairs, scores)
    return DedupResult(
        keep=group == np.arange(n),
        group=group,
        pairs=pairs,
        similarities=sims,
        num_candidates=int(num_candidates),
        threshold=threshold,
    )


def exact_duplicates(
    embeddings, threshold: float = 0.95, scores=None, chunk_size: int = 1024
) -> DedupResult:
    """Near-duplicate groups from all pairs with cosine >= threshold (exact, chunked).

    Args:
      embeddings: [N, D] unit-norm float embeddings.
      threshold: cosine in (0, 1]; pairs at or above it are duplicates.
      scores: optional [N] scores (e.g. CLIP scores): each group keeps its best-scored
        member instead of its lowest index.
      chunk_size: rows scored per device call (the device holds about 8 * chunk * N bytes).
    """
    x = check_embeddings(embeddings)
    n = x.shape[0]
    if scores is not None:
        check_scores(scores, n)
    pairs, sims = duplicate_pairs(x, threshold, chunk_size)
    return _result(n, pairs, sims, scores, n * (n - 1) // 2, float(threshold))


# ----------------------------------------------------------------------------------------
# Random-hyperplane LSH.
# ----------------------------------------------------------------------------------------
def lsh_pair_probability(cosine: float, bits: int, num_tables: int) -> float:
    """P(a pair at this cosine shares a bucket in at least one table), see the module."""
    p_bit = 1.0 - math.acos(max(-1.0, min(1.0, cosine))) / math.pi
    return 1.0 - (1.0 - p_bit**bits) ** num_tables


@functools.partial(jax.jit, static_argnames=('chunk', 'num_tables', 'bits'))
def _chunk_codes(x, row0, planes, chunk: int, num_tables: int, bits: int):
    """[chunk, num_tables] uint32 codes of rows [row0, row0 + chunk) of x."""
    block = jax.lax.dynamic_slice_in_dim(x, row0, chunk, axis=0)
    proj = jnp.matmul(block, planes.T, precision=jax.lax.Precision.HIGHEST)  # [C, L * B]
    bit = (proj > 0).astype(jnp.uint32).reshape(chunk, num_tables, bits)
    weights = jnp.left_shift(jnp.uint32(1), jnp.arange(bits, dtype=jnp.uint32))
    return jnp.sum(bit * weights, axis=-1, dtype=jnp.uint32)


def lsh_codes(
    embeddings, num_tables: int = 16, bits: int = 16, seed: int = 0, chunk_size: int = 1024
) -> np.ndarray:
    """[N, num_tables] uint32 bucket codes of random-hyperplane LSH (seeded, on device)."""
    x = check_embeddings(embeddings, unit_norm=False)
    for name, v, hi in (('num_tables', num_tables, None), ('bits', bits, 32)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (hi and v > hi):
            limit = f'1..{hi}' if hi else '>= 1'
            raise ValueError(f'{name}={v!r} must be an int in {limit}.')
    chunk = min(_check_chunk(chunk_size), x.shape[0])
    n, d = x.shape
    n_pad = math.ceil(n / chunk) * chunk
    # The planes come from numpy's generator so a seed gives the same codes on any backend.
    planes = np.random.default_rng(seed).standard_normal((num_tables * bits, d))
    xd = jax.device_put(np.concatenate([x, np.zeros((n_pad - n, d), np.float32)]))
    pd = jax.device_put(planes.astype(np.float32))
    out = [
        np.asarray(_chunk_codes(xd, jnp.int32(r), pd, chunk, num_tables, bits))
        for r in range(0, n_pad, chunk)
    ]
    return np.concatenate(out)[:n]


def _bucket_candidates(codes: np.ndarray, max_bucket: int):
    """Pairs sharing a bucket of one table's codes [N], split by bucket size.

    Returns (small, big): `small` the [P] int64 keys i * N + j (i < j) of every pair in a
    bucket of <= max_bucket members, `big` a list of the member arrays of larger buckets.
    """
    n = codes.shape[0]
    order = np.argsort(codes, kind='stable')
    sc = codes[order]
    start = np.ones(n, bool)
    start[1:] = sc[1:] != sc[:-1]
    starts = np.flatnonzero(start)
    sizes = np.diff(np.append(starts, n))
    size_at = np.repeat(sizes, sizes)
    later = size_at - (np.arange(n) - np.repeat(starts, sizes)) - 1  # members after this one
    big = [np.sort(order[s : s + m]) for s, m in zip(starts, sizes) if m > max_bucket]
    active = np.flatnonzero((later >= 1) & (size_at <= max_bucket))
    keys = []
    k = 1
    # Offset k pairs each position with the member k places later in its bucket; positions
    # with fewer than k later members drop out, so the work is the number of pairs.
    while active.size:
        i, j = order[active], order[active + k]
        keys.append(np.minimum(i, j) * n + np.maximum(i, j))
        k += 1
        active = active[later[active] >= k]
    small = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    return small.astype(np.int64), big


def _verify(x: np.ndarray, keys: np.ndarray, threshold: float):
    """The candidate keys whose pair has cosine >= threshold, and those cosines."""
    n = x.shape[0]
    found, sims = [], []
    for b in range(0, keys.shape[0], _VERIFY_BATCH):
        k = keys[b : b + _VERIFY_BATCH]
        s = np.einsum('pd,pd->p', x[k // n], x[k % n])
        hit = s >= np.float32(threshold)
        found.append(k[hit])
        sims.append(s[hit])
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found), np.concatenate(sims).astype(np.float32)


def lsh_duplicates(
    embeddings,
    threshold: float = 0.95,
    scores=None,
    num_tables: int = 16,
    bits: int = 16,
    seed: int = 0,
    max_bucket: int = 512,
    chunk_size: int = 1024,
) -> DedupResult:
    """Near-duplicate groups from random-hyperplane LSH candidates (see the module docstring).

    Args:
      embeddings: [N, D] unit-norm float embeddings.
      threshold: cosine in (0, 1]; candidate pairs at or above it are duplicates.
      scores: optional [N] scores; each group keeps its best-scored member.
      num_tables: independent hash tables (more: higher recall, more candidates).
      bits: hyperplanes per table, 1..32 (more: fewer candidates, lower recall per table).
      seed: seed of the hyperplanes; the result is a function of (embeddings, parameters).
      max_bucket: buckets with more members are checked exactly as a block instead of
        listing their pairs.
      chunk_size: rows per device call when hashing and in the exact check of big buckets.
    """
    x = check_embeddings(embeddings)
    threshold = _check_threshold(threshold)
    n = x.shape[0]
    if scores is not None:
        check_scores(scores, n)
    if isinstance(max_bucket, bool) or not isinstance(max_bucket, int) or max_bucket < 2:
        raise ValueError(f'max_bucket={max_bucket!r} must be an int >= 2.')
    codes = lsh_codes(x, num_tables, bits, seed, chunk_size)
    candidates = np.zeros(0, np.int64)
    dense_keys, dense_sims, dense_checked = [], [], 0
    for table in range(num_tables):
        small, big = _bucket_candidates(codes[:, table], max_bucket)
        candidates = np.union1d(candidates, small)
        for members in big:
            local, s = duplicate_pairs(x[members], threshold, chunk_size)
            dense_keys.append(members[local[:, 0]] * n + members[local[:, 1]])
            dense_sims.append(s)
            dense_checked += members.size * (members.size - 1) // 2
    keys, sims = _verify(x, candidates, threshold)
    if dense_keys:
        keys = np.concatenate([keys, *dense_keys])
        sims = np.concatenate([sims, *dense_sims])
    keys, first = np.unique(keys, return_index=True)  # sorted by (i, j); drops repeats
    sims = sims[first]
    pairs = np.stack([keys // n, keys % n], axis=1).astype(np.int64)
    return _result(n, pairs, sims, scores, candidates.size + dense_checked, threshold)


# ----------------------------------------------------------------------------------------
# Agreement of two results (approximate vs exact).
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PairAgreement:
    """How a candidate result (e.g. LSH) agrees with a reference (exact) on the same data.

    pair_*: over the duplicate pairs E (cosine >= threshold) each result found;
    group_*: over the same-group pairs {(i, j) : group[i] == group[j]} (what dedup acts on:
    a pair LSH misses still counts here if a chain of found pairs joins it);
    keep_agreement: the share of samples with the same keep decision.
    A recall (precision) with nothing to find (nothing found) is 1.0.
    """

    reference_pairs: int
    candidate_pairs: int
    common_pairs: int
    pair_recall: float
    pair_precision: float
    group_recall: float
    group_precision: float
    keep_agreement: float


def _same_group_pairs(*groups: np.ndarray) -> int:
    """The number of pairs in one cell of the groups' joint partition: sum C(m, 2)."""
    _, counts = np.unique(np.stack(groups, axis=1), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def compare(reference: DedupResult, candidate: DedupResult) -> PairAgreement:
    """Recall and precision of `candidate`'s duplicate pairs and groups against `reference`."""
    n = reference.group.shape[0]
    if candidate.group.shape[0] != n:
        raise ValueError(
            f'compare: results of {n} and {candidate.group.shape[0]} samples: compare two '
            'results of the same embeddings.'
        )
    ref = reference.pairs[:, 0] * n + reference.pairs[:, 1]
    cand = candidate.pairs[:, 0] * n + candidate.pairs[:, 1]
    common = int(np.intersect1d(ref, cand).size)
    g_ref = _same_group_pairs(reference.group)
    g_cand = _same_group_pairs(candidate.group)
    g_both = _same_group_pairs(reference.group, candidate.group)
    return PairAgreement(
        reference_pairs=int(ref.size),
        candidate_pairs=int(cand.size),
        common_pairs=common,
        pair_recall=_ratio(common, ref.size),
        pair_precision=_ratio(common, cand.size),
        group_recall=_ratio(g_both, g_ref),
        group_precision=_ratio(g_both, g_cand),
        keep_agreement=float(np.mean(reference.keep == candidate.keep)),
    )
