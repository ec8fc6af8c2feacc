"""Any Hugging Face ``tokenizer.json``, run by the ``tokenizers`` library (Rust).

One file describes a whole tokenizer: normalizer, pre-tokenizer, model (BPE, Unigram,
WordPiece, WordLevel), the special tokens and the post-processor that adds them. Reading it
with ``tokenizers`` gives SigLIP 2's Gemma tokenizer, XLM-R, BERT-style WordPiece, T5 and
CLIP's BPE exactly as ``transformers``' fast tokenizers run them, at Rust speed, without
``transformers``.

The layout is alignjax's (``alignjax.data.tokenizers``): ``[BOS] t_1 ... t_k [EOS] pad ...``
in ``context_length`` positions, EOS kept on truncation, ``int32 [N, L]``. The body ids
``t_1 .. t_k`` are ``tokenizer.encode(text, add_special_tokens=False)``; BOS and EOS are the
tokens the file's post-processor puts around a single text (``[CLS] $A [SEP]`` for BERT,
``<s> $A </s>`` for XLM-R, ``$A </s>`` for T5, ``<|startoftext|> $A <|endoftext|>`` for
CLIP), so for those files the ids equal ``transformers``' with ``padding='max_length',
truncation=True`` wherever transformers pads with id 0 (BERT, T5, Gemma; CLIP with
``pad='zero'`` as open_clip pads). XLM-R's ``<pad>`` is id 1, so its padding positions
differ; text towers mask with their own ``pad_id``.

A file whose post-processor adds no EOS (Gemma adds only ``<bos>``) gets its EOS from the
vocabulary by name (``</s>``, ``<eos>``, ``[SEP]``, ``<|endoftext|>``, ...): alignjax
sequences always end with EOS, the token text towers pool at. ``eos_mode='append'`` instead
adds a new id, ``vocab_size`` of the file, as EOS (the largest id: argmax pooling).

Cleaning: only what the file's normalizer does. open_clip's extra cleanup (``ftfy`` and
``html.unescape`` before tokenizing, see ``alignjax.data.clip_bpe``) is not in CLIP's
tokenizer.json, so on text with HTML entities or mojibake ``clip_bpe`` and ``hf`` differ;
on other text their ids are equal (tests/test_tokenizer_hf.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignjax.data.tokenizer_base import Tokenizer

__all__ = ["TOKENIZER_JSON", "HFTokenizer"]

TOKENIZER_JSON = "tokenizer.json"
# Names an EOS / BOS goes by in the vocabularies people use, in order of preference.
_EOS_NAMES = ("</s>", "<eos>", "<|endoftext|>", "[SEP]", "<|end_of_text|>", "<end_of_text>")
_BOS_NAMES = ("<s>", "<bos>", "<|startoftext|>", "[CLS]", "<|begin_of_text|>", "<start_of_text>")


def _template_specials(proc: dict[str, Any] | None) -> tuple[list[int], list[int]]:
    """Ids the post-processor puts before and after a single sequence ``$A``.

    Reads ``TemplateProcessing`` (``single`` template and its ``special_tokens`` table),
    ``BertProcessing`` / ``RobertaProcessing`` (``cls``, ``sep``) and ``Sequence`` of those;
    other processors (``ByteLevel``) add nothing.
    """
    if not proc:
        return [], []
    kind = proc.get("type")
    if kind == "Sequence":
        before, after = [], []
        for sub in proc.get("processors", []):
            b, a = _template_specials(sub)
            before, after = before + b, after + a
        return before, after
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [int(proc["cls"][1])], [int(proc["sep"][1])]
    if kind == "TemplateProcessing":
        table = proc.get("special_tokens", {})
        before, after, seen_sequence = [], [], False
        for piece in proc.get("single", []):
            if "Sequence" in piece:
                seen_sequence = True
                continue
            ids = [int(i) for i in table[piece["SpecialToken"]["id"]]["ids"]]
            (after if seen_sequence else before).extend(ids)
        return before, after
    return [], []


def _first_present(vocab: dict[str, int], names: Sequence[str]) -> int | None:
    for name in names:
        if name in vocab:
            return int(vocab[name])
    return None


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json``: ``tok(texts) -> np.int32 [N, context_length]``.

    Args:
      model_path: the ``tokenizer.json`` file, or the folder holding it (a model's Hub
        folder). Read once; the JSON travels with the pickled tokenizer, so grain workers
        need not see the file.
      context_length: output length L (64 for SigLIP / SigLIP 2, 77 for CLIP).
      pad: ``'zero'`` (pad with id 0) or ``'eos'`` (sticky EOS, for ``pool='last'``).
      add_bos: None: the file's own choice (its post-processor's token before the text, if
        any); True: prepend a BOS (the post-processor's, else one found by name); False: none.
      eos_mode: ``'native'``: the post-processor's token after the text, else one found by
        name; ``'append'``: a new id equal to the file's vocabulary size (``vocab_size``
        grows by one), the largest id, for argmax-pooling towers trained from scratch.
      lower: lower-case texts before encoding (for towers trained on lower-cased text;
        CLIP's file lower-cases by itself).
    """

    def __init__(
        self,
        model_path: str,
        context_length: int = 64,
        pad: str = "zero",
        add_bos: bool | None = None,
        eos_mode: str = "native",
        lower: bool = False,
    ):
        if eos_mode not in ("native", "append"):
            raise ValueError(f"tokenizer.eos_mode must be 'native' or 'append', got {eos_mode!r}.")
        path = str(model_path)
        if os.path.isdir(path):
            path = os.path.join(path, TOKENIZER_JSON)
        if not os.path.isfile(path):
            raise ValueError(
                f"tokenizer.model_path={path}: no such file. Give a Hugging Face "
                f"{TOKENIZER_JSON} (or the model folder holding it, as save_pretrained writes)."
            )
        with open(path, encoding="utf-8", errors="replace") as f:
            self._json = f.read()
        self.model_path = path
        self.eos_mode = eos_mode
        self.lower = bool(lower)
        self._tok = None
        tok = self._backend()

        vocab = tok.get_vocab(with_added_tokens=True)
        n = max(vocab.values()) + 1 if vocab else 0
        before, after = _template_specials(json.loads(tok.to_str()).get("post_processor"))
        if len(before) > 1 or len(after) > 1:
            raise ValueError(
                f"{path}: its post-processor adds {len(before)} token(s) before and "
                f"{len(after)} after a text; alignjax lays out at most one BOS and one EOS."
            )
        if eos_mode == "append":
            self.vocab_size, eos = n + 1, n
        else:
            eos = after[0] if after else _first_present(vocab, _EOS_NAMES)
            if eos is None:
                raise ValueError(
                    f"{path} names no EOS token (none after the text in its post-processor, "
                    f"none of {list(_EOS_NAMES)}); set tokenizer.eos_mode='append'."
                )
            self.vocab_size = n
        bos = None
        if add_bos is None:
            bos = before[0] if before else None
        elif add_bos:
            bos = before[0] if before else _first_present(vocab, _BOS_NAMES)
            if bos is None:
                raise ValueError(
                    f"{path} names no BOS token (none of {list(_BOS_NAMES)}); set "
                    f"tokenizer.add_bos=False."
                )
        super().__init__(context_length, pad, bos, eos)

    def _backend(self):
        """The Rust tokenizer, built from the JSON text (again after unpickling)."""
        if self._tok is None:
            import tokenizers  # pylint: disable=g-import-not-at-top

            try:
                tok = tokenizers.Tokenizer.from_str(self._json)
            except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception on a bad file.
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ValueError(
                    f"tokenizer.model_path={self.model_path} is not a Hugging Face "
                    f"{TOKENIZER_JSON} ({reason}). Give the {TOKENIZER_JSON} that "
                    f"save_pretrained writes; for a SentencePiece .model file use "
                    f"tokenizer.name='sentencepiece'."
                ) from None
            # alignjax lays out specials, truncation and padding itself (one rule for all).
            tok.no_truncation()
            tok.no_padding()
            self._tok = tok
        return self._tok

    def encode(self, text: str) -> list[int]:
        if self.lower:
            text = text.lower()
        return self._backend().encode(text, add_special_tokens=False).ids

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        """Tokenizes a batch of strings; int32 [N, context_length] (layout: module doc).

        A batch is encoded by ``encode_batch_fast`` (Rust, several threads); one text, as the
        data pipeline's workers pass, by ``encode`` (no thread pool in a worker).
        """
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        texts = [
            t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in texts
        ]
        if len(texts) <= 1:
            return super().__call__(texts)
        if self.lower:
            texts = [t.lower() for t in texts]
        backend = self._backend()
        # encode_batch_fast (tokenizers >= 0.20.1) skips the character offsets we never use.
        encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
        encodings = encode_batch(texts, add_special_tokens=False)
        out = np.full((len(texts), self.context_length), self.pad_id, np.int32)
        body = self.context_length - 1 - (self.bos_id is not None)
        start = 0 if self.bos_id is None else 1
        if self.bos_id is not None:
            out[:, 0] = self.bos_id
        for row, enc in enumerate(encodings):
            ids = enc.ids[:body]
            out[row, start : start + len(ids)] = ids
            out[row, start + len(ids)] = self.eos_id
        return out

    def decode(self, ids) -> str:
        """Text of one tokenized row (BOS, EOS and padding removed)."""
        n = self._backend().get_vocab_size(with_added_tokens=True)
        return self._backend().decode([i for i in self.body(ids) if i < n])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tok"] = None  # rebuilt from _json in the worker (one rule for every version)
        return state
