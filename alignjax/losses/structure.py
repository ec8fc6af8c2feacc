"""STRUCTURE (Gröger, Wen, Le, Brbić, NeurIPS 2025): CLIP plus neighbourhood preservation.

Two frozen, separately pre-trained unimodal encoders are aligned by small trainable layers
on few pairs. Besides the CLIP loss, a regulariser keeps each modality's aligned batch
arranged like its frozen features: the row-stochastic neighbourhood matrices of the batch,
and their powers (multi-hop neighbourhoods), must match. For one modality, with ``E`` the
[B, D] frozen features ("orig", no gradient) or the aligned ones::

    E = l2n(E);  E = center(E)                     'mean': E - mean_b E (default); 'none';
                                                   'standard': z-score of every dimension
    P_E = softmax_row(E Eᵀ / τ)                    [B, B], the diagonal (self) is kept
    R = (1/L) Σ_{l=1..L} w_l · relu(JS(P_orig^l, P_aligned^l) - margin)
    JS(P, Q) = (1/B) Σ_i [½ KL(P_i‖M_i) + ½ KL(Q_i‖M_i)],  M = ½(P + Q)   (0 <= JS <= log 2)
    w_l = 1 ('none', default) or 1/l ('inverse')

    loss = CLIP(l2n(x'), l2n(y'); t = 1/τ) + λ(step) · ½ (R_image + R_text)
    λ(step) = λ_max · min(1, step / warmup_steps)     (λ_max = 10, warmup 1000, L = 1, τ = 0.05)

``P^l`` is the l-th matrix power (a random walk of l hops). With 'none' or 'mean' centering
the similarities, hence ``R``, do not change when the aligned space is a rotation and a
positive rescaling of the frozen one (tested): the regulariser constrains the geometry, not
the coordinates. Centering follows the normalisation and rows are not renormalised after it
(as in the reference), so ``E Eᵀ`` holds inner products of the residuals, not cosines; with
'standard' the rows have norm about sqrt(D), and at τ = 0.05 ``P`` is then close to the
identity (each sample its own only neighbour), which leaves ``R`` little to measure.

The authors' code (``structure_reg``) calls ``F.kl_div(log(P + eps), M + eps)``, i.e. it
computes ``½ [KL(M‖P) + KL(M‖Q)]``, the mixture's divergence from each side (unbounded).
Here ``JS`` is the standard Jensen-Shannon divergence (bounded by log 2); both are 0 exactly
when the neighbourhoods agree, and they differ in size and gradient elsewhere.

All functions are pure functions of arrays; softmax and log math runs in float32 whatever
the input dtype. Reference: F. Gröger, S. Wen, H. Le, M. Brbić, "With Limited Data for
Multimodal Alignment, Let the STRUCTURE Guide You", NeurIPS 2025 (arXiv:2506.16895).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses.contrastive import clip_loss, run_auto

__all__ = [
    "CENTERINGS",
    "WEIGHTINGS",
    "center",
    "js_divergence",
    "lambda_schedule",
    "neighbourhood_probs",
    "structure_loss",
    "structure_regularizer",
]

CENTERINGS = ("none", "mean", "standard")
WEIGHTINGS = ("none", "inverse")

# Added inside the logs of the divergence (as the reference does): P^l has exact zeros
# once a softmax underflows, and log(0) would turn 0 · log 0 into NaN in the gradient.
_EPS = 1e-12
# Floor of a norm or a standard deviation: a zero row/column stays zero instead of NaN.
_TINY = 1e-12


def _l2n(e: jax.Array) -> jax.Array:
    e = e.astype(jnp.float32)
    norm = jnp.sqrt(jnp.maximum(jnp.sum(e * e, axis=-1, keepdims=True), _TINY**2))
    return e / norm


def center(e: jax.Array, mode: str = "mean") -> jax.Array:
    """Centers a batch of embeddings over the batch (axis 0); float32 [B, D] out.

    ``'none'``: ``e``; ``'mean'``: ``e - mean_b e``; ``'standard'``: ``(e - mean_b e) / std_b e``
    per dimension, with the unbiased (``B - 1``) standard deviation as ``torch.std`` (the
    reference) uses; a constant dimension becomes 0 rather than NaN.

    Args:
      e: [B, D] embeddings (any float dtype).
      mode: one of :data:`CENTERINGS`.
    """
    if mode not in CENTERINGS:
        raise ValueError(f"center: unknown centering {mode!r}; use one of {CENTERINGS}.")
    e = jnp.asarray(e).astype(jnp.float32)
    if e.ndim != 2:
        raise ValueError(f"center: e must be [B, D], got shape {e.shape}; flatten tokens first.")
    if mode == "none":
        return e
    e = e - jnp.mean(e, axis=0, keepdims=True)
    if mode == "mean":
        return e
    if e.shape[0] < 2:
        raise ValueError("center: 'standard' needs a batch of at least 2; use 'mean' for B=1.")
    var = jnp.sum(e * e, axis=0, keepdims=True) / (e.shape[0] - 1)
    # max before sqrt: the gradient of sqrt at 0 is inf, which would reach e as NaN.
    return e / jnp.sqrt(jnp.maximum(var, _TINY**2))


def neighbourhood_probs(e: jax.Array, temperature: float = 0.05) -> jax.Array:
    """``P = softmax_row(e eᵀ / τ)``: row i is i's neighbourhood distribution (float32 [B, B]).

    ``e`` [B, D] is used as given (the regulariser passes L2-normalised, centered rows).
    The diagonal (i's similarity to itself) is kept, as in the reference.
    """
    e = jnp.asarray(e).astype(jnp.float32)
    if e.ndim != 2:
        raise ValueError(f"neighbourhood_probs: e must be [B, D], got shape {e.shape}.")
    if not temperature > 0:
        raise ValueError(f"neighbourhood_probs: temperature must be > 0, got {temperature}.")
    return jax.nn.softmax((e @ e.T) / temperature, axis=-1)


def js_divergence(p: jax.Array, q: jax.Array) -> jax.Array:
    """Row-wise Jensen-Shannon divergence, averaged over rows (float32 scalar).

    ``JS = (1/N) Σ_i Σ_j [½ p_ij log((p_ij+ε)/(m_ij+ε)) + ½ q_ij log((q_ij+ε)/(m_ij+ε))]``
    with ``m = ½(p + q)`` and ``ε = 1e-12``; torch's ``reduction='batchmean'``. In
    ``[0, log 2]``: 0 iff the rows agree, log 2 for rows with disjoint supports.

    Args:
      p, q: [N, M] row distributions (non-negative, rows summing to 1; not renormalised).
    """
    p = jnp.asarray(p).astype(jnp.float32)
    q = jnp.asarray(q).astype(jnp.float32)
    if p.ndim != 2 or p.shape != q.shape:
        raise ValueError(
            f"js_divergence: p and q must both be [N, M] row distributions; got "
            f"{p.shape} and {q.shape}."
        )
    return _js(p, q)


@jax.jit
def _js(p: jax.Array, q: jax.Array) -> jax.Array:
    log_m = jnp.log(0.5 * (p + q) + _EPS)
    kl_pm = jnp.sum(p * (jnp.log(p + _EPS) - log_m), axis=-1)
    kl_qm = jnp.sum(q * (jnp.log(q + _EPS) - log_m), axis=-1)
    return jnp.mean(0.5 * (kl_pm + kl_qm))


def structure_regularizer(
    original: jax.Array,
    aligned: jax.Array,
    *,
    temperature: float = 0.05,
    levels: int = 1,
    weighting: str = "none",
    margin: float = 0.0,
    centering: str = "mean",
) -> jax.Array:
    """STRUCTURE's neighbourhood-preservation term ``R`` for one modality (float32 scalar).

    ``R = (1/L) Σ_{l=1..L} w_l · relu(JS(P_orig^l, P_aligned^l) - margin)`` with
    ``P_E = softmax_row(c(l2n(E)) c(l2n(E))ᵀ / τ)``, ``c`` the centering, ``w_l = 1``
    (``weighting='none'``) or ``1/l`` (``'inverse'``). The frozen side gets no gradient.

    Args:
      original: [B, D_o] frozen unimodal features of the batch (``stop_gradient`` applied).
      aligned: [B, D_a] the same samples after the alignment layer; ``D_a`` may differ.
      temperature: ``τ`` of both neighbourhood softmaxes (STRUCTURE uses CLIP's, 0.05).
      levels: ``L >= 1``, the number of hops compared (matrix powers ``P^1 .. P^L``).
      weighting: ``'none'`` or ``'inverse'`` (lower weight for longer walks).
      margin: per-level hinge, so that divergences below it cost nothing.
      centering: ``'mean'`` (default), ``'none'`` or ``'standard'``, see :func:`center`.

    Returns:
      ``R >= 0``; 0 when ``aligned`` equals ``original`` up to a rotation and a positive
      scale (centering 'none' or 'mean'), at most ``log 2 · (1/L) Σ w_l``.
    """
    original, aligned = jnp.asarray(original), jnp.asarray(aligned)
    if original.ndim != 2 or aligned.ndim != 2 or original.shape[0] != aligned.shape[0]:
        raise ValueError(
            f"structure_regularizer: original {original.shape} and aligned {aligned.shape} "
            "must be [B, D_o] and [B, D_a] over the same B samples (pool tokens first)."
        )
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(
            f"structure_regularizer: levels must be an int >= 1 (1 = direct neighbours), "
            f"got {levels!r}."
        )
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"structure_regularizer: unknown weighting {weighting!r}; use one of {WEIGHTINGS}."
        )
    if centering not in CENTERINGS:
        raise ValueError(
            f"structure_regularizer: unknown centering {centering!r}; use one of {CENTERINGS}."
        )
    if not temperature > 0:
        raise ValueError(f"structure_regularizer: temperature must be > 0, got {temperature}.")
    if centering == "standard" and original.shape[0] < 2:
        raise ValueError("structure_regularizer: 'standard' centering needs B >= 2; use 'mean'.")
    body = functools.partial(
        _regularizer,
        temperature=temperature,
        margin=margin,
        levels=levels,
        weighting=weighting,
        centering=centering,
    )
    # Under Explicit mesh axes the batch-sharded E Eᵀ is a type error; run_auto hands the
    # partitioning to XLA, as for the other dense losses (contrastive.py).
    return run_auto(body, jax.sharding.PartitionSpec(), original, aligned)


# One compiled program per configuration: the level loop unrolls, and eager dispatch of the
# dozens of small ops would dominate at the batch sizes STRUCTURE trains with.
@functools.partial(jax.jit, static_argnames=("levels", "weighting", "centering"))
def _regularizer(original, aligned, *, temperature, margin, levels, weighting, centering):
    # Normalise first, then center (the reference's default order, center_first=False).
    orig = center(_l2n(jax.lax.stop_gradient(original)), centering)
    alig = center(_l2n(aligned), centering)
    p_orig = jax.nn.softmax((orig @ orig.T) / temperature, axis=-1)
    p_alig = jax.nn.softmax((alig @ alig.T) / temperature, axis=-1)
    total = jnp.zeros((), jnp.float32)
    walk_orig, walk_alig = p_orig, p_alig
    for level in range(1, levels + 1):
        if level > 1:  # P^l = P^(l-1) P: row-stochastic, so still a distribution per row.
            walk_orig, walk_alig = walk_orig @ p_orig, walk_alig @ p_alig
        js = jax.nn.relu(_js(walk_orig, walk_alig) - margin)
        total = total + (js / level if weighting == "inverse" else js)
    return total / levels


def lambda_schedule(step: Any, lambda_max: float = 10.0, warmup_steps: int = 1000) -> jax.Array:
    """``λ(step) = λ_max · min(1, step / warmup_steps)``, clipped at 0 (float32 scalar).

    ``step`` may be a Python int or a traced integer array (inside ``jax.jit``); ``λ(0) = 0``
    and ``λ(warmup_steps) = λ_max``. ``warmup_steps = 0`` gives ``λ_max`` from step 0.
    """
    if warmup_steps < 0:
        raise ValueError(f"lambda_schedule: warmup_steps must be >= 0, got {warmup_steps}.")
    step = jnp.asarray(step, jnp.float32)
    if warmup_steps == 0:
        return jnp.full_like(step, lambda_max)
    return lambda_max * jnp.clip(step / warmup_steps, 0.0, 1.0)


def structure_loss(
    img_aligned: jax.Array,
    txt_aligned: jax.Array,
    img_orig: jax.Array,
    txt_orig: jax.Array,
    *,
    step: Any,
    lambda_max: float = 10.0,
    warmup_steps: int = 1000,
    temperature: float = 0.05,
    **reg_kwargs: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """STRUCTURE's training loss: CLIP on the aligned pair plus the scheduled regulariser.

    ``loss = clip_loss(l2n(x'), l2n(y'), 1/τ) + λ(step) · ½ (R(x, x') + R(y, y'))``.

    Args:
      img_aligned, txt_aligned: [B, D] outputs of the two alignment layers (the shared
        space; normalised here before the CLIP term); ``txt_aligned[i]`` pairs with image i.
      img_orig, txt_orig: [B, D_img], [B, D_txt] frozen features they were computed from.
      step: the training step of :func:`lambda_schedule` (int or traced int).
      lambda_max, warmup_steps: the schedule of ``λ``.
      temperature: ``τ``, fixed (not learned), of the CLIP logits and of the regulariser.
      **reg_kwargs: ``levels``, ``weighting``, ``margin``, ``centering`` of
        :func:`structure_regularizer`.

    Returns:
      ``(loss, metrics)``: float32 scalar, and ``{'clip', 'reg_image', 'reg_text',
      'lambda'}`` float32 scalars (the regularisers before ``λ``).
    """
    if not temperature > 0:
        raise ValueError(f"structure_loss: temperature must be > 0, got {temperature}.")
    # clip_loss checks that the aligned pair is [B, D] with one caption per image.
    clip = clip_loss(_l2n(img_aligned), _l2n(txt_aligned), 1.0 / temperature)
    reg_image = structure_regularizer(img_orig, img_aligned, temperature=temperature, **reg_kwargs)
    reg_text = structure_regularizer(txt_orig, txt_aligned, temperature=temperature, **reg_kwargs)
    lam = lambda_schedule(step, lambda_max, warmup_steps)
    loss = clip + lam * 0.5 * (reg_image + reg_text)
    metrics = {"clip": clip, "reg_image": reg_image, "reg_text": reg_text, "lambda": lam}
    return loss, metrics
