"""Hugging Face ``transformers`` CLIPModel <-> alignjax, both ways.

Import: ``from_hf_clip(directory)`` (what ``interop.from_hf`` calls for CLIP folders)
reads ``config.json`` and ``model.safetensors`` (no torch) or ``pytorch_model.bin``
(torch), plus ``preprocessor_config.json`` and the tokenizer files (``vocab.json`` +
``merges.txt``) when present.

Export: ``to_hf(params, model_config, out_dir)`` writes ``config.json`` +
``model.safetensors`` that ``transformers.CLIPModel.from_pretrained(out_dir)`` loads.

How HF CLIP maps onto ``alignjax.models`` (per tower, ``D`` width, ``H`` heads):

================================================  =========================================
HF                                                alignjax
================================================  =========================================
vision_model.embeddings.patch_embedding [D,C,p,p] img/embedding/kernel [p,p,C,D] (bias 0)
vision_model.embeddings.class_embedding [D]       img/cls [1,1,D]
vision_model.embeddings.position_embedding [N+1,D] img/pos_embedding [1,N+1,D] (row 0: cls)
vision_model.pre_layrnorm                         img/ln_pre  (``pre_norm=True``)
*.encoder.layers.i.self_attn.{q,k,v}_proj         */encoder/block_i/attn/{query,key,value}
*.encoder.layers.i.self_attn.out_proj             */encoder/block_i/attn/out
*.encoder.layers.i.layer_norm{1,2}                */encoder/block_i/ln_{attn,mlp}
*.encoder.layers.i.mlp.fc{1,2}                    */encoder/block_i/mlp/fc{1,2}
vision_model.post_layernorm                       img/encoder/encoder_norm
text_model.final_layer_norm                       txt/encoder/encoder_norm
visual_projection / text_projection [E,D]         img/head, txt/head kernel [D,E], no bias
text_model.embeddings.token_embedding [V,D]       txt/token_embedding/embedding
text_model.embeddings.position_embedding [L,D]    txt/pos_embedding [L,D]
logit_scale                                       log_scale
================================================  =========================================

HF applies ``post_layernorm`` to the class token only and alignjax to every token; the pooled
features are identical (``img_tokens`` then carry a LayerNorm HF's ``last_hidden_state``
lacks). Text pooling: HF takes the first ``eos_token_id`` position (or ``argmax`` when
``eos_token_id == 2``, the legacy configs); alignjax takes ``argmax``; these agree when EOT
is the largest id, as in CLIP's vocabulary (49407 of 49408).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from alignjax import models
from alignjax.data import clip_bpe
from alignjax.interop import common
from alignjax.interop.common import Converted


def model_config_from_hf(hf: Mapping[str, Any]) -> dict:
    """alignjax model config from an HF ``CLIPConfig`` dict (``config.json``)."""
    tc, vc = dict(hf.get("text_config") or {}), dict(hf.get("vision_config") or {})
    acts = {tc.get("hidden_act", "quick_gelu"), vc.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= set(common.HF_ACTS):
        raise ValueError(
            f"HF CLIP hidden_act {sorted(acts)}: alignjax needs one activation shared by both "
            f"towers, one of {sorted(common.HF_ACTS)}."
        )
    eps = {float(tc.get("layer_norm_eps", 1e-5)), float(vc.get("layer_norm_eps", 1e-5))}
    if len(eps) != 1:
        raise ValueError(f"HF CLIP towers use different layer_norm_eps {eps}; unsupported.")
    vocab = int(tc.get("vocab_size", 49408))
    eos = int(tc.get("eos_token_id", 2))
    if eos not in (2, vocab - 1):
        raise ValueError(
            f"HF CLIP text eos_token_id={eos} is neither the legacy 2 (argmax pooling) nor the "
            f"largest id {vocab - 1}; alignjax pools at argmax(tokens), which would differ."
        )
    return dict(
        embed_dim=int(hf.get("projection_dim", 512)),
        act=common.HF_ACTS[acts.pop()],
        ln_eps=eps.pop(),
        logit_scale_init=float(np.exp(hf.get("logit_scale_init_value", 2.6592))),
        logit_bias_init=None,
        image=dict(
            variant=None,
            width=int(vc.get("hidden_size", 768)),
            depth=int(vc.get("num_hidden_layers", 12)),
            mlp_dim=int(vc.get("intermediate_size", 3072)),
            num_heads=int(vc.get("num_attention_heads", 12)),
            patch_size=int(vc.get("patch_size", 32)),
            posemb="learn",
            pool="tok",
            pre_norm=True,
            head=True,
            head_bias=False,
        ),
        text=dict(
            variant=None,
            width=int(tc.get("hidden_size", 512)),
            depth=int(tc.get("num_hidden_layers", 12)),
            mlp_dim=int(tc.get("intermediate_size", 2048)),
            num_heads=int(tc.get("num_attention_heads", 8)),
            vocab_size=vocab,
            context_length=int(tc.get("max_position_embeddings", 77)),
            convention="clip",
            pad_id=0,
            head=True,
            head_bias=False,
        ),
    )


def params_from_hf(
    sd: Mapping[str, np.ndarray],
    model_config: Mapping[str, Any],
    source: str = "HF CLIPModel state dict",
) -> dict:
    """HF CLIPModel state dict (numpy) -> alignjax params (scan=False layout).

    Raises:
      WeightFileError: a tensor is missing, left over, or has a shape the config rules out.
    """
    get = common.Consumer(sd, source, ignore=("position_ids",))
    return get.convert(_params_from_hf, model_config)


def _params_from_hf(get: common.Consumer, model_config: Mapping[str, Any]) -> dict:
    img_cfg, txt_cfg = model_config["image"], model_config["text"]
    v, t = "vision_model.", "text_model."
    d = img_cfg["width"]
    pe = get(v + "embeddings.position_embedding.weight")
    img = {
        "embedding": {
            "kernel": common.conv_to_flax(get(v + "embeddings.patch_embedding.weight")),
            "bias": np.zeros((d,), np.float32),
        },
        "cls": get(v + "embeddings.class_embedding", shape=(d,)).reshape(1, 1, d),
        "pos_embedding": pe[None],
        "ln_pre": common.layer_norm(get(v + "pre_layrnorm.weight"), get(v + "pre_layrnorm.bias")),
        "encoder": common.hf_encoder(get, v, img_cfg, "post_layernorm"),
        "head": {"kernel": common.linear(get("visual_projection.weight"))},
    }
    txt = {
        "token_embedding": {"embedding": get(t + "embeddings.token_embedding.weight")},
        "pos_embedding": get(t + "embeddings.position_embedding.weight"),
        "encoder": common.hf_encoder(get, t, txt_cfg, "final_layer_norm"),
        "head": {"kernel": common.linear(get("text_projection.weight"))},
    }
    return {"img": img, "txt": txt, "log_scale": get("logit_scale").reshape(())}


def preprocess_from_hf(pp: Mapping[str, Any] | None, image_size: int) -> dict:
    """Preprocess settings from ``preprocessor_config.json`` (defaults: OpenAI CLIP's)."""
    pp = dict(pp or {})
    size = pp.get("size", {"shortest_edge": image_size})
    crop = pp.get("crop_size", {"height": image_size, "width": image_size})
    short = size.get("shortest_edge", size) if isinstance(size, dict) else size
    crop = crop.get("height", crop) if isinstance(crop, dict) else crop
    if pp.get("do_center_crop", True) and int(short) != int(crop):
        raise ValueError(
            f"preprocessor_config.json resizes to {short} and crops {crop}; alignjax's "
            "Preprocess resizes the shortest side to the crop size (as OpenAI/open_clip do)."
        )
    return dict(
        size=int(crop),
        resize_mode="shortest" if pp.get("do_center_crop", True) else "squash",
        interpolation=common.HF_RESAMPLE.get(int(pp.get("resample", 3)), "bicubic"),
        mean=list(pp.get("image_mean", common.OPENAI_MEAN)),
        std=list(pp.get("image_std", common.OPENAI_STD)),
    )


def tokenizer_from_dir(path: str, context_length: int) -> dict:
    """CLIP BPE tokenizer settings for a directory with ``merges.txt`` (+ ``vocab.json``)."""
    merges = os.path.join(path, "merges.txt")
    vocab = os.path.join(path, "vocab.json")
    return dict(
        name="clip_bpe",
        bpe_path=merges if os.path.exists(merges) else "",
        vocab_path=vocab if os.path.exists(vocab) else "",
        context_length=context_length,
        pad="zero",
    )


def from_hf_clip(path: str) -> Converted:
    """Converts a Hugging Face ``CLIPModel`` folder, or a file in it (``interop.from_hf``
    sends SigLIP folders to ``hf_siglip`` instead).

    Returns:
      :class:`Converted` with the matching model config, params, preprocess and tokenizer
      settings.
    """
    path, hf = common.read_hf_config(path)
    if hf.get("model_type", "clip") != "clip":
        raise common.WeightFileError(
            f"{os.path.join(path, 'config.json')}: model_type={hf.get('model_type')!r}; "
            "alignjax converts Hugging Face 'clip', 'siglip' and 'siglip2' models."
        )
    sd, source = common.read_hf_weights(path, "HF CLIPModel")
    mc = model_config_from_hf(hf)
    params = params_from_hf(sd, mc, source)
    pp_path = os.path.join(path, "preprocessor_config.json")
    pp = common.read_json(pp_path) if os.path.exists(pp_path) else None
    image_size = int((hf.get("vision_config") or {}).get("image_size", 224))
    return Converted(
        model_config=mc,
        params=params,
        preprocess=preprocess_from_hf(pp, image_size),
        tokenizer=tokenizer_from_dir(path, mc["text"]["context_length"]),
    )


# ------------------------------------------------------------------------------ export


def _check_exportable(mc: Mapping[str, Any]) -> None:
    img, txt = mc["image"], mc["text"]
    problems = []
    if img["pool"] != "tok" or img["posemb"] != "learn" or not img["pre_norm"]:
        problems.append("image tower must be pool='tok', posemb='learn', pre_norm=True")
    if not img["head"] or img["head_bias"] or not txt["head"] or txt["head_bias"]:
        problems.append("both towers need a head without bias (head=True, head_bias=False)")
    if txt["convention"] != "clip":
        problems.append("text.convention must be 'clip' (causal mask, EOT pooling)")
    if mc.get("logit_bias_init") is not None:
        problems.append("CLIPModel has no logit bias (this is a SigLIP-style model)")
    if problems:
        raise ValueError("Cannot export to HF CLIPModel: " + "; ".join(problems) + ".")


def hf_config_from_model_config(mc: Mapping[str, Any], image_size: int) -> dict:
    """HF ``CLIPConfig`` dict (``config.json``) for a resolved alignjax model config."""
    mc = models.resolve_model_config(mc)
    _check_exportable(mc)
    act = mc["act"] or ("quick_gelu" if mc["quick_gelu"] else "gelu")
    hf_act = {v: k for k, v in common.HF_ACTS.items()}[act]
    img, txt = mc["image"], mc["text"]
    return dict(
        architectures=["CLIPModel"],
        model_type="clip",
        projection_dim=mc["embed_dim"],
        logit_scale_init_value=float(np.log(mc["logit_scale_init"])),
        text_config=dict(
            model_type="clip_text_model",
            vocab_size=txt["vocab_size"],
            hidden_size=txt["width"],
            intermediate_size=txt["mlp_dim"],
            num_hidden_layers=txt["depth"],
            num_attention_heads=txt["num_heads"],
            max_position_embeddings=txt["context_length"],
            hidden_act=hf_act,
            layer_norm_eps=mc["ln_eps"],
            projection_dim=mc["embed_dim"],
            bos_token_id=txt["vocab_size"] - 2,
            eos_token_id=txt["vocab_size"] - 1,
            pad_token_id=1,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=img["width"],
            intermediate_size=img["mlp_dim"],
            num_hidden_layers=img["depth"],
            num_attention_heads=img["num_heads"],
            image_size=image_size,
            patch_size=img["patch_size"],
            num_channels=3,
            hidden_act=hf_act,
            layer_norm_eps=mc["ln_eps"],
            projection_dim=mc["embed_dim"],
        ),
    )


def params_to_hf(params: Mapping[str, Any], mc: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """alignjax params (scan or not) -> HF CLIPModel state dict (float32 numpy).

    A non-zero patch-embedding bias (HF's conv has none) is folded into the patch rows of
    the position embedding, which adds the same vector to every patch token.
    """
    mc = models.resolve_model_config(mc)
    _check_exportable(mc)
    p = common.unstack_scan(common.to_f32(params))
    sd: dict[str, np.ndarray] = {}

    def blocks(prefix: str, enc: Mapping[str, Any], depth: int):
        for i in range(depth):
            b, n = enc[f"block_{i}"], f"{prefix}encoder.layers.{i}."
            for part, stem in (("query", "q"), ("key", "k"), ("value", "v")):
                w, bias = common.heads_in_torch(b["attn"][part])
                sd[n + f"self_attn.{stem}_proj.weight"], sd[n + f"self_attn.{stem}_proj.bias"] = (
                    w,
                    bias,
                )
            w, bias = common.heads_out_torch(b["attn"]["out"])
            sd[n + "self_attn.out_proj.weight"], sd[n + "self_attn.out_proj.bias"] = w, bias
            for ln, stem in (("ln_attn", "layer_norm1"), ("ln_mlp", "layer_norm2")):
                sd[n + stem + ".weight"], sd[n + stem + ".bias"] = common.ln_torch(b[ln])
            for fc in ("fc1", "fc2"):
                sd[n + f"mlp.{fc}.weight"] = common.linear(b["mlp"][fc]["kernel"])
                sd[n + f"mlp.{fc}.bias"] = b["mlp"][fc]["bias"]

    img, txt = p["img"], p["txt"]
    v, t = "vision_model.", "text_model."
    pe = img["pos_embedding"][0].copy()
    pe[1:] += img["embedding"]["bias"][None]  # fold the conv bias (see docstring)
    sd[v + "embeddings.patch_embedding.weight"] = common.conv_to_torch(img["embedding"]["kernel"])
    sd[v + "embeddings.class_embedding"] = img["cls"].reshape(-1)
    sd[v + "embeddings.position_embedding.weight"] = pe
    sd[v + "pre_layrnorm.weight"], sd[v + "pre_layrnorm.bias"] = common.ln_torch(img["ln_pre"])
    blocks(v, img["encoder"], mc["image"]["depth"])
    norm = img["encoder"]["encoder_norm"]
    sd[v + "post_layernorm.weight"], sd[v + "post_layernorm.bias"] = common.ln_torch(norm)
    sd["visual_projection.weight"] = common.linear(img["head"]["kernel"])
    sd[t + "embeddings.token_embedding.weight"] = txt["token_embedding"]["embedding"]
    sd[t + "embeddings.position_embedding.weight"] = txt["pos_embedding"]
    blocks(t, txt["encoder"], mc["text"]["depth"])
    norm = txt["encoder"]["encoder_norm"]
    sd[t + "final_layer_norm.weight"], sd[t + "final_layer_norm.bias"] = common.ln_torch(norm)
    sd["text_projection.weight"] = common.linear(txt["head"]["kernel"])
    sd["logit_scale"] = np.asarray(p["log_scale"], np.float32).reshape(())
    return {k: np.array(x, np.float32, order="C") for k, x in sd.items()}


def to_hf(
    params: Mapping[str, Any],
    model_config: Mapping[str, Any],
    out_dir: str,
    *,
    image_size: int | None = None,
    preprocess: Mapping[str, Any] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
) -> str:
    """Writes an HF ``CLIPModel`` folder (``config.json``, ``model.safetensors`` and, when
    known, ``preprocessor_config.json`` and the BPE files) that ``from_pretrained`` loads.

    Args:
      params: alignjax params (the ``'params'`` collection, boxed or not).
      model_config: alignjax model config (partial configs are resolved).
      image_size: the model's input size; default: ``preprocess['size']`` or, failing that,
        derived from the position-embedding length.
    """
    params = nn.meta.unbox(params)
    params = params.get("params", params)
    sd = params_to_hf(params, model_config)
    if image_size is None:
        if preprocess:
            image_size = int(preprocess["size"])
        else:
            n = sd["vision_model.embeddings.position_embedding.weight"].shape[0] - 1
            p = sd["vision_model.embeddings.patch_embedding.weight"].shape[-1]
            image_size = int(round(np.sqrt(n))) * p
    os.makedirs(out_dir, exist_ok=True)
    cfg = hf_config_from_model_config(model_config, image_size)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    common.write_safetensors(
        os.path.join(out_dir, "model.safetensors"), sd, metadata={"format": "pt"}
    )
    if preprocess:
        interp = {v: k for k, v in common.HF_RESAMPLE.items()}
        pp = dict(
            image_processor_type="CLIPImageProcessor",
            do_resize=True,
            size={"shortest_edge": int(preprocess["size"])},
            do_center_crop=preprocess.get("resize_mode", "shortest") in ("shortest", "center"),
            crop_size={"height": int(preprocess["size"]), "width": int(preprocess["size"])},
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(preprocess["mean"]),
            image_std=list(preprocess["std"]),
            resample=interp.get(preprocess.get("interpolation", "bicubic"), 3),
            do_convert_rgb=True,
        )
        with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
            json.dump(pp, f, indent=2)
    if tokenizer and tokenizer.get("bpe_path"):
        clip_bpe.write_hf_files(tokenizer["bpe_path"], out_dir, tokenizer.get("vocab_path") or None)
    return out_dir
