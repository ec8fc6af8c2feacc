"""Contrastive losses and alignment objectives for image-text alignment.

Public API:
  info_nce(logits [N, M], targets [N, M]) -> scalar
  clip_loss(zimg [B, D], ztxt [B, D], logit_scale) -> scalar
  siglip_loss(zimg, ztxt, logit_scale, logit_bias) -> scalar
  siglip_loss_ring(zimg, ztxt, logit_scale, logit_bias, *, mesh, batch_axes) -> scalar

Shared primitives (targets.py, tokenwise.py): hard/softened/smoothed/label/multi-positive
targets, symmetric_contrastive, kl_soft, token_similarity (masked, chunked), filip_loss.
The math of the methods: pyramid.py (PyramidCLIP), lightclip.py, dreamlip.py, uniter.py
(IPOT word-region alignment), wukong.py, clim.py, negclip.py, refine.py (CLIP-Refine's RaFA
and HyCD, logit distillation from a teacher). This package is pure functions
of arrays; each method's wiring into the trainer (config fields, model calls, data) is one
file of :mod:`alignjax.objectives`. See docs/OBJECTIVES.md.
"""

from alignjax.losses.contrastive import (
    as_f32_scalar,
    clip_loss,
    in_batch_accuracy,
    info_nce,
    siglip_loss,
)
from alignjax.losses.refine import (
    distill_loss,
    hycd_loss,
    rafa_loss,
    sample_reference,
    soft_cross_entropy,
)
from alignjax.losses.ring import siglip_loss_ring
from alignjax.losses.structure import (
    js_divergence,
    lambda_schedule,
    neighbourhood_probs,
    structure_loss,
    structure_regularizer,
)
from alignjax.losses.targets import (
    contrastive_from_logits,
    hard_targets,
    kl_soft,
    label_targets,
    multi_positive_targets,
    smoothed_targets,
    softened_targets,
    symmetric_contrastive,
)
from alignjax.losses.tokenwise import filip_loss, select_top_tokens, token_similarity

__all__ = [
    "as_f32_scalar",
    "clip_loss",
    "contrastive_from_logits",
    "distill_loss",
    "filip_loss",
    "hard_targets",
    "hycd_loss",
    "in_batch_accuracy",
    "info_nce",
    "js_divergence",
    "kl_soft",
    "label_targets",
    "lambda_schedule",
    "multi_positive_targets",
    "neighbourhood_probs",
    "rafa_loss",
    "sample_reference",
    "select_top_tokens",
    "siglip_loss",
    "siglip_loss_ring",
    "smoothed_targets",
    "soft_cross_entropy",
    "softened_targets",
    "structure_loss",
    "structure_regularizer",
    "symmetric_contrastive",
    "token_similarity",
]
