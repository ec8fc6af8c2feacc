"""open_clip checkpoints -> alignjax (no open_clip or torch needed for safetensors).

Accepted inputs:

* a Hugging Face hub folder as open_clip publishes it: ``open_clip_config.json``
  (``model_cfg`` + ``preprocess_cfg``) with ``open_clip_model.safetensors`` (or
  ``open_clip_pytorch_model.bin``, which needs torch);
* a state-dict file (``.safetensors``, or ``.pt``/``.bin`` with torch) plus an open_clip
  model name (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, ``ViT-L-14-336`` and their
  ``-quickgelu`` variants) or an explicit ``model_cfg`` dict in open_clip's format.

The weights use OpenAI's key layout (mapping table in ``interop.openai``). The activation is
not stored in the weights: ``-quickgelu`` names and ``"quick_gelu": true`` configs use
QuickGELU (OpenAI's and some early LAION weights), the others exact GELU. Custom configs of
the same family (any widths/depths/heads/patch/image size/context/vocab/mlp_ratio) convert;
features alignjax does not implement (timm or HF text towers, attentional pooling,
LayerScale, projection biases, non-argmax text pooling, ...) fail with a message naming them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from alignjax.interop import common, openai
from alignjax.interop.common import Converted

_B = dict(
    embed_dim=512, text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)
)
#: open_clip's built-in ViT configs (model_cfg format), without the -quickgelu variants.
MODEL_CONFIGS: dict[str, dict] = {
    "ViT-B-32": {**_B, "vision_cfg": dict(image_size=224, layers=12, width=768, patch_size=32)},
    "ViT-B-16": {**_B, "vision_cfg": dict(image_size=224, layers=12, width=768, patch_size=16)},
    "ViT-L-14": dict(
        embed_dim=768,
        vision_cfg=dict(image_size=224, layers=24, width=1024, patch_size=14),
        text_cfg=dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12),
    ),
    "ViT-L-14-336": dict(
        embed_dim=768,
        vision_cfg=dict(image_size=336, layers=24, width=1024, patch_size=14),
        text_cfg=dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12),
    ),
}

# Fields of open_clip's CLIPVisionCfg / CLIPTextCfg and the values alignjax can represent
# (None: any value, it only affects training or is mapped).
_VISION_OK = {
    "image_size": None,
    "layers": None,
    "width": None,
    "head_width": None,
    "mlp_ratio": None,
    "patch_size": None,
    "patch_dropout": None,  # training-time only
    "ls_init_value": (None,),
    "attentional_pool": (False,),
    "no_ln_pre": (False,),
    "pool_type": ("tok",),
    "final_ln_after_pool": (False,),
    "output_tokens": (False,),
    "global_average_pool": (False,),
    "pos_embed_type": ("learnable",),
    "act_kwargs": (None, {}),
    "norm_kwargs": (None, {}),
    "timm_model_name": (None,),
}
_TEXT_OK = {
    "context_length": None,
    "vocab_size": None,
    "width": None,
    "heads": None,
    "layers": None,
    "mlp_ratio": None,
    "ls_init_value": (None,),
    "hf_model_name": (None,),
    "hf_tokenizer_name": None,  # checked separately (tokenizer)
    "tokenizer_kwargs": None,
    "embed_cls": (False,),
    "pad_id": (0,),
    "no_causal_mask": (False,),
    "final_ln_after_pool": (False,),
    "pool_type": ("argmax",),
    "proj_bias": (False,),
    "proj_type": ("linear",),
    "output_tokens": (False,),
    "act_kwargs": (None, {}),
    "norm_kwargs": (None, {}),
}


def model_cfg_for(name: str) -> dict:
    """open_clip model_cfg for a built-in model name (``-quickgelu`` suffix honoured)."""
    base = name.removesuffix("-quickgelu")
    if base not in MODEL_CONFIGS:
        raise ValueError(
            f"Unknown open_clip model name {name!r}. Known: "
            f"{', '.join(sorted(MODEL_CONFIGS))} (each also with -quickgelu); for another "
            "model pass its open_clip_config.json folder or model_cfg=dict(...)."
        )
    return {**MODEL_CONFIGS[base], "quick_gelu": name.endswith("-quickgelu")}


def _check_fields(section: str, cfg: Mapping[str, Any], ok: Mapping[str, Any]) -> None:
    for k, v in cfg.items():
        if k not in ok:
            raise ValueError(
                f"open_clip {section}.{k}={v!r} is not supported by the alignjax converter "
                f"(supported fields: {', '.join(sorted(ok))})."
            )
        if ok[k] is not None and v not in ok[k]:
            raise ValueError(
                f"open_clip {section}.{k}={v!r} is not supported; alignjax needs one of "
                f"{list(ok[k])} (its ViT/text towers do not implement this option)."
            )


def model_config_from_open_clip(model_cfg: Mapping[str, Any]) -> dict:
    """alignjax model config from an open_clip ``model_cfg`` dict."""
    extra = set(model_cfg) - {
        "embed_dim",
        "vision_cfg",
        "text_cfg",
        "quick_gelu",
        "custom_text",
        "init_logit_scale",
        "init_logit_bias",
    }
    if extra:
        raise ValueError(f"open_clip model_cfg fields {sorted(extra)} are not supported.")
    if model_cfg.get("init_logit_bias") is not None:
        raise ValueError("open_clip SigLIP-style models (init_logit_bias) are not supported yet.")
    vc, tc = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    _check_fields("vision_cfg", vc, _VISION_OK)
    _check_fields("text_cfg", tc, _TEXT_OK)
    vw, tw = int(vc.get("width", 768)), int(tc.get("width", 512))
    return dict(
        embed_dim=int(model_cfg["embed_dim"]),
        act="quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu",
        ln_eps=1e-5,
        logit_scale_init=1 / 0.07,
        logit_bias_init=None,
        image=dict(
            variant=None,
            width=vw,
            depth=int(vc.get("layers", 12)),
            mlp_dim=int(vw * float(vc.get("mlp_ratio", 4.0))),
            num_heads=vw // int(vc.get("head_width", 64)),
            patch_size=int(vc.get("patch_size", 16)),
            posemb="learn",
            pool="tok",
            pre_norm=True,
            head=True,
            head_bias=False,
        ),
        text=dict(
            variant=None,
            width=tw,
            depth=int(tc.get("layers", 12)),
            mlp_dim=int(tw * float(tc.get("mlp_ratio", 4.0))),
            num_heads=int(tc.get("heads", 8)),
            vocab_size=int(tc.get("vocab_size", 49408)),
            context_length=int(tc.get("context_length", 77)),
            convention="clip",
            pad_id=0,
            head=True,
            head_bias=False,
        ),
    )


def preprocess_from_open_clip(pp: Mapping[str, Any] | None, image_size: int) -> dict:
    pp = dict(pp or {})
    mode = pp.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ValueError(f"open_clip resize_mode={mode!r}; alignjax supports shortest, squash.")
    size = pp.get("size", image_size)
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise ValueError(f"Non-square open_clip image size {size} is not supported.")
        size = size[0]
    return dict(
        size=int(size),
        resize_mode=mode,
        interpolation=pp.get("interpolation", "bicubic"),
        mean=list(pp.get("mean", common.OPENAI_MEAN)),
        std=list(pp.get("std", common.OPENAI_STD)),
    )


def from_open_clip(
    path: str,
    *,
    model_name: str | None = None,
    model_cfg: Mapping[str, Any] | None = None,
    bpe_path: str = "",
) -> Converted:
    """Converts an open_clip checkpoint (see module docstring for the accepted inputs).

    Args:
      path: hub folder with ``open_clip_config.json``, or a state-dict file.
      model_name: open_clip name, e.g. ``'ViT-B-32-quickgelu'`` (for state-dict files).
      model_cfg: open_clip ``model_cfg`` dict (instead of model_name).
      bpe_path: BPE vocabulary for the tokenizer (default: the folder's ``merges.txt``,
        else found at tokenizer build time).
    """
    pp_cfg = None
    folder = path if os.path.isdir(path) else None
    if folder:
        cfg_path = os.path.join(folder, "open_clip_config.json")
        if model_cfg is None and model_name is None:
            if not os.path.exists(cfg_path):
                raise common.WeightFileMissing(
                    f"{folder} has no open_clip_config.json; pass model_name=... (e.g. "
                    "'ViT-B-32') or model_cfg=... with a state-dict file."
                )
            full = common.read_json(cfg_path)
            if not isinstance(full.get("model_cfg"), dict):
                raise common.WeightFileError(
                    f"{cfg_path} has no model_cfg: not an open_clip hub config."
                )
            model_cfg, pp_cfg = full["model_cfg"], full.get("preprocess_cfg")
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if os.path.exists(os.path.join(folder, name)):
                wpath = os.path.join(folder, name)
                break
        else:
            raise common.WeightFileMissing(
                f"{folder} has neither open_clip_model.safetensors nor open_clip_pytorch_model.bin."
            )
    else:
        wpath = path
        if not os.path.isfile(path):
            raise common.WeightFileMissing(f"{path} does not exist (or is not a file).")
        if model_cfg is None:
            if model_name is None:
                raise ValueError(
                    f"{path}: an open_clip state dict does not say its activation (GELU or "
                    "QuickGELU); pass model_name (e.g. 'ViT-B-32' or 'ViT-B-32-quickgelu') "
                    "or model_cfg. For OpenAI's own .pt files use --from openai."
                )
    if model_cfg is None:
        model_cfg = model_cfg_for(model_name)
    tc = model_cfg.get("text_cfg") or {}
    if tc.get("hf_tokenizer_name"):
        raise ValueError(
            f"text_cfg.hf_tokenizer_name={tc['hf_tokenizer_name']!r}: models with a Hugging "
            "Face tokenizer are not supported (alignjax converts CLIP-BPE models)."
        )
    sd = common.read_state_dict(wpath)
    try:
        mc = model_config_from_open_clip(model_cfg)
    except KeyError as e:
        raise ValueError(
            f"open_clip model_cfg has no {e.args[0]!r} (needed by the converter)."
        ) from e
    params = openai.params_from_openai_layout(sd, mc, source=f"open_clip {wpath}")
    image_size = model_cfg["vision_cfg"].get("image_size", openai.image_size_of(sd))
    if isinstance(image_size, (list, tuple)):  # open_clip allows (h, w)
        if image_size[0] != image_size[1]:
            raise ValueError(f"Non-square open_clip image_size {image_size} is not supported.")
        image_size = image_size[0]
    image_size = int(image_size)
    if image_size != openai.image_size_of(sd):
        raise ValueError(
            f"model_cfg image_size={image_size} but the position embedding is for "
            f"{openai.image_size_of(sd)}: wrong model name/config for these weights?"
        )
    tok = openai.clip_tokenizer(mc["text"]["context_length"], bpe_path)
    if not bpe_path and folder and os.path.exists(os.path.join(folder, "merges.txt")):
        tok["bpe_path"] = os.path.join(folder, "merges.txt")
    return Converted(
        model_config=mc,
        params=params,
        preprocess=preprocess_from_open_clip(pp_cfg, image_size),
        tokenizer=tok,
    )
