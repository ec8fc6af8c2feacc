"""Tokenizer conventions: [BOS] words [EOS] pad, EOT largest id, truncation, pad modes."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from alignjax.data import synthetic
from alignjax.data import tokenizers as tk

TEXTS = [
    "a large red circle on the left",
    "",
    "two small blue squares, in the middle!",
    "héllo wörld 🙂🚀 数据 — émoji",
]


def _body(row, tok):
    """Ids strictly between BOS and the first EOS."""
    row = list(row)
    start = 1 if tok.bos_id is not None else 0
    return row[start : row.index(tok.eos_id)]


@pytest.mark.parametrize("make", [tk.WordHashTokenizer, tk.ByteTokenizer])
@pytest.mark.parametrize("pad", ["zero", "eos"])
def test_layout_and_pad_modes(make, pad):
    tok = make(context_length=64, pad=pad)
    out = tok(TEXTS)
    assert out.dtype == np.int32 and out.shape == (len(TEXTS), 64)
    assert tok.eos_id == tok.vocab_size - 1 == out.max(), "EOT must be the largest id"
    assert tok.eos_is_max_id
    assert out.min() >= 0
    assert (out[:, 0] == tok.bos_id).all()
    for row, text in zip(out, TEXTS):
        eos_pos = list(row).index(tok.eos_id)
        assert _body(row, tok) == tok.encode(text), text
        assert tok.body(row) == tok.encode(text)
        tail = row[eos_pos + 1 :]
        if pad == "zero":
            assert tok.pad_id == 0 and (tail == 0).all()
            assert not tok.last_token_is_eos
        else:
            assert tok.pad_id == tok.eos_id and (tail == tok.eos_id).all()
            assert row[-1] == tok.eos_id and tok.last_token_is_eos
        # argmax pooling (OpenAI CLIP) finds the real EOS in both pad modes
        assert int(np.argmax(row)) == eos_pos
        # no special ids inside the body
        assert all(3 <= i < tok.vocab_size - 1 for i in _body(row, tok))


def test_empty_caption_is_bos_eos():
    for tok in (tk.WordHashTokenizer(context_length=6), tk.ByteTokenizer(context_length=6)):
        np.testing.assert_array_equal(tok([""])[0], [tok.bos_id, tok.eos_id, 0, 0, 0, 0])
    tok = tk.WordHashTokenizer(context_length=4, add_bos=False, pad="eos")
    np.testing.assert_array_equal(tok([""])[0], [tok.eos_id] * 4)
    assert tok.bos_id is None


@pytest.mark.parametrize("add_bos", [True, False])
def test_truncation_keeps_eos(add_bos):
    tok = tk.WordHashTokenizer(context_length=8, add_bos=add_bos)
    long = " ".join(f"w{i}" for i in range(50))
    row = tok([long])[0]
    assert row[-1] == tok.eos_id and (row[:-1] != tok.eos_id).all()
    want = tok.encode(long)[: 8 - 1 - add_bos]
    np.testing.assert_array_equal(row[int(add_bos) : -1], want)
    # exactly full: no truncation of words
    fits = " ".join(f"w{i}" for i in range(8 - 1 - add_bos))
    np.testing.assert_array_equal(_body(tok([fits])[0], tok), tok.encode(fits))


def test_word_hash_splitting_and_case():
    tok = tk.WordHashTokenizer()
    assert tok.words("A Big,RED  circle!") == ["a", "big", ",", "red", "circle", "!"]
    np.testing.assert_array_equal(tok(["RED circle"]), tok(["red   circle"]))
    assert tok("red").shape == (1, tok.context_length)  # a str is a batch of one
    ids = tok.encode("🙂 数据 x")
    assert len(ids) == 3 and all(tok.N_SPECIAL <= i < tok.vocab_size - 1 for i in ids)


def test_word_hash_golden_values():
    """The hash is part of every checkpoint's meaning: changing it breaks trained models."""
    tok = tk.WordHashTokenizer(vocab_size=4096, context_length=8)
    np.testing.assert_array_equal(
        tok(["a large red circle"])[0], [1, 2754, 2593, 1938, 164, 4095, 0, 0]
    )


def test_word_hash_stable_across_processes():
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from alignjax.data.tokenizers import WordHashTokenizer;"
        f"print(json.dumps(WordHashTokenizer()({TEXTS!r}).tolist()))"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code, repo], capture_output=True, text=True, env=env, check=True
    )
    import json

    np.testing.assert_array_equal(np.array(json.loads(out.stdout)), tk.WordHashTokenizer()(TEXTS))


def test_shapes_vocabulary_is_collision_free_at_default_size():
    tok = tk.build_tokenizer(tk.default_tokenizer_config())
    words = synthetic.ShapesDataset.vocabulary()
    assert {"red", "circle", "left", "two", "large"} <= set(words)
    ids = {}
    for w in words:
        (i,) = tok.encode(w)
        assert i not in ids, f"hash collision between {w!r} and {ids[i]!r}"
        ids[i] = w


def test_byte_tokenizer_round_trip():
    tok = tk.ByteTokenizer(context_length=64)
    assert tok.vocab_size == 260
    out = tok(TEXTS)
    for row, text in zip(out, TEXTS):
        assert tok.decode(row) == text


def test_pickle_round_trip():
    for tok in (tk.WordHashTokenizer(pad="eos"), tk.ByteTokenizer()):
        tok2 = pickle.loads(pickle.dumps(tok))
        np.testing.assert_array_equal(tok(TEXTS), tok2(TEXTS))


def test_bad_arguments():
    with pytest.raises(ValueError, match="pad"):
        tk.WordHashTokenizer(pad="left")
    with pytest.raises(ValueError, match="context_length"):
        tk.WordHashTokenizer(context_length=1)


# --- SentencePiece -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm

    ds = synthetic.ShapesDataset("train", seed=1)
    captions = [ds[i]["caption"] for i in range(600)]
    prefix = str(tmp_path_factory.mktemp("spm") / "shapes")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_prefix=prefix,
        vocab_size=96,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    return prefix + ".model", captions


def test_sentencepiece_round_trip_and_native_eos(spm_model):
    path, captions = spm_model
    tok = tk.SentencePieceTokenizer(path, context_length=32)
    assert tok.vocab_size == 96 and tok.bos_id is None
    assert tok.eos_id == 2 and not tok.eos_is_max_id  # the trainer's default ids
    out = tok(captions[:50])
    assert out.shape == (50, 32) and out.dtype == np.int32
    for row, cap in zip(out, captions[:50]):
        assert tok.decode(row) == cap
        assert _body(row, tok) == tok.encode(cap)
        assert list(row).count(tok.eos_id) == 1


def test_sentencepiece_append_eos_sticky_pad_truncation(spm_model):
    path, captions = spm_model
    tok = tk.SentencePieceTokenizer(
        path, context_length=8, add_bos=True, pad="eos", eos_mode="append"
    )
    assert tok.vocab_size == 97 and tok.eos_id == 96 and tok.eos_is_max_id
    assert tok.last_token_is_eos and tok.bos_id == 1
    out = tok(captions[:20] + [""])
    assert out.max() == tok.eos_id and (out[:, -1] == tok.eos_id).all()
    assert (out[:, 0] == tok.bos_id).all()
    np.testing.assert_array_equal(out[-1], [tok.bos_id] + [tok.eos_id] * 7)
    long = " ".join(captions[:5])
    row = tok([long])[0]
    np.testing.assert_array_equal(row[1:-1], tok.encode(long)[:6])


def test_sentencepiece_pickles_without_file(spm_model, tmp_path):
    path, captions = spm_model
    copy = tmp_path / "copy.model"
    copy.write_bytes(open(path, "rb").read())
    tok = tk.SentencePieceTokenizer(str(copy), context_length=16, pad="eos")
    blob = pickle.dumps(tok)
    copy.unlink()  # a worker on another machine would not have the file
    tok2 = pickle.loads(blob)
    np.testing.assert_array_equal(tok(captions[:10]), tok2(captions[:10]))


def test_build_tokenizer(spm_model):
    cfg = tk.default_tokenizer_config()
    tok = tk.build_tokenizer(cfg)
    assert isinstance(tok, tk.WordHashTokenizer)
    assert (tok.vocab_size, tok.context_length, tok.pad_id) == (4096, 16, 0)

    cfg.name = "bytes"  # vocab_size left at 4096: ignored for bytes
    cfg.pad = "eos"
    tok = tk.build_tokenizer(cfg)
    assert isinstance(tok, tk.ByteTokenizer) and tok.vocab_size == 260 and tok.pad_id == 259

    cfg.name = "sentencepiece"
    with pytest.raises(ValueError, match="model_path"):
        tk.build_tokenizer(cfg)
    cfg.model_path = spm_model[0]
    cfg.eos_mode = "append"
    tok = tk.build_tokenizer(cfg)
    assert isinstance(tok, tk.SentencePieceTokenizer) and tok.eos_id == 96

    with pytest.raises(
        ValueError, match=r"valid names: \['bytes', 'clip_bpe', 'hf', 'sentencepiece', 'word_hash'\]"
    ):
        tk.build_tokenizer({"name": "bpe"})
    with pytest.raises(ValueError, match="valid fields: .*context_length"):
        tk.build_tokenizer({"name": "word_hash", "context_len": 8})
    tok = tk.build_tokenizer({"name": "word_hash", "vocab_size": 512, "context_length": 8})
    assert tok.vocab_size == 512 and tok.context_length == 8
