"""Image-only supervised pre-training: one linear head per attribute label, cross-entropy.

An image tower that never sees text (STRUCTURE's unimodal image encoder, Gröger et al.
2025): the pooled image feature ``h = img(x)`` (the tower's output before the L2
normalisation, ``img_raw``) feeds one linear head per attribute ``a`` with ``C_a`` classes::

    logits_a = W_a h + b_a                       [B, C_a]
    loss = (1/A) Σ_a mean_i -log softmax(logits_a)_{i, y_{i,a}}

The text tower, the logit scale and the captions are not used (they get no gradient).
Fields of ``config.loss`` (``name='attributes'``):

* ``label_keys``: the source labels to predict (default the shapes data's five).
* ``num_classes``: their numbers of classes, in the same order.

Metrics: ``loss``, and per attribute ``loss_<a>`` and the batch's top-1 ``acc_<a>``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from alignjax.data import few_shot
from alignjax.objectives import base

#: Batch key of attribute ``a``'s label (``label_<a>`` keys are dropped from train batches).
KEY = 'attr_{}'


@dataclasses.dataclass(frozen=True)
class AttributeLabels:
    """Grain transform: ``example['attr_<a>']`` int32, each label's class index."""

    label_keys: tuple[str, ...]
    num_classes: tuple[int, ...]

    def map(self, example: dict[str, Any]) -> dict[str, Any]:
        out = dict(example)
        for key, n in zip(self.label_keys, self.num_classes):
            value = few_shot.example_label(example, key)
            if isinstance(value, (bytes, str)) or not 0 <= int(value) < n:
                raise ValueError(
                    f'Label {value!r} of {key!r} is not a class index in [0, {n}); the '
                    'attributes objective needs integer labels and num_classes per label.'
                )
            out[KEY.format(key.removeprefix('label_'))] = np.int32(value)
        return out

    def __call__(self, example):
        return self.map(example)


@base.register
class Attributes(base.Objective):
    """Image-only: cross-entropy of one linear head per attribute on the pooled image feature."""

    name = 'attributes'
    defaults = dict(
        label_keys=('shape', 'color', 'size', 'position', 'count'),
        num_classes=(8, 8, 2, 3, 2),
    )

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        self.label_keys = tuple(str(k).removeprefix('label_') for k in self.cfg['label_keys'])
        self.num_classes = tuple(int(n) for n in self.cfg['num_classes'])
        if not self.label_keys or len(self.label_keys) != len(self.num_classes):
            raise ValueError(
                f'config.loss.label_keys {list(self.label_keys)} and num_classes '
                f'{list(self.num_classes)} must be non-empty and of the same length.'
            )
        if min(self.num_classes) < 2:
            raise ValueError(f'config.loss.num_classes must all be >= 2, got {self.num_classes}.')

    def heads(self, model):
        del model
        return {
            f'attr_head_{k}': base.Head(
                make=lambda n=n: nn.Dense(n), init_args=lambda out: (out.zimg,)
            )
            for k, n in zip(self.label_keys, self.num_classes)
        }

    def data_transforms(self, tokenizer, seed=0):
        del tokenizer, seed
        return (AttributeLabels(self.label_keys, self.num_classes),)

    def forward(self, apply, batch, ctx):
        del ctx
        out = apply(batch['image'], None, return_raw=True, train=True)
        return {k: self.logits(apply, out.img_raw, k) for k in self.label_keys}

    @staticmethod
    def logits(apply, features, key: str):
        """[B, C_key] logits of attribute ``key``'s head on pooled features [B, D]."""
        head = f'attr_head_{key}'
        return apply(features, method=lambda m, x: getattr(m, head)(x)).astype(jnp.float32)

    def loss(self, out, batch, ctx):
        del ctx
        metrics, total = {}, 0.0
        for k in self.label_keys:
            labels = batch[KEY.format(k)]
            ce = optax.softmax_cross_entropy_with_integer_labels(out[k], labels).mean()
            acc = jnp.mean((jnp.argmax(out[k], -1) == labels).astype(jnp.float32))
            metrics[f'loss_{k}'], metrics[f'acc_{k}'] = base.stop(ce), base.stop(acc)
            total = total + ce
        loss = total / len(self.label_keys)
        metrics['loss'] = base.stop(loss)
        return loss, metrics
