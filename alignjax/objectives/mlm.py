"""Text-only pre-training: masked-token prediction (BERT-style MLM) with a bidirectional tower.

A text tower that never sees images (STRUCTURE's unimodal text encoder, Gröger et al. 2025).
Each step, a fraction ``mask_prob`` of the maskable tokens (not padding, BOS or the row's
EOS) is replaced by ``mask_id`` (every chosen position, no 80/10/10 split), and a separate
linear output layer over the vocabulary predicts the original ids from the tower's token
features ``H = txt(masked)`` [B, L, D] (after its final LayerNorm and head)::

    logits = H W + b                                           [B, L, V]
    loss = Σ_{(i,t) masked} -log softmax(logits_it)_{tokens_it} / #masked

Only masked positions are scored. The tower must attend both ways
(``config.model.text.convention='big_vision'``): with CLIP's causal mask a position could
not see the words after it. The image tower is not used (it gets no gradient).
Fields of ``config.loss`` (``name='mlm'``): ``mask_prob``, ``mask_id`` (the word-hash and
byte tokenizers reserve id 2, which no text produces).

Metrics: ``loss`` and ``acc`` (top-1 over the masked positions), ``masked_frac``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from alignjax.losses import lightclip as lightclip_lib
from alignjax.objectives import base


@base.register
class MaskedLanguageModel(base.Objective):
    """Text-only masked-token prediction with a separate vocabulary output layer."""

    name = 'mlm'
    defaults = dict(mask_prob=0.15, mask_id=2)

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        if not 0.0 < float(self.cfg['mask_prob']) < 1.0:
            raise ValueError(f"config.loss.mask_prob must be in (0, 1), got {cfg['mask_prob']}.")
        self.vocab_size = None  # set by heads()

    @classmethod
    def check(cls, config):
        if config.model.text.convention != 'big_vision':
            raise ValueError(
                "config.loss.name='mlm' needs a bidirectional text tower: set "
                "config.model.text.convention='big_vision' (the 'clip' convention is causal)."
            )
        if not 0 <= int(config.loss.mask_id) < int(config.model.text.vocab_size):
            raise ValueError(
                f'config.loss.mask_id={config.loss.mask_id} is not an id of the text tower '
                f'(vocab_size {config.model.text.vocab_size}); use a reserved id such as 2.'
            )

    def heads(self, model):
        self.vocab_size = int(model.text['vocab_size'])
        vocab = self.vocab_size
        return {
            'mlm_head': base.Head(make=lambda: nn.Dense(vocab), init_args=lambda out: (out.ztxt,))
        }

    def prepare(self, batch, rng, ctx):
        del ctx
        masked, labels = lightclip_lib.mask_tokens(
            batch['tokens'], rng, float(self.cfg['mask_prob']), int(self.cfg['mask_id'])
        )
        return dict(batch, mlm_tokens=masked, mlm_labels=labels)

    def forward(self, apply, batch, ctx):
        del ctx
        _, features, _ = apply(batch['mlm_tokens'], method=lambda m, t: m.txt(t))
        logits = apply(features, method=lambda m, x: m.mlm_head(x))
        return {'logits': logits.astype(jnp.float32), 'labels': batch['mlm_labels']}

    def loss(self, out, batch, ctx):
        del batch, ctx
        return mlm_metrics(out['logits'], out['labels'])


def mlm_metrics(logits, labels):
    """``(loss, metrics)`` of logits [B, L, V] against labels [B, L] (-100: not scored)."""
    loss = lightclip_lib.mlm_loss(logits, labels)
    scored = labels != lightclip_lib.IGNORE
    n = jnp.maximum(jnp.sum(scored), 1)
    hit = (jnp.argmax(logits, -1) == labels) & scored
    return loss, {
        'loss': base.stop(loss),
        'acc': base.stop(jnp.sum(hit) / n),
        'masked_frac': base.stop(jnp.mean(scored)),
    }
