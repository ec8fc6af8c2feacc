"""Learnable text context for prompt learning (CoOp, arXiv:2109.01134) on frozen towers.

CoOp replaces the hand-written words of a prompt ("a photo of a") by ``M`` free vectors
``V_1..V_M`` in the word-embedding space of the text tower and trains only those, with the
tower frozen. Here that is two pieces:

* :func:`splice_context` (pure): class prompts tokenized as usual, ``[SOS] c_1..c_n [EOS]
  pad..`` (ids ``[C, L]``, e.g. of "circle."), their looked-up embeddings ``[C, L, W]``
  (``TextTransformer.embed_tokens`` / ``TwoTower.embed_tokens``) and the context ``[M, W]``
  (unified, shared by all classes) or ``[C, M, W]`` (class-specific) -> input embeddings
  ``[C, L, W]`` and matching ids ``[C, L]`` for ``TextTransformer(tokens, embeddings)`` /
  ``TwoTower.encode_text(tokens, embeddings)``.
* :class:`LearnedContext` (Flax): holds the context as its only parameter, initialised
  ``N(0, 0.02^2)`` or from given embeddings (those of "a photo of a", see
  :func:`phrase_context`).

Splice positions, with ``h = floor(M / 2)``::

    'end'     [SOS] V_1 .. V_M  c_1 .. c_n  [EOS] pad ..
    'middle'  [SOS] V_1 .. V_h  c_1 .. c_n  V_h+1 .. V_M  [EOS] pad ..
    'front'   [SOS] c_1 .. c_n  V_1 .. V_M  [EOS] pad ..

(no ``[SOS]`` when ``has_bos=False``, big_vision/SigLIP tokenizers). ``class_lengths``
makes only the first ``n_c`` body tokens the class name; the rest of the body (e.g. the
"." of "circle.") then stays right before ``[EOS]``, after the context: CoOp's exact layout
for 'middle' and 'front'. Everything after the class/context block, EOS and padding, moves
right by ``M``; the last ``M`` positions (padding) fall off.

The returned ids keep the text tower's pooling and mask right: context positions hold
``placeholder_id`` (a non-pad id below the EOT id), so for the 'clip' convention
``argmax(ids)`` is still the EOT, now at ``eot + M`` for every position, and
``arange(L) <= eot + M`` is the mask; for 'big_vision' the ids are ``!= pad_id`` exactly at
SOS, words, context and EOS, and the last position is still (sticky) padding or EOS.
If the context *is* the embedding of the placeholder ids (``placeholder_id`` the ids of "a
photo of a" and ``context`` their embeddings), the spliced input is exactly the tokenized
prompt "a photo of a circle." and the tower output equals that of the ids path bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alignjax.models import layers

Array = jax.Array

POSITIONS = ("end", "middle", "front")

__all__ = [
    "POSITIONS",
    "LearnedContext",
    "context_init",
    "eot_positions",
    "phrase_context",
    "splice_context",
]


def _concrete(x) -> Optional[np.ndarray]:
    """``x`` as numpy when its value is known (not a tracer), else None."""
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def eot_positions(tokens: Array, eos_id: Optional[int]) -> Array:
    """[...] the position of each row's EOT in ``tokens`` [..., L]: ``argmax`` of the ids
    when ``eos_id`` is None (EOS is the largest id), else the first ``eos_id``."""
    if eos_id is None:
        return jnp.argmax(tokens, axis=-1)  # CLIP: EOT is the largest id
    return jnp.argmax(tokens == eos_id, axis=-1)  # first EOS (sticky padding repeats it)


def _check_concrete(tok, eot, n_ctx, placeholder, class_lengths, eos_id, start):
    """Value checks that need concrete ids; skipped for traced inputs."""
    c, length = tok.shape
    if eos_id is not None:
        missing = np.flatnonzero(~(tok == eos_id).any(axis=1))
        if missing.size:
            raise ValueError(f"Class prompt rows {missing.tolist()} contain no EOS id {eos_id}.")
    short = np.flatnonzero(eot < start)
    if short.size:
        raise ValueError(
            f"Class prompt rows {short.tolist()} have their EOT at position 0, before the BOS "
            "that has_bos=True expects."
        )
    need = eot + 1 + n_ctx
    over = np.flatnonzero(need > length)
    if over.size:
        r = int(over[np.argmax(need[over])])
        raise ValueError(
            f"Splicing {n_ctx} context tokens overflows the sequence length L={length}: class "
            f"prompt row {r} has {int(eot[r]) + 1} tokens up to and including EOS and would "
            f"need {int(need[r])} (rows {over.tolist()} overflow). Use fewer context tokens, "
            f"shorter class prompts or a longer context_length (>= {int(need.max())})."
        )
    if class_lengths is not None:
        body = eot - start
        bad = np.flatnonzero((class_lengths < 0) | (class_lengths > body))
        if bad.size:
            raise ValueError(
                f"class_lengths {class_lengths[bad].tolist()} of rows {bad.tolist()} are not "
                f"in [0, body length {body[bad].tolist()}] (tokens between BOS and EOS)."
            )
    if placeholder is None:
        return
    if eos_id is None:
        eot_ids = tok[np.arange(c), eot]
        if (placeholder >= eot_ids.min()).any():
            raise ValueError(
                f"placeholder_id {placeholder.tolist()} must be below the EOT id "
                f"{int(eot_ids.min())}: with eos_id=None the EOT is found as argmax(tokens)."
            )
    elif (placeholder == eos_id).any():
        raise ValueError(f"placeholder_id {placeholder.tolist()} must not be the EOS id {eos_id}.")
    after = np.arange(length)[None] > eot[:, None]
    pads = np.unique(tok[after])
    if np.isin(placeholder, pads).any():
        raise ValueError(
            f"placeholder_id {placeholder.tolist()} is a padding id ({pads.tolist()} follow "
            "EOS): context positions would be masked out as padding."
        )


def splice_context(
    tokens: Array,
    embeddings: Array,
    context: Array,
    *,
    placeholder_id: Union[int, Sequence[int], Array],
    position: str = "end",
    eos_id: Optional[int] = None,
    has_bos: bool = True,
    class_lengths: Optional[Array] = None,
) -> tuple[Array, Array]:
    """Inserts context vectors into tokenized class prompts (layouts in the module docstring).

    Args:
      tokens: [C, L] int ids of the class prompts, ``[SOS] c_1..c_n [EOS] pad..``.
      embeddings: [C, L, W] their token embeddings (``embed_tokens(tokens)``).
      context: [M, W] (one context for all classes) or [C, M, W] (one per class).
      placeholder_id: id written at the context positions of the returned ids: an int or
        [M] ids (e.g. those of "a photo of a"). Must not be a padding id, and (``eos_id``
        None) must be below the EOT id.
      position: 'end', 'middle' (``floor(M/2)`` vectors before the class) or 'front'.
      eos_id: the EOS id; None: the EOT of each row is ``argmax(tokens)`` (CLIP BPE and the
        alignjax word/byte tokenizers, where EOS is the largest id). Else the first
        occurrence of ``eos_id`` (works with sticky EOS padding).
      has_bos: whether position 0 is a BOS/SOS token that stays in front.
      class_lengths: [C] ints or None; the number of body tokens (after BOS) that form the
        class name; the remaining body tokens (e.g. '.') stay right before EOS. None: the
        whole body is the class.

    Returns:
      ``(embeddings [C, L, W], tokens [C, L])``: output row ``c`` at position ``j`` is
      ``context[c, i]`` / ``placeholder_id[i]`` at the i-th context slot, else the input
      row's embedding / id at ``j`` (before the block), ``j - a`` (class name, ``a`` = number
      of context vectors before it) or ``j - M`` (after the block). The EOT moves from
      ``eot`` to ``eot + M``. Embeddings have the promoted dtype of ``embeddings`` and
      ``context``.

    Raises:
      ValueError: bad shapes or position; and, when ``tokens`` are concrete (not traced
      under jit; closed-over constants are concrete), a prompt that would overflow ``L``
      (naming the lengths), a missing EOS, a placeholder id that would break pooling or the
      mask, or class lengths outside the body. Traced ``tokens`` skip these value checks.
    """
    if position not in POSITIONS:
        raise ValueError(f"Unknown context position {position!r}. Valid: {POSITIONS}.")
    tokens_in = tokens
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [C, L] ints, got shape {tokens.shape}.")
    c, length = tokens.shape
    if embeddings.ndim != 3 or embeddings.shape[:2] != (c, length):
        raise ValueError(
            f"embeddings must be [C, L, W] with (C, L) = {(c, length)} as tokens, got shape "
            f"{embeddings.shape}."
        )
    w = embeddings.shape[-1]
    if context.ndim == 2:
        context = jnp.broadcast_to(context[None], (c,) + context.shape)
    if context.ndim != 3 or context.shape[0] != c or context.shape[-1] != w:
        raise ValueError(
            f"context must be [M, W] or [C, M, W] with C={c}, W={w}, got shape {context.shape}."
        )
    m = context.shape[1]
    ph = jnp.asarray(placeholder_id, jnp.int32)
    if ph.ndim == 0:
        ph = jnp.broadcast_to(ph, (m,))
    if ph.shape != (m,):
        raise ValueError(
            f"placeholder_id must be an int or {m} ids (one per context vector), got shape "
            f"{ph.shape}."
        )
    cl_np = _concrete(class_lengths)
    if class_lengths is not None:
        class_lengths = jnp.asarray(class_lengths, jnp.int32)
        if class_lengths.shape != (c,):
            raise ValueError(f"class_lengths must be [C={c}], got shape {class_lengths.shape}.")

    start = int(has_bos)
    # Value checks in numpy on the concrete inputs (under jit, closed-over constants are
    # concrete while anything computed from them with jnp is traced).
    tok_np = _concrete(tokens_in)
    if tok_np is not None:
        eot_np = tok_np.argmax(-1) if eos_id is None else (tok_np == eos_id).argmax(-1)
        ph_np = _concrete(placeholder_id)
        _check_concrete(
            tok_np,
            eot_np,
            m,
            None if ph_np is None else np.broadcast_to(ph_np, (m,)),
            cl_np,
            eos_id,
            start,
        )
    eot = eot_positions(tokens, eos_id)  # [C]
    if m == 0:
        return jnp.asarray(embeddings, jnp.result_type(embeddings, context)), tokens

    n = (eot - start if class_lengths is None else class_lengths)[:, None]  # [C, 1] class len
    a = {"end": m, "middle": m // 2, "front": 0}[position]  # context slots before the class
    j = jnp.arange(length)[None]  # [1, L] output positions
    k = j - start  # position after BOS
    is_ctx = (k >= 0) & ((k < a) | ((k >= a + n) & (k < m + n)))  # [C, L]
    ctx_idx = jnp.clip(jnp.where(k < a, k, k - n), 0, m - 1)
    src = jnp.where(k < 0, j, jnp.where(k < a + n, j - a, j - m))
    src = jnp.clip(src, 0, length - 1)  # [C, L] source position of non-context entries

    out_tokens = jnp.where(is_ctx, ph[ctx_idx], jnp.take_along_axis(tokens, src, axis=1))
    out_emb = jnp.where(
        is_ctx[..., None],
        jnp.take_along_axis(context, ctx_idx[..., None], axis=1),
        jnp.take_along_axis(embeddings, src[..., None], axis=1),
    )
    return out_emb, out_tokens.astype(tokens.dtype)


def phrase_context(
    tokens: Array, embeddings: Array, *, eos_id: Optional[int] = None, has_bos: bool = True
) -> tuple[Array, np.ndarray]:
    """The body of one tokenized phrase (e.g. "a photo of a"), as context and ids.

    Args:
      tokens: [L] or [1, L] concrete ids of the phrase, ``[SOS] t_1..t_M [EOS] pad..``.
      embeddings: [L, W] or [1, L, W], ``embed_tokens(tokens)``.
      eos_id, has_bos: as in :func:`splice_context`.

    Returns:
      ``(context [M, W], ids np.int32 [M])``: the embeddings and ids of ``t_1..t_M``; use
      them as ``context_init(context)`` / ``placeholder_id=ids``.
    """
    tok = _concrete(tokens)
    if tok is None:
        raise ValueError("phrase_context needs concrete tokens (the phrase length sets M).")
    tok = tok.reshape(-1)
    embeddings = jnp.asarray(embeddings).reshape(tok.shape[0], -1)
    eot = int(np.argmax(tok) if eos_id is None else np.argmax(tok == eos_id))
    if eos_id is not None and tok[eot] != eos_id:
        raise ValueError(f"The phrase tokens contain no EOS id {eos_id}.")
    start = int(has_bos)
    return embeddings[start:eot], tok[start:eot].astype(np.int32)


def context_init(values: Array) -> Callable:
    """A Flax initializer returning ``values`` ([M, W], or [C, M, W]); [M, W] values
    broadcast to a class-specific [C, M, W] parameter (every class starts from them)."""
    values = np.asarray(values)

    def init(key, shape, dtype=jnp.float32):
        del key
        if tuple(shape) == values.shape or (
            len(shape) == 3 and values.ndim == 2 and tuple(shape[1:]) == values.shape
        ):
            return jnp.broadcast_to(jnp.asarray(values, dtype), shape)
        raise ValueError(
            f"Context init values of shape {values.shape} do not fit the context parameter "
            f"of shape {tuple(shape)} ([M, W] or [C, M, W])."
        )

    return init


class LearnedContext(nn.Module):
    """Learnable context vectors, the only parameter (``context``) of prompt learning.

    Attributes:
      num_tokens: M, context vectors per prompt.
      width: W, the text tower's width (its token-embedding size).
      num_classes: None: one context ``[M, W]`` shared by all classes (CoOp "unified");
        C: class-specific contexts ``[C, M, W]`` (CoOp "CSC").
      context_init: initializer; default ``N(0, 0.02^2)`` as CoOp; ``context_init(values)``
        starts from given embeddings (e.g. of "a photo of a", :func:`phrase_context`).
      param_dtype: storage dtype.

    ``__call__() -> context [M, W] or [C, M, W]``, for :func:`splice_context`. The
    parameter is logically partitioned (``(None, 'embed')``) like the towers' parameters.
    Use it next to a frozen tower: e.g. in a loss, ``ctx = LearnedContext(..).apply(p)``,
    ``emb, ids = splice_context(class_ids, class_emb, ctx, ...)``, then
    ``model.apply(jax.lax.stop_gradient(tower_vars), ids, emb, method='encode_text')``.
    """

    num_tokens: int
    width: int
    num_classes: Optional[int] = None
    context_init: Callable = nn.initializers.normal(stddev=0.02)
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> Array:
        if self.num_classes is None:
            shape, names = (self.num_tokens, self.width), (None, "embed")
        else:
            shape = (self.num_classes, self.num_tokens, self.width)
            names = (None, None, "embed")
        return self.param(
            "context", layers.partitioned(self.context_init, names), shape, self.param_dtype
        )
