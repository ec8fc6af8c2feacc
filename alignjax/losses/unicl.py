"""UniCL (Yang et al., CVPR 2022): CLIP's loss with label-equality targets.

Each example carries a label ``y_i``: its class for classification data, and a label of its
own for a caption (here any negative value: it matches only itself). Every pair with equal
labels is a positive::

    P(i) = {j : y_j == y_i}                      (i is always in P(i))
    T_ij = [j in P(i)] / |P(i)|                  each row sums to 1
    l_ij = t <x_i, y_j>
    L = 1/2 [ -(1/B) sum_i sum_j T_ij log softmax_j(l_i.)
              -(1/B) sum_j sum_i T_ji log softmax_i(l_.j) ]

With all labels distinct, ``T = I`` and the loss is CLIP's exactly (tested).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses.contrastive import as_f32_scalar, check_pair, info_nce, run_auto

__all__ = ["label_targets", "unicl_loss"]


def label_targets(labels: jax.Array) -> jax.Array:
    """[B, B] float32 ``T``: row i uniform over the examples sharing ``labels[i]``.

    ``labels`` [B] int; a negative label is unique to its example (a caption)."""
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"label_targets: labels must be [B] ints, got shape {labels.shape}.")
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    same = same | jnp.eye(labels.shape[0], dtype=bool)
    same = same.astype(jnp.float32)
    return same / jnp.sum(same, axis=1, keepdims=True)


def unicl_loss(zimg: jax.Array, ztxt: jax.Array, logit_scale: Any, labels: jax.Array) -> jax.Array:
    """Symmetric InfoNCE with the targets of :func:`label_targets` (float32 scalar).

    Args:
      zimg, ztxt: [B, D] unit-norm embeddings; ``ztxt[i]`` is the text of ``zimg[i]``.
      logit_scale: ``t`` (scalar).
      labels: [B] int; equal non-negative labels are positives of each other.

    ``T`` is symmetric, so the text->image direction uses it as it is.
    """
    check_pair(zimg, ztxt, "unicl_loss")
    if labels.shape != zimg.shape[:1]:
        raise ValueError(f"unicl_loss: labels {labels.shape} must be [B] for zimg {zimg.shape}.")
    return run_auto(
        _unicl_dense,
        jax.sharding.PartitionSpec(),
        zimg,
        ztxt,
        as_f32_scalar(logit_scale, "logit_scale"),
        labels,
    )


def _unicl_dense(zimg, ztxt, t, labels):
    logits = t * (zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T)
    targets = label_targets(labels)
    return 0.5 * (info_nce(logits, targets) + info_nce(logits.T, targets))
