"""Parity of converted CLIP weights with PyTorch ``transformers.CLIPModel`` (fp32, CPU).

* HF import: a randomly initialised tiny CLIPModel (LayerNorms and biases perturbed so they
  matter) -> ``interop.from_hf`` -> image/text embeddings and logits equal to <= 1e-5
  relative; the same for a ViT-B/32-shaped model (slow).
* HF export: alignjax params -> ``to_hf`` -> ``CLIPModel.from_pretrained`` gives the same
  numbers, and importing it again returns the original params bit for bit.
* open_clip / OpenAI: state dicts with their key names are built here from the HF model
  (open_clip cannot be installed); the OpenAI one as a TorchScript archive like the
  released ``.pt`` files.
* ``alignjax.load_pretrained`` and ``python -m alignjax.convert`` end to end.

Needs torch + transformers (skipped with the reason otherwise; ``.ci/run`` installs them).
"""

from __future__ import annotations

import dataclasses
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

from alignjax import convert, interop, load_pretrained, models
from alignjax.interop import common

RTOL = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def make_hf(
    width=32,
    heads=4,
    depth=2,
    image=16,
    patch=4,
    vocab=99,
    ctx=16,
    proj=24,
    act="quick_gelu",
    seed=0,
    mlp=37,
):
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=mlp,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            max_position_embeddings=ctx,
            hidden_act=act,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=mlp,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            image_size=image,
            patch_size=patch,
            hidden_act=act,
        ),
        projection_dim=proj,
    )
    torch.manual_seed(seed)
    return perturb(transformers.CLIPModel(cfg).eval())


def perturb(model):
    """HF inits LayerNorms to (1, 0) and biases to 0: make them matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name or "class_embedding" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(vocab=99, ctx=16, image=16, n=3, seed=0):
    rng = np.random.default_rng(seed)
    px = rng.normal(size=(n, 3, image, image)).astype(np.float32)
    ids = rng.integers(1, vocab - 2, size=(n, ctx))
    ids[:, 0] = vocab - 2  # SOT
    for i, length in enumerate(np.linspace(3, ctx, n).astype(int)):
        ids[i, length - 1] = vocab - 1  # EOT, the largest id
        ids[i, length:] = 0
    return px, ids


def hf_forward(model, px, ids):
    with torch.no_grad():
        o = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px))
    return o.image_embeds.numpy(), o.text_embeds.numpy(), o.logits_per_image.numpy()


def ours_forward(model_config, params, px, ids):
    model = models.build(model_config)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(px.transpose(0, 2, 3, 1)), ids)
    logits = out.logit_scale * out.zimg @ out.ztxt.T
    return np.asarray(out.zimg), np.asarray(out.ztxt), np.asarray(logits)


def assert_parity(hf_model, model_config, params, vocab=99, ctx=16, image=16, n=3):
    px, ids = inputs(vocab, ctx, image, n)
    for name, a, b in zip(
        ("image embeddings", "text embeddings", "logits"),
        ours_forward(model_config, params, px, ids),
        hf_forward(hf_model, px, ids),
    ):
        assert a.shape == b.shape
        assert rel_err(a, b) <= RTOL, f"{name}: relative error {rel_err(a, b):.2e}"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = make_hf()
    d = str(tmp_path_factory.mktemp("hf_tiny"))
    model.save_pretrained(d)
    return model, d


def test_hf_tiny_parity(hf_dir):
    model, d = hf_dir
    conv = interop.from_hf(d)
    assert conv.model_config["act"] == "quick_gelu" and conv.model_config["ln_eps"] == 1e-5
    assert_parity(model, conv.model_config, conv.params)
    # The same numbers through the scan layout (stacked layers).
    cfg = {**conv.model_config, "scan": True}
    assert_parity(model, cfg, common.stack_scan(conv.params))


def test_hf_gelu_and_pytorch_bin(tmp_path):
    """Exact-GELU towers, weights read from a torch pickle (pytorch_model.bin)."""
    model = make_hf(act="gelu", depth=1, seed=1)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    conv = interop.from_hf(str(tmp_path))
    assert conv.model_config["act"] == "gelu"
    assert_parity(model, conv.model_config, conv.params)


def test_hf_export_roundtrip_exact(tmp_path):
    """alignjax -> HF -> alignjax is exact, and HF computes the same numbers."""
    cfg = dict(
        embed_dim=24,
        act="quick_gelu",
        ln_eps=1e-5,
        image=dict(variant=None, width=32, depth=1, mlp_dim=40, num_heads=2, patch_size=8),
        text=dict(width=32, depth=1, mlp_dim=40, num_heads=2, vocab_size=99, context_length=16),
    )
    model = models.build(cfg)
    _, ids = inputs(image=16)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), ids[:1])
    params = jax.tree.map(np.asarray, __import__("flax").linen.meta.unbox(variables)["params"])
    # Non-trivial LayerNorms/biases (init has ones/zeros).
    rng = np.random.default_rng(0)
    flat = {
        k: v + 0.1 * rng.normal(size=v.shape).astype(np.float32)
        if ("bias" in k or "scale" in k) and "embedding/bias" not in k
        else v
        for k, v in common.flatten(params).items()
    }
    params = common.unflatten(flat)
    out = tmp_path / "hf"
    interop.to_hf(params, cfg, str(out))
    hf = transformers.CLIPModel.from_pretrained(str(out)).eval()
    assert_parity(hf, cfg, params)
    back = interop.from_hf(str(out))
    assert models.resolve_model_config(back.model_config) == models.resolve_model_config(
        {**cfg, "logit_scale_init": back.model_config["logit_scale_init"]}
    )
    fb = common.flatten(back.params)
    assert set(fb) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(fb[k], flat[k], err_msg=k)


@pytest.mark.slow
def test_hf_vit_b32_shaped_parity():
    """ViT-B/32 image tower and CLIP B text tower, at the real sizes (fp32 CPU)."""
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        projection_dim=512,
    )
    torch.manual_seed(0)
    model = perturb(transformers.CLIPModel(cfg).eval())
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    mc = interop.hf_clip.model_config_from_hf(cfg.to_dict())
    params = interop.hf_clip.params_from_hf(sd, mc)
    assert mc["image"]["width"] == 768 and mc["text"]["width"] == 512
    assert_parity(model, mc, params, vocab=49408, ctx=77, image=224, n=2)


# ----------------------------------------------------------------------- OpenAI layout

OPENAI_SHAPE = dict(width=128, heads=2, depth=1, image=16, patch=8, mlp=512, proj=64)


def openai_state_dict(hf_model) -> dict:
    """OpenAI/open_clip key names from an HF CLIPModel (width // 64 heads, mlp 4x)."""
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    out = {}

    def blocks(src, dst, depth):
        for i in range(depth):
            s, d = f"{src}.encoder.layers.{i}.", f"{dst}.resblocks.{i}."
            out[d + "attn.in_proj_weight"] = torch.cat(
                [sd[s + f"self_attn.{x}_proj.weight"] for x in "qkv"]
            )
            out[d + "attn.in_proj_bias"] = torch.cat(
                [sd[s + f"self_attn.{x}_proj.bias"] for x in "qkv"]
            )
            for a, b in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                out[d + a + ".weight"] = sd[s + b + ".weight"]
                out[d + a + ".bias"] = sd[s + b + ".bias"]

    v, t = "vision_model", "text_model"
    out["visual.conv1.weight"] = sd[f"{v}.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[f"{v}.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"]
    for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out[f"visual.{a}.weight"] = sd[f"{v}.{b}.weight"]
        out[f"visual.{a}.bias"] = sd[f"{v}.{b}.bias"]
    blocks(v, "visual.transformer", hf_model.config.vision_config.num_hidden_layers)
    out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
    out["token_embedding.weight"] = sd[f"{t}.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"]
    blocks(t, "transformer", hf_model.config.text_config.num_hidden_layers)
    out["ln_final.weight"] = sd[f"{t}.final_layer_norm.weight"]
    out["ln_final.bias"] = sd[f"{t}.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    out["logit_scale"] = sd["logit_scale"]
    return out


class _TorchScriptHolder(torch.nn.Module):
    """Parameters under OpenAI's key names, scriptable like OpenAI's released JIT models."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale.exp()


def script_module(sd: dict):
    root = _TorchScriptHolder()
    for key, v in sd.items():
        *path, leaf = key.split(".")
        m = root
        for p in path:
            if p not in m._modules:
                m.add_module(p, torch.nn.Module())
            m = m._modules[p]
        if v.is_floating_point():
            m.register_parameter(leaf, torch.nn.Parameter(v))
        else:
            m.register_buffer(leaf, v)
    return torch.jit.script(root)


@pytest.fixture(scope="module")
def openai_shaped():
    return make_hf(**OPENAI_SHAPE, seed=2)


def test_openai_torchscript_pt(openai_shaped, tmp_path):
    sd = openai_state_dict(openai_shaped)
    # OpenAI's JIT archives also hold these integers (dropped by OpenAI's build_model).
    sd.update(
        input_resolution=torch.tensor(16),
        context_length=torch.tensor(16),
        vocab_size=torch.tensor(99),
    )
    path = str(tmp_path / "ViT-toy.pt")
    script_module(sd).save(path)
    conv = interop.from_openai(path)
    assert conv.model_config["act"] == "quick_gelu"
    assert conv.model_config["image"]["num_heads"] == 2 and conv.preprocess["size"] == 16
    assert_parity(openai_shaped, conv.model_config, conv.params)


def test_open_clip_hub_folder_and_state_dict(openai_shaped, tmp_path):
    sd = {k: v.numpy() for k, v in openai_state_dict(openai_shaped).items()}
    model_cfg = dict(
        embed_dim=64,
        quick_gelu=True,
        vision_cfg=dict(image_size=16, layers=1, width=128, patch_size=8),
        text_cfg=dict(context_length=16, vocab_size=99, width=128, heads=2, layers=1),
    )
    folder = tmp_path / "hub"
    folder.mkdir()
    common.write_safetensors(str(folder / "open_clip_model.safetensors"), sd)
    pp = dict(
        mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], interpolation="bilinear", resize_mode="squash"
    )
    (folder / "open_clip_config.json").write_text(
        json.dumps(dict(model_cfg=model_cfg, preprocess_cfg=pp))
    )
    conv = interop.from_open_clip(str(folder))
    assert conv.preprocess["resize_mode"] == "squash" and conv.preprocess["mean"] == [0.5] * 3
    assert_parity(openai_shaped, conv.model_config, conv.params)
    # A bare state dict needs the model config (the activation is not in the weights).
    with pytest.raises(ValueError, match="model_name"):
        interop.from_open_clip(str(folder / "open_clip_model.safetensors"))
    conv2 = interop.from_open_clip(str(folder / "open_clip_model.safetensors"), model_cfg=model_cfg)
    assert_parity(openai_shaped, conv2.model_config, conv2.params)
    # Unsupported options fail by name; built-in names give the documented shapes.
    bad = {**model_cfg, "vision_cfg": {**model_cfg["vision_cfg"], "attentional_pool": True}}
    with pytest.raises(ValueError, match="attentional_pool"):
        interop.from_open_clip(str(folder / "open_clip_model.safetensors"), model_cfg=bad)
    b32 = interop.open_clip.model_config_from_open_clip(
        interop.open_clip.model_cfg_for("ViT-B-32-quickgelu")
    )
    assert b32["act"] == "quick_gelu" and b32["image"]["patch_size"] == 32
    assert b32["image"]["num_heads"] == 12 and b32["text"]["num_heads"] == 8
    l14 = interop.open_clip.model_config_from_open_clip(interop.open_clip.model_cfg_for("ViT-L-14"))
    assert l14["act"] == "gelu" and l14["image"]["num_heads"] == 16 and l14["embed_dim"] == 768


def test_leftover_tensors_fail(openai_shaped):
    sd = {k: v.numpy() for k, v in openai_state_dict(openai_shaped).items()}
    sd["visual.transformer.resblocks.0.ls_1.gamma"] = np.ones(128, np.float32)  # LayerScale
    mc = interop.openai.infer_model_config(sd, quick_gelu=True)
    with pytest.raises(ValueError, match="ls_1.gamma"):
        interop.openai.params_from_openai_layout(sd, mc)


# ------------------------------------------------------------------ load_pretrained / CLI


def test_load_pretrained_and_convert_cli(hf_dir, tmp_path):
    from PIL import Image

    model, d = hf_dir
    clip = load_pretrained(d)
    assert clip.source == "hf" and clip.preprocess.size == 16
    assert clip.preprocess.interpolation == "bicubic" and clip.preprocess.resize_mode == "shortest"
    img = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    x = clip.preprocess([img, Image.fromarray(img)])
    assert x.shape == (2, 16, 16, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], x[1])
    # HF's own image processor with the same settings agrees (bicubic resize + center crop).
    for shape, size in (((20, 30, 3), 16), ((31, 17, 3), 16), ((300, 224, 3), 224)):
        im = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
        proc = transformers.CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        ref = proc(images=[Image.fromarray(im)], return_tensors="np")["pixel_values"]
        ours = dataclasses.replace(clip.preprocess, size=size)(im)
        np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), atol=1e-5)
    # No vocab files in a bare save_pretrained folder: the tokenizer explains what is missing.
    with pytest.raises(FileNotFoundError, match="bpe"):
        clip.tokenizer(["a cat"])

    out = tmp_path / "converted"
    assert convert.main(["--from", "hf", d, "--out", str(out)]) == 0
    assert {"params.safetensors", "model_config.json", "preprocess.json", "tokenizer.json"} <= set(
        os.listdir(out)
    )
    again = load_pretrained(str(out))
    assert again.source == "alignjax"
    a, b = common.flatten(clip.params), common.flatten(again.params)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert again.preprocess == clip.preprocess
    px, ids = inputs()
    zi = again.encode_image(
        list(np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    )
    assert zi.shape == (2, 24) and np.allclose(np.linalg.norm(zi, axis=-1), 1, atol=1e-5)

    back = tmp_path / "hf_again"
    assert convert.main(["--from", "alignjax", str(out), "--to", "hf", "--out", str(back)]) == 0
    hf2 = transformers.CLIPModel.from_pretrained(str(back)).eval()
    for x1, x2 in zip(hf_forward(hf2, px, ids), hf_forward(model, px, ids)):
        np.testing.assert_allclose(x1, x2, rtol=1e-6, atol=1e-6)


def test_torch_missing_message(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match=r"needs PyTorch.*torch==2\.13\.0"):
        common.torch_state_dict(str(tmp_path / "x.pt"))
