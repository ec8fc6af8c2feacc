"""CLIP's byte-level BPE tokenizer (OpenAI CLIP / open_clip ``SimpleTokenizer``), in numpy.

Produces exactly open_clip's ids for the same vocabulary:

1. clean: ``ftfy.fix_text`` (when ftfy is installed, see below), ``html.unescape`` twice,
   strip, collapse runs of whitespace to one space, lower-case;
2. split with CLIP's pattern ``'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+``
   (one digit per piece; letters of any script; punctuation/emoji runs);
3. map each piece's UTF-8 bytes to printable unicode stand-ins (GPT-2's byte table), mark
   the end of the word with ``</w>`` and apply the merges in rank order;
4. lay out ``[SOT] ids [EOT] 0 0 ...`` in ``context_length`` (77) positions; a text too long
   is cut so that EOT stays at the last position (open_clip's ``tokenize``).

Vocabulary: ``len = 256 bytes + 256 bytes</w> + merges + 2`` (SOT, EOT last: EOT is the
largest id, 49407 for OpenAI's 48,894 merges, which OpenAI-CLIP text towers pool at).
Files read: OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (what open_clip ships), or a Hugging
Face ``merges.txt`` (same format, optionally with its ``vocab.json``). Both start with one
header line and only the first 48,894 merges are used, as open_clip/HF do.

ftfy: open_clip always runs ``ftfy.fix_text`` (it repairs mojibake such as ``'cafÃ©'`` ->
``'café'`` and normalises some punctuation). It is used when installed (``pip install
ftfy``); without it the cleanup is the rest of step 1, which gives the same ids for any
text that ftfy would leave unchanged (all well-formed text) and differs only on mojibake.
``uses_ftfy`` tells which applies.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import json
import os
from collections.abc import Iterable

import regex

from alignjax.data.tokenizer_base import Tokenizer

__all__ = ["CLIPBPETokenizer", "bytes_to_unicode", "find_clip_bpe", "write_hf_files"]

#: Merges used by OpenAI/open_clip/HF: 49152 - 256 - 2 (the file has a few more).
MAX_MERGES = 49152 - 256 - 2
SOT, EOT = "<start_of_text>", "<end_of_text>"  # open_clip's names
HF_SOT, HF_EOT = "<|startoftext|>", "<|endoftext|>"  # OpenAI's / HF vocab.json names
OPENAI_BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CACHE_MAX = 200_000


@functools.lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode char table (printable bytes map to themselves,
    the others to ``chr(256 + n)``), so BPE works on strings without whitespace/control."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _read_merges(path: str) -> list[tuple[str, str]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        lines = f.read().decode("utf-8").strip().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MAX_MERGES + 1]]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"{path}: malformed merge line(s) {bad[:3]}; expected 'a b' per line.")
    return merges  # type: ignore[return-value]


def _base_vocab(merges: Iterable[tuple[str, str]], sot: str, eot: str) -> list[str]:
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    return vocab + [sot, eot]


def find_clip_bpe(path: str | None = None) -> str | None:
    """Finds OpenAI's BPE vocabulary file.

    With ``path`` (a file, or a folder holding ``bpe_simple_vocab_16e6.txt.gz`` or
    ``merges.txt``) only there; otherwise ``$ALIGNJAX_CLIP_BPE``, then the installed
    ``open_clip`` and OpenAI ``clip`` packages (without importing them). Returns None when
    nothing is found.
    """
    cands = []
    for p in (path,) if path else (os.environ.get("ALIGNJAX_CLIP_BPE"),):
        if p:
            cands += [p, os.path.join(p, OPENAI_BPE_NAME), os.path.join(p, "merges.txt")]
    for pkg in () if path else ("open_clip", "clip"):  # a path the user gave is not guessed
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            cands.append(os.path.join(os.path.dirname(spec.origin), OPENAI_BPE_NAME))
    for c in cands:
        if os.path.isfile(c):
            return c
    return None


def _basic_clean(text: str, use_ftfy: bool) -> str:
    if use_ftfy:
        # ftfy: optional (the `clip` extra); `use_ftfy` is False when it is not installed.
        import ftfy  # pylint: disable=g-import-not-at-top

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def _whitespace_clean(text: str) -> str:
    return regex.sub(r"\s+", " ", text).strip()


def _ftfy_available() -> bool:
    return importlib.util.find_spec("ftfy") is not None


class CLIPBPETokenizer(Tokenizer):
    """CLIP BPE tokenizer: ``tok(texts) -> np.int32 [N, context_length]``.

    Args:
      bpe_path: OpenAI ``bpe_simple_vocab_16e6.txt.gz`` or HF ``merges.txt``; empty/None:
        :func:`find_clip_bpe` (installed open_clip, ``$ALIGNJAX_CLIP_BPE``).
      vocab_path: optional HF ``vocab.json``; token ids are then read from it (for CLIP's
        own files it equals the vocabulary derived from the merges).
      context_length: L (77 for all released CLIP models).
      pad: ``'zero'`` (open_clip/OpenAI) or ``'eos'``.
      add_bos: prepend SOT (True for CLIP).
      use_ftfy: None: use ftfy when installed; True: require it; False: never.
    """

    def __init__(
        self,
        bpe_path: str | None = None,
        vocab_path: str | None = None,
        context_length: int = 77,
        pad: str = "zero",
        add_bos: bool = True,
        use_ftfy: bool | None = None,
    ):
        found = find_clip_bpe(bpe_path or None)
        if found is None:
            raise FileNotFoundError(
                f"CLIP BPE vocabulary not found (bpe_path={bpe_path!r}). Give the path of "
                f"OpenAI's {OPENAI_BPE_NAME} (shipped with open_clip and OpenAI's clip package) "
                "or a Hugging Face CLIP merges.txt, or set $ALIGNJAX_CLIP_BPE."
            )
        if use_ftfy and not _ftfy_available():
            raise ImportError("use_ftfy=True but ftfy is not installed: `pip install ftfy`.")
        self.bpe_path = found
        self.vocab_path = vocab_path or ""
        self.uses_ftfy = _ftfy_available() if use_ftfy is None else bool(use_ftfy)
        self._merges = _read_merges(found)
        if self.vocab_path:
            with open(self.vocab_path, encoding="utf-8") as f:
                self.encoder = {k: int(v) for k, v in json.load(f).items()}
        else:
            vocab = _base_vocab(self._merges, SOT, EOT)
            self.encoder = {v: i for i, v in enumerate(vocab)}
        sot = self.encoder.get(SOT, self.encoder.get(HF_SOT))
        eot = self.encoder.get(EOT, self.encoder.get(HF_EOT))
        if sot is None or eot is None:
            raise ValueError(f"{self.vocab_path}: no {HF_SOT}/{HF_EOT} entries.")
        self.sot_id, self.eot_id = int(sot), int(eot)
        self.vocab_size = max(self.encoder.values()) + 1
        self.decoder = {v: k for k, v in self.encoder.items()}
        self._setup()
        super().__init__(context_length, pad, self.sot_id if add_bos else None, self.eot_id)

    def _setup(self) -> None:
        self.bpe_ranks = {m: i for i, m in enumerate(self._merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        # Literal special-token strings in a text map to their ids, as in open_clip.
        self._special = {SOT.lower(): self.sot_id, EOT.lower(): self.eot_id}
        self.pat = regex.compile(f"{SOT}|{EOT}|{_PATTERN}", regex.IGNORECASE)
        self.cache: dict[str, list[str]] = {}

    # Pickling (grain workers): drop compiled regex, tables and cache; rebuild on load.
    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("bpe_ranks", "byte_encoder", "byte_decoder", "pat", "cache", "_special"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup()

    def clean(self, text: str) -> str:
        """open_clip's ``_clean_lower``: ftfy + html unescape, whitespace, lower-case."""
        return _whitespace_clean(_basic_clean(text, self.uses_ftfy)).lower()

    def bpe(self, token: str) -> list[str]:
        """BPE pieces of one pre-token (already mapped through the byte table)."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        if len(self.cache) >= _CACHE_MAX:
            self.cache.clear()
        self.cache[token] = list(word)
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.pat.findall(self.clean(text)):
            if piece in self._special:
                ids.append(self._special[piece])
                continue
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def decode(self, ids) -> str:
        """Text of one tokenized row (cleaned: lower-case, single spaces)."""
        text = "".join(self.decoder[int(i)] for i in self.body(ids) if int(i) in self.decoder)
        data = bytearray(self.byte_decoder[c] for c in text if c in self.byte_decoder)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()


def write_hf_files(bpe_path: str, out_dir: str, vocab_path: str | None = None) -> None:
    """Writes ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` in the Hugging
    Face CLIPTokenizer layout (special tokens named ``<|startoftext|>``/``<|endoftext|>``)."""
    merges = _read_merges(bpe_path)
    if vocab_path:
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
    else:
        vocab = {v: i for i, v in enumerate(_base_vocab(merges, HF_SOT, HF_EOT))}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    cfg = dict(
        tokenizer_class="CLIPTokenizer",
        model_max_length=77,
        bos_token=HF_SOT,
        eos_token=HF_EOT,
        unk_token=HF_EOT,
        pad_token=HF_EOT,
    )
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
