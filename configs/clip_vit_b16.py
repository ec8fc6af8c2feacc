"""CLIP ViT-B/16 from scratch, open_clip's LAION-400M recipe (Cherti et al. 2023).

Launch on a TPU v4-256 slice (every host runs the same command; JAX detects the slice):

  gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
    "python -m alignjax.train --config configs/clip_vit_b16.py --workdir /mnt/shared/clip_b16"

Check it first on any CPU machine with `configs/clip_vit_b16.py:runlocal` (below).

Paths to set (placeholders; override on the command line, e.g.
`--config.tokenizer.bpe_path=/data/bpe_simple_vocab_16e6.txt.gz`):
* `data.train`: LAION-400M as img2dataset WebDataset shards (`wds:` spec, docs/DATA.md),
  224 px, CLIP normalisation.
* `tokenizer.bpe_path`: OpenAI's CLIP BPE vocabulary `bpe_simple_vocab_16e6.txt.gz` (open_clip
  ships it); context 77, EOT the largest id, as the `clip` text convention pools.
* `evals.imagenet.data`, `evals.coco.data`: ImageNet-1k zero-shot on the validation split of
  the TFDS `imagenet2012` dataset (CLIP's 1000 class names and 80 templates, built in) and
  COCO image<->text retrieval on the 5000-image Karpathy test split of TFDS `coco_captions`
  (5 captions per image), both prepared as ArrayRecord (add `?data_dir=/path/to/tfds`).

32 epochs of 407M samples at batch 32k = 397k steps. Expected: ImageNet-1k zero-shot acc1
about 67.1% (open_clip ViT-B-16 laion400m_e32).

Recipe: AdamW lr 5e-4, betas (0.9, 0.98), eps 1e-6, weight decay 0.2 (PyTorch/optax
convention), 10k warmup steps then cosine to 0, logit scale init 1/0.07 clamped to 100.

`:runlocal` keeps the recipe's conventions (class-token pooling, learned position embedding,
pre-LayerNorm, bias-free heads, causal text tower pooled at EOT, CLIP loss with the clamped
scale, CLIP normalisation) and shrinks the rest to what a fresh CPU machine has: a 2-layer
model at 32 px, batch 32, 20 steps, `synthetic:shapes` data, the `word_hash` tokenizer (its
EOS is the largest id, as CLIP BPE's), and the shapes data's zero-shot and retrieval tasks.
"""

from alignjax.config import base_config
from alignjax.objectives import loss_config

TRAIN_DATA = 'wds:gs://BUCKET/laion400m/{00000..41407}.tar'
BPE_PATH = '/path/to/bpe_simple_vocab_16e6.txt.gz'
IMAGENET = 'tfds:imagenet2012'
COCO = 'tfds:coco_captions'
ARGS = ('runlocal',)


def get_config(arg=None):
    if arg and arg not in ARGS:
        raise ValueError(
            f'configs/clip_vit_b16.py takes no argument or one of {ARGS}; got {arg!r}.'
        )
    c = base_config()
    c.total_steps = 397_000
    c.batch_size = 32_768
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 2_000
    c.mesh = dict(data=-1, fsdp=1, tensor=1)

    c.data.train = TRAIN_DATA
    c.data.image_size = 224
    c.data.normalize = 'clip'
    c.data.num_workers = 16

    c.tokenizer.name = 'clip_bpe'
    c.tokenizer.bpe_path = BPE_PATH
    c.tokenizer.context_length = 77

    m = c.model
    m.embed_dim = 512
    m.logit_scale_init = 1 / 0.07
    m.logit_bias_init = None
    m.quick_gelu = False
    m.dtype = 'bfloat16'
    m.image.variant = 'B/16'
    m.image.pool = 'tok'
    m.image.posemb = 'learn'
    m.image.pre_norm = True
    m.image.head = True
    m.image.head_bias = False
    m.text.width = 512
    m.text.depth = 12
    m.text.mlp_dim = 2048
    m.text.num_heads = 8
    m.text.vocab_size = 49_408
    m.text.context_length = 77
    m.text.convention = 'clip'
    m.text.head_bias = False

    c.loss = loss_config('clip')
    c.optim.lr = 5e-4
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
    c.optim.weight_decay = 0.2
    c.optim.schedule = 'warmup_cosine'
    c.optim.warmup_steps = 10_000
    c.optim.grad_clip_norm = 0.0  # open_clip's default: no clipping.
    c.optim.clamp_logit_scale = True

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

    if arg == 'runlocal':
        _runlocal(c)
    return c


def _runlocal(c):
    """Sizes, data, tokenizer and evaluators for a CPU; the conventions above stay."""
    c.total_steps, c.batch_size = 20, 32
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 5, 0, 10
    c.data.train, c.data.image_size, c.data.num_workers = 'synthetic:shapes', 32, 0
    c.tokenizer.name, c.tokenizer.vocab_size, c.tokenizer.context_length = 'word_hash', 4096, 16
    m = c.model
    m.embed_dim, m.dtype = 32, 'float32'
    m.image.variant, m.image.patch_size = None, 8
    for tower in (m.image, m.text):
        tower.width, tower.depth, tower.mlp_dim, tower.num_heads = 32, 2, 64, 2
    m.text.vocab_size, m.text.context_length = 4096, 16
    c.optim.warmup_steps = 1
    common = dict(data='synthetic:shapes', split='test', num_examples=64, batch_size=32)
    c.evals = dict(
        shapes=dict(type='zeroshot', **common), shapes_retrieval=dict(type='retrieval', **common)
    )
