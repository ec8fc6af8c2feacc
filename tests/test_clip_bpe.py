"""CLIP BPE tokenizer vs an independent implementation (transformers' CLIPTokenizer, Rust).

There is no internet at test time, so the test learns a small BPE vocabulary (a few hundred
merges, CLIP's byte-level format) from a generated multilingual corpus, writes it both as
OpenAI's merges file and as HF ``vocab.json`` + ``merges.txt``, and compares ids on several
hundred varied strings. If OpenAI's real ``bpe_simple_vocab_16e6.txt.gz`` is found (installed
open_clip, ``$ALIGNJAX_CLIP_BPE``), the comparison also runs on it.

Reference preparation: open_clip cleans a text with ``ftfy.fix_text`` and ``html.unescape``
twice before tokenizing; HF's tokenizer does neither (only NFC, whitespace, lower-case). The
reference therefore gets ``unescape(unescape(fix_text(s)))`` as input (the cleanup open_clip
documents); everything after that (whitespace, lower-casing, pre-token pattern, byte table,
BPE, SOT/EOT layout, truncation, padding) is compared against HF's independent code.
"""

from __future__ import annotations

import collections
import gzip
import html
import json
import os
import pickle
import random

import numpy as np
import pytest
import regex

from alignjax.data import build_tokenizer, clip_bpe
from alignjax.data.tokenizers import TOKENIZERS

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "cat",
    "dog",
    "bird",
    "car",
    "tree",
    "house",
    "red",
    "green",
    "blue",
    "small",
    "large",
    "running",
    "two",
    "three",
    "people",
    "standing",
    "next",
    "to",
    "beach",
    "mountain",
    "city",
    "street",
    "night",
    "sunny",
    "picture",
    "image",
    "painting",
    "drawing",
    "sketch",
    "close-up",
    "view",
    "old",
    "new",
    "bright",
    "dark",
    "happy",
    "children",
    "playing",
    "football",
]
FOREIGN = [
    "café",
    "naïve",
    "über",
    "straße",
    "façade",
    "résumé",
    "niño",
    "東京",
    "写真",
    "猫",
    "犬",
    "こんにちは",
    "ありがとう",
    "Привет",
    "мир",
    "кошка",
    "собака",
    "مرحبا",
    "قطة",
    "שלום",
    "γάτα",
    "Ελλάδα",
    "고양이",
    "사진",
    "हिन्दी",
    "ภาษาไทย",
]
EMOJI = ["🐱", "🐶", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "🎉🎉", "😀", "☕", "✨"]
PUNCT = [
    ".",
    ",",
    "!",
    "?",
    "...",
    "—",
    "-",
    "'",
    '"',
    "(",
    ")",
    ":",
    ";",
    "#",
    "@",
    "&",
    "%",
    "$",
    "/",
    "*",
    "+",
    "=",
    "[",
    "]",
    "{",
    "}",
    "<",
    ">",
    "~",
    "`",
    "^",
    "|",
    "\\",
    "€",
    "©",
    "°",
    "½",
    "…",
]
CONTRACTIONS = ["don't", "it's", "I'LL", "we're", "they've", "I'm", "she'd", "O'Neil", "can't"]
SPACES = [" ", "  ", "\t", "\n", " \n\t ", "\u00a0", "\u3000"]
ENTITIES = ["&amp;", "&lt;tag&gt;", "&quot;hi&quot;", "&#39;", "&amp;amp;", "AT&T"]


def _random_text(rng: random.Random) -> str:
    kind = rng.random()
    n = rng.randint(1, 12) if kind < 0.9 else rng.randint(60, 120)  # some long ones
    parts = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            w = rng.choice(WORDS)
            w = w.upper() if rng.random() < 0.1 else (w.title() if rng.random() < 0.2 else w)
        elif r < 0.6:
            w = rng.choice(FOREIGN)
        elif r < 0.68:
            w = rng.choice(EMOJI)
        elif r < 0.8:
            w = rng.choice(PUNCT) * rng.randint(1, 2)
        elif r < 0.86:
            w = rng.choice(CONTRACTIONS)
        elif r < 0.93:
            w = str(rng.randint(0, 10 ** rng.randint(1, 6)))
        elif r < 0.96:
            w = rng.choice(ENTITIES)
        else:
            w = "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 4)))
        parts.append(w)
        parts.append(
            rng.choice(SPACES)
            if rng.random() < 0.15
            else ("" if r > 0.6 and rng.random() < 0.3 else " ")
        )
    return "".join(parts)


def _strings(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    fixed = [
        "",
        "   ",
        "A",
        "a photo of a cat.",
        "Hello, World!!",
        "x" * 300,
        "🐱" * 100,
        "it's 3.14159 o'clock",
        "TWO  spaces\tand\ttabs\nnewline",
        "ＦＵＬＬＷＩＤＴＨ",
        "e\u0301 (decomposed é)",
        "ﬁne ligature",
        "don’t curly ’quotes’",
        "cafÃ© mojibake",
    ]
    return fixed + [_random_text(rng) for _ in range(n - len(fixed))]


def _learn_bpe(corpus: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE training on CLIP's pre-tokens (byte table, '</w>' on the last symbol)."""
    b2u = clip_bpe.bytes_to_unicode()
    pat = regex.compile(
        r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
    )
    words = collections.Counter()
    for text in corpus:
        for tok in pat.findall(" ".join(text.lower().split())):
            sym = [b2u[b] for b in tok.encode("utf-8")]
            sym[-1] += "</w>"
            words[tuple(sym)] += 1
    vocab = set(b2u.values()) | {v + "</w>" for v in b2u.values()}
    merges = []
    words = dict(words)
    while len(merges) < num_merges:
        pairs = collections.Counter()
        for w, c in words.items():
            for p in zip(w[:-1], w[1:]):
                pairs[p] += c
        best = None
        for p, _ in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0])):
            if "".join(p) not in vocab:  # keep vocabulary strings unique
                best = p
                break
        if best is None:
            break
        merges.append(best)
        vocab.add("".join(best))
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    return merges


@pytest.fixture(scope="module")
def vocab_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bpe")
    merges = _learn_bpe(_strings(1, 400), 400)
    lines = "\n".join(" ".join(m) for m in merges)
    gz = d / "bpe_test.txt.gz"
    with gzip.open(gz, "wb") as f:
        f.write(("\"bpe_test.txt#version: 0.2\n" + lines + "\n").encode("utf-8"))
    # HF files, built here (not by alignjax) in the layout HF's convert script writes.
    b2u = clip_bpe.bytes_to_unicode()
    vocab = list(b2u.values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (d / "merges.txt").write_text("#version: 0.2\n" + lines + "\n", encoding="utf-8")
    return dict(gz=str(gz), dir=str(d), n_vocab=len(vocab), n_merges=len(merges))


def _hf_tokenizer(folder: str):
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    pytest.importorskip("tokenizers", reason="tokenizers not installed")
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(m.split()) for m in f.read().strip().split("\n")[1:]]
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def _prepare(text: str, use_ftfy: bool) -> str:
    """open_clip's documented pre-cleaning (see module docstring)."""
    if use_ftfy:
        import ftfy

        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _hf_ids(hf, texts: list[str], context_length: int, use_ftfy: bool) -> np.ndarray:
    enc = hf(
        [_prepare(t, use_ftfy) for t in texts],
        padding="max_length",
        truncation=True,
        max_length=context_length,
        return_attention_mask=True,
    )
    ids = np.asarray(enc["input_ids"], np.int32)
    return np.where(np.asarray(enc["attention_mask"]) == 1, ids, 0)  # open_clip pads with 0


def _compare(tok, hf, texts, context_length):
    ours = tok(texts)
    ref = _hf_ids(hf, texts, context_length, tok.uses_ftfy)
    bad = [i for i in range(len(texts)) if not np.array_equal(ours[i], ref[i])]
    assert not bad, "\n".join(
        f"{texts[i]!r}:\n ours {ours[i].tolist()}\n hf   {ref[i].tolist()}" for i in bad[:3]
    )
    return ours


def test_learned_vocab_matches_transformers(vocab_files):
    hf = _hf_tokenizer(vocab_files["dir"])
    tok = clip_bpe.CLIPBPETokenizer(vocab_files["gz"], context_length=77)
    assert tok.vocab_size == vocab_files["n_vocab"] == 512 + vocab_files["n_merges"] + 2
    assert tok.eot_id == tok.vocab_size - 1 and tok.sot_id == tok.vocab_size - 2
    texts = _strings(2, 400)  # other strings than the ones the merges were learned from
    ours = _compare(tok, hf, texts, 77)
    assert ours.dtype == np.int32 and ours.shape == (len(texts), 77)
    # Merges were used (not just bytes), and some texts were long enough to be truncated.
    assert (ours >= 512).sum() > 1000
    long_rows = [i for i, t in enumerate(texts) if len(tok.encode(t)) > 75]
    assert len(long_rows) >= 10
    for i in long_rows:
        assert ours[i, 0] == tok.sot_id and ours[i, -1] == tok.eot_id  # EOT kept on truncation
    empty = tok([""])[0]
    assert empty[:2].tolist() == [tok.sot_id, tok.eot_id] and not empty[2:].any()


def test_hf_vocab_files_and_short_context(vocab_files):
    """Reading HF merges.txt + vocab.json gives the same ids; context 16 truncation."""
    hf = _hf_tokenizer(vocab_files["dir"])
    tok = clip_bpe.CLIPBPETokenizer(
        os.path.join(vocab_files["dir"], "merges.txt"),
        vocab_path=os.path.join(vocab_files["dir"], "vocab.json"),
        context_length=16,
    )
    texts = _strings(3, 150)
    ours = _compare(tok, hf, texts, 16)
    ref = clip_bpe.CLIPBPETokenizer(vocab_files["gz"], context_length=16)(texts)
    np.testing.assert_array_equal(ours, ref)


def test_without_ftfy_matches_on_clean_text(vocab_files):
    """The documented fallback: without ftfy, ids equal open_clip's on text ftfy leaves as is."""
    hf = _hf_tokenizer(vocab_files["dir"])
    tok = clip_bpe.CLIPBPETokenizer(vocab_files["gz"], use_ftfy=False)
    texts = ["a photo of a cat", "Ｆｕｌｌ?", "it's 42 &amp; more", "東京の写真 🐱", "x " * 100]
    _compare(tok, hf, texts, 77)


def test_pickle_build_tokenizer_and_decode(vocab_files):
    tok = build_tokenizer(dict(name="clip_bpe", bpe_path=vocab_files["gz"], context_length=32))
    assert "clip_bpe" in TOKENIZERS and tok.context_length == 32
    texts = _strings(4, 20)
    before = tok(texts)
    clone = pickle.loads(pickle.dumps(tok))
    np.testing.assert_array_equal(clone(texts), before)
    assert clone.decode(clone(["A photo of the CAT!"])[0]) == "a photo of the cat !"
    # big_vision-style sticky padding works too: the last position is always EOT.
    sticky = build_tokenizer(dict(name="clip_bpe", bpe_path=vocab_files["gz"], pad="eos"))
    assert (sticky(texts)[:, -1] == sticky.eos_id).all()


def test_missing_vocab_message(tmp_path, vocab_files, monkeypatch):
    # A path the user gives is used or fails: no silent fallback to another vocabulary.
    monkeypatch.setenv("ALIGNJAX_CLIP_BPE", vocab_files["gz"])
    assert clip_bpe.find_clip_bpe() == vocab_files["gz"]
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6"):
        clip_bpe.CLIPBPETokenizer(str(tmp_path / "nope.txt.gz"))


def test_real_openai_vocab_if_available():
    path = clip_bpe.find_clip_bpe()
    if path is None:
        pytest.skip(
            "OpenAI's bpe_simple_vocab_16e6.txt.gz not found (install open_clip or set "
            "$ALIGNJAX_CLIP_BPE to test with the real vocabulary)"
        )
    tok = clip_bpe.CLIPBPETokenizer(path)
    assert tok.vocab_size == 49408 and tok.sot_id == 49406 and tok.eot_id == 49407
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        clip_bpe.write_hf_files(path, d)
        hf = _hf_tokenizer(d)
        _compare(tok, hf, _strings(5, 300), 77)
    # Known ids from OpenAI's CLIP README example.
    assert tok(["a diagram"])[0, :4].tolist() == [49406, 320, 22697, 49407]


def test_write_hf_files_matches_hf_layout(vocab_files, tmp_path):
    """The HF export of a BPE vocabulary equals HF's layout (built independently above)."""
    clip_bpe.write_hf_files(vocab_files["gz"], str(tmp_path))
    for name in ("vocab.json", "merges.txt"):
        with open(os.path.join(vocab_files["dir"], name), encoding="utf-8") as f:
            want = f.read()
        with open(tmp_path / name, encoding="utf-8") as f:
            got = f.read()
        assert (json.loads(got) == json.loads(want)) if name.endswith("json") else got == want
