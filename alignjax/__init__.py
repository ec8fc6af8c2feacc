"""alignjax: contrastive vision-language pre-training (CLIP, SigLIP, LiT, ...) in JAX/Flax.

Where things are:
  alignjax.models   two-tower model (ViT image tower, text transformer), `models.build`
  alignjax.losses   clip_loss, siglip_loss (dense and ring), `losses.build`
  alignjax.train    the one trainer: `train_and_evaluate(config, workdir)` and the CLI
  alignjax.data     embedded procedural dataset, tokenizers, grain pipeline
  alignjax.evaluate zero-shot classification and retrieval evaluators
"""

__version__ = '0.1.0'

from alignjax.pretrained import load_pretrained  # noqa: E402,F401
