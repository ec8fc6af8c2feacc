"""Losses against a reference: CLIP-Refine's RaFA and HyCD, and CLIP logit distillation.

Pure functions of arrays (float32 whatever the input dtype). Notation: ``B`` pairs,
``D`` embedding size, ``f`` / ``g`` the image / text features of the model being trained
(for CLIP-Refine the *raw*, un-normalised projected features), ``f^t`` / ``g^t`` the
teacher's, ``z`` a reference vector per pair.

CLIP-Refine (Yamaguchi et al., CVPR 2025)::

    RaFA:  L_rafa = mse(f, z) + mse(g, z)      mse = mean over the B*D elements; z_i ~ p(z)
    HyCD:  l = f g^T, l^t = f^t g^t^T          raw dot products, no logit scale
           q = alpha I + (1 - alpha) softmax(l^t / T)           (rows; the same for l^T)
           L_hycd = ½ [KL(q ‖ softmax(l / T)) + KL(q' ‖ softmax(l^T / T))] T²   batchmean

Distillation (open_clip's ``DistillClipLoss``): soft cross-entropy of the student's
image->text and text->image softmaxes against the teacher's, each model with its own
logit scale::

    L_distill = ½ [ CE(softmax(t^t f^t g^t^T), log_softmax(t f g^T))
                  + CE(softmax(t^t g^t f^t^T), log_softmax(t g f^T)) ]
    CE(p, log q) = -(1/B) Σ_i Σ_j p_ij log q_ij

It is a cross-entropy, not a KL: with student logits equal to the teacher's it is the
teacher distribution's entropy (KL + entropy, the same gradient for the student).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses.targets import hard_targets, kl_soft

__all__ = [
    "PRIORS",
    "distill_loss",
    "hycd_loss",
    "prior_variance",
    "rafa_loss",
    "sample_reference",
    "soft_cross_entropy",
]

#: RaFA priors: per-dimension normal, uniform with the same mean/std, or the mean itself.
PRIORS = ("normal", "uniform", "fixed")


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


# ----------------------------------------------------------------------------------------
# RaFA: random feature alignment.
# ----------------------------------------------------------------------------------------
def sample_reference(
    key: jax.Array, shape: tuple[int, int], prior: str = "normal", mean: Any = 0.0, std: Any = 1.0
) -> jax.Array:
    """One reference vector per pair: float32 ``shape`` = [B, D].

    ``mean`` / ``std`` are scalars or per-dimension [D] arrays (e.g. precomputed feature
    statistics). ``'normal'``: ``z ~ N(mean, std²)`` per element; ``'uniform'``:
    ``U[mean - √3 std, mean + √3 std]`` (same mean and variance); ``'fixed'``: ``z = mean``
    for every pair (``key`` unused).
    """
    if prior not in PRIORS:
        raise ValueError(f"RaFA prior {prior!r} unknown; valid: {PRIORS}.")
    mean, std = _f32(mean), _f32(std)
    if prior == "fixed":
        return jnp.broadcast_to(mean, shape).astype(jnp.float32)
    if prior == "normal":
        unit = jax.random.normal(key, shape, jnp.float32)
    else:
        unit = jax.random.uniform(key, shape, jnp.float32, -math.sqrt(3.0), math.sqrt(3.0))
    return mean + std * unit


def prior_variance(prior: str, std: Any = 1.0) -> jax.Array:
    """Per-element variance of :func:`sample_reference` (0 for ``'fixed'``)."""
    return jnp.zeros_like(_f32(std)) if prior == "fixed" else _f32(std) ** 2


def rafa_loss(f: jax.Array, g: jax.Array, z: jax.Array) -> jax.Array:
    """``mse(f, z) + mse(g, z)``, each the mean over all B*D elements (torch ``mse_loss``).

    Args:
      f, g: [B, D] image and text features (raw, un-normalised).
      z: [B, D] the pairs' shared reference vectors (a constant: no gradient reaches it).

    For fixed ``f`` and ``z ~ N(mu, sigma²)``: ``E_z mse(f, z) = mean((f - mu)²) + sigma²``.
    """
    f, g, z = _f32(f), _f32(g), jax.lax.stop_gradient(_f32(z))
    if not f.shape == g.shape == z.shape or f.ndim != 2:
        raise ValueError(
            f"rafa_loss: features and references must all be [B, D]; got {f.shape}, "
            f"{g.shape} and {z.shape}."
        )
    return jnp.mean((f - z) ** 2) + jnp.mean((g - z) ** 2)


# ----------------------------------------------------------------------------------------
# HyCD: hybrid contrastive distillation.
# ----------------------------------------------------------------------------------------
def _hybrid_kl(logits: jax.Array, teacher_logits: jax.Array, alpha, temperature) -> jax.Array:
    t = _f32(temperature)
    teacher = jax.nn.softmax(jax.lax.stop_gradient(_f32(teacher_logits)) / t, axis=-1)
    q = alpha * hard_targets(*logits.shape) + (1.0 - alpha) * teacher
    return kl_soft(logits / t, q) * t * t


def hycd_loss(
    logits: jax.Array, teacher_logits: jax.Array, alpha: float = 0.5, temperature: float = 1.0
) -> jax.Array:
    """CLIP-Refine's HyCD: KL to ``alpha I + (1 - alpha) softmax(teacher / T)``, both ways.

    Args:
      logits: [B, B] image->text logits of the student (``l = f g^T``); text->image is
        ``l^T``.
      teacher_logits: [B, B] the teacher's (constants: the gradient is stopped).
      alpha: weight of the ground-truth pairing in the targets (1: the diagonal
        cross-entropy, i.e. CLIP's InfoNCE on ``l / T``; 0: plain logit distillation).
      temperature: T; the KL is scaled by T² (Hinton et al.).

    Returns ``½ [KL(q ‖ softmax(l / T)) + KL(q' ‖ softmax(l^T / T))] T²``, each KL the
    batch mean (torch ``kl_div(reduction='batchmean')``; zero targets contribute 0).
    """
    logits, teacher_logits = _f32(logits), _f32(teacher_logits)
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1] or logits.shape != teacher_logits.shape:
        raise ValueError(
            f"hycd_loss: logits and teacher_logits must both be [B, B]; got {logits.shape} "
            f"and {teacher_logits.shape}."
        )
    i2t = _hybrid_kl(logits, teacher_logits, alpha, temperature)
    t2i = _hybrid_kl(logits.T, teacher_logits.T, alpha, temperature)
    return 0.5 * (i2t + t2i)


# ----------------------------------------------------------------------------------------
# Distillation from a (larger) teacher: open_clip's soft cross-entropy.
# ----------------------------------------------------------------------------------------
def soft_cross_entropy(logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """``-(1/N) Σ_i Σ_j softmax(teacher)_ij log_softmax(logits)_ij`` for [N, M] logits."""
    p = jax.nn.softmax(jax.lax.stop_gradient(_f32(teacher_logits)), axis=-1)
    return -jnp.sum(p * jax.nn.log_softmax(_f32(logits), axis=-1)) / logits.shape[0]


def distill_loss(
    zimg: jax.Array,
    ztxt: jax.Array,
    logit_scale: Any,
    teacher_zimg: jax.Array,
    teacher_ztxt: jax.Array,
    teacher_logit_scale: Any,
) -> jax.Array:
    """open_clip's distillation term: ½ (soft CE image->text + soft CE text->image).

    Args:
      zimg, ztxt: [B, D] the student's unit-norm embeddings; ``logit_scale`` its t.
      teacher_zimg, teacher_ztxt: [B, D'] the teacher's (D' may differ from D: only the
        [B, B] logits are compared); ``teacher_logit_scale`` its t (constants).
    """
    s = _f32(logit_scale).reshape(()) * (_f32(zimg) @ _f32(ztxt).T)
    t = _f32(teacher_logit_scale).reshape(()) * (_f32(teacher_zimg) @ _f32(teacher_ztxt).T)
    if s.shape != t.shape:
        raise ValueError(
            f"distill_loss: student and teacher must embed the same batch; got logits "
            f"{s.shape} and {t.shape}."
        )
    return 0.5 * (soft_cross_entropy(s, t) + soft_cross_entropy(s.T, t.T))
