"""Exports carry everything needed to go from a PIL image and a string to embeddings.

A tiny run is written straight with the Checkpointer (random parameters, no training, no
compile): a CLIP-BPE tokenizer with a byte-level vocabulary file (no merges: 514 ids) and
16 px images. Its export must record the preprocessing and the tokenizer (vocabulary copied
beside it), be readable by others, and give the same embeddings as the run's own data
transform; `load_pretrained` reads the workdir itself, and refuses to guess for exports that
do not record what they need. Also: `alignjax.convert`'s failures are one-line ValueErrors.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config
from PIL import Image

from alignjax import checkpoint, convert, export, load_pretrained, models
from alignjax.data import tokenizers, transforms

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(30, 20, 3), dtype=np.uint8))


def _config(bpe_path: str):
    c = tiny_config.get_config()
    c.tokenizer.name, c.tokenizer.bpe_path = "clip_bpe", bpe_path
    c.model.text.vocab_size = 514
    return c


def _params(model_config, size=16, ctx=8):
    model = models.build(model_config)
    images, tokens = jnp.zeros((1, size, size, 3)), jnp.zeros((1, ctx), jnp.int32)
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images, tokens))
    rng = np.random.default_rng(0)
    return model, jax.tree.map(
        lambda x: rng.normal(size=x.shape).astype(np.float32), shapes["params"]
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, config, model, params) of a run with one committed checkpoint (step 3)."""
    root = tmp_path_factory.mktemp("run")
    bpe = str(root / "bpe_bytes.txt.gz")
    with gzip.open(bpe, "wb") as f:
        f.write(b"#version: 0.2\n")
    c = _config(bpe)
    model, params = _params(c.model)
    workdir = str(root / "workdir")
    ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ck.save(3, {"params": params, "step": np.int32(3)}, None, c)
    ck.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(c.to_dict(), f)
    return workdir, c, model, params


@pytest.fixture(scope="module")
def reference(run):
    """Embeddings as the run's own evaluators compute them (data pipeline transforms)."""
    _, c, model, params = run
    x = transforms.crop_resize(IMAGE, "center", c.data.image_size)
    x = transforms.normalize_image(x, c.data.normalize)[None]
    tokens = tokenizers.build_tokenizer(c.tokenizer)(["a red disk"])
    encode = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
    out = encode(params, x, tokens)
    return np.asarray(out.zimg), np.asarray(out.ztxt)


def _assert_encodes_as(clip, reference):
    np.testing.assert_allclose(clip.encode_image([IMAGE]), reference[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clip.encode_text(["a red disk"]), reference[1], rtol=1e-5, atol=1e-6)


def test_export_of_a_run_encodes_images_and_text_as_the_run(run, reference, tmp_path):
    workdir = run[0]
    old = os.umask(0o022)
    try:
        out = str(tmp_path / "exp")
        assert export.export_checkpoint(workdir, out) == os.path.join(out, "params.safetensors")
    finally:
        os.umask(old)
    names = set(os.listdir(out))
    assert {"params.safetensors", "preprocess.json", "tokenizer.json", "bpe_bytes.txt.gz"} <= names
    for name in names:  # safetensors' own writer makes 0600 files: others could not read
        assert os.stat(os.path.join(out, name)).st_mode & 0o777 == 0o644, name
    # The folder is self-contained: moved elsewhere, with the run's vocabulary gone.
    moved = str(tmp_path / "moved")
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    clip = load_pretrained(moved)
    assert clip.preprocess.size == 16 and clip.preprocess.resize_mode == "center"
    assert clip.preprocess.mean == (0.5, 0.5, 0.5) and clip.source == "alignjax"
    _assert_encodes_as(clip, reference)
    # One file alone (no sidecars) also records both; .msgpack too.
    for name in ("one.safetensors", "one.msgpack"):
        e = export.read(export.export_checkpoint(workdir, str(tmp_path / "f" / name)))
        assert e.preprocess["size"] == 16 and e.tokenizer["name"] == "clip_bpe"
        assert os.path.isfile(e.tokenizer["bpe_path"])


def test_load_pretrained_reads_a_training_workdir(run, reference):
    workdir, _, _, params = run
    clip = load_pretrained(workdir)
    assert clip.source == "run" and clip.preprocess.size == 16
    _assert_encodes_as(clip, reference)
    step = load_pretrained(os.path.join(workdir, "checkpoints", "3"))  # one step directory
    a, b = export.flatten(params), export.flatten(step.params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert load_pretrained(workdir, format="alignjax").source == "run"
    with pytest.raises(ValueError, match="a training workdir: export it first"):
        export.load(workdir)  # the bare export reader says what to do


def test_export_without_preprocessing_or_tokenizer_is_refused(run, reference, tmp_path):
    """What exports held before: params and model config only. Nothing is guessed."""
    _, c, _, params = run
    path = export.save(str(tmp_path / "old"), params, c.model)
    with pytest.raises(ValueError, match=r"does not record its image preprocessing.*preprocess="):
        load_pretrained(path)
    pp = dict(size=16, resize_mode="center", interpolation="bicubic", mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(ValueError, match=r"does not record its tokenizer.*tokenizer="):
        load_pretrained(path, preprocess=pp)
    _assert_encodes_as(
        load_pretrained(path, preprocess=pp, tokenizer=c.tokenizer.to_dict()), reference
    )
    # A wrong size is named, with the parameter and both shapes (learned position embedding).
    with pytest.raises(
        ValueError,
        match=r"32 px images need an image position embedding of shape \(1, 64, 32\), the weights hold \(1, 16, 32\)",
    ):
        load_pretrained(path, preprocess={**pp, "size": 32}, tokenizer=c.tokenizer.to_dict())


def test_export_never_overwrites_other_files(run, tmp_path):
    workdir, _, _, _ = run
    folder = tmp_path / "hf_folder"
    folder.mkdir()
    (folder / "tokenizer.json").write_text('{"hf": true}')
    (folder / "bpe_bytes.txt.gz").write_bytes(b"another vocabulary")
    with pytest.raises(ValueError, match="bpe_bytes.txt.gz exists and differs"):
        export.export_checkpoint(workdir, str(folder / "mine.safetensors"))
    assert sorted(os.listdir(folder)) == ["bpe_bytes.txt.gz", "tokenizer.json"]
    (folder / "bpe_bytes.txt.gz").unlink()
    export.export_checkpoint(workdir, str(folder / "mine.safetensors"))
    assert (folder / "tokenizer.json").read_text() == '{"hf": true}'  # a file export: no sidecars


def test_missing_vocabulary_names_the_field(run, tmp_path):
    params = run[3]
    workdir = str(tmp_path / "w")
    c2 = _config(str(tmp_path / "gone.txt.gz"))
    ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ck.save(1, {"params": params}, None, c2)
    ck.close()
    with pytest.raises(ValueError, match=r"tokenizer.bpe_path='.*gone.txt.gz' does not exist"):
        export.export_checkpoint(workdir, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")  # nothing half-written
    bpe = os.path.join(os.path.dirname(run[0]), "bpe_bytes.txt.gz")
    out = export.export_checkpoint(workdir, str(tmp_path / "out"), tokenizer_path=bpe)
    assert export.read(out).tokenizer["bpe_path"] == str(tmp_path / "out" / "bpe_bytes.txt.gz")


def test_damaged_or_foreign_export_files(tmp_path):
    garbage = tmp_path / "params.safetensors"
    garbage.write_bytes(np.random.default_rng(3).bytes(2000))
    with pytest.raises(ValueError, match="not a safetensors file or damaged") as e:
        export.load(str(tmp_path))
    assert str(garbage) in str(e.value) and "\n" not in str(e.value)
    from safetensors.numpy import save_file

    foreign = str(tmp_path / "model.safetensors")
    save_file({"w": np.zeros(3, np.float32)}, foreign)
    with pytest.raises(ValueError, match="is not an alignjax export.*format='hf'"):
        load_pretrained(foreign)


def test_convert_failures_are_one_line_value_errors(run, tmp_path):
    workdir, _, _, _ = run
    out = str(tmp_path / "out")
    cases = [
        (("hf", str(tmp_path / "nope")), "does not exist"),
        (("bogus", workdir), "Unknown --from 'bogus'"),
        (("hf", workdir), "alignjax training workdir: use --from alignjax"),
        (("big_vision", os.path.join(workdir, "config.json")), "not a NumPy .npz file"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            convert.run(*args, out)
        assert "\n" not in str(e.value)
    assert not os.path.exists(out)
    # A workdir converts directly (its newest good checkpoint).
    written = convert.run("alignjax", workdir, out)
    assert export.read(written).preprocess["size"] == 16
