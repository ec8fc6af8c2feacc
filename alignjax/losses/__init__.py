"""Contrastive losses and alignment objectives for image-text alignment.

Public API:
  info_nce(logits [N, M], targets [N, M]) -> scalar
  clip_loss(zimg [B, D], ztxt [B, D], logit_scale) -> scalar
  siglip_loss(zimg, ztxt, logit_scale, logit_bias) -> scalar
  siglip_loss_ring(zimg, ztxt, logit_scale, logit_bias, *, mesh, batch_axes) -> scalar
  build(loss_config, mesh=None) -> loss_fn(out, batch=None, step=None) -> (loss, metrics)
  default_loss_config() -> ConfigDict

Shared primitives (targets.py, tokenwise.py): hard/softened/smoothed/label/multi-positive
targets, symmetric_contrastive, kl_soft, token_similarity (masked, chunked), filip_loss.
Methods: pyramid.py (PyramidCLIP), lightclip.py, dreamlip.py, uniter.py (IPOT word-region
alignment), wukong.py (+ heads.TokenReduction), clim.py, negclip.py; objectives.py wires
each into the trainer. See docs/OBJECTIVES.md.
"""

from alignjax.losses.contrastive import (
    LOSS_NAMES,
    build,
    clip_loss,
    default_loss_config,
    info_nce,
    siglip_loss,
)
from alignjax.losses.ring import siglip_loss_ring
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
    "LOSS_NAMES",
    "build",
    "clip_loss",
    "contrastive_from_logits",
    "default_loss_config",
    "filip_loss",
    "hard_targets",
    "info_nce",
    "kl_soft",
    "label_targets",
    "multi_positive_targets",
    "select_top_tokens",
    "siglip_loss",
    "siglip_loss_ring",
    "smoothed_targets",
    "softened_targets",
    "symmetric_contrastive",
    "token_similarity",
]
