"""Memory-lean multi-device SigLIP loss: a ``shard_map`` + ``ppermute`` ring.

With the global batch of B pairs sharded over n devices (b = B/n pairs each), the dense
sigmoid loss under jit materialises a b×B logit slab per device (and keeps it for the
backward pass). The ring keeps it to one b×b block (SigLIP paper §3.3):

1. each device scores its b images against its own b texts: the only block with positives
   (on its diagonal);
2. the text embeddings travel one hop around the ring (``lax.ppermute``) n−1 times; after
   each hop the device adds the negative-only block of its images vs. the received texts;
3. a ``psum`` of the per-device sums, divided by the global B.

Why this and not big_vision's ``chunked_sigmoid_loss``: its per-chunk ``psum`` "broadcasts"
are merged by XLA's all-reduce combiner into one all-reduce, so all chunks are live at once.

Loop choice: ``lax.fori_loop`` over the hops, not a Python loop. A Python loop unrolls into
n−1 independent blocks that XLA is free to schedule (and keep) at the same time, and the
backward pass would keep every block's residuals; with ``fori_loop`` exactly one block is
live by construction. Each block is wrapped in ``jax.checkpoint`` so that reverse-mode
differentiation of the loop stores only the b×D text chunk of each hop (O(B·D) per device,
what an all-gather would hold anyway), never the b×b logits; the backward pass recomputes
one block at a time. In the loop body the next ``ppermute`` depends only on the current
texts, not on the block's result, so communication can overlap with the block's compute.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from alignjax.losses.contrastive import as_f32_scalar, check_pair

def _shard_map(f, *, mesh, in_specs, out_specs):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=True)


__all__ = ["siglip_loss_ring", "siglip_loss_ring_with_accuracy", "normalize_batch_axes"]


def normalize_batch_axes(batch_axes: str | Sequence[str], mesh) -> tuple[str, ...]:
    """Returns ``batch_axes`` as a tuple of mesh axis names, checking each exists."""
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    if not axes:
        raise ValueError("batch_axes must name at least one mesh axis.")
    if len(set(axes)) != len(axes):
        raise ValueError(f"batch_axes {axes} repeats an axis.")
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(
            f"batch_axes {list(missing)} are not axes of the mesh; the mesh has "
            f"axes {list(mesh.axis_names)}."
        )
    return axes


def _has_explicit_axes(mesh) -> bool:
    return jax.sharding.AxisType.Explicit in tuple(getattr(mesh, "axis_types", ()))


def _block(x, y, t, b, *, positives_on_diagonal: bool, with_accuracy: bool):
    """One block: (Σ −log σ(z·l) over the block, similarity stats or None).

    x: [b, D] images, y: [b, D] texts (any float dtype; computed in float32).
    Stats (no gradient): per-row max/argmax and per-column max/argmax of s = x yᵀ.
    """
    s = x.astype(jnp.float32) @ y.astype(jnp.float32).T  # [b, b]
    logits = t * s + b
    if positives_on_diagonal:
        n, m = logits.shape
        eye = jnp.arange(n)[:, None] == jnp.arange(m)[None, :]
        logits = jnp.where(eye, -logits, logits)  # −z_ij · l_ij
    total = jnp.sum(jax.nn.softplus(logits))
    if not with_accuracy:
        return total, None
    s = lax.stop_gradient(s)
    stats = (
        jnp.max(s, axis=1),
        jnp.argmax(s, axis=1).astype(jnp.int32),
        jnp.max(s, axis=0),
        jnp.argmax(s, axis=0).astype(jnp.int32),
    )
    return total, stats


def _better(val, idx, best_val, best_idx):
    """Keeps the larger similarity; on exact ties the lower global index (like argmax)."""
    take = (val > best_val) | ((val == best_val) & (idx < best_idx))
    return jnp.where(take, val, best_val), jnp.where(take, idx, best_idx)


def _ring_local(
    x, y, t, b, *, axis: str | tuple[str, ...], n: int, global_b: int, with_accuracy: bool
):
    """Per-device ring body (runs inside shard_map). x, y: local [b, D] shards."""
    bl = x.shape[0]
    k = lax.axis_index(axis)  # this device, 0..n-1
    perm = [(j, (j + 1) % n) for j in range(n)]  # send to the next device
    shift = functools.partial(lax.ppermute, axis_name=axis, perm=perm)
    pos_block = jax.checkpoint(
        functools.partial(_block, positives_on_diagonal=True, with_accuracy=with_accuracy)
    )
    neg_block = jax.checkpoint(
        functools.partial(_block, positives_on_diagonal=False, with_accuracy=with_accuracy)
    )
    local = jnp.arange(bl, dtype=jnp.int32)

    # Accuracy state. "row": best text for each local image (stays here). "col": best image
    # for each text currently held (travels with the texts). Indices are global.
    def merge(stats, src, row, col):
        rmax, rarg, cmax, carg = stats
        row = _better(rmax, src * bl + rarg, *row)
        col = _better(cmax, k * bl + carg, *col)
        return row, col

    # Hop 0: own texts, positives on the diagonal. Issue the first shift before the block
    # so that it can overlap with it.
    y_next = shift(y) if n > 1 else None
    total, stats = pos_block(x, y, t, b)
    if with_accuracy:
        rmax, rarg, cmax, carg = stats
        row = (rmax, k * bl + rarg)
        col = (cmax, k * bl + carg)
    else:
        row = col = None

    if n > 1:
        y = y_next
        if with_accuracy:
            col = shift(col)

        def hop(h, carry):
            # At hop h device k holds the texts of device (k − h) mod n.
            y, total, row, col = carry
            y_next = shift(y)  # independent of the block
            part, stats = neg_block(x, y, t, b)
            if with_accuracy:
                row, col = merge(stats, (k - h) % n, row, col)
                col = shift(col)
            return y_next, total + part, row, col

        if n > 2:
            y, total, row, col = lax.fori_loop(1, n - 1, hop, (y, total, row, col))
        # Last hop (n − 1): no further shift needed.
        part, stats = neg_block(x, y, t, b)
        total = total + part
        if with_accuracy:
            row, col = merge(stats, (k - (n - 1)) % n, row, col)

    loss = lax.psum(total, axis) / global_b
    if not with_accuracy:
        return loss, None
    # After the last hop this device holds the texts of device (k + 1) mod n.
    txt_src = (k - (n - 1)) % n
    i2t_hits = jnp.sum((row[1] == k * bl + local).astype(jnp.int32))
    t2i_hits = jnp.sum((col[1] == txt_src * bl + local).astype(jnp.int32))
    hits = lax.psum(jnp.stack([i2t_hits, t2i_hits]), axis)
    acc = hits.astype(jnp.float32) / global_b
    return loss, (acc[0], acc[1])


def _siglip_ring(zimg, ztxt, logit_scale, logit_bias, *, mesh, batch_axes, with_accuracy: bool):
    check_pair(zimg, ztxt, "siglip_loss_ring")
    if mesh is None:
        raise ValueError("siglip_loss_ring needs the device mesh (mesh=...).")
    axes = normalize_batch_axes(batch_axes, mesh)
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    global_b = zimg.shape[0]
    if global_b % n:
        raise ValueError(
            f"siglip_loss_ring: the global batch {global_b} must be divisible by the number "
            f"of devices on the batch axes {axes} ({n}); pad the batch or use impl='dense'."
        )
    t = as_f32_scalar(logit_scale, "logit_scale")
    b = as_f32_scalar(logit_bias, "logit_bias")
    axis = axes if len(axes) > 1 else axes[0]
    if _has_explicit_axes(mesh):
        # Explicit-mode shard_map checks that inputs already have the in_specs sharding
        # (it does not reshard by itself as it does for Auto axes).
        spec = P(axis, None)
        zimg = jax.sharding.reshard(zimg, jax.sharding.NamedSharding(mesh, spec))
        ztxt = jax.sharding.reshard(ztxt, jax.sharding.NamedSharding(mesh, spec))
    body = functools.partial(
        _ring_local, axis=axis, n=n, global_b=global_b, with_accuracy=with_accuracy
    )
    # Manual over every mesh axis; the embeddings are replicated over the non-batch axes
    # (e.g. 'tensor'), where each replica computes the same value.
    out_specs = (P(), (P(), P()) if with_accuracy else None)
    fn = _shard_map(
        body, mesh=mesh, in_specs=(P(axis, None), P(axis, None), P(), P()), out_specs=out_specs
    )
    return fn(zimg, ztxt, t, b)


def siglip_loss_ring(
    zimg: jax.Array,
    ztxt: jax.Array,
    logit_scale: Any,
    logit_bias: Any,
    *,
    mesh: jax.sharding.Mesh,
    batch_axes: str | Sequence[str] = ("data", "fsdp"),
) -> jax.Array:
    """SigLIP loss over the global batch, computed as a device ring (same value and gradient).

    ``L = −(1/B) Σ_i Σ_j log σ(z_ij (t·<x_i, y_j> + b))``, ``z_ij = +1`` iff ``i == j``,
    exactly as :func:`alignjax.losses.siglip_loss`, but each device only ever holds one
    (B/n)×(B/n) block of logits, forward and backward (see the module docstring).

    Args:
      zimg: [B, D] global image embeddings, normally sharded over ``batch_axes`` (any other
        layout is resharded by shard_map).
      ztxt: [B, D] global text embeddings, same layout; ``ztxt[i]`` pairs with ``zimg[i]``.
      logit_scale: the multiplier ``t`` (scalar or one-element array), replicated.
      logit_bias: the bias ``b`` (scalar or one-element array), replicated.
      mesh: the ``jax.sharding.Mesh``; axes not in ``batch_axes`` (e.g. ``'tensor'``) must
        hold replicated embeddings.
      batch_axes: mesh axes the batch dimension is sharded over, major to minor, as in
        ``PartitionSpec(batch_axes)``. n = product of their sizes; n = 1 works (no ppermute).

    Returns:
      float32 scalar, replicated.

    Raises:
      ValueError: if B is not divisible by n, or an axis is not in the mesh.
    """
    loss, _ = _siglip_ring(
        zimg, ztxt, logit_scale, logit_bias, mesh=mesh, batch_axes=batch_axes, with_accuracy=False
    )
    return loss


def siglip_loss_ring_with_accuracy(
    zimg, ztxt, logit_scale, logit_bias, *, mesh, batch_axes=("data", "fsdp")
):
    """:func:`siglip_loss_ring` plus in-batch top-1 retrieval accuracies from the same ring.

    Returns ``(loss, (i2t_acc, t2i_acc))``, float32 scalars. The accuracies equal
    ``mean_i [argmax_j s_ij == i]`` and ``mean_j [argmax_i s_ij == j]`` over the global batch
    (ties to the lowest index), found without materialising the B×B similarity matrix:
    each image keeps its running best text; each text carries its running best image around
    the ring.
    """
    return _siglip_ring(
        zimg, ztxt, logit_scale, logit_bias, mesh=mesh, batch_axes=batch_axes, with_accuracy=True
    )
