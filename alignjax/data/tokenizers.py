"""Text tokenizers: strings -> fixed-length int32 token arrays.

Every tokenizer is called as ``tok(texts) -> np.int32 [N, context_length]`` and lays each
sequence out as::

    [BOS] t_1 ... t_k [EOS] pad pad ...

* Truncation drops words, never the EOS: a text too long for ``context_length`` ends with
  EOS at the last position.
* ``pad='zero'`` pads with id 0 (``pad_id == 0``); ``pad='eos'`` is big_vision's "sticky"
  EOS padding (``pad_id == eos_id``), so the last token is always EOS.
* An empty caption tokenizes to ``[BOS] [EOS]`` (or just ``[EOS]`` without BOS) followed by
  padding: still a valid sequence with an EOS to pool at.

Which text-tower pooling each tokenizer suits:

* ``WordHashTokenizer`` and ``ByteTokenizer``: EOS (= EOT) is the largest id of the vocab,
  so OpenAI-CLIP pooling at ``argmax(tokens)`` finds it with either pad mode (argmax returns
  the first EOS when padding is sticky). With ``pad='eos'`` big_vision's ``pool='last'``
  works too.
* ``SentencePieceTokenizer`` with ``eos_mode='native'`` (default) uses the model's own EOS
  id, which is usually NOT the largest id (T5/c4 models: pad 0, eos 1, unk 2; the
  sentencepiece trainer's default: unk 0, bos 1, eos 2). Such tokens suit big_vision-style
  towers: ``pad='eos'`` and ``pool='last'`` (this is what SigLIP checkpoints expect). With
  ``eos_mode='append'`` the EOS gets a new id, ``sp.vocab_size()``, the largest, and
  ``vocab_size`` grows by one: that suits argmax pooling for towers trained from scratch.
  ``eos_is_max_id`` and ``last_token_is_eos`` say which holds for a tokenizer.

``HFTokenizer`` (``name='hf'``, module ``alignjax.data.hf_tokenizer``) reads any Hugging
Face ``tokenizer.json`` (SigLIP 2's Gemma, XLM-R, BERT, T5, CLIP) with the ``tokenizers``
library; BOS/EOS are the file's own.

``build_tokenizer(config)`` builds one from a ConfigDict (see ``default_tokenizer_config``).
All tokenizers pickle (grain workers run them).
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Mapping

from alignjax.data.clip_bpe import CLIPBPETokenizer
from alignjax.data.hf_tokenizer import HFTokenizer
from alignjax.data.tokenizer_base import Tokenizer

__all__ = [
    "Tokenizer",
    "WordHashTokenizer",
    "ByteTokenizer",
    "SentencePieceTokenizer",
    "HFTokenizer",
    "build_tokenizer",
    "default_tokenizer_config",
    "TOKENIZERS",
]

_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class WordHashTokenizer(Tokenizer):
    """Dependency-free word tokenizer: each word is hashed (CRC-32) to an id.

    Lower-cases the text, splits it into words (``\\w+``) and single punctuation / symbol
    characters (emoji included), and maps each piece to
    ``N_SPECIAL + crc32(utf-8 piece) % (vocab_size - N_SPECIAL - 1)``. CRC-32 is stable
    across processes and machines (unlike Python's salted ``hash``), so grain workers and
    hosts agree. Different words may collide; at the default vocab_size=4096 the vocabulary of
    ``ShapesDataset`` is collision-free (a test checks it).

    Ids: 0 = PAD, 1 = BOS, 2 = reserved, ``vocab_size - 1`` = EOS (the largest id).
    """

    N_SPECIAL = 3

    def __init__(
        self,
        vocab_size: int = 4096,
        context_length: int = 16,
        pad: str = "zero",
        add_bos: bool = True,
    ):
        if int(vocab_size) < self.N_SPECIAL + 2:
            raise ValueError(f"vocab_size must be >= {self.N_SPECIAL + 2}, got {vocab_size}.")
        self.vocab_size = int(vocab_size)
        self._buckets = self.vocab_size - self.N_SPECIAL - 1
        super().__init__(context_length, pad, 1 if add_bos else None, self.vocab_size - 1)

    def words(self, text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        return [
            self.N_SPECIAL + zlib.crc32(w.encode("utf-8")) % self._buckets for w in self.words(text)
        ]


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: fully general, no vocabulary, no collisions.

    Ids: 0 = PAD, 1 = BOS, 2 = reserved, byte b -> b + 3, 259 = EOS (the largest);
    ``vocab_size == 260``. ``decode`` inverts tokenization (invalid UTF-8 from truncation in
    the middle of a character is replaced).
    """

    N_SPECIAL = 3

    def __init__(self, context_length: int = 64, pad: str = "zero", add_bos: bool = True):
        self.vocab_size = 256 + self.N_SPECIAL + 1
        super().__init__(context_length, pad, 1 if add_bos else None, self.vocab_size - 1)

    def encode(self, text: str) -> list[int]:
        return [b + self.N_SPECIAL for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        data = bytes(
            i - self.N_SPECIAL for i in self.body(ids) if self.N_SPECIAL <= i < self.N_SPECIAL + 256
        )
        return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
    """Wraps a SentencePiece ``.model`` file.

    Args:
      model_path: path of the ``.model`` file (read once; the serialized model travels with
        the pickled tokenizer, so grain workers need not see the file).
      context_length: output length L.
      add_bos: prepend the model's BOS id (CLIP-style SOT); off by default (big_vision).
      add_eos: must be True: every sequence ends with EOS (kept on truncation).
      pad: ``'zero'`` (pad with id 0, whatever the model assigns to it; T5/c4 models use 0
        for <pad>) or ``'eos'`` (sticky EOS padding, for ``pool='last'``).
      eos_mode: ``'native'`` uses the model's EOS id (needed for pretrained weights such as
        SigLIP's; EOS is then usually not the largest id), ``'append'`` uses a new id
        ``sp.vocab_size()`` as EOS (the largest; ``vocab_size`` becomes sp size + 1), for
        argmax-pooling towers.
      lower: lower-case texts before encoding.
    """

    def __init__(
        self,
        model_path: str,
        context_length: int = 16,
        add_bos: bool = False,
        add_eos: bool = True,
        pad: str = "zero",
        eos_mode: str = "native",
        lower: bool = False,
    ):
        if not add_eos:
            raise ValueError(
                "add_eos=False is not supported: alignjax sequences always end with EOS "
                "(the token text towers pool at)."
            )
        if eos_mode not in ("native", "append"):
            raise ValueError(f"eos_mode must be 'native' or 'append', got {eos_mode!r}.")
        with open(model_path, "rb") as f:
            self._proto = f.read()
        self.model_path = str(model_path)
        self.eos_mode = eos_mode
        self.lower = bool(lower)
        self._sp = None
        sp = self._processor()
        n = sp.vocab_size()
        if eos_mode == "append":
            self.vocab_size, eos = n + 1, n
        else:
            eos = sp.eos_id()
            if eos < 0:
                raise ValueError(
                    f"{model_path} has no EOS piece (eos_id=-1); use eos_mode='append'."
                )
            self.vocab_size = n
        bos = None
        if add_bos:
            bos = sp.bos_id()
            if bos < 0:
                raise ValueError(f"{model_path} has no BOS piece (bos_id=-1); use add_bos=False.")
        super().__init__(context_length, pad, bos, eos)

    def _processor(self):
        if self._sp is None:
            import sentencepiece as spm  # pylint: disable=g-import-not-at-top

            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        return self._sp

    def encode(self, text: str) -> list[int]:
        if self.lower:
            text = text.lower()
        return list(self._processor().encode(text, out_type=int))

    def decode(self, ids) -> str:
        """Text of one tokenized row (BOS, EOS and padding removed)."""
        sp = self._processor()
        return sp.decode([i for i in self.body(ids) if i < sp.vocab_size()])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_sp"] = None  # the C++ processor does not pickle; rebuilt from _proto
        return state


# --- config ------------------------------------------------------------------------------
TOKENIZERS = {
    "word_hash": WordHashTokenizer,
    "bytes": ByteTokenizer,
    "sentencepiece": SentencePieceTokenizer,
    "clip_bpe": CLIPBPETokenizer,
    "hf": HFTokenizer,
}

# Config field -> which tokenizers use it. Fields a tokenizer does not use are ignored (so
# switching `name` on the command line does not trip over the other defaults).
_FIELDS = {
    "name": tuple(TOKENIZERS),
    "context_length": tuple(TOKENIZERS),
    "pad": tuple(TOKENIZERS),
    "add_bos": tuple(TOKENIZERS),
    "vocab_size": ("word_hash",),
    "model_path": ("sentencepiece", "hf"),
    "eos_mode": ("sentencepiece", "hf"),
    "lower": ("sentencepiece", "hf"),
    "bpe_path": ("clip_bpe",),
    "vocab_path": ("clip_bpe",),
    "use_ftfy": ("clip_bpe",),
}


def default_tokenizer_config():
    """ConfigDict of the default tokenizer (the demo's word-hash tokenizer).

    Fields: name ('word_hash' | 'bytes' | 'sentencepiece' | 'clip_bpe' | 'hf'), vocab_size
    (word_hash only; for the others the built tokenizer's ``vocab_size`` is the truth -- size
    the text embedding from it), context_length, pad ('zero' | 'eos'), model_path
    (sentencepiece: a .model file; hf: a Hugging Face tokenizer.json or its folder), add_bos
    (None: the tokenizer's default), eos_mode (sentencepiece, hf: 'native' | 'append'),
    lower (sentencepiece, hf), bpe_path / vocab_path / use_ftfy (clip_bpe).
    """
    import ml_collections  # pylint: disable=g-import-not-at-top

    return ml_collections.ConfigDict(
        dict(
            name="word_hash",
            vocab_size=4096,
            context_length=16,
            pad="zero",
            model_path="",  # sentencepiece: a .model file; hf: a tokenizer.json (or its folder)
            add_bos=ml_collections.config_dict.placeholder(bool),
            eos_mode="native",
            lower=False,
            bpe_path="",  # clip_bpe: OpenAI bpe_simple_vocab_16e6.txt.gz or HF merges.txt
            vocab_path="",  # clip_bpe: optional HF vocab.json
            use_ftfy=ml_collections.config_dict.placeholder(bool),  # clip_bpe: None = auto
        )
    )


def build_tokenizer(config: Mapping[str, Any] | Any) -> Tokenizer:
    """Builds a tokenizer from a ConfigDict / mapping (fields: see default_tokenizer_config).

    Raises:
      ValueError: unknown name or field (the message lists the valid ones), or a
        sentencepiece config without model_path.
    """
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    config = dict(config)
    unknown = sorted(set(config) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"Unknown tokenizer config field(s) {unknown}; valid fields: {sorted(_FIELDS)}."
        )
    name = config.get("name", "word_hash")
    if name not in TOKENIZERS:
        raise ValueError(f"Unknown tokenizer name {name!r}; valid names: {sorted(TOKENIZERS)}.")
    kwargs = {
        k: v for k, v in config.items() if k != "name" and name in _FIELDS[k] and v is not None
    }
    if name == "sentencepiece" and not kwargs.get("model_path"):
        raise ValueError(
            "tokenizer.name='sentencepiece' needs tokenizer.model_path (a .model file)."
        )
    if name == "hf" and not kwargs.get("model_path"):
        raise ValueError(
            "tokenizer.name='hf' needs tokenizer.model_path (a Hugging Face tokenizer.json, "
            "or the model folder holding it)."
        )
    return TOKENIZERS[name](**kwargs)
