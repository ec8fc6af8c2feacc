"""Hugging Face ``SiglipModel`` and ``Siglip2Model`` folders -> alignjax (SigLIP, SigLIP 2).

SigLIP 2's fixed-resolution checkpoints (``google/siglip2-base-patch16-224``, ...) are
``SiglipModel`` folders (``model_type='siglip'``) with a 256k Gemma vocabulary; its NaFlex
checkpoints (``google/siglip2-base-patch16-naflex``) are ``Siglip2Model`` folders
(``model_type='siglip2'``), converted here at one fixed square resolution. Both have the
big_vision two-tower architecture that ``interop.big_vision`` maps too, so the model config
is the same: tanh-GELU, LayerNorm eps from the config (1e-6), no ``ln_pre``, MAP-head
pooling and no image projection, a text head with bias, last-token text pooling without a
mask, a logit bias.

How the tensors map (per tower, ``D`` width, ``H`` heads, ``p`` patch size):

==================================================  =======================================
HF                                                  alignjax
==================================================  =======================================
vision_model.embeddings.patch_embedding             img/embedding (kernel [p,p,C,D], bias)
  Conv2d [D,C,p,p] (siglip) or Linear [D,p*p*C]
  over (row, column, channel)-ordered patches
  (siglip2)
vision_model.embeddings.position_embedding [N,D]    img/pos_embedding [1,N,D]
*.encoder.layers.i.*                                */encoder/block_i/* (as HF CLIP)
vision_model.post_layernorm                         img/encoder/encoder_norm
vision_model.head.probe [1,1,D]                     img/map_head/probe
vision_model.head.attention.in_proj_{weight,bias}   img/map_head/attn/{query,key,value}
  [3D,D] (torch MultiheadAttention: q, k, v rows)
vision_model.head.attention.out_proj                img/map_head/attn/out
vision_model.head.layernorm / mlp.fc{1,2}           img/map_head/ln / mlp/fc{1,2}
text_model.embeddings.token_embedding [V,D]         txt/token_embedding/embedding
text_model.embeddings.position_embedding [L,D]      txt/pos_embedding [L,D]
text_model.final_layer_norm                         txt/encoder/encoder_norm
text_model.head (Linear with bias)                  txt/head
logit_scale [1], logit_bias [1]                     log_scale [], logit_bias []
==================================================  =======================================

``Siglip2Model`` resizes its position-embedding grid to each image's patch grid
(antialiased bilinear); at the grid it was trained with (``sqrt(num_patches)`` patches a
side) that resize is the identity, which is the one resolution converted here (images
squashed to ``sqrt(num_patches) * p`` pixels, which is what NaFlex does to square images).
NaFlex's aspect-preserving variable grids are out of scope: alignjax's ViT has one fixed
grid per compiled shape.

Tokenizer: ``tokenizer.json`` in the folder -> ``name='hf'`` (Rust ``tokenizers``), else
``spiece.model`` -> ``name='sentencepiece'``; both as big_vision trained the towers: no BOS,
EOS appended, padded with EOS to ``max_position_embeddings`` (sticky EOS, which last-token
pooling needs), lower-cased for SigLIP 2 (its Gemma vocabulary; big_vision's demo lower-cases
and transformers' ``Siglip2Tokenizer`` does too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from alignjax.interop import common
from alignjax.interop.common import Converted

#: ``config.json`` model types this module converts.
MODEL_TYPES = ("siglip", "siglip2")


def grid_size(hf: Mapping[str, Any]) -> int:
    """Patches per image side: ``image_size / patch_size`` (siglip) or
    ``sqrt(num_patches)`` (siglip2)."""
    vc = dict(hf.get("vision_config") or {})
    patch = int(vc.get("patch_size", 16))
    if hf.get("model_type") == "siglip2":
        n = int(vc.get("num_patches", 256))
        side = int(round(np.sqrt(n)))
        if side * side != n:
            raise ValueError(f"Siglip2 vision num_patches={n} is not a square grid.")
        return side
    return int(vc.get("image_size", 224)) // patch


def model_config_from_hf(hf: Mapping[str, Any]) -> dict:
    """alignjax model config from an HF ``SiglipConfig`` / ``Siglip2Config`` dict."""
    tc, vc = dict(hf.get("text_config") or {}), dict(hf.get("vision_config") or {})
    acts = {tc.get("hidden_act", "gelu_pytorch_tanh"), vc.get("hidden_act", "gelu_pytorch_tanh")}
    if len(acts) != 1 or not acts <= set(common.HF_ACTS):
        raise ValueError(
            f"HF SigLIP hidden_act {sorted(acts)}: alignjax needs one activation shared by "
            f"both towers, one of {sorted(common.HF_ACTS)}."
        )
    eps = {float(tc.get("layer_norm_eps", 1e-6)), float(vc.get("layer_norm_eps", 1e-6))}
    if len(eps) != 1:
        raise ValueError(f"HF SigLIP towers use different layer_norm_eps {eps}; unsupported.")
    if not vc.get("vision_use_head", True):
        raise ValueError(
            "HF SigLIP vision_use_head=False (no attention-pooling head): that is a vision "
            "backbone, not a two-tower model; alignjax converts SiglipModel with its MAP head."
        )
    width = int(vc.get("hidden_size", 768))
    twidth = int(tc.get("hidden_size", 768))
    embed = int(tc.get("projection_size") or twidth)
    if embed != width:
        raise ValueError(
            f"HF SigLIP text projection_size={embed} differs from the vision width {width}: "
            "the image tower has no projection, so the two embeddings could not be compared."
        )
    return dict(
        embed_dim=embed,
        act=common.HF_ACTS[acts.pop()],
        ln_eps=eps.pop(),
        # Placeholders: from_hf_siglip records the checkpoint's own values (a float bias, not
        # None, gives the model its logit_bias parameter).
        logit_scale_init=1.0,
        logit_bias_init=0.0,
        image=dict(
            variant=None,
            width=width,
            depth=int(vc.get("num_hidden_layers", 12)),
            mlp_dim=int(vc.get("intermediate_size", 3072)),
            num_heads=int(vc.get("num_attention_heads", 12)),
            patch_size=int(vc.get("patch_size", 16)),
            posemb="learn",
            pool="map",
            pre_norm=False,
            head=False,
            head_bias=True,
        ),
        text=dict(
            variant=None,
            width=twidth,
            depth=int(tc.get("num_hidden_layers", 12)),
            mlp_dim=int(tc.get("intermediate_size", 3072)),
            num_heads=int(tc.get("num_attention_heads", 12)),
            vocab_size=int(tc.get("vocab_size", 32000)),
            context_length=int(tc.get("max_position_embeddings", 64)),
            convention="big_vision",
            pad_id=1,  # sticky EOS padding: EOS is id 1 in both the T5/c4 and Gemma vocabularies
            head=True,
            head_bias=True,
        ),
    )


def params_from_hf(
    sd: Mapping[str, np.ndarray],
    model_config: Mapping[str, Any],
    source: str = "HF SiglipModel state dict",
) -> dict:
    """HF SiglipModel / Siglip2Model state dict (numpy) -> alignjax params (scan=False).

    Raises:
      WeightFileError: a tensor is missing, left over, or has a shape the config rules out.
    """
    get = common.Consumer(sd, source, ignore=("position_ids",))
    return get.convert(_params_from_hf, model_config)


def _patch_kernel(w: np.ndarray, patch: int) -> np.ndarray:
    """Conv2d [D,C,p,p] or Linear [D, p*p*C] (Siglip2's flattened patches) -> [p,p,C,D]."""
    if w.ndim == 4:
        return common.conv_to_flax(w)
    d = w.shape[0]
    return np.ascontiguousarray(w.T.reshape(patch, patch, -1, d))


def _map_head(get: common.Consumer, prefix: str, num_heads: int) -> dict:
    qkv_w, qkv_b = get(prefix + "attention.in_proj_weight"), get(prefix + "attention.in_proj_bias")
    d = qkv_w.shape[1]
    if qkv_w.shape[0] != 3 * d:
        raise ValueError(f"{prefix}attention.in_proj_weight {qkv_w.shape} is not [3D, D].")
    attn = {
        part: common.heads_in(qkv_w[i * d : (i + 1) * d], qkv_b[i * d : (i + 1) * d], num_heads)
        for i, part in enumerate(("query", "key", "value"))
    }
    attn["out"] = common.heads_out(
        get(prefix + "attention.out_proj.weight"),
        get(prefix + "attention.out_proj.bias"),
        num_heads,
    )
    return {
        "probe": get(prefix + "probe"),
        "attn": attn,
        "ln": common.layer_norm(get(prefix + "layernorm.weight"), get(prefix + "layernorm.bias")),
        "mlp": {
            f"fc{i}": {
                "kernel": common.linear(get(f"{prefix}mlp.fc{i}.weight")),
                "bias": get(f"{prefix}mlp.fc{i}.bias"),
            }
            for i in (1, 2)
        },
    }


def _params_from_hf(get: common.Consumer, model_config: Mapping[str, Any]) -> dict:
    img_cfg, txt_cfg = model_config["image"], model_config["text"]
    v, t = "vision_model.", "text_model."
    img = {
        "embedding": {
            "kernel": _patch_kernel(
                get(v + "embeddings.patch_embedding.weight"), img_cfg["patch_size"]
            ),
            "bias": get(v + "embeddings.patch_embedding.bias"),
        },
        "pos_embedding": get(v + "embeddings.position_embedding.weight")[None],
        "encoder": common.hf_encoder(get, v, img_cfg, "post_layernorm"),
        "map_head": _map_head(get, v + "head.", img_cfg["num_heads"]),
    }
    txt = {
        "token_embedding": {"embedding": get(t + "embeddings.token_embedding.weight")},
        "pos_embedding": get(t + "embeddings.position_embedding.weight"),
        "encoder": common.hf_encoder(get, t, txt_cfg, "final_layer_norm"),
        "head": {"kernel": common.linear(get(t + "head.weight")), "bias": get(t + "head.bias")},
    }
    return {
        "img": img,
        "txt": txt,
        "log_scale": get("logit_scale").reshape(()),
        "logit_bias": get("logit_bias").reshape(()),
    }


def preprocess_from_hf(pp: Mapping[str, Any] | None, image_size: int) -> dict:
    """Preprocess settings from a SigLIP ``preprocessor_config.json``: squash to the model
    size (no crop), bilinear by default, mean = std = 0.5 (values in [-1, 1])."""
    pp = dict(pp or {})
    return dict(
        size=image_size,
        resize_mode="squash",
        interpolation=common.HF_RESAMPLE.get(int(pp.get("resample", 2)), "bilinear"),
        mean=list(pp.get("image_mean", [0.5] * 3)),
        std=list(pp.get("image_std", [0.5] * 3)),
    )


def tokenizer_from_dir(path: str, context_length: int, vocab_size: int) -> dict:
    """Tokenizer settings for a SigLIP folder (``tokenizer.json`` or ``spiece.model``)."""
    fast, sp = os.path.join(path, "tokenizer.json"), os.path.join(path, "spiece.model")
    common_fields = dict(
        context_length=context_length,
        pad="eos",
        eos_mode="native",
        add_bos=False,
        lower=vocab_size == common.GEMMA_VOCAB,
    )
    if os.path.exists(fast):
        return dict(name="hf", model_path=fast, **common_fields)
    return dict(name="sentencepiece", model_path=sp if os.path.exists(sp) else "", **common_fields)


def from_hf_siglip(path: str) -> Converted:
    """Converts a Hugging Face ``SiglipModel`` or (fixed-resolution) ``Siglip2Model`` folder.

    Returns:
      :class:`Converted` with the model config, params, preprocessing (squash to
      ``grid * patch`` pixels, [-1, 1]) and tokenizer settings (see the module docstring).
    """
    path, hf = common.read_hf_config(path)
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise common.WeightFileError(
            f"{os.path.join(path, 'config.json')}: model_type={kind!r}, not one of {MODEL_TYPES}."
        )
    try:
        mc = model_config_from_hf(hf)
        side = grid_size(hf)
    except ValueError as e:
        raise common.WeightFileError(f"{path}: {common.short_reason(e, 300)}") from e
    what = "HF Siglip2Model" if kind == "siglip2" else "HF SiglipModel"
    sd, source = common.read_hf_weights(path, what)
    params = params_from_hf(sd, mc, source)
    mc["logit_scale_init"] = float(np.exp(np.float64(params["log_scale"])))
    mc["logit_bias_init"] = float(params["logit_bias"])
    pp_path = os.path.join(path, "preprocessor_config.json")
    pp = common.read_json(pp_path) if os.path.exists(pp_path) else None
    return Converted(
        model_config=mc,
        params=params,
        preprocess=preprocess_from_hf(pp, side * mc["image"]["patch_size"]),
        tokenizer=tokenizer_from_dir(path, mc["text"]["context_length"], mc["text"]["vocab_size"]),
    )
