"""UNITER word-region alignment (Chen et al., ECCV 2020, arXiv:1909.11740) via IPOT.

The optimal-transport distance between a caption's token features ``w`` (m valid) and an
image's region/patch features ``v`` (n valid), with cost ``C_ij = 1 − cos(w_i, v_j)`` and the
plan ``T`` from the inexact proximal point method (IPOT; Xie et al. 2018), computed on the
*detached* cost (no gradient through the plan, as in UNITER)::

    A = exp(−C/β) (masked);  T = 1;  σ = 1/m
    repeat: Q = A ⊙ T;  (k times: δ = 1/(n·Qᵀσ);  σ = 1/(m·Qδ));  T = diag(σ) Q diag(δ)
    D_ot = Σ_ij C_ij T_ij

As an auxiliary to a two-tower contrastive loss, positives are (image i, caption i) and
negatives (image i, caption i+1 mod B) — UNITER's ITM pairs come from its sampler:
``L_WRA = (Σ_pos D_ot − Σ_neg D_ot) / (n_pos + n_neg)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["ipot", "ot_distance", "wra_loss"]


def ipot(
    cost: jax.Array,
    x_mask: jax.Array,
    y_mask: jax.Array,
    beta: float = 0.5,
    iterations: int = 50,
    inner: int = 1,
) -> jax.Array:
    """IPOT transport plan: cost [B, m, n], masks [B, m] / [B, n] -> plan [B, m, n] (fp32).

    The x-side (rows, the text in UNITER) marginal is exactly uniform, ``1/m`` per valid
    row (its scaling is updated last); the y-side approaches ``1/n`` per valid column.
    Masked entries are 0.
    """
    cost = cost.astype(jnp.float32)
    xm, ym = x_mask.astype(jnp.float32), y_mask.astype(jnp.float32)
    m = jnp.maximum(jnp.sum(xm, -1), 1.0)[:, None]  # [B, 1]
    n = jnp.maximum(jnp.sum(ym, -1), 1.0)[:, None]
    joint = xm[:, :, None] * ym[:, None, :]
    a = jnp.exp(-cost / beta) * joint
    # Padding gets a huge denominator (hence ~0 scaling), like the 1e4 masks of UNITER.
    x_pad, y_pad = (1.0 - xm) * 1e4, (1.0 - ym) * 1e4
    sigma0 = xm / m  # Row (x-side) scaling; updated last, so the row marginal is exact.
    plan0 = joint

    def body(_, carry):
        plan, sigma = carry
        q = a * plan
        delta = jnp.zeros_like(ym)
        for _ in range(inner):
            delta = 1.0 / (n * jnp.einsum("bij,bi->bj", q, sigma) + y_pad)
            sigma = 1.0 / (m * jnp.einsum("bij,bj->bi", q, delta) + x_pad)
        return sigma[:, :, None] * q * delta[:, None, :], sigma

    plan, _ = jax.lax.fori_loop(0, iterations, body, (plan0, sigma0))
    return plan * joint


def ot_distance(
    x: jax.Array,
    x_mask: jax.Array,
    y: jax.Array,
    y_mask: jax.Array,
    beta: float = 0.5,
    iterations: int = 50,
    inner: int = 1,
) -> jax.Array:
    """IPOT distance per pair: x [B, m, D], y [B, n, D] (unit-norm) -> [B] in [0, 2].

    Gradients flow through the cost only (``stop_gradient`` on the plan).
    """
    cost = 1.0 - jnp.einsum("bid,bjd->bij", x.astype(jnp.float32), y.astype(jnp.float32))
    joint = x_mask[:, :, None] & y_mask[:, None, :]
    cost = jnp.where(joint, cost, 0.0)
    plan = jax.lax.stop_gradient(
        ipot(jax.lax.stop_gradient(cost), x_mask, y_mask, beta, iterations, inner)
    )
    return jnp.sum(cost * plan, axis=(1, 2))


def wra_loss(
    txt_tokens: jax.Array,
    txt_mask: jax.Array,
    img_tokens: jax.Array,
    img_mask: jax.Array | None = None,
    **ipot_kwargs,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """``(Σ_pos D − Σ_neg D) / (2B)`` with negatives = captions shifted by one.

    Returns ``(loss, (d_pos [B], d_neg [B]))``. B = 1 has no negative: the loss is
    ``D_pos / 2``.
    """
    if img_mask is None:
        img_mask = jnp.ones(img_tokens.shape[:2], bool)
    txt_mask = jnp.asarray(txt_mask, bool)
    d_pos = ot_distance(txt_tokens, txt_mask, img_tokens, img_mask, **ipot_kwargs)
    if txt_tokens.shape[0] == 1:
        return 0.5 * jnp.sum(d_pos), (d_pos, jnp.zeros_like(d_pos))
    neg_t, neg_m = jnp.roll(txt_tokens, 1, axis=0), jnp.roll(txt_mask, 1, axis=0)
    d_neg = ot_distance(neg_t, neg_m, img_tokens, img_mask, **ipot_kwargs)
    return (jnp.sum(d_pos) - jnp.sum(d_neg)) / (2 * d_pos.shape[0]), (d_pos, d_neg)
