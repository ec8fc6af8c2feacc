"""UniCL with prefix conditioning: one model on class labels and captions together.

Yang et al., "Unified Contrastive Learning in Image-Text-Label Space", CVPR 2022; Saito et
al., "Prefix Conditioning Unifies Language and Label Supervision", CVPR 2023.

Data: a mixture of a labelled source read as prompts (``labels:SPEC?label=KEY``,
`alignjax.data.label_prompts`: each image's text is "a photo of a <class>.", with its
``class_id`` and ``data_type`` 1) and caption data (``data_type`` 0, a label of its own):
``mix:0.5*labels:synthetic:shapes?label=shape;0.5*synthetic:shapes``.

Loss: UniCL's label-equality targets (`alignjax.losses.unicl`): examples of the same class
are all positives of each other, a caption only of its own image. With all labels unique it
is CLIP's loss exactly.

Prefix conditioning (``prefix``): one learned embedding per data type ``p_0`` (caption),
``p_1`` (classification) tells the text tower which kind of text it reads, so the
classification prompts' narrow style does not bend the caption space:

* ``'prepend'``: ``p_type`` becomes the first input embedding and the tokens shift right by
  one (``[p] [SOS] w_1 .. [EOT]``). The EOT moves to position ``eot + 1``; the context
  budget shrinks by one token (a text whose EOT was the last token loses its last word, the
  EOT staying last). ``p`` starts ``N(0, 0.02^2)``.
* ``'replace_sos'``: ``p_type`` replaces the SOS token's embedding, the length unchanged. The
  parameter is the offset from the live SOS embedding, zero at the start, so before any step
  (after ``init_from`` too) the text tower is the plain one exactly (tested). Needs a
  tokenizer with a BOS token.
* ``'none'``: no prefix: naive mixing, the baseline the paper compares with.

Zero-shot with a prefix: the ``caption`` and ``classification`` scorers encode the
evaluators' prompts with that prefix (metrics ``zeroshot/<eval>@caption/...``, the mode the
paper recommends for zero-shot transfer); the evaluators' plain metrics encode them without
one (for ``'prepend'`` a text the model never saw).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alignjax import scoring
from alignjax.data import label_prompts
from alignjax.losses.unicl import unicl_loss
from alignjax.models import prompts
from alignjax.objectives import base

PREFIX = 'text_prefix'
PREFIX_MODES = ('none', 'prepend', 'replace_sos')
#: The prefix of each data type (`alignjax.data.label_prompts`), and its scorer's name.
DATA_TYPES = {'caption': label_prompts.CAPTION, 'classification': label_prompts.CLASSIFICATION}


@dataclasses.dataclass(frozen=True)
class CaptionDefaults:
    """Grain transform: an example without ``data_type`` is a caption: type ``CAPTION``,
    ``class_id`` -1 (a label of its own)."""

    def map(self, example: dict[str, Any]) -> dict[str, Any]:
        ex = dict(example)
        ex.setdefault(label_prompts.DATA_TYPE, np.int32(label_prompts.CAPTION))
        ex.setdefault(label_prompts.CLASS_ID, np.int32(-1))
        return ex

    def __call__(self, example):
        return self.map(example)


def unique_labels(class_ids: jax.Array) -> jax.Array:
    """[B] UniCL labels: a class id (>= 0) as it is, each caption's (-1) made unique
    (``-1 - row``): a caption's only positive is its own image."""
    rows = jnp.arange(class_ids.shape[0], dtype=jnp.int32)
    return jnp.where(class_ids >= 0, class_ids.astype(jnp.int32), -1 - rows)


@base.register
class UniCL(base.Objective):
    """UniCL's label-equality targets, with an optional learned prefix per data type."""

    name = 'unicl'
    defaults = dict(prefix='prepend')
    choices = dict(prefix=PREFIX_MODES)

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        self.mode = self.cfg['prefix']
        self.eos_id = None
        self.has_bos = None

    # -- the prefix ------------------------------------------------------------------------
    def heads(self, model):
        if self.mode == 'none':
            return {}
        shape = (len(DATA_TYPES), int(model.text['width']))
        # replace_sos: an offset from the SOS embedding (zero: the plain tower at the start).
        init = nn.initializers.zeros if self.mode == 'replace_sos' else nn.initializers.normal(0.02)
        return {PREFIX: base.Head(param=(init, shape, jnp.float32))}

    def bind_tokenizer(self, tokenizer) -> None:
        self.eos_id = None if tokenizer.eos_is_max_id else int(tokenizer.eos_id)
        self.has_bos = tokenizer.bos_id is not None
        if self.mode == 'replace_sos' and not self.has_bos:
            raise ValueError(
                "config.loss.prefix='replace_sos' needs a tokenizer with a BOS token to "
                "replace; this one has none: use prefix='prepend'."
            )

    def prefixed(self, apply, tokens: jax.Array, data_type: jax.Array):
        """(ids [B, L], input embeddings [B, L, W]) of ``tokens`` with the prefix of each
        row's ``data_type`` [B]; ``apply(ids, emb, method='encode_text')`` encodes them."""
        if self.has_bos is None:  # set by bind_tokenizer (eos_id may rightly be None)
            raise RuntimeError(
                'unicl has no tokenizer yet: build the run through alignjax.train / '
                'alignjax.restore, which call Objective.bind_tokenizer.'
            )
        prefix = apply(method=lambda m: getattr(m, PREFIX))[data_type]  # [B, W]
        if self.mode == 'replace_sos':
            emb = apply(tokens, method='embed_tokens')
            first = emb[:, 0] + prefix.astype(emb.dtype)
            return tokens, emb.at[:, 0].set(first)
        ids = shift_right(tokens, self.eos_id)
        emb = apply(ids, method='embed_tokens')
        return ids, emb.at[:, 0].set(prefix.astype(emb.dtype))

    def encode_text(self, apply, tokens, data_type):
        ids, emb = self.prefixed(apply, tokens, data_type)
        return apply(ids, emb, method='encode_text')

    # -- training --------------------------------------------------------------------------
    def data_transforms(self, tokenizer, seed=0):
        del tokenizer, seed
        return (CaptionDefaults(),)

    def forward(self, apply, batch, ctx):
        del ctx
        if self.mode == 'none':
            return apply(batch['image'], batch['tokens'], train=True)
        ids, emb = self.prefixed(apply, batch['tokens'], batch[label_prompts.DATA_TYPE])
        return apply(batch['image'], ids, train=True, text_embeddings=emb)

    def loss(self, out, batch, ctx):
        del ctx
        labels = unique_labels(batch[label_prompts.CLASS_ID])
        loss = unicl_loss(out.zimg, out.ztxt, out.logit_scale, labels)
        m = self.metrics(loss, out)
        m['classification_share'] = base.stop(
            jnp.mean((batch[label_prompts.DATA_TYPE] == label_prompts.CLASSIFICATION))
        )
        return loss, m

    # -- evaluation ------------------------------------------------------------------------
    @property
    def scorers(self):
        if self.mode == 'none':
            return (scoring.GLOBAL,)
        return (scoring.GLOBAL, *(self._scorer(n, t) for n, t in DATA_TYPES.items()))

    def _scorer(self, name: str, data_type: int) -> scoring.Scorer:
        def text_features(apply, tokens):
            types = jnp.full((tokens.shape[0],), data_type, jnp.int32)
            return self.encode_text(apply, tokens, types)

        return dataclasses.replace(scoring.GLOBAL, name=name, text_features=text_features)


def shift_right(tokens: jax.Array, eos_id: int | None) -> jax.Array:
    """``[t_0, t_0, t_1, .., t_{L-2}]``: room for a prefix at position 0 (its id repeats
    ``t_0``, whose embedding the prefix replaces). A row whose EOT was the last token keeps
    it last (its last word drops), so every row still has its EOT."""
    length = tokens.shape[1]
    shifted = jnp.concatenate([tokens[:, :1], tokens[:, :-1]], axis=1)
    lost = prompts.eot_positions(tokens, eos_id) == length - 1
    return shifted.at[:, -1].set(jnp.where(lost, tokens[:, -1], shifted[:, -1]))
