"""The 'hf' tokenizer (any tokenizer.json, Rust ``tokenizers``) against two references.

No downloads: every tokenizer.json is made here. ``transformers`` is used only to write the
files (its CLIP and T5 converters, as the Hub's files are made) and as the reference on the
SentencePiece file; alignjax's ``hf`` backend itself runs on ``tokenizers`` alone.

1. CLIP's BPE: a vocabulary learned as in tests/test_clip_bpe.py (and OpenAI's real one when
   installed), exported to tokenizer.json, gives ``clip_bpe``'s ids. open_clip cleans text
   (ftfy, html.unescape) before tokenizing and CLIP's tokenizer.json does not, so the strings
   get that cleanup first, as test_clip_bpe does for transformers; clean text needs none.
2. A SentencePiece Unigram model (trained here) converted to a T5-style tokenizer.json gives
   ``transformers``' ids with ``padding='max_length', truncation=True``, and SentencePiece's.
3. A missing or garbage file is one clear line naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import pickle
import types

import numpy as np
import pytest
from test_clip_bpe import _learn_bpe, _prepare, _strings
from test_tokenizers import TEXTS

from alignjax import errors
from alignjax.data import build_tokenizer, clip_bpe, synthetic
from alignjax.data.hf_tokenizer import HFTokenizer

tokenizers = pytest.importorskip("tokenizers", reason="tokenizers not installed")


def _clip_tokenizer_json(bpe_path: str, out_dir: str) -> str:
    """CLIP tokenizer.json as transformers writes it (its CLIPTokenizer is tokenizers-backed)."""
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    clip_bpe.write_hf_files(bpe_path, out_dir)
    with open(os.path.join(out_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(out_dir, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(m.split()) for m in f.read().strip().split("\n")[1:]]
    hf = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
    path = os.path.join(out_dir, "tokenizer.json")
    hf.backend_tokenizer.save(path)
    return path


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    import gzip

    d = tmp_path_factory.mktemp("clip_hf")
    merges = _learn_bpe(_strings(1, 300), 300)
    gz = d / "bpe_test.txt.gz"
    with gzip.open(gz, "wb") as f:
        f.write(("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n").encode())
    return str(gz), _clip_tokenizer_json(str(gz), str(d))


def _assert_same(ours, ref, texts):
    bad = [i for i in range(len(texts)) if not np.array_equal(ours[i], ref[i])]
    assert not bad, "\n".join(
        f"{texts[i]!r}:\n ours {ours[i].tolist()}\n ref  {ref[i].tolist()}" for i in bad[:3]
    )


@pytest.mark.parametrize("context_length,pad", [(77, "zero"), (16, "eos")])
def test_clip_vocab_matches_clip_bpe(clip_files, context_length, pad):
    gz, path = clip_files
    ref = clip_bpe.CLIPBPETokenizer(gz, context_length=context_length, pad=pad)
    tok = build_tokenizer(dict(name="hf", model_path=path, context_length=context_length, pad=pad))
    # The file's own specials: SOT before, EOT (the largest id) after, as clip_bpe.
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (ref.sot_id, ref.eot_id, ref.vocab_size)
    texts = _strings(2, 300)
    ours = tok([_prepare(t, ref.uses_ftfy) for t in texts])
    assert ours.dtype == np.int32 and ours.shape == (len(texts), context_length)
    _assert_same(ours, ref(texts), texts)
    assert (ours >= 512).sum() > 300  # merges were used, not only bytes
    # Clean text (tests/test_tokenizers.py's strings) needs no cleanup at all; one text and
    # a batch (encode vs encode_batch) agree.
    _assert_same(tok(TEXTS), ref(TEXTS), TEXTS)
    _assert_same(np.concatenate([tok(t) for t in TEXTS]), ref(TEXTS), TEXTS)


def test_real_openai_vocab_if_available(tmp_path):
    path = clip_bpe.find_clip_bpe()
    if path is None:
        pytest.skip(
            "OpenAI's bpe_simple_vocab_16e6.txt.gz not found (install open_clip or set "
            "$ALIGNJAX_CLIP_BPE to test with the real vocabulary)"
        )
    ref = clip_bpe.CLIPBPETokenizer(path)
    tok = HFTokenizer(_clip_tokenizer_json(path, str(tmp_path)), context_length=77)
    texts = _strings(5, 200)
    _assert_same(tok([_prepare(t, ref.uses_ftfy) for t in texts]), ref(texts), texts)
    assert tok(["a diagram"])[0, :4].tolist() == [49406, 320, 22697, 49407]


# --- SentencePiece (T5-style tokenizer.json) -----------------------------------------------
@pytest.fixture(scope="module")
def spm_files(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    converters = pytest.importorskip("transformers.convert_slow_tokenizer")
    d = tmp_path_factory.mktemp("spm_hf")
    ds = synthetic.ShapesDataset("train", seed=1)
    captions = [ds[i]["caption"] for i in range(300)]
    extra = ["héllo wörld 数据 émoji", "the quick brown fox jumps over the lazy dog"] * 5
    prefix = str(d / "t5")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions + extra),
        model_prefix=prefix,
        vocab_size=80,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
        pad_id=0,  # T5's layout: <pad> 0, </s> 1, <unk> 2, no <s>
        eos_id=1,
        unk_id=2,
        bos_id=-1,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    # transformers' own T5 conversion (what the Hub's T5 tokenizer.json files come from).
    slow = types.SimpleNamespace(
        vocab_file=prefix + ".model",
        legacy=True,
        add_prefix_space=True,
        _extra_ids=0,
        convert_tokens_to_ids=sp.piece_to_id,
    )
    path = str(d / "tokenizer.json")
    converters.T5Converter(slow).converted().save(path)
    return path, sp, captions


@pytest.mark.parametrize("context_length", [12, 64])
def test_sentencepiece_json_matches_transformers(spm_files, context_length):
    transformers = pytest.importorskip("transformers")
    path, sp, captions = spm_files
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_file=path, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok = build_tokenizer(dict(name="hf", model_path=path, context_length=context_length))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (None, 1, 80)
    texts = captions[:50] + TEXTS + _strings(6, 60)
    want = ref(texts, padding="max_length", truncation=True, max_length=context_length)
    ours = tok(texts)
    assert ours.dtype == np.int32 and ours.shape == (len(texts), context_length)
    _assert_same(ours, np.asarray(want["input_ids"], np.int32), texts)
    # The body is SentencePiece's own encoding of the text (an independent second reference).
    for text, row in zip(texts, ours):
        body = sp.encode(text, out_type=int)
        if len(body) < context_length:
            assert tok.body(row) == body, text


def test_pickle_decode_and_modes(spm_files):
    path, _, captions = spm_files
    tok = HFTokenizer(path, context_length=16, pad="eos", lower=True)
    before = tok(captions[:20] + ["A LARGE RED CIRCLE"])
    clone = pickle.loads(pickle.dumps(tok))
    assert clone._tok is None  # the Rust object is rebuilt from the JSON text in the worker
    np.testing.assert_array_equal(clone(captions[:20] + ["A LARGE RED CIRCLE"]), before)
    assert (before[:, -1] == tok.eos_id).all()  # sticky EOS padding
    assert clone.decode(clone("A large red circle")[0]) == "a large red circle"
    append = HFTokenizer(path, context_length=8, eos_mode="append")
    assert append.eos_id == 80 and append.vocab_size == 81 and append.eos_is_max_id
    assert append([""])[0].tolist() == [80] + [0] * 7


def _word_level_json(tmp_path, vocab, single, name="wl.json"):
    """A tiny WordLevel tokenizer.json whose post-processor template is `single`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = [(s, vocab[s]) for s in single.split() if s != "$A"]
    t.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    path = str(tmp_path / name)
    t.save(path)
    return path


def test_bos_only_file_gets_its_eos_by_name(tmp_path):
    """Gemma-style: the post-processor adds only <bos>; EOS is the vocabulary's <eos>."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "red": 4, "circle": 5}
    path = _word_level_json(tmp_path, vocab, "<bos> $A")
    tok = HFTokenizer(path, context_length=6)
    assert tok([" red circle blue"])[0].tolist() == [2, 4, 5, 3, 1, 0]
    assert tok(["red red red red red red"])[0].tolist() == [2, 4, 4, 4, 4, 1]  # EOS kept
    assert HFTokenizer(path, context_length=4, add_bos=False)(["red"])[0].tolist() == [4, 1, 0, 0]
    no_eos = _word_level_json(tmp_path, {"<unk>": 0, "<bos>": 1, "red": 2}, "<bos> $A", "n.json")
    with pytest.raises(ValueError, match="eos_mode='append'"):
        HFTokenizer(no_eos)
    assert HFTokenizer(no_eos, eos_mode="append")(["red"])[0, :3].tolist() == [1, 2, 3]


def _one_line(exc: BaseException) -> str:
    message = errors.user_message(exc)
    assert message is not None and "\n" not in message
    return message


def test_missing_and_garbage_files_are_one_clear_line(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(ValueError) as e:
        build_tokenizer(dict(name="hf", model_path=str(missing)))
    line = _one_line(e.value)
    assert str(missing) in line and "no such file" in line and "tokenizer.json" in line
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="folder.tokenizer.json: no such file"):
        HFTokenizer(str(tmp_path / "folder"))  # a folder means its tokenizer.json
    for name, content in [("garbage.json", b"\x00\xffnot json"), ("half.json", b'{"model": {')]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError) as e:
            HFTokenizer(str(tmp_path / name))
        line = _one_line(e.value)
        assert str(tmp_path / name) in line and "is not a Hugging Face tokenizer.json" in line
        assert "tokenizer.name='sentencepiece'" in line
    with pytest.raises(ValueError, match="needs tokenizer.model_path"):
        build_tokenizer(dict(name="hf"))
