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
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from alignjax import parallel
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
