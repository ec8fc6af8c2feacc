"""Fine-tuning on class labels through the zero-shot head, against fixed class prompts.

The loss is the cross-entropy of CLIP's logits against the prompts of the classes.

The classifier is the model's own zero-shot classifier, computed from the live text tower
at every step (so both towers learn, and nothing new is initialised)::

    w_c = normalize( mean_t encode_text(template_t.format(classname_c)) )    [C, D]
    p(y = c | x) = softmax_c( exp(log_scale) <encode_image(x), w_c> )
    loss = mean_i -log p(y_i | x_i)

This is how a trained CLIP is fine-tuned on a labelled set end to end (the fine-tuning
WiSE-FT interpolates towards, Wortsman et al. 2022; CLIP-LoRA's objective, Zanella & Ben
Ayed 2024, with the towers frozen and ``config.lora`` adapters trained). Before any step
the logits are exactly zero-shot classification with ``templates`` (tested). CoOp
(``coop.py``) is the same loss with learned words in the prompt and nothing else trained.

Fields of ``config.loss`` (``name='classify'``):

* ``classnames``: the C class names in label order (``coop.ClassLabel`` maps labels).
* ``label_key``: the source label (``'shape'`` for the shapes data, ``'label'`` for a CSV /
  JSONL / TFDS label column).
* ``templates``: the prompt templates (``'{}'`` is the class name), averaged per class.

Each step encodes the C x T class prompts besides the batch: cheap for tens of classes.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from alignjax.objectives import base, coop


@base.register
class Classify(base.Objective):
    """Cross-entropy over the zero-shot logits of fixed class prompts; the towers train."""

    name = 'classify'
    defaults = dict(classnames=(), label_key='label', templates=('a photo of a {}.',))

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        self.classnames = tuple(str(c) for c in self.cfg['classnames'])
        self.templates = tuple(str(t) for t in self.cfg['templates'])
        if not self.classnames:
            raise ValueError(
                'config.loss.classnames is empty: list the class names in label order.'
            )
        bad = [t for t in self.templates if '{}' not in t]
        if not self.templates or bad:
            raise ValueError(
                f"config.loss.templates must be prompts with '{{}}' for the class name, got "
                f'{list(self.templates)}.'
            )
        self.tokens = None  # [C * T, L], class-major; set by bind_tokenizer

    def bind_tokenizer(self, tokenizer) -> None:
        prompts = [t.format(c) for c in self.classnames for t in self.templates]
        self.tokens = np.asarray(tokenizer(prompts), np.int32)

    def data_transforms(self, tokenizer, seed=0):
        del tokenizer, seed
        return (coop.ClassLabel(str(self.cfg['label_key']), self.classnames),)

    def class_embeddings(self, apply):
        """[C, D] unit-norm zero-shot classifier from the current text tower."""
        if self.tokens is None:
            raise RuntimeError(
                'classify has no class prompts yet: build the run through alignjax.train / '
                'alignjax.restore, which call Objective.bind_tokenizer.'
            )
        z = apply(jnp.asarray(self.tokens), method='encode_text').astype(jnp.float32)
        w = z.reshape(len(self.classnames), len(self.templates), -1).mean(1)
        return w / jnp.linalg.norm(w, axis=-1, keepdims=True)

    def forward(self, apply, batch, ctx):
        del ctx
        zimg = apply(batch['image'], method='encode_image').astype(jnp.float32)
        scale = jnp.exp(apply(method=lambda m: m.log_scale))
        return {'logits': scale * zimg @ self.class_embeddings(apply).T}

    def loss(self, out, batch, ctx):
        del ctx
        return coop.label_cross_entropy(out['logits'], batch[coop.LABEL])
