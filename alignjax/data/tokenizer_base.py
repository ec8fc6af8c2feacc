"""The tokenizer interface: ``Tokenizer``, the base class of every alignjax tokenizer.

A tokenizer is called as ``tok(texts) -> np.int32 [N, context_length]`` and lays each
sequence out as ``[BOS] t_1 ... t_k [EOS] pad pad ...`` (layout rules and which tokenizer
suits which pooling: ``alignjax.data.tokenizers``). Subclasses implement only ``encode``.
Its own module so that tokenizers living in other modules (``clip_bpe``) subclass it without
importing the registry in ``tokenizers``, which imports them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["PAD_MODES", "Tokenizer"]

#: Padding modes: ``'zero'`` pads with id 0, ``'eos'`` with the EOS id (sticky EOS).
PAD_MODES = ("zero", "eos")


class Tokenizer:
    """Base class: subclasses implement ``encode`` (text -> ids, no special tokens).

    Attributes:
      vocab_size: number of ids; every token is in ``[0, vocab_size)``.
      context_length: length L of every output row.
      pad_id: id used after EOS (0 for ``pad='zero'``, ``eos_id`` for ``pad='eos'``).
      bos_id: id prepended to every sequence, or None when no BOS is added.
      eos_id: id of the end-of-text token (EOT) that closes every sequence.
      pad: ``'zero'`` or ``'eos'``.
    """

    vocab_size: int
    context_length: int
    pad: str
    bos_id: int | None
    eos_id: int

    def __init__(self, context_length: int, pad: str, bos_id: int | None, eos_id: int):
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {list(PAD_MODES)}, got {pad!r}.")
        min_len = 1 + (bos_id is not None)
        if int(context_length) < min_len:
            raise ValueError(
                f"context_length={context_length} leaves no room for the special tokens; "
                f"it must be >= {min_len}."
            )
        self.context_length = int(context_length)
        self.pad = pad
        self.bos_id = bos_id
        self.eos_id = int(eos_id)

    @property
    def pad_id(self) -> int:
        return self.eos_id if self.pad == "eos" else 0

    @property
    def eos_is_max_id(self) -> bool:
        """True when EOS is the largest id (OpenAI-CLIP argmax pooling finds it)."""
        return self.eos_id == self.vocab_size - 1

    @property
    def last_token_is_eos(self) -> bool:
        """True when the last position is always EOS (big_vision ``pool='last'``)."""
        return self.pad == "eos"

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS/padding."""
        raise NotImplementedError

    def body(self, row) -> list[int]:
        """The ids of one tokenized row without BOS, EOS and padding (ids up to 1st EOS)."""
        ids = [int(i) for i in np.asarray(row).ravel()]
        if self.bos_id is not None and ids and ids[0] == self.bos_id:
            ids = ids[1:]
        return ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        """Tokenizes a batch of strings (a single str counts as a batch of one).

        Returns:
          np.int32 [N, context_length].
        """
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        out = np.full((len(texts), self.context_length), self.pad_id, np.int32)
        body = self.context_length - 1 - (self.bos_id is not None)
        for row, text in enumerate(texts):
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            ids = self.encode(str(text))[:body]
            if self.bos_id is not None:
                ids = [self.bos_id, *ids]
            ids.append(self.eos_id)
            out[row, : len(ids)] = ids
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, "
            f"context_length={self.context_length}, pad={self.pad!r}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id})"
        )
