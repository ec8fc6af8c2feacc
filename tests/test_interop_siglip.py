"""SigLIP and SigLIP 2 weights: parity with ``transformers``' PyTorch models, Hub-cache names.

* HF ``SiglipModel`` (SigLIP, and SigLIP 2's fixed-resolution checkpoints) and
  ``Siglip2Model`` (SigLIP 2 NaFlex, at its fixed square grid): random tiny models (LayerNorms
  and biases perturbed so they matter) -> ``interop.from_hf`` -> image and text embeddings
  and the sigmoid logits equal to <= 1e-5 relative, unrolled and scanned. ``Siglip2Model``
  gets its patches from transformers' own patchify, so the patch order is theirs.
* ``hf-hub:ORG/NAME[@REV]``: a model laid out in a ``huggingface_hub`` cache folder loads
  offline through ``load_pretrained`` and ``python -m alignjax.convert``, with its
  ``tokenizer.json``; an uncached one fails with one line saying how to fetch it.
* big_vision SigLIP 2 ``.npz`` (Gemma's 256k vocabulary): SigLIP 2's tokenizer settings.

Needs torch + transformers (skipped with the reason otherwise; ``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch not installed: `pip install torch==2.13.0` (CPU) to run parity tests"
)
transformers = pytest.importorskip("transformers", reason="transformers not installed")

from alignjax import convert, hub, interop, load_pretrained, models
from alignjax.interop import common

RTOL = 1e-5
WIDTH, HEADS, DEPTH, MLP, IMAGE, PATCH, VOCAB, CTX = 32, 4, 2, 37, 16, 4, 99, 16


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def perturb(model, seed):
    """HF inits LayerNorms to (1, 0) and biases to 0: make them matter."""
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name or "probe" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def make_hf(kind="siglip", seed=0, vocab=VOCAB):
    text = dict(
        vocab_size=vocab,
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        max_position_embeddings=CTX,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        patch_size=PATCH,
    )
    torch.manual_seed(seed)
    if kind == "siglip2":
        vision["num_patches"] = (IMAGE // PATCH) ** 2
        cfg = transformers.Siglip2Config(text_config=text, vision_config=vision)
        model = transformers.Siglip2Model(cfg)
    else:
        vision["image_size"] = IMAGE
        cfg = transformers.SiglipConfig(text_config=text, vision_config=vision)
        model = transformers.SiglipModel(cfg)
    return perturb(model.eval(), seed)


def inputs(n=3, seed=0):
    rng = np.random.default_rng(seed)
    px = rng.uniform(-1, 1, size=(n, 3, IMAGE, IMAGE)).astype(np.float32)
    ids = rng.integers(5, VOCAB, size=(n, CTX))
    for i, length in enumerate(np.linspace(3, CTX, n).astype(int)):
        ids[i, length - 1 :] = 1  # EOS then sticky-EOS padding, as big_vision trains
    return px, ids


def hf_forward(model, px, ids):
    kw = dict(input_ids=torch.tensor(ids))
    if isinstance(model, transformers.Siglip2Model):
        # transformers' own patchify (its PIL image processor's: no torchvision needed).
        from transformers.models.siglip2.image_processing_pil_siglip2 import (
            convert_image_to_patches,
        )

        patches = torch.tensor(np.stack([convert_image_to_patches(x, PATCH) for x in px]))
        side = IMAGE // PATCH
        kw.update(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
            spatial_shapes=torch.tensor([[side, side]] * len(px)),
        )
    else:
        kw["pixel_values"] = torch.tensor(px)
    with torch.no_grad():
        o = model(**kw)
    return o.image_embeds.numpy(), o.text_embeds.numpy(), o.logits_per_image.numpy()


def ours_forward(model_config, params, px, ids):
    model = models.build(model_config)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(px.transpose(0, 2, 3, 1)), ids)
    logits = out.logit_scale * out.zimg @ out.ztxt.T + out.logit_bias
    return np.asarray(out.zimg), np.asarray(out.ztxt), np.asarray(logits)


def assert_parity(hf_model, model_config, params):
    px, ids = inputs()
    for name, a, b in zip(
        ("image embeddings", "text embeddings", "logits"),
        ours_forward(model_config, params, px, ids),
        hf_forward(hf_model, px, ids),
    ):
        assert a.shape == b.shape, name
        assert rel_err(a, b) <= RTOL, f"{name}: relative error {rel_err(a, b):.2e}"


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_hf_siglip_parity(tmp_path, kind):
    model = make_hf(kind, seed=1 if kind == "siglip2" else 0)
    model.save_pretrained(tmp_path)
    conv = interop.from_hf(str(tmp_path))
    mc = conv.model_config
    assert (mc["act"], mc["ln_eps"], mc["image"]["pool"]) == ("gelu_tanh", 1e-6, "map")
    assert mc["logit_bias_init"] == pytest.approx(float(model.logit_bias.detach()))
    assert conv.preprocess["size"] == IMAGE and conv.preprocess["resize_mode"] == "squash"
    assert_parity(model, mc, conv.params)
    assert_parity(model, {**mc, "scan": True}, common.stack_scan(conv.params))


def test_hf_siglip_leftover_or_missing_tensor_is_named(tmp_path):
    model = make_hf()
    model.save_pretrained(tmp_path)
    sd = common.read_safetensors(str(tmp_path / "model.safetensors"))
    sd.pop("vision_model.head.probe")
    common.write_safetensors(str(tmp_path / "model.safetensors"), sd)
    with pytest.raises(ValueError, match="vision_model.head.probe"):
        interop.from_hf(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["vision_config"]["vision_use_head"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="vision_use_head=False"):
        interop.from_hf(str(tmp_path))


# ----------------------------------------------------------------- hf-hub: cache names

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def gemma_like_tokenizer_json(path):
    """A tiny tokenizer.json laid out like Gemma's: <pad> 0, <eos> 1, <bos> 2, <unk> 3, a
    post-processor that adds only <bos>."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tok_models

    words = ["a", "photo", "of", "red", "blue", "circle", "square", "cat"]
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3} | {
        w: i + 5 for i, w in enumerate(words)
    }
    t = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 2)]
    )
    t.save(str(path))
    return vocab


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A huggingface_hub cache holding org/tiny-siglip at COMMIT (refs/main -> COMMIT)."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny-siglip"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    model = make_hf(seed=2)
    model.save_pretrained(snap)
    vocab = gemma_like_tokenizer_json(snap / "tokenizer.json")
    monkeypatch.setattr(hub.hub_constants, "HF_HUB_CACHE", str(cache))
    return model, vocab, cache


def test_hf_hub_name_loads_offline_with_its_tokenizer(hub_cache):
    model, vocab, _ = hub_cache
    for name in ("hf-hub:org/tiny-siglip", f"hf-hub:org/tiny-siglip@{COMMIT}"):
        assert hub.resolve(name).endswith(COMMIT)
    clip = load_pretrained("hf-hub:org/tiny-siglip")
    assert clip.tokenizer_config["name"] == "hf" and clip.tokenizer_config["pad"] == "eos"
    texts = ["a photo of a red circle", "blue square"]
    ids = clip.tokenizer(texts)
    want = [vocab[w] for w in texts[0].split()] + [1] * (CTX - 6)  # no BOS, sticky EOS
    assert ids[0].tolist() == want
    with torch.no_grad():
        ref_txt = model.get_text_features(input_ids=torch.tensor(np.asarray(ids, np.int64)))
    ref_txt = ref_txt.pooler_output if hasattr(ref_txt, "pooler_output") else ref_txt
    ref_txt = ref_txt / ref_txt.norm(dim=-1, keepdim=True)
    assert rel_err(clip.encode_text(texts), ref_txt.numpy()) <= RTOL
    images = list(np.random.default_rng(0).integers(0, 256, size=(2, 20, 24, 3), dtype=np.uint8))
    x = clip.preprocess(images)
    assert x.shape == (2, IMAGE, IMAGE, 3) and -1 <= x.min() and x.max() <= 1
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=torch.tensor(x.transpose(0, 3, 1, 2)))
    ref_img = ref_img.pooler_output if hasattr(ref_img, "pooler_output") else ref_img
    ref_img = ref_img / ref_img.norm(dim=-1, keepdim=True)
    assert rel_err(clip.encode_image(images), ref_img.numpy()) <= RTOL


def test_hf_hub_convert_cli_and_uncached_names(hub_cache, tmp_path, capsys):
    out = tmp_path / "converted"
    assert convert.main(["--from", "hf", "hf-hub:org/tiny-siglip", "--out", str(out)]) == 0
    again = load_pretrained(str(out))
    direct = load_pretrained("hf-hub:org/tiny-siglip")
    a, b = common.flatten(again.params), common.flatten(direct.params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert os.path.isfile(again.tokenizer_config["model_path"])  # tokenizer.json copied
    for name, what in (
        ("hf-hub:org/not-downloaded", "org/not-downloaded is not in the local Hugging Face"),
        ("hf-hub:org/tiny-siglip@v9", "at revision 'v9' is not in the local"),
    ):
        with pytest.raises(FileNotFoundError, match=what) as e:
            load_pretrained(name)
        assert "hf download" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="expected hf-hub:ORG/NAME"):
        load_pretrained("hf-hub:just-a-name")


# ------------------------------------------------------------ big_vision SigLIP 2 .npz


def test_big_vision_siglip2_npz_gets_siglip2_text_settings(tmp_path):
    """SigLIP 2's .npz has SigLIP's layout with Gemma's 256k vocabulary: lower-cased text,
    no BOS, sticky EOS; a tokenizer.json given for it selects the `hf` backend."""
    rng = np.random.default_rng(0)
    from test_interop_big_vision import random_tree, save_npz

    tree = random_tree(seed=4, vocab=8)
    tw = tree["txt"]["Embed_0"]["embedding"].shape[1]
    tree["txt"]["Embed_0"]["embedding"] = (0.02 * rng.normal(size=(common.GEMMA_VOCAB, tw))).astype(
        np.float32
    )
    path = str(tmp_path / "siglip2_tiny.npz")
    save_npz(path, tree)
    conv = interop.from_big_vision(path, tokenizer_path=str(tmp_path / "tokenizer.json"))
    tok = conv.tokenizer
    assert (tok["name"], tok["lower"], tok["add_bos"], tok["pad"]) == ("hf", True, False, "eos")
    assert conv.model_config["text"]["vocab_size"] == common.GEMMA_VOCAB
    # SigLIP (v1) vocabularies keep their case.
    save_npz(path, random_tree(seed=4, vocab=8))
    assert interop.from_big_vision(path, tokenizer_path="c4.model").tokenizer["lower"] is False
