"""alignjax: contrastive vision-language pre-training (CLIP, SigLIP, LiT, ...) in JAX/Flax.

Where things are:
  alignjax.models     two-tower model (ViT image tower, text transformer), `models.build`
  alignjax.losses     the math: clip_loss, siglip_loss (dense and ring), token-wise, ...
  alignjax.objectives every method as one registered plug-in (`config.loss.name`)
  alignjax.state      the train state: parameters, optimizer, extra weight sets (EMA, teacher)
  alignjax.train      the one trainer: `train_and_evaluate(config, workdir)` and the CLI
  alignjax.data       embedded procedural dataset, tokenizers, grain pipeline
  alignjax.evaluate   zero-shot classification and retrieval evaluators
"""

__version__ = '0.1.0'

__all__ = ['__version__', 'load_pretrained']


def __getattr__(name: str):
    """`alignjax.load_pretrained`, imported on first access (PEP 562).

    Deferred on purpose: `alignjax.pretrained` pulls in the whole converter stack
    (`alignjax.interop`, the models, the tokenizers), which `import alignjax` or any
    `import alignjax.<module>` must not pay for.
    """
    if name == 'load_pretrained':
        from alignjax import pretrained

        return pretrained.load_pretrained
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
