"""Weight files are not trusted: random bytes, cut-short downloads, pickles, lying configs.

Each bad file must give one ValueError line naming the file (and the tensor), never a
MemoryError, a numpy reshape error or numpy's / torch's advice to load unsafely. The HF
folders are written by ``interop.to_hf`` from a tiny random alignjax CLIP (no torch);
the PyTorch cases skip without torch.
"""

from __future__ import annotations

import argparse
import io
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from alignjax import interop, load_pretrained, models
from alignjax.interop import common

MODEL = dict(
    embed_dim=16,
    image=dict(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8),
    text=dict(width=32, depth=1, mlp_dim=64, num_heads=2, vocab_size=99, context_length=8),
)
UNSAFE_ADVICE = ("allow_pickle", "weights_only", "pickle.load", "trust")


def _one_line_without_advice(e: pytest.ExceptionInfo, *names: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and not any(a in msg for a in UNSAFE_ADVICE), msg
    for name in names:
        assert name in msg, (name, msg)
    return msg


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A Hugging Face CLIPModel folder of a tiny random model (16 px images)."""
    model = models.build(MODEL)
    images, tokens = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8), jnp.int32)
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images, tokens))
    rng = np.random.default_rng(0)  # random values, no compile: only shapes matter here
    params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), shapes["params"])
    d = str(tmp_path_factory.mktemp("hf"))
    interop.to_hf(params, MODEL, d, image_size=16)
    return d


def _copy_hf(src: str, dst, weights: bytes | None = None, **config_changes) -> str:
    os.makedirs(dst)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    for section, changes in config_changes.items():
        cfg[section].update(changes)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    if weights is None:
        with open(os.path.join(src, "model.safetensors"), "rb") as f:
            weights = f.read()
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        f.write(weights)
    return str(dst)


# ------------------------------------------------------------------------- safetensors


def test_random_bytes_as_model_safetensors(hf_folder, tmp_path):
    """The old reader trusted the 8-byte header length and tried to read that much."""
    d = _copy_hf(hf_folder, tmp_path / "x", weights=np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="not a safetensors file or damaged") as e:
        interop.from_hf(d)
    _one_line_without_advice(e, os.path.join(d, "model.safetensors"), "re-download")


def test_cut_short_download_names_the_tensor(tmp_path):
    path = str(tmp_path / "w.safetensors")
    common.write_safetensors(
        path, {"a": np.zeros((32, 3, 8, 8), np.float32), "b": np.zeros((4,), np.float32)}
    )
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) - 5000])
    with pytest.raises(ValueError, match="cut short") as e:
        common.read_safetensors(path)
    _one_line_without_advice(e, path, "tensor 'a'", "re-download")


def test_header_that_lies_about_a_tensor_size_names_it(tmp_path):
    path = str(tmp_path / "w.safetensors")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})
    header = header.encode() + b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + bytes(20))
    with pytest.raises(ValueError, match=r"tensor 'w': shape \[2, 3\] F32 needs 24 bytes") as e:
        common.read_safetensors(path)
    _one_line_without_advice(e, path)


def test_bfloat16_and_missing_file(tmp_path):
    path = str(tmp_path / "w.safetensors")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    common.write_safetensors(path, {"x": x.astype(ml_dtypes.bfloat16)})
    got = common.read_safetensors(path)["x"]
    assert got.dtype == ml_dtypes.bfloat16 and np.array_equal(got.astype(np.float32), x)
    with pytest.raises(ValueError, match="does not exist") as e:
        common.read_safetensors(str(tmp_path / "nope.safetensors"))
    assert isinstance(e.value, FileNotFoundError)  # still one, for callers testing for it


# --------------------------------------------------------------------------------- npz


def test_garbage_npz_gives_no_pickle_advice(tmp_path):
    path = tmp_path / "webli.npz"
    path.write_bytes(np.random.default_rng(1).bytes(3000))
    with pytest.raises(ValueError, match="not a NumPy .npz file or damaged") as e:
        interop.from_big_vision(str(path))
    _one_line_without_advice(e, str(path), "re-download")


def test_cut_short_npz_and_object_arrays(tmp_path):
    good = io.BytesIO()
    np.savez(good, **{"params/img/x": np.zeros((64, 64), np.float32)})
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.getvalue()[:5000])
    with pytest.raises(ValueError, match="cut short") as e:
        interop.from_big_vision(str(cut))
    _one_line_without_advice(e, str(cut))
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="entry 'x' holds pickled Python objects") as e:
        interop.from_big_vision(str(objects))
    _one_line_without_advice(e, str(objects))


# ------------------------------------------------------------------------------- torch


def test_garbage_and_pickled_pt_files(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
    garbage = tmp_path / "ViT-B-32.pt"
    garbage.write_bytes(np.random.default_rng(2).bytes(3000))
    with pytest.raises(ValueError, match="not a PyTorch checkpoint or damaged") as e:
        interop.from_openai(str(garbage))
    _one_line_without_advice(e, str(garbage), "re-download")

    pickled = tmp_path / "with_objects.pt"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1)}, str(pickled))
    with pytest.raises(ValueError, match=r"argparse\.Namespace") as e:
        common.torch_state_dict(str(pickled))
    _one_line_without_advice(e, str(pickled))

    cut = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(100, 100)}, str(cut))
    cut.write_bytes(cut.read_bytes()[:20000])
    with pytest.raises(ValueError, match="cut short") as e:
        common.torch_state_dict(str(cut))
    _one_line_without_advice(e, str(cut))


# ------------------------------------------------------------ weights vs their config


def test_config_that_does_not_fit_the_tensors_names_both_shapes(hf_folder, tmp_path):
    # A reshape inside the converter: the class embedding has 32 values, the config says 48.
    d = _copy_hf(hf_folder, tmp_path / "wide", vision_config=dict(hidden_size=48))
    with pytest.raises(ValueError, match=r"'vision_model.embeddings.class_embedding'") as e:
        interop.from_hf(d)
    _one_line_without_advice(e, "(32,)", "(48,)")
    # No reshape fails: only the model built from the config shows the mismatch.
    d = _copy_hf(hf_folder, tmp_path / "mlp", vision_config=dict(intermediate_size=80))
    with pytest.raises(ValueError, match=r"'img/encoder/block_0/mlp/fc1/bias'") as e:
        load_pretrained(d)
    _one_line_without_advice(e, "(64,)", "(80,)")


def test_hf_folder_without_weights_or_with_another_model_type(hf_folder, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="neither model.safetensors nor pytorch_model.bin"):
        interop.from_hf(str(d))
    (d / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(ValueError, match="model_type='blip'"):
        interop.from_hf(str(d))
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        interop.from_hf(str(d))
