"""Ranks of positives by similarity, on device, in chunks of queries against a sharded gallery.

Every metric of this package is a function of one number per query: the rank of its best
positive in the query's similarity ordering of the gallery (0 = first).

  s_ij    = <q_i, g_j>                                  (float32, Precision.HIGHEST)
  P_i     = { j : group(g_j) == group(q_i) }            the query's positives
  j*_i    = the positive ranked first: max s_ij over P_i, lowest j on ties
  rank_i  = #{ j : s_ij > s_ij* } + #{ j < j* : s_ij == s_ij* }

which is j*'s position in a stable descending sort of row i (ties go to the lower gallery
index, as `jax.lax.top_k` and `metrics.topk_hits` order them). Then

  recall@k (any positive in the top k) = mean_i [rank_i < k],

so one pass gives recall at every k, and mean/median ranks. A query without positives gets
rank = gallery size (never a hit).

Why ranks and not top-k indices: a count is a sum over the gallery axis, so with the gallery
sharded over the devices every device reduces its own columns and one all-reduce of [Q]
integers finishes the chunk. No k cap, no merging of per-device top-k lists, and the tie
rule holds exactly.

Memory: the gallery [M, D] is sharded over the mesh's batch axes (n = data x fsdp shards);
each query chunk [Q, D] is replicated. Per device the similarity block is [Q, M/n] float32,
and XLA keeps about two such blocks live, so the peak per device is about

  8 * Q * M / n  (temporaries)  +  4 * M * D / n  (gallery shard)  +  4 * Q * D  bytes.

Measured with `jax.jit(...).lower(...).compile().memory_analysis()` on 8 devices, D = 512,
Q = 1024 (docs/EVALUATION.md has the command): gallery 100k images -> 99 MiB temporaries +
26 MiB arguments per device; gallery 500k captions -> 496 MiB + 124 MiB (Q = 256: 124 MiB
+ 123 MiB). So 100k images x 500k captions runs in well under 1 GiB per device, and lowering
`chunk_size` trades calls for memory. Nothing of size [N, M] is formed, on device or host.

Any similarity (`scored_positive_ranks`, `gallery_scores`): the same ranks, or score rows,
for a `score_fn(queries [Q, ...], gallery [b, ...]) -> [Q, b]` of feature pytrees (an
`alignjax.scoring.Scorer`'s `i2t` / `t2i`, e.g. token-wise late interaction). It runs under
`shard_map`: the query chunk is replicated, each device holds M/n gallery rows and scores
them `gallery_chunk` rows at a time (`lax.map`), so a token-wise score keeps one
[Q, gallery_chunk, n1, n2] interaction live per device; the ranks are finished with
all-reduces over the batch axes (max, min, sum), with the tie rule above.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alignjax import parallel, scoring
from alignjax.evaluate.embed import global_array


def _rank_block(q, q_group, g, g_group, g_valid):
    """[Q] int32 ranks of each query's best positive; g's rows may be sharded (see module)."""
    s = jnp.matmul(q, g.T, precision=jax.lax.Precision.HIGHEST)  # [Q, M]
    pos = (q_group[:, None] == g_group[None, :]) & g_valid[None, :]
    best = jnp.max(jnp.where(pos, s, -jnp.inf), axis=1, keepdims=True)  # [Q, 1]
    col = jnp.arange(g.shape[0], dtype=jnp.int32)[None, :]
    big = jnp.int32(g.shape[0])
    best_idx = jnp.min(jnp.where(pos & (s == best), col, big), axis=1, keepdims=True)
    ahead = (s > best) | ((s == best) & (col < best_idx))
    return jnp.sum(ahead & g_valid[None, :], axis=1, dtype=jnp.int32)


@functools.lru_cache(maxsize=16)
def _compiled(mesh: Mesh):
    gallery = parallel.batch_sharding(mesh)  # rows over ('data', 'fsdp')
    rep = parallel.replicated(mesh)
    return jax.jit(
        _rank_block,
        in_shardings=(rep, rep, gallery, gallery, gallery),
        out_shardings=rep,
    )


def _local(x: jax.Array) -> np.ndarray:
    """Host copy of a replicated global array (works with several processes)."""
    return np.asarray(x.addressable_data(0))


def positive_ranks(
    queries: np.ndarray,
    query_group: np.ndarray,
    gallery: np.ndarray,
    gallery_group: np.ndarray,
    mesh: Mesh,
    chunk_size: int = 1024,
) -> np.ndarray:
    """[Nq] int ranks of each query's best positive (see the module docstring).

    Args:
      queries: [Nq, D] float embeddings (host; every process passes the same array).
      query_group: [Nq] int, the group (image id, class) of each query.
      gallery: [M, D] float embeddings, sharded over the mesh's batch axes on device.
      gallery_group: [M] int; gallery item j is a positive of query i iff groups match.
      mesh: the device mesh.
      chunk_size: Q, queries per device call (bounds the [Q, M / n] block per device).
    """
    queries = np.asarray(queries, np.float32)
    gallery = np.asarray(gallery, np.float32)
    query_group = np.asarray(query_group, np.int32)
    gallery_group = np.asarray(gallery_group, np.int32)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f'Embedding sizes differ: queries {queries.shape}, gallery {gallery.shape}.'
        )
    n_shards = parallel.batch_size_per_shard(mesh)
    m = gallery.shape[0]
    m_pad = max(n_shards, math.ceil(m / n_shards) * n_shards)
    valid = np.arange(m_pad) < m
    pad = m_pad - m
    gallery = np.concatenate([gallery, np.zeros((pad, gallery.shape[1]), np.float32)])
    gallery_group = np.concatenate([gallery_group, np.full((pad,), -1, np.int32)])

    g_sh = parallel.batch_sharding(mesh)
    rep = parallel.replicated(mesh)
    fn = _compiled(mesh)
    with jax.set_mesh(mesh):
        g = global_array(gallery, g_sh)
        g_group = global_array(gallery_group, g_sh)
        g_valid = global_array(valid, g_sh)
        nq = queries.shape[0]
        q_size = min(chunk_size, max(nq, 1))
        out = []
        for start in range(0, nq, q_size):
            q = queries[start : start + q_size]
            qg = query_group[start : start + q_size]
            n = q.shape[0]
            if n < q_size:  # Fixed shapes: one compilation for all chunks.
                q = np.concatenate([q, np.zeros((q_size - n, q.shape[1]), np.float32)])
                qg = np.concatenate([qg, np.full((q_size - n,), -1, np.int32)])
            r = fn(global_array(q, rep), global_array(qg, rep), g, g_group, g_valid)
            out.append(_local(r)[:n])
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def _num_rows(tree) -> int:
    rows = {np.shape(x)[0] for x in jax.tree.leaves(tree)}
    if len(rows) != 1:
        raise ValueError(f'Feature arrays must share their leading (sample) axis; got {rows}.')
    return rows.pop()


def _pad_rows(tree, n: int):
    """Every leaf padded to n rows by repeating its last row (finite, so no NaN scores)."""

    def pad(x):
        x = np.asarray(x)
        return x if x.shape[0] == n else np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], 0)])

    return jax.tree.map(pad, tree)


def _gallery_layout(m: int, mesh: Mesh, gallery_chunk: int | None) -> tuple[int, int]:
    """(padded gallery size, rows per block): each of the n shards gets a whole number of
    blocks of `min(gallery_chunk, ceil(m / n))` rows."""
    n = parallel.batch_size_per_shard(mesh)
    per_shard = max(1, math.ceil(m / n))
    block = per_shard if gallery_chunk is None else min(gallery_chunk, per_shard)
    per_shard = math.ceil(per_shard / block) * block
    return n * per_shard, block


def _block_scores(score_fn, q, g, block: int):
    """[Q, Mloc] float32 scores of the queries against this device's gallery rows, `block`
    gallery rows at a time (one [Q, block, ...] interaction live)."""
    m_local = _num_rows(g)
    if block >= m_local:
        return score_fn(q, g).astype(jnp.float32)
    blocks = jax.tree.map(lambda x: x.reshape((m_local // block, block) + x.shape[1:]), g)
    s = jax.lax.map(lambda b: score_fn(q, b).astype(jnp.float32), blocks)  # [nb, Q, block]
    return jnp.moveaxis(s, 0, 1).reshape(s.shape[1], m_local)


def _rank_shard(score_fn, block, q, q_group, g, g_group, g_valid, g_col):
    """`_rank_block` for a score function, on one device's gallery rows (under shard_map):
    the best positive and its column are reduced over all devices before counting."""
    axes = parallel.BATCH_AXES
    s = _block_scores(score_fn, q, g, block)  # [Q, Mloc]
    pos = (q_group[:, None] == g_group[None, :]) & g_valid[None, :]
    best = jax.lax.pmax(jnp.max(jnp.where(pos, s, -jnp.inf), axis=1), axes)[:, None]
    big = jnp.iinfo(jnp.int32).max
    cand = jnp.where(pos & (s == best), g_col[None, :], big)
    best_idx = jax.lax.pmin(jnp.min(cand, axis=1), axes)[:, None]
    ahead = (s > best) | ((s == best) & (g_col[None, :] < best_idx))
    return jax.lax.psum(jnp.sum(ahead & g_valid[None, :], axis=1, dtype=jnp.int32), axes)


@functools.lru_cache(maxsize=64)
def _compiled_scored_ranks(mesh: Mesh, score_fn, block: int):
    g = P(parallel.BATCH_AXES)
    fn = jax.shard_map(
        functools.partial(_rank_shard, score_fn, block),
        mesh=mesh,
        in_specs=(P(), P(), g, g, g, g),
        out_specs=P(),
    )
    return jax.jit(fn)


@functools.lru_cache(maxsize=64)
def _compiled_gallery_scores(mesh: Mesh, score_fn, block: int, m: int, group_size: int):
    local = jax.shard_map(
        lambda q, g: _block_scores(score_fn, q, g, block),
        mesh=mesh,
        in_specs=(P(), P(parallel.BATCH_AXES)),
        out_specs=P(None, parallel.BATCH_AXES),
    )

    def fn(q, g):
        # Gather the [Q, M] rows to every device and average each group of columns there:
        # the same reduction (order included) whatever the number of devices.
        s = jax.lax.with_sharding_constraint(local(q, g), NamedSharding(mesh, P()))[:, :m]
        return s.reshape(s.shape[0], m // group_size, group_size).mean(axis=-1)

    return jax.jit(fn, out_shardings=parallel.replicated(mesh))


def _query_chunks(queries, chunk_size: int):
    """(padded query chunk, valid rows) of fixed shape: one compilation for all chunks."""
    nq = _num_rows(queries)
    q_size = max(1, min(chunk_size, nq))
    for start in range(0, nq, q_size):
        rows = slice(start, start + q_size)
        chunk = jax.tree.map(lambda x, rows=rows: np.asarray(x)[rows], queries)
        n = _num_rows(chunk)
        yield _pad_rows(chunk, q_size), n, start


def scored_positive_ranks(
    score_fn,
    queries,
    query_group: np.ndarray,
    gallery,
    gallery_group: np.ndarray,
    mesh: Mesh,
    chunk_size: int = 1024,
    gallery_chunk: int | None = None,
) -> np.ndarray:
    """[Nq] int ranks of each query's best positive under `score_fn` (module docstring).

    Args:
      score_fn: `(queries [Q, ...], gallery [b, ...]) -> [Q, b]` on feature pytrees, jax
        ops only; hashable and stable (a module-level function or a `Scorer` method), as
        it keys the compilation cache.
      queries: pytree of host arrays [Nq, ...] (every process passes the same).
      query_group, gallery_group: [Nq], [M] int; positives share a group.
      gallery: pytree of host arrays [M, ...], sharded over the mesh's batch axes.
      chunk_size: queries per device call. gallery_chunk: gallery rows scored at a time on
        each device (None: the device's whole shard).
    """
    query_group = np.asarray(query_group, np.int32)
    m = _num_rows(gallery)
    m_pad, block = _gallery_layout(m, mesh, gallery_chunk)
    g_sh, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    group = np.concatenate([np.asarray(gallery_group, np.int32), np.full(m_pad - m, -1, np.int32)])
    fn = _compiled_scored_ranks(mesh, score_fn, block)
    out = []
    with jax.set_mesh(mesh), jax.default_matmul_precision('highest'):
        g = jax.tree.map(lambda x: global_array(x, g_sh), _pad_rows(gallery, m_pad))
        g_group = global_array(group, g_sh)
        g_valid = global_array(np.arange(m_pad) < m, g_sh)
        g_col = global_array(np.arange(m_pad, dtype=np.int32), g_sh)
        for q, n, start in _query_chunks(queries, chunk_size):
            qg = np.full(_num_rows(q), -1, np.int32)
            qg[:n] = query_group[start : start + n]
            q = jax.tree.map(lambda x: global_array(x, rep), q)
            r = fn(q, global_array(qg, rep), g, g_group, g_valid, g_col)
            out.append(_local(r)[:n])
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def gallery_scores(
    score_fn,
    queries,
    gallery,
    mesh: Mesh,
    chunk_size: int = 1024,
    gallery_chunk: int | None = None,
    group_size: int = 1,
) -> np.ndarray:
    """[Nq, M / group_size] float32 scores on device: column c is the mean of `score_fn`
    over gallery rows `c * group_size ... (c + 1) * group_size - 1` (zero-shot: the
    templates of class c, class-major; `group_size=1`: the score matrix itself).

    Arguments as in `scored_positive_ranks`. Per device: the [Q, gallery_chunk, ...]
    interaction, plus the gathered [Q, M] rows of one chunk; the host receives [Nq, M / G].
    """
    m = _num_rows(gallery)
    if m % group_size:
        raise ValueError(f'Gallery size {m} is not a multiple of group_size={group_size}.')
    m_pad, block = _gallery_layout(m, mesh, gallery_chunk)
    fn = _compiled_gallery_scores(mesh, score_fn, block, m, group_size)
    g_sh, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    out = []
    with jax.set_mesh(mesh), jax.default_matmul_precision('highest'):
        g = jax.tree.map(lambda x: global_array(x, g_sh), _pad_rows(gallery, m_pad))
        for q, n, _ in _query_chunks(queries, chunk_size):
            s = fn(jax.tree.map(lambda x: global_array(x, rep), q), g)
            out.append(_local(s)[:n])
    if not out:
        return np.zeros((0, m // group_size), np.float32)
    return np.concatenate(out)


def max_prototype_scores(queries: np.ndarray, prototypes: np.ndarray, chunk_size: int = 1024):
    """[N, C] float32: s_ic = max_g <q_i, p_gc> for queries [N, D], prototypes [G, C, D]
    (host, in chunks of queries; zero-shot with several prompt groups per class)."""
    q = np.asarray(queries, np.float32)
    p = np.asarray(prototypes, np.float32)
    out = np.empty((q.shape[0], p.shape[1]), np.float32)
    for start in range(0, q.shape[0], max(1, chunk_size)):
        block = np.einsum('nd,gcd->gnc', q[start : start + chunk_size], p)
        out[start : start + chunk_size] = block.max(axis=0)
    return out


def ranks_from_scores(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N] int32 rank of each row's label column, with the tie rule of the module docstring:
    rank_i = #{c : s_ic > s_iy} + #{c < y : s_ic == s_iy}."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, np.int64)
    own = scores[np.arange(scores.shape[0]), labels][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    ahead = (scores > own) | ((scores == own) & (cols < labels[:, None]))
    return ahead.sum(axis=1).astype(np.int32)


def compiled_memory(mesh: Mesh, gallery_size: int, dim: int, chunk_size: int) -> dict[str, int]:
    """Per-device bytes of one compiled rank block (no data needed: abstract shapes)."""
    g_sh, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    m, q = gallery_size, chunk_size
    args = (
        jax.ShapeDtypeStruct((q, dim), jnp.float32, sharding=rep),
        jax.ShapeDtypeStruct((q,), jnp.int32, sharding=rep),
        jax.ShapeDtypeStruct((m, dim), jnp.float32, sharding=g_sh),
        jax.ShapeDtypeStruct((m,), jnp.int32, sharding=g_sh),
        jax.ShapeDtypeStruct((m,), jnp.bool_, sharding=g_sh),
    )
    with jax.set_mesh(mesh):
        ma = _compiled(mesh).lower(*args).compile().memory_analysis()
    return {'temp_bytes': ma.temp_size_in_bytes, 'argument_bytes': ma.argument_size_in_bytes}


def print_memory_table(sizes=((100_000, 1024), (500_000, 1024), (500_000, 256)), dim=512):
    """Markdown table of `compiled_memory` on all devices, e.g. on 8 forced CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -c \\
        'from alignjax.evaluate.ranks import print_memory_table; print_memory_table()'
    """
    mesh = parallel.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
    n = parallel.batch_size_per_shard(mesh)
    print('| gallery M | D | chunk Q | devices | temporaries / device | arguments / device |')
    print('|---|---|---|---|---|---|')
    for m, q in sizes:
        r = compiled_memory(mesh, m, dim, q)
        t, a = r['temp_bytes'] / 2**20, r['argument_bytes'] / 2**20
        print(f'| {m:,} | {dim} | {q} | {n} | {t:.0f} MiB | {a:.0f} MiB |')


def scored_compiled_memory(
    score_fn, queries, gallery, mesh: Mesh, gallery_chunk: int | None, group_size: int | None = None
) -> dict[str, int]:
    """Per-device bytes of one compiled `scored_positive_ranks` call (`group_size=None`) or
    `gallery_scores` call, from abstract shapes: `queries` (one chunk) and `gallery` (all of
    it) are pytrees of `jax.ShapeDtypeStruct`."""
    m = _num_rows(gallery)
    m_pad, block = _gallery_layout(m, mesh, gallery_chunk)
    g_sh, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)

    def spec(x, n, sharding):
        return jax.ShapeDtypeStruct((n,) + tuple(x.shape[1:]), x.dtype, sharding=sharding)

    q = jax.tree.map(lambda x: spec(x, x.shape[0], rep), queries)
    g = jax.tree.map(lambda x: spec(x, m_pad, g_sh), gallery)
    with jax.set_mesh(mesh), jax.default_matmul_precision('highest'):
        if group_size is None:
            nq = _num_rows(queries)
            col = [jax.ShapeDtypeStruct((m_pad,), dt, sharding=g_sh) for dt in ('int32', 'bool')]
            qg = jax.ShapeDtypeStruct((nq,), jnp.int32, sharding=rep)
            lowered = _compiled_scored_ranks(mesh, score_fn, block).lower(
                q, qg, g, col[0], col[1], col[0]
            )
        else:
            lowered = _compiled_gallery_scores(mesh, score_fn, block, m, group_size).lower(q, g)
        ma = lowered.compile().memory_analysis()
    return {'temp_bytes': ma.temp_size_in_bytes, 'argument_bytes': ma.argument_size_in_bytes}


def print_tokenwise_memory_table(query_chunk=128, gallery_chunk=16, n_img=197, n_txt=77, dim=512):
    """Markdown table of `scored_compiled_memory` for FILIP's token-wise scorer at ViT-B/16
    sizes (197 patch tokens, 77 text tokens), e.g. on 8 forced CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -c \\
        'from alignjax.evaluate.ranks import print_tokenwise_memory_table as p; p()'
    """
    mesh = parallel.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
    n = parallel.batch_size_per_shard(mesh)
    tw = scoring.tokenwise_scorer(query_chunk=query_chunk, gallery_chunk=gallery_chunk)

    def img(b):
        return {'tokens': jax.ShapeDtypeStruct((b, n_img, dim), jnp.float32)}

    def txt(b):
        return {
            'tokens': jax.ShapeDtypeStruct((b, n_txt, dim), jnp.float32),
            'mask': jax.ShapeDtypeStruct((b, n_txt), jnp.bool_),
        }

    q, c = query_chunk, gallery_chunk
    rows = [
        ('text retrieval (ranks)', tw.i2t, img(q), txt(25_000), None),
        ('image retrieval (ranks)', tw.t2i, txt(q), img(5_000), None),
        ('zero-shot, 1000 classes x 80 templates (scores)', tw.i2t, img(q), txt(80_000), 80),
    ]
    print(
        '| call | queries Q | gallery M | gallery chunk | devices | temporaries / device '
        '| arguments / device |'
    )
    print('|---|---|---|---|---|---|---|')
    for what, fn, queries, gallery, group in rows:
        r = scored_compiled_memory(fn, queries, gallery, mesh, c, group)
        t, a = r['temp_bytes'] / 2**20, r['argument_bytes'] / 2**20
        m = _num_rows(gallery)
        print(f'| {what} | {q} | {m:,} | {c} | {n} | {t:.0f} MiB | {a:.0f} MiB |')
