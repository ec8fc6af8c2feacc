"""OpenAI CLIP checkpoints (the original ``.pt`` TorchScript archives) -> alignjax.

The OpenAI state-dict layout (also open_clip's, see ``interop.open_clip``), per tower:

==============================================  ============================================
OpenAI / open_clip                              alignjax
==============================================  ============================================
visual.conv1.weight [D,3,p,p] (no bias)         img/embedding/kernel [p,p,3,D] (bias 0)
visual.class_embedding [D]                      img/cls [1,1,D]
visual.positional_embedding [N+1,D]             img/pos_embedding [1,N+1,D]
visual.ln_pre                                   img/ln_pre
*transformer.resblocks.i.ln_1 / ln_2            */encoder/block_i/ln_attn / ln_mlp
*resblocks.i.attn.in_proj_weight [3D,D] (+bias) */attn/{query,key,value} (split in 3)
*resblocks.i.attn.out_proj                      */attn/out
*resblocks.i.mlp.c_fc / c_proj                  */mlp/fc1 / fc2
visual.ln_post                                  img/encoder/encoder_norm
visual.proj [D,E] (x @ proj)                    img/head/kernel [D,E], no bias
token_embedding.weight, positional_embedding    txt/token_embedding/embedding, txt/pos_embedding
ln_final                                        txt/encoder/encoder_norm
text_projection [D,E]                           txt/head/kernel
logit_scale                                     log_scale
==============================================  ============================================

Heads are not stored in the weights: OpenAI uses ``width // 64`` for both towers. OpenAI's
models use QuickGELU and LayerNorm eps 1e-5 (torch's default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from alignjax.interop import common
from alignjax.interop.common import Converted

# Tensors in OpenAI/open_clip state dicts that carry no weights (metadata, causal-mask
# buffers, position ids).
IGNORED = ("input_resolution", "context_length", "vocab_size", "attn_mask", "position_ids")


def _block(get, prefix: str, num_heads: int) -> dict:
    w = get(prefix + "attn.in_proj_weight")
    b = get(prefix + "attn.in_proj_bias")
    qw, kw, vw = np.split(w, 3, axis=0)
    qb, kb, vb = np.split(b, 3, axis=0)
    return {
        "ln_attn": common.layer_norm(get(prefix + "ln_1.weight"), get(prefix + "ln_1.bias")),
        "attn": {
            "query": common.heads_in(qw, qb, num_heads),
            "key": common.heads_in(kw, kb, num_heads),
            "value": common.heads_in(vw, vb, num_heads),
            "out": common.heads_out(
                get(prefix + "attn.out_proj.weight"), get(prefix + "attn.out_proj.bias"), num_heads
            ),
        },
        "ln_mlp": common.layer_norm(get(prefix + "ln_2.weight"), get(prefix + "ln_2.bias")),
        "mlp": {
            "fc1": {
                "kernel": common.linear(get(prefix + "mlp.c_fc.weight")),
                "bias": get(prefix + "mlp.c_fc.bias"),
            },
            "fc2": {
                "kernel": common.linear(get(prefix + "mlp.c_proj.weight")),
                "bias": get(prefix + "mlp.c_proj.bias"),
            },
        },
    }


def infer_model_config(
    sd: Mapping[str, np.ndarray],
    *,
    quick_gelu: bool,
    image_heads: int | None = None,
    text_heads: int | None = None,
) -> dict:
    """Model config from an OpenAI-layout ViT state dict (as OpenAI's ``build_model``).

    Heads default to ``width // 64`` (OpenAI and open_clip's built-in ViT configs).
    """
    if "visual.conv1.weight" not in sd:
        resnet = "visual.layer1.0.conv1.weight" in sd
        bad = "ResNet (ModifiedResNet) image towers are" if resnet else "This state dict is"
        raise ValueError(
            f"{bad} not supported: alignjax converts ViT CLIP models with the OpenAI/open_clip "
            "key layout (visual.conv1.weight, visual.transformer.resblocks.N..., "
            "transformer.resblocks.N...)."
        )
    conv = sd["visual.conv1.weight"]
    vw, patch = conv.shape[0], conv.shape[-1]
    tw = sd["ln_final.weight"].shape[0]
    v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    t_mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    return dict(
        embed_dim=int(sd["text_projection"].shape[1]),
        act="quick_gelu" if quick_gelu else "gelu",
        ln_eps=1e-5,
        logit_scale_init=1 / 0.07,
        logit_bias_init=None,
        image=dict(
            variant=None,
            width=int(vw),
            depth=common.count_layers(sd, "visual.transformer.resblocks."),
            mlp_dim=int(v_mlp),
            num_heads=int(image_heads or vw // 64),
            patch_size=int(patch),
            posemb="learn",
            pool="tok",
            pre_norm=True,
            head=True,
            head_bias=False,
        ),
        text=dict(
            variant=None,
            width=int(tw),
            depth=common.count_layers(sd, "transformer.resblocks."),
            mlp_dim=int(t_mlp),
            num_heads=int(text_heads or tw // 64),
            vocab_size=int(sd["token_embedding.weight"].shape[0]),
            context_length=int(sd["positional_embedding"].shape[0]),
            convention="clip",
            pad_id=0,
            head=True,
            head_bias=False,
        ),
    )


def image_size_of(sd: Mapping[str, np.ndarray]) -> int:
    n = sd["visual.positional_embedding"].shape[0] - 1
    grid = int(round(np.sqrt(n)))
    if grid * grid != n:
        raise ValueError(f"visual.positional_embedding has {n} patch rows, not a square grid.")
    return grid * int(sd["visual.conv1.weight"].shape[-1])


def params_from_openai_layout(
    sd: Mapping[str, np.ndarray], model_config: Mapping[str, Any], source: str = "OpenAI CLIP"
) -> dict:
    """OpenAI/open_clip-layout state dict -> alignjax params (scan=False layout).

    Raises:
      WeightFileError: a tensor is missing, left over, or has a shape the config rules out.
    """
    get = common.Consumer(sd, source, ignore=IGNORED)
    return get.convert(_params, model_config)


def _params(get: common.Consumer, model_config: Mapping[str, Any]) -> dict:
    img_cfg, txt_cfg = model_config["image"], model_config["text"]
    d = img_cfg["width"]
    img = {
        "embedding": {
            "kernel": common.conv_to_flax(get("visual.conv1.weight")),
            "bias": np.zeros((d,), np.float32),
        },
        "cls": get("visual.class_embedding", shape=(d,)).reshape(1, 1, d),
        "pos_embedding": get("visual.positional_embedding")[None],
        "ln_pre": common.layer_norm(get("visual.ln_pre.weight"), get("visual.ln_pre.bias")),
        "encoder": {
            f"block_{i}": _block(get, f"visual.transformer.resblocks.{i}.", img_cfg["num_heads"])
            for i in range(img_cfg["depth"])
        }
        | {
            "encoder_norm": common.layer_norm(
                get("visual.ln_post.weight"), get("visual.ln_post.bias")
            )
        },
        "head": {"kernel": get("visual.proj")},
    }
    txt = {
        "token_embedding": {"embedding": get("token_embedding.weight")},
        "pos_embedding": get("positional_embedding"),
        "encoder": {
            f"block_{i}": _block(get, f"transformer.resblocks.{i}.", txt_cfg["num_heads"])
            for i in range(txt_cfg["depth"])
        }
        | {"encoder_norm": common.layer_norm(get("ln_final.weight"), get("ln_final.bias"))},
        "head": {"kernel": get("text_projection")},
    }
    return {"img": img, "txt": txt, "log_scale": get("logit_scale").reshape(())}


def openai_preprocess(size: int) -> dict:
    """OpenAI CLIP: bicubic resize of the shortest side, center crop, OpenAI mean/std."""
    return dict(
        size=int(size),
        resize_mode="shortest",
        interpolation="bicubic",
        mean=list(common.OPENAI_MEAN),
        std=list(common.OPENAI_STD),
    )


def clip_tokenizer(context_length: int = 77, bpe_path: str = "") -> dict:
    return dict(
        name="clip_bpe", bpe_path=bpe_path, vocab_path="", context_length=context_length, pad="zero"
    )


def from_openai(path: str, *, bpe_path: str = "") -> Converted:
    """Converts an OpenAI CLIP ``.pt`` file (TorchScript archive or plain state dict;
    needs torch) or a ``.safetensors`` file with OpenAI's key names (no torch).

    Args:
      path: the checkpoint, e.g. ``ViT-B-32.pt`` from OpenAI's CDN.
      bpe_path: where the tokenizer's ``bpe_simple_vocab_16e6.txt.gz`` is; empty: found at
        tokenizer build time (installed open_clip/clip package, ``$ALIGNJAX_CLIP_BPE``).
    """
    if not os.path.isfile(path):
        raise common.WeightFileMissing(f"{path} is not a file (expected OpenAI's ViT-*.pt).")
    sd = common.read_state_dict(path)
    try:
        mc = infer_model_config(sd, quick_gelu=True)
    except KeyError as e:
        raise common.WeightFileError(
            f"{path}: no tensor {e.args[0]!r}: not an OpenAI/open_clip ViT CLIP state dict."
        ) from e
    params = params_from_openai_layout(sd, mc, source=f"OpenAI CLIP {os.path.basename(path)}")
    return Converted(
        model_config=mc,
        params=params,
        preprocess=openai_preprocess(image_size_of(sd)),
        tokenizer=clip_tokenizer(mc["text"]["context_length"], bpe_path),
    )
