"""CoOp: prompt learning on a frozen CLIP (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022).

The class prompt is ``[SOS] V_1 .. V_M <classname> . [EOS]``: M free vectors ``V`` in the
text tower's word-embedding space take the place of the words of a hand-written prompt.
With both towers frozen, only ``V`` is trained, with the cross-entropy of the zero-shot
logits over the task's C classes::

    w_c = encode_text(splice(V, "<classname_c>."))           [C, D], unit norm
    p(y = c | x) = softmax_c( t <encode_image(x), w_c> )      t = exp(log_scale), frozen
    loss = mean_i -log p(y_i | x_i)

Fields of ``config.loss`` (``name='coop'``):

* ``classnames``: the C class names, in label order (a label ``c`` of the data is
  ``classnames[c]``; a string label is looked up by name).
* ``label_key``: the source label the classes come from (``'shape'`` for the shapes data,
  ``'label'`` for a CSV / JSONL / TFDS label column).
* ``n_ctx``: M. ``ctx_init``: a phrase whose M token embeddings start the context ("a
  photo of a"; it must tokenize to exactly ``n_ctx`` tokens), or ``''`` for CoOp's random
  start ``N(0, 0.02^2)``.
* ``class_specific``: one context per class ``[C, M, W]`` (CoOp's CSC) instead of one
  shared ``[M, W]`` (unified).
* ``position``: the class token at the ``'end'`` (after the context), ``'middle'`` (after
  ``floor(M/2)`` vectors) or ``'front'`` (``alignjax.models.prompts.splice_context``).
* ``suffix``: appended to the class name (``'.'``); it stays right before ``[EOS]``.

The learned parameter is ``coop_context``, the offset of the context from the phrase's
embeddings: ``V = E(phrase) + coop_context`` with ``E`` the frozen token embedding (zero at
the start), or ``V = coop_context`` with random init. Because ``E`` is read from the live
(pre-trained, frozen) tower, the phrase start holds after ``config.init_from`` too: before
any step, the logits are exactly zero-shot classification with the prompt
"<phrase> <classname>." (tested). The config must freeze everything else
(``optim.freeze = ('(?!coop_context).*',)``, checked).

Evaluation: the ``coop`` scorer (metrics ``zeroshot/<eval>@coop/...``) splices the learned
context into the evaluator's class prompts; give that evaluator the template ``'{}.'`` (or
``'{}' + suffix``) so that its prompts are the training layout. A unified context applies
to any class names (CoCoOp's base-to-new protocol); a class-specific one to the prompts of
its training classes (a row matching no training prompt gets the mean context). The
evaluator's ``global`` metrics stay those of the hand-crafted prompts. The scorer runs on
every zero-shot evaluator of the run: its metrics mean CoOp only on the evaluators whose
templates are the training layout (configs/coop.py names one ``shapes_coop``).

The towers are frozen by the optimizer (no update), but their gradients are still computed
in the backward pass: a step costs about what a fine-tuning step does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alignjax import optim, scoring
from alignjax.data import few_shot
from alignjax.models import prompts
from alignjax.objectives import base

CONTEXT = 'coop_context'
LABEL = 'coop_label'


@dataclasses.dataclass(frozen=True)
class ClassLabel:
    """Grain transform: ``example['coop_label']`` int32, the index of the example's label
    ``label_key`` among ``classnames`` (an int label is the index itself)."""

    label_key: str
    classnames: tuple[str, ...]

    def map(self, example: dict[str, Any]) -> dict[str, Any]:
        value = few_shot.example_label(example, self.label_key)
        if isinstance(value, (bytes, str)):
            name = value.decode() if isinstance(value, bytes) else value
            if name not in self.classnames:
                raise ValueError(
                    f'Label {name!r} of {self.label_key!r} is not in config.loss.classnames '
                    f'{list(self.classnames)}; add it or filter the data.'
                )
            index = self.classnames.index(name)
        else:
            index = int(value)
            if not 0 <= index < len(self.classnames):
                raise ValueError(
                    f'Label {index} of {self.label_key!r} is outside the {len(self.classnames)} '
                    'config.loss.classnames; give every class a name.'
                )
        return dict(example, **{LABEL: np.int32(index)})

    def __call__(self, example):
        return self.map(example)


def label_cross_entropy(logits: jax.Array, labels: jax.Array):
    """``(loss, metrics)``: mean cross-entropy of class ``logits`` [B, C] against integer
    ``labels`` [B], with the batch's top-1 accuracy (``acc1``)."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return loss, {'loss': base.stop(loss), 'acc1': base.stop(acc)}


@base.register
class CoOp(base.Objective):
    """Learned context vectors on frozen towers; cross-entropy over zero-shot logits."""

    name = 'coop'
    defaults = dict(
        classnames=(),
        label_key='label',
        n_ctx=4,
        ctx_init='a photo of a',
        class_specific=False,
        position='end',
        suffix='.',
    )
    choices = dict(position=prompts.POSITIONS, class_specific=(False, True))

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        self.classnames = tuple(str(c) for c in self.cfg['classnames'])
        self.n_ctx = int(self.cfg['n_ctx'])
        if not self.classnames:
            raise ValueError(
                'config.loss.classnames is empty: list the class names in label order.'
            )
        if self.n_ctx < 1:
            raise ValueError(f'config.loss.n_ctx must be >= 1, got {self.n_ctx}.')
        self.tokens = None  # set by bind_tokenizer

    @classmethod
    def check(cls, config) -> None:
        # Sample paths of each tower and the temperature must be frozen, the context not.
        frozen = tuple(config.optim.freeze)
        probes = ('img/encoder/kernel', 'txt/token_embedding/embedding', 'log_scale')
        trainable = [p for p in probes if not optim.match_any(frozen, p)]
        if trainable or optim.match_any(frozen, CONTEXT):
            raise ValueError(
                "CoOp trains only the context with both towers frozen: set "
                "config.optim.freeze = ('(?!coop_context).*',)."
            )

    # -- the context ---------------------------------------------------------------------
    def heads(self, model):
        width = int(model.text['width'])
        shape = (self.n_ctx, width)
        if self.cfg['class_specific']:
            shape = (len(self.classnames),) + shape
        # Phrase start: an offset from the phrase's embeddings, zero at init. Random start:
        # the vectors themselves, N(0, 0.02^2) as CoOp.
        init = nn.initializers.normal(0.02) if not self.cfg['ctx_init'] else nn.initializers.zeros
        return {CONTEXT: base.Head(param=(init, shape, jnp.float32))}

    def bind_tokenizer(self, tokenizer) -> None:
        phrase = self.cfg['ctx_init'] or ' '.join(['X'] * self.n_ctx)
        self.eos_id = None if tokenizer.eos_is_max_id else int(tokenizer.eos_id)
        self.has_bos = tokenizer.bos_id is not None
        phrase_tokens = np.asarray(tokenizer([phrase]))[0]
        eot = int(prompts.eot_positions(phrase_tokens, self.eos_id))
        self.phrase_ids = phrase_tokens[int(self.has_bos) : eot].astype(np.int32)
        if self.phrase_ids.size != self.n_ctx:
            raise ValueError(
                f'config.loss.ctx_init={phrase!r} is {self.phrase_ids.size} tokens but '
                f'n_ctx={self.n_ctx}: set n_ctx={self.phrase_ids.size}.'
            )
        self.phrase_tokens = phrase_tokens[None].astype(np.int32)
        suffix = str(self.cfg['suffix'])
        self.tokens = np.asarray(tokenizer([c + suffix for c in self.classnames]), np.int32)
        # The suffix's token count (it stays before EOS in 'middle' / 'front').
        bare = np.asarray(tokenizer(list(self.classnames)), np.int32)
        bare_eot = np.asarray(prompts.eot_positions(bare, self.eos_id))
        self.class_lengths = bare_eot - int(self.has_bos)
        suffix_tokens = np.asarray(prompts.eot_positions(self.tokens, self.eos_id)) - bare_eot
        self.n_suffix = int(np.max(suffix_tokens))

    def context(self, apply) -> jax.Array:
        """[M, W] or [C, M, W] float32: the context vectors V."""
        offset = apply(method=lambda m: getattr(m, CONTEXT))
        if not self.cfg['ctx_init']:
            return offset
        phrase = apply(jnp.asarray(self.phrase_tokens), method='embed_tokens')[0]
        start = int(self.has_bos)
        return phrase[start : start + self.n_ctx].astype(offset.dtype) + offset

    def prompt_embeddings(self, apply, tokens, class_lengths=None, context=None) -> jax.Array:
        """[B, D] unit-norm text embeddings of class prompts `tokens` [B, L] (each
        ``[SOS] name suffix [EOS]``) with the context spliced in; `context` [B, M, W] or
        [M, W] (default: this objective's, unified or per training class)."""
        self._need_tokens()
        context = self.context(apply) if context is None else context
        emb = apply(tokens, method='embed_tokens')
        spliced, ids = prompts.splice_context(
            tokens,
            emb,
            context.astype(emb.dtype),
            placeholder_id=self.phrase_ids,
            position=self.cfg['position'],
            eos_id=self.eos_id,
            has_bos=self.has_bos,
            class_lengths=class_lengths,
        )
        return apply(ids, spliced, method='encode_text')

    def class_embeddings(self, apply) -> jax.Array:
        """[C, D] unit-norm embeddings of the training classes' learned prompts."""
        self._need_tokens()
        lengths = None if self.cfg['position'] == 'end' else jnp.asarray(self.class_lengths)
        return self.prompt_embeddings(apply, jnp.asarray(self.tokens), lengths)

    def _need_tokens(self):
        if self.tokens is None:
            raise RuntimeError(
                'CoOp has no class prompts yet: build the run through alignjax.train / '
                'alignjax.restore, which call Objective.bind_tokenizer.'
            )

    # -- training ------------------------------------------------------------------------
    def data_transforms(self, tokenizer, seed=0):
        del tokenizer, seed
        return (ClassLabel(str(self.cfg['label_key']), self.classnames),)

    def forward(self, apply, batch, ctx):
        del ctx
        zimg = apply(batch['image'], method='encode_image')  # [B, D]
        w = self.class_embeddings(apply)  # [C, D]
        scale = jnp.exp(apply(method=lambda m: m.log_scale))
        return {'logits': scale * zimg.astype(jnp.float32) @ w.astype(jnp.float32).T}

    def loss(self, out, batch, ctx):
        del ctx
        return label_cross_entropy(out['logits'], batch[LABEL])

    # -- evaluation ----------------------------------------------------------------------
    @property
    def scorers(self):
        return (scoring.GLOBAL, self._scorer())

    def _scorer(self) -> scoring.Scorer:
        def text_features(apply, tokens):
            context = self.context(apply)
            if context.ndim == 3:  # class-specific: the row's training class, else the mean
                self._need_tokens()
                known = jnp.asarray(self.tokens)
                same = (tokens[:, None, :] == known[None]).all(-1)  # [B, C]
                per_row = context[jnp.argmax(same, -1)]
                context = jnp.where(same.any(-1)[:, None, None], per_row, context.mean(0))
            else:
                context = jnp.broadcast_to(context, (tokens.shape[0],) + context.shape)
            lengths = None
            if self.cfg['position'] != 'end':
                self._need_tokens()
                eot = prompts.eot_positions(tokens, self.eos_id)
                lengths = eot - int(self.has_bos) - self.n_suffix
            return self.prompt_embeddings(apply, tokens, lengths, context)

        return scoring.Scorer(
            name='coop',
            image_features=scoring.GLOBAL.image_features,
            text_features=text_features,
            score=scoring.GLOBAL.score,
            combine_templates='embeddings',
        )
