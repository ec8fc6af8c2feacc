"""Fine-tune a converted pre-trained CLIP: LiT-style (locked image tower) or full.

First convert released weights into an alignjax export (see docs/PRETRAINED.md):

  python -m alignjax.convert --from openai ViT-B-32.pt --out /ckpt/clip_b32 \
    --tokenizer-path bpe_simple_vocab_16e6.txt.gz
  # or: --from hf /ckpt/clip-vit-base-patch32 | --from open_clip /ckpt/laion_b32

Then launch, with the mode and the converted folder as the config argument:

  python -m alignjax.train --config configs/finetune_clip.py:lit,/ckpt/clip_b32 \
    --workdir /runs/clip_b32_lit
  python -m alignjax.train --config configs/finetune_clip.py:full,/ckpt/clip_b32 \
    --workdir /runs/clip_b32_full --config.data.train=tfds:coco_captions

The folder's `model_config.json`, `tokenizer.json` and `preprocess.json` set the model
(exactly the converted architecture), the CLIP BPE tokenizer (context 77) and the image
size / normalisation; `config.init_from.path` points at its `params.safetensors`, so step 0
starts from the pre-trained weights (every parameter, both towers and the logit scale).

* `lit`: everything under `img/` is frozen (`optim.freeze`: no gradient, no update, no
  optimizer state); the text tower and the logit scale are tuned, lr 1e-4.
* `full`: both towers tuned with a small lr (1e-5), weight decay 0.1, 500 warmup steps:
  the usual full fine-tuning recipe for a pre-trained CLIP (e.g. WiSE-FT, CLIP-Refine).

Without an argument the config keeps OpenAI ViT-B/32 shapes and no `init_from` (so that it
loads and trains anywhere, e.g. in the config tests); pass the folder for real use.
Expected results were not measured in alignjax yet (no released weights or COCO on the
development machine); published full fine-tunes of OpenAI ViT-B/32 on COCO report text->image
R@1 rising from about 30% zero-shot to roughly 40%, and LiT-style tuning keeps the image
embeddings (hence linear-probe / image-side numbers) unchanged by construction.
"""

import json
import os

from alignjax.config import base_config
from alignjax.objectives import loss_config

_MODES = ("lit", "full")


def _read(folder, name):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise ValueError(
            f"{path} not found: pass a folder written by `python -m alignjax.convert` "
            "(params.safetensors, model_config.json, tokenizer.json, preprocess.json)."
        )
    with open(path) as f:
        return json.load(f)


def _normalize_name(pp):
    """The data pipeline's named normalisation matching the weights' mean/std."""
    mean = [round(m, 4) for m in pp["mean"]]
    if mean == [0.4815, 0.4578, 0.4082]:
        return "clip"
    if mean == [0.5, 0.5, 0.5] and [round(s, 4) for s in pp["std"]] == [0.5, 0.5, 0.5]:
        return "minus_one_one"
    raise ValueError(f"No data.normalize matches mean={pp['mean']} std={pp['std']}.")


def get_config(arg=None):
    mode, folder = "lit", ""
    if arg:
        mode, _, folder = str(arg).partition(",")
    if mode not in _MODES:
        raise ValueError(f"finetune_clip mode {mode!r} unknown; use one of {_MODES}.")
    c = base_config()
    c.total_steps = 5_000
    c.batch_size = 256
    c.log_every_steps = 50
    c.eval_every_steps = 1_000
    c.checkpoint_every_steps = 1_000

    c.data.train = "tfds:coco_captions"
    c.data.image_size = 224
    c.data.normalize = "clip"
    c.data.num_workers = 8

    m = c.model  # OpenAI ViT-B/32 shapes (replaced by the converted folder's config).
    m.embed_dim = 512
    m.quick_gelu = True
    m.ln_eps = 1e-5
    m.logit_scale_init = 100.0
    m.image.variant = "B/32"
    m.image.pool, m.image.posemb, m.image.pre_norm = "tok", "learn", True
    m.image.head, m.image.head_bias = True, False
    m.text.width, m.text.depth, m.text.mlp_dim, m.text.num_heads = 512, 12, 2048, 8
    m.text.vocab_size, m.text.context_length, m.text.convention = 49_408, 77, "clip"
    m.text.head, m.text.head_bias = True, False
    c.tokenizer.name = "word_hash"  # stand-in until a converted folder gives clip_bpe
    c.tokenizer.vocab_size = 49_408
    c.tokenizer.context_length = 77

    if folder:
        mc = _read(folder, "model_config.json")
        c.model.image.variant = c.model.text.variant = None  # explicit sizes follow
        for k, v in mc.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    c.model[k][kk] = vv
            else:
                c.model[k] = v
        tok = _read(folder, "tokenizer.json")
        for k in ("bpe_path", "vocab_path", "model_path"):
            if tok.get(k) and not os.path.isabs(tok[k]):
                tok[k] = os.path.join(folder, tok[k])
        for k, v in tok.items():
            c.tokenizer[k] = v
        pp = _read(folder, "preprocess.json")
        c.data.image_size = pp["size"]
        c.data.normalize = _normalize_name(pp)
        c.init_from.path = folder

    c.loss = loss_config("clip")
    c.optim.schedule = "warmup_cosine"
    c.optim.grad_clip_norm = 1.0
    c.optim.clamp_logit_scale = True
    if mode == "lit":
        c.optim.lr = 1e-4
        c.optim.weight_decay = 0.0
        c.optim.warmup_steps = 200
        c.optim.freeze = ("img/.*",)
    else:
        c.optim.lr = 1e-5
        c.optim.weight_decay = 0.1
        c.optim.warmup_steps = 500
    return c
