"""Contrastive losses for image-text alignment.

Public API:
  info_nce(logits [N, M], targets [N, M]) -> scalar
  clip_loss(zimg [B, D], ztxt [B, D], logit_scale) -> scalar
  siglip_loss(zimg, ztxt, logit_scale, logit_bias) -> scalar
  siglip_loss_ring(zimg, ztxt, logit_scale, logit_bias, *, mesh, batch_axes) -> scalar
  build(loss_config, mesh=None) -> loss_fn(out) -> (loss, metrics)
  default_loss_config() -> ConfigDict
"""

from alignjax.losses.contrastive import (
    build,
    clip_loss,
    default_loss_config,
    info_nce,
    siglip_loss,
)
from alignjax.losses.ring import siglip_loss_ring

__all__ = [
    "info_nce",
    "clip_loss",
    "siglip_loss",
    "siglip_loss_ring",
    "build",
    "default_loss_config",
]
