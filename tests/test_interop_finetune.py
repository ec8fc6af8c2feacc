"""A converted checkpoint drives a training run: configs/finetune_clip.py with init_from.

No torch needed: the "pre-trained" weights are a random tiny alignjax CLIP written with
``pretrained.save_converted`` (the writer behind ``python -m alignjax.convert``), with a
byte-level CLIP BPE vocabulary (no merges: 514 ids) as its tokenizer.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import export, load_pretrained, models, train
from alignjax.interop import common
from alignjax.interop.common import Converted
from alignjax.pretrained import save_converted

pytest.importorskip(
    "safetensors", reason="alignjax.export writes .safetensors (pip install safetensors)"
)

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

MODEL = dict(
    embed_dim=16,
    act="quick_gelu",
    ln_eps=1e-5,
    logit_scale_init=100.0,
    image=dict(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8),
    text=dict(width=32, depth=1, mlp_dim=64, num_heads=2, vocab_size=514, context_length=16),
)


def load_config(arg):
    spec = importlib.util.spec_from_file_location(
        "finetune_clip", os.path.join(CONFIGS, "finetune_clip.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    bpe = d / "bpe_bytes.txt.gz"
    with gzip.open(bpe, "wb") as f:
        f.write(b"#version: 0.2\n")  # no merges: bytes, bytes</w>, SOT, EOT
    model = models.build(MODEL)
    v = jax.jit(model.init)(
        jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16), jnp.int32)
    )
    params = jax.tree.map(np.asarray, nn.meta.unbox(v)["params"])
    conv = Converted(
        model_config=MODEL,
        params=params,
        preprocess=dict(
            size=16,
            resize_mode="shortest",
            interpolation="bicubic",
            mean=list(common.OPENAI_MEAN),
            std=list(common.OPENAI_STD),
        ),
        tokenizer=dict(name="clip_bpe", bpe_path=str(bpe), context_length=16, pad="zero"),
    )
    out = tmp_path_factory.mktemp("converted")
    save_converted(conv, str(out))
    return str(out), params


def test_export_folder_is_self_contained(converted):
    out, params = converted
    with open(os.path.join(out, "tokenizer.json")) as f:
        tok = json.load(f)
    assert tok["bpe_path"] == "bpe_bytes.txt.gz" and os.path.exists(
        os.path.join(out, tok["bpe_path"])
    )
    clip = load_pretrained(out)
    assert clip.tokenizer.vocab_size == 514 and clip.tokenizer.eos_id == 513
    ids = clip.tokenizer(["a red circle"])
    assert ids.shape == (1, 16) and ids[0, 0] == 512 and 513 in ids[0]
    a, b = common.flatten(params), common.flatten(clip.params)
    assert all(np.array_equal(a[k], b[k]) for k in a) and set(a) == set(b)
    zt = clip.encode_text(["a red circle", "two squares"])
    assert zt.shape == (2, 16)


def test_finetune_config_modes(converted):
    out, _ = converted
    lit, full = load_config(f"lit,{out}"), load_config(f"full,{out}")
    assert tuple(lit.optim.freeze) == ("img/.*",) and tuple(full.optim.freeze) == ()
    assert full.optim.lr < lit.optim.lr and lit.init_from.path == full.init_from.path == out
    assert load_config(None).init_from.path == ""  # loads anywhere without a folder


def test_finetune_config_starts_from_converted_weights(converted, tmp_path):
    """LiT mode trains 2 steps: the text tower moves, the locked image tower stays."""
    out, params = converted
    mode = "lit"
    c = load_config(f"{mode},{out}")
    assert c.init_from.path == out and c.tokenizer.name == "clip_bpe"
    assert c.data.image_size == 16 and c.data.normalize == "clip"
    assert c.model.text.vocab_size == 514 and c.model.act == "quick_gelu"
    c.total_steps, c.batch_size = 2, 16
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 1, 0, 2
    c.data.train, c.data.num_workers = "synthetic:shapes", 0
    c.optim.warmup_steps = 1
    c.optim.lr = 1e-2  # large enough that two steps visibly move the trained parameters
    c.evals = {}
    workdir = str(tmp_path / mode)
    summary = train.train_and_evaluate(c, workdir)
    assert summary["step"] == 2
    with open(os.path.join(workdir, "init_from.json")) as f:
        report = json.load(f)
    assert report["fresh"] == [] and report["unused_source"] == []
    final, _ = export.load(export.export_checkpoint(workdir, str(tmp_path / f"{mode}.safetensors")))
    src, dst = common.flatten(params), common.flatten(final)
    img_same = all(np.array_equal(src[k], dst[k]) for k in src if k.startswith("img/"))
    txt_moved = any(not np.array_equal(src[k], dst[k]) for k in src if k.startswith("txt/"))
    assert txt_moved and img_same


def test_finetune_config_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        load_config("frozen")
    with pytest.raises(ValueError, match="alignjax.convert"):
        load_config(f"lit,{tmp_path}")
