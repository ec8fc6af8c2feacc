"""big_vision two-tower checkpoints (SigLIP, SigLIP 2, LiT) in ``.npz`` layout -> alignjax.

big_vision saves a flattened parameter tree: one ``.npz`` entry per leaf, named by its path
joined with ``/`` (optionally under ``params/`` or ``opt/target/``). The two-tower model
(``big_vision/models/proj/image_text/two_towers.py``) holds ``img`` (``models/vit.py``),
``txt`` (``models/proj/image_text/text_transformer.py``), the log-temperature ``t`` [1] and,
for SigLIP, the bias ``b`` [1]. Mapping (flax layouts are the same on both sides, so
kernels copy unchanged):

===============================================  =========================================
big_vision                                       alignjax
===============================================  =========================================
img/embedding (conv, with bias)                  img/embedding
img/pos_embedding [1,N,D]                        img/pos_embedding [1,N,D] (tok: [1,N+1,D],
                                                 zero row for the class token)
img/cls [1,1,D] (pool_type='tok')                img/cls
img/Transformer/encoderblock_i (or the scanned   img/encoder/block_i
``encoderblock`` with a leading [depth] axis)
  LayerNorm_0 / LayerNorm_1                        ln_attn / ln_mlp
  MultiHeadDotProductAttention_0/{q,k,v,out}       attn/{query,key,value,out}
  MlpBlock_0/Dense_0 / Dense_1                     mlp/fc1 / fc2
img/Transformer/encoder_norm                     img/encoder/encoder_norm
img/MAPHead_0/{probe, MultiHeadDot..._0,         img/map_head/{probe, attn, ln, mlp}
  LayerNorm_0, MlpBlock_0}
img/head, txt/head (Dense with bias)             img/head, txt/head (head_bias=True)
txt/Embed_0/embedding [V,D]                      txt/token_embedding/embedding
txt/pos_embedding [1,L,D]                        txt/pos_embedding [L,D]
txt/Encoder_0/...                                txt/encoder/...
t [1], b [1]                                     log_scale [], logit_bias []
===============================================  =========================================

Semantics carried by the returned model config: tanh-approximate GELU (flax ``nn.gelu``),
LayerNorm eps 1e-6, no ``ln_pre``, text ``convention='big_vision'`` (no mask, last-token
pooling with sticky EOS padding). SigLIP's tokenizer settings: SentencePiece with the
model's own EOS, ``pad='eos'`` (big_vision ``eos='sticky'``), no BOS, context = the text
position-embedding length; images squashed (no crop) to the model size, bilinear, scaled
to [-1, 1].

SigLIP 2's fixed-resolution ``.npz`` files (``siglip2_b16_224.npz``, ...) have this layout
too; only the vocabulary (Gemma's, 256k ids) and so the tokenizer differ. A 256k text
embedding selects SigLIP 2's text settings: lower-cased text (as big_vision's demo and
transformers' ``Siglip2Tokenizer``), no BOS, sticky EOS, context 64 (the position embedding).
The NaFlex ``.npz`` files (``naflex_vit.py``, variable patch grids) are not converted.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from alignjax.interop import common
from alignjax.interop.common import Converted


def load_npz(path: str) -> dict:
    """big_vision ``.npz`` -> nested dict of arrays (``params/`` / ``opt/target/`` removed;
    bfloat16 stored as raw 2-byte void is viewed back as bfloat16).

    Raises:
      WeightFileError: not an npz, damaged, or holding pickled objects (never unpickled).
    """
    flat = common.read_npz(path)
    for k, v in flat.items():
        if v.dtype.kind == "V" and v.dtype.itemsize == 2:
            flat[k] = v.view(ml_dtypes.bfloat16)
    tree = common.unflatten(flat)
    if "params" in tree:
        tree = tree["params"]
    elif "opt" in tree:
        tree = tree["opt"]["target"]
    return tree


def _blocks(enc: Mapping[str, Any]) -> list[dict]:
    """Per-layer subtrees of a big_vision Encoder (unrolled or scanned)."""
    if "encoderblock" in enc:  # scan=True: leaves have a leading [depth] axis
        flat = common.flatten(enc["encoderblock"])
        depth = next(iter(flat.values())).shape[0]
        return [common.unflatten({k: v[i] for k, v in flat.items()}) for i in range(depth)]
    n = sum(1 for k in enc if k.startswith("encoderblock_"))
    return [enc[f"encoderblock_{i}"] for i in range(n)]


def _attn(a: Mapping[str, Any]) -> dict:
    return {
        alj: {"kernel": a[bv]["kernel"], "bias": a[bv]["bias"]}
        for alj, bv in (("query", "query"), ("key", "key"), ("value", "value"), ("out", "out"))
    }


def _mlp(m: Mapping[str, Any]) -> dict:
    return {"fc1": dict(m["Dense_0"]), "fc2": dict(m["Dense_1"])}


def _ln(p: Mapping[str, Any]) -> dict:
    return {"scale": p["scale"], "bias": p["bias"]}


def _encoder(enc: Mapping[str, Any]) -> tuple[dict, int, int, int]:
    blocks = _blocks(enc)
    out = {}
    for i, b in enumerate(blocks):
        out[f"block_{i}"] = {
            "ln_attn": _ln(b["LayerNorm_0"]),
            "attn": _attn(b["MultiHeadDotProductAttention_0"]),
            "ln_mlp": _ln(b["LayerNorm_1"]),
            "mlp": _mlp(b["MlpBlock_0"]),
        }
    out["encoder_norm"] = _ln(enc["encoder_norm"])
    b0 = blocks[0]
    heads = b0["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape[1]
    mlp = b0["MlpBlock_0"]["Dense_0"]["kernel"].shape[1]
    return out, len(blocks), int(heads), int(mlp)


def convert_tree(tree: Mapping[str, Any]) -> tuple[dict, dict]:
    """big_vision two-tower param tree -> (alignjax model config, params)."""
    for k in ("img", "txt"):
        if k not in tree:
            raise ValueError(
                f"Not a big_vision two-tower checkpoint: no {k!r} subtree (top level has "
                f"{sorted(tree)}). Expected SigLIP/LiT npz files."
            )
    bi, bt = tree["img"], tree["txt"]
    kern = np.asarray(bi["embedding"]["kernel"])
    patch, width = int(kern.shape[0]), int(kern.shape[-1])
    pool = "map" if "MAPHead_0" in bi else ("tok" if "cls" in bi else "gap")
    if "pos_embedding" not in bi:
        raise ValueError("Image tower without a learned pos_embedding (sincos2d) is not mapped.")
    if "pre_logits" in bi:
        raise ValueError("big_vision ViT with a pre_logits (rep_size) layer is not supported.")
    enc, depth, heads, mlp = _encoder(bi["Transformer"])
    pe = np.asarray(bi["pos_embedding"], np.float32)
    img: dict[str, Any] = {"embedding": dict(bi["embedding"]), "encoder": enc}
    if pool == "tok":
        img["cls"] = bi["cls"]
        # big_vision adds the posemb before prepending cls: cls gets a zero row.
        pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
    img["pos_embedding"] = pe
    if pool == "map":
        m = bi["MAPHead_0"]
        img["map_head"] = {
            "probe": m["probe"],
            "attn": _attn(m["MultiHeadDotProductAttention_0"]),
            "ln": _ln(m["LayerNorm_0"]),
            "mlp": _mlp(m["MlpBlock_0"]),
        }
    img_head = "head" in bi
    if img_head:
        img["head"] = dict(bi["head"])

    tenc, tdepth, theads, tmlp = _encoder(bt["Encoder_0"])
    emb = np.asarray(bt["Embed_0"]["embedding"])
    tpe = np.asarray(bt["pos_embedding"])
    if "pos_embedding" in bt["Encoder_0"]:
        tpe = tpe + bt["Encoder_0"]["pos_embedding"]  # old checkpoints, see big_vision load()
    txt: dict[str, Any] = {
        "token_embedding": {"embedding": emb},
        "pos_embedding": tpe.reshape(tpe.shape[-2], tpe.shape[-1]),
        "encoder": tenc,
    }
    txt_head = "head" in bt
    if txt_head:
        txt["head"] = dict(bt["head"])
    embed_dim = int(np.shape(bi["head"]["kernel"])[-1]) if img_head else width
    params: dict[str, Any] = {
        "img": img,
        "txt": txt,
        "log_scale": np.asarray(tree["t"], np.float32).reshape(()),
    }
    has_bias = "b" in tree
    if has_bias:
        params["logit_bias"] = np.asarray(tree["b"], np.float32).reshape(())
    mc = dict(
        embed_dim=embed_dim,
        act="gelu_tanh",
        ln_eps=1e-6,
        logit_scale_init=float(np.exp(np.asarray(tree["t"], np.float64).reshape(()))),
        logit_bias_init=float(np.asarray(tree["b"]).reshape(())) if has_bias else None,
        image=dict(
            variant=None,
            width=width,
            depth=depth,
            mlp_dim=mlp,
            num_heads=heads,
            patch_size=patch,
            posemb="learn",
            pool=pool,
            pre_norm=False,
            head=img_head,
            head_bias=True,
        ),
        text=dict(
            variant=None,
            width=int(emb.shape[1]),
            depth=tdepth,
            mlp_dim=tmlp,
            num_heads=theads,
            vocab_size=int(emb.shape[0]),
            context_length=int(txt["pos_embedding"].shape[0]),
            convention="big_vision",
            pad_id=1,  # sticky EOS padding with the c4/T5 SentencePiece EOS id (1)
            head=txt_head,
            head_bias=True,
        ),
    )
    return mc, common.to_f32(params)


def from_big_vision(
    path: str, *, tokenizer_path: str | None = None, image_size: int | None = None
) -> Converted:
    """Converts a big_vision SigLIP/LiT ``.npz`` checkpoint.

    Args:
      path: the ``.npz`` file (e.g. ``webli_en_b16_224_63724782.npz``).
      tokenizer_path: the SentencePiece ``.model`` of the text tower (SigLIP English:
        big_vision's ``c4_en`` = ``gs://t5-data/vocabs/cc_en.32000/sentencepiece.model``;
        multilingual: the 250k ``mc4`` model; SigLIP 2: the Gemma tokenizer), or a Hugging
        Face ``tokenizer.json`` (e.g. from a ``google/siglip2-*`` folder). Default: a single
        ``*.model`` next to the npz.
      image_size: input size; default ``sqrt(N) * patch`` from the position embedding.
    """
    tree = load_npz(path)
    try:
        mc, params = convert_tree(tree)
    except (KeyError, TypeError, IndexError) as e:
        # A subtree or leaf the two-tower layout has is absent, or a leaf is where a
        # subtree should be: another model, or a file saved from a different codebase.
        what = e.args[0] if isinstance(e, KeyError) and e.args else common.short_reason(e)
        raise common.WeightFileError(
            f"{path}: not a big_vision SigLIP/LiT two-tower checkpoint ({what!r} is missing or "
            "misplaced in its parameter tree)."
        ) from e
    except common.WeightFileError:
        raise
    except ValueError as e:  # convert_tree's own messages, numpy reshapes: name the file
        raise common.WeightFileError(f"{path}: {common.short_reason(e, 300)}") from e
    n = params["img"]["pos_embedding"].shape[1] - (mc["image"]["pool"] == "tok")
    size = image_size or int(round(np.sqrt(n))) * mc["image"]["patch_size"]
    if tokenizer_path is None:
        found = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)), "*.model")))
        tokenizer_path = found[0] if len(found) == 1 else ""
    # SigLIP 2 (Gemma's 256k vocabulary) was trained on lower-cased text (big_vision's demo
    # runs `lower` before `tok`); its tokenizer may also be given as a tokenizer.json.
    siglip2 = mc["text"]["vocab_size"] == common.GEMMA_VOCAB
    return Converted(
        model_config=mc,
        params=params,
        preprocess=dict(
            size=size, resize_mode="squash", interpolation="bilinear", mean=[0.5] * 3, std=[0.5] * 3
        ),
        tokenizer=dict(
            name=common.sentencepiece_or_hf(tokenizer_path),
            model_path=tokenizer_path,
            context_length=mc["text"]["context_length"],
            pad="eos",
            eos_mode="native",
            add_bos=False,
            lower=siglip2,
        ),
    )
