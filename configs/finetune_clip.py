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

Check a mode first on any CPU machine with `configs/finetune_clip.py:runlocal` (LiT mode) or
`:full,runlocal` (below).

The folder's `model_config.json`, `tokenizer.json` and `preprocess.json` set the model
(exactly the converted architecture), the CLIP BPE tokenizer (context 77) and the image
size / normalisation; `config.init_from.path` points at its `params.safetensors`, so step 0
starts from the pre-trained weights (every parameter, both towers and the logit scale).

* `lit`: everything under `img/` is frozen (`optim.freeze`: no gradient, no update, no
  optimizer state); the text tower and the logit scale are tuned, lr 1e-4.
* `full`: both towers tuned with a small lr (1e-5), weight decay 0.1, 500 warmup steps:
  the usual full fine-tuning recipe for a pre-trained CLIP (e.g. WiSE-FT, CLIP-Refine).

Data and evaluation (placeholders where a path is needed; override on the command line):
`data.train` is TFDS `coco_captions` (train split, 5 captions per image, one drawn per step);
`evals.imagenet` is ImageNet-1k zero-shot on the validation split of TFDS `imagenet2012`
(CLIP's 1000 class names and 80 templates, built in), `evals.coco` COCO image<->text
retrieval on the 5000-image Karpathy test split of `coco_captions` (add
`?data_dir=/path/to/tfds` to the specs when the datasets are not in the default TFDS folder).

Without a folder the config keeps OpenAI ViT-B/32 shapes, no `init_from` and the CLIP BPE
tokenizer at the placeholder `tokenizer.bpe_path` (so that it loads anywhere, e.g. in the
config tests; set `--config.tokenizer.bpe_path=.../bpe_simple_vocab_16e6.txt.gz`); pass the
folder for real use. Expected results were not measured in alignjax yet (no released weights
or COCO on the development machine); published full fine-tunes of OpenAI ViT-B/32 on COCO
report text->image R@1 rising from about 30% zero-shot to roughly 40%, and LiT-style tuning
keeps the image embeddings (hence linear-probe / image-side numbers) unchanged by
construction.

`runlocal` (`:runlocal` = `:lit,runlocal`, or `:full,runlocal`) keeps the mode's recipe and
OpenAI CLIP's conventions (QuickGELU, LayerNorm eps 1e-5, class-token pooling with
pre-LayerNorm and bias-free heads, the causal text tower pooled at EOT, the clamped CLIP
loss, CLIP normalisation, the locked `img/.*` tower in `lit`) and shrinks the rest to what a
fresh CPU machine has: a 2-layer model at 32 px, batch 32, 20 steps, `synthetic:shapes`
data, the `word_hash` tokenizer (EOS the largest id, as CLIP BPE's), the shapes data's
zero-shot and retrieval tasks, and no pre-trained weights (it checks the run, not the
accuracy).
"""

import json
import os

from alignjax.config import base_config
from alignjax.objectives import loss_config

_MODES = ('lit', 'full')
TRAIN_DATA = 'tfds:coco_captions'
BPE_PATH = '/path/to/bpe_simple_vocab_16e6.txt.gz'  # Without a converted folder only.
IMAGENET = 'tfds:imagenet2012'
COCO = 'tfds:coco_captions'


def _read(folder, name):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise ValueError(
            f'{path} not found: pass a folder written by `python -m alignjax.convert` '
            '(params.safetensors, model_config.json, tokenizer.json, preprocess.json).'
        )
    with open(path) as f:
        return json.load(f)


def _normalize_name(pp):
    """The data pipeline's named normalisation matching the weights' mean/std."""
    mean = [round(m, 4) for m in pp['mean']]
    if mean == [0.4815, 0.4578, 0.4082]:
        return 'clip'
    if mean == [0.5, 0.5, 0.5] and [round(s, 4) for s in pp['std']] == [0.5, 0.5, 0.5]:
        return 'minus_one_one'
    raise ValueError(f"No data.normalize matches mean={pp['mean']} std={pp['std']}.")


def get_config(arg=None):
    mode, folder = 'lit', ''
    if arg:
        mode, _, folder = str(arg).partition(',')
    if mode == 'runlocal':
        mode, folder = 'lit', 'runlocal'
    if mode not in _MODES:
        raise ValueError(
            f'finetune_clip mode {mode!r} unknown; use one of {_MODES}, optionally followed by '
            f"',FOLDER' or ',runlocal' (or just 'runlocal')."
        )
    runlocal = folder == 'runlocal'
    if runlocal:
        folder = ''
    c = base_config()
    c.total_steps = 5_000
    c.batch_size = 256
    c.log_every_steps = 50
    c.eval_every_steps = 1_000
    c.checkpoint_every_steps = 1_000

    c.data.train = TRAIN_DATA
    c.data.image_size = 224
    c.data.normalize = 'clip'
    c.data.num_workers = 8

    m = c.model  # OpenAI ViT-B/32 shapes (replaced by the converted folder's config).
    m.embed_dim = 512
    m.quick_gelu = True
    m.ln_eps = 1e-5
    m.logit_scale_init = 100.0
    m.image.variant = 'B/32'
    m.image.pool, m.image.posemb, m.image.pre_norm = 'tok', 'learn', True
    m.image.head, m.image.head_bias = True, False
    m.text.width, m.text.depth, m.text.mlp_dim, m.text.num_heads = 512, 12, 2048, 8
    m.text.vocab_size, m.text.context_length, m.text.convention = 49_408, 77, 'clip'
    m.text.head, m.text.head_bias = True, False
    c.tokenizer.name = 'clip_bpe'
    c.tokenizer.bpe_path = BPE_PATH  # A converted folder's tokenizer.json replaces it.
    c.tokenizer.context_length = 77

    if folder:
        mc = _read(folder, 'model_config.json')
        c.model.image.variant = c.model.text.variant = None  # explicit sizes follow
        for k, v in mc.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    c.model[k][kk] = vv
            else:
                c.model[k] = v
        tok = _read(folder, 'tokenizer.json')
        for k in ('bpe_path', 'vocab_path', 'model_path'):
            if tok.get(k) and not os.path.isabs(tok[k]):
                tok[k] = os.path.join(folder, tok[k])
        for k, v in tok.items():
            c.tokenizer[k] = v
        pp = _read(folder, 'preprocess.json')
        c.data.image_size = pp['size']
        c.data.normalize = _normalize_name(pp)
        c.init_from.path = folder

    c.loss = loss_config('clip')
    c.optim.schedule = 'warmup_cosine'
    c.optim.grad_clip_norm = 1.0
    c.optim.clamp_logit_scale = True
    if mode == 'lit':
        c.optim.lr = 1e-4
        c.optim.weight_decay = 0.0
        c.optim.warmup_steps = 200
        c.optim.freeze = ('img/.*',)
    else:
        c.optim.lr = 1e-5
        c.optim.weight_decay = 0.1
        c.optim.warmup_steps = 500

    # ImageNet is large: do not keep its decoded shard in host memory between evaluations.
    c.evals.imagenet = dict(
        type='zeroshot',
        data=IMAGENET,
        split='validation',
        classnames='imagenet',
        label_key='label',
        batch_size=1024,
        cache=False,
    )
    c.evals.coco = dict(type='retrieval', data=COCO, split='test', max_captions=5, batch_size=1024)

    if runlocal:
        _runlocal(c)
    return c


def _runlocal(c):
    """Sizes, data, tokenizer and evaluators for a CPU; the conventions above stay."""
    c.total_steps, c.batch_size = 20, 32
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 5, 0, 10
    c.data.train, c.data.image_size, c.data.num_workers = 'synthetic:shapes', 32, 0
    c.tokenizer.name, c.tokenizer.vocab_size, c.tokenizer.context_length = 'word_hash', 4096, 16
    m = c.model
    m.embed_dim = 32
    m.image.variant, m.image.patch_size = None, 8
    for tower in (m.image, m.text):
        tower.width, tower.depth, tower.mlp_dim, tower.num_heads = 32, 2, 64, 2
    m.text.vocab_size, m.text.context_length = 4096, 16
    c.optim.warmup_steps = 1
    common = dict(data='synthetic:shapes', split='test', num_examples=64, batch_size=32)
    c.evals = dict(
        shapes=dict(type='zeroshot', **common), shapes_retrieval=dict(type='retrieval', **common)
    )
