"""SigLIP ViT-B/16 from scratch with the pairwise sigmoid loss (Zhai et al. 2023).

Launch on a TPU v4-256 slice (every host runs the same command):

  gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
    "python -m alignjax.train --config configs/siglip_vit_b16.py --workdir /mnt/shared/siglip_b16"

Check it first on any CPU machine with `configs/siglip_vit_b16.py:runlocal` (below).

Paths to set (placeholders; override on the command line, e.g.
`--config.tokenizer.model_path=/data/cc_en.32000/sentencepiece.model`):
* `data.train`: an image-text corpus of billions of pairs as WebDataset shards (`wds:` spec,
  docs/DATA.md; the paper uses WebLI, LAION-2B or DataComp-1B are the open substitutes),
  224 px, [-1, 1] normalisation.
* `tokenizer.model_path`: a local copy of big_vision's English SentencePiece model `c4_en`
  (gs://t5-data/vocabs/cc_en.32000/sentencepiece.model, 32k pieces, EOS id 1), context 64,
  no BOS, sticky EOS padding (`pad='eos'`): the big_vision text convention pools the last
  position, which is then always EOS.
* `evals.imagenet.data`, `evals.coco.data`: ImageNet-1k zero-shot on the validation split of
  the TFDS `imagenet2012` dataset (CLIP's 1000 class names and 80 templates, built in) and
  COCO image<->text retrieval on the 5000-image Karpathy test split of TFDS `coco_captions`
  (5 captions per image), both prepared as ArrayRecord (add `?data_dir=/path/to/tfds`).

Batch 32k; 9B examples seen = 275k steps. Expected: ImageNet-1k zero-shot acc1 about 73%
at 9B examples seen, about 76% for the released 40B-example weights (CLIP_benchmark:
ViT-B-16-SigLIP 76.04%); on LAION/DataComp a few points lower.

Recipe: Adam lr 1e-3 with big_vision weight decay 1e-4 -> optax weight_decay 0.1 (see
alignjax/optim.py), b2 0.95, 20k warmup steps then cosine; logit scale init 10 and bias
-10, no clamp. The loss is the ring (ppermute) implementation, so the loss's memory per
device is one b x b block.

`:runlocal` keeps the recipe's conventions (MAP pooling without an image head, the big_vision
text tower pooled at the last position with sticky EOS padding, the ring sigmoid loss with a
learned bias and no clamp, [-1, 1] normalisation) and shrinks the rest to what a fresh CPU
machine has: a 2-layer model at 32 px, batch 32, 20 steps, `synthetic:shapes` data, the
`word_hash` tokenizer with `pad='eos'`, and the shapes data's zero-shot and retrieval tasks.
"""

from alignjax.config import base_config
from alignjax.objectives import loss_config

TRAIN_DATA = 'wds:gs://BUCKET/datacomp1b/{00000000..00139999}.tar'
SPM_PATH = '/path/to/cc_en.32000/sentencepiece.model'
IMAGENET = 'tfds:imagenet2012'
COCO = 'tfds:coco_captions'
ARGS = ('runlocal',)


def get_config(arg=None):
    if arg and arg not in ARGS:
        raise ValueError(
            f'configs/siglip_vit_b16.py takes no argument or one of {ARGS}; got {arg!r}.'
        )
    c = base_config()
    c.total_steps = 275_000
    c.batch_size = 32_768
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 2_000
    c.mesh = dict(data=-1, fsdp=1, tensor=1)

    c.data.train = TRAIN_DATA
    c.data.image_size = 224
    c.data.normalize = 'minus_one_one'
    c.data.num_workers = 16

    c.tokenizer.name = 'sentencepiece'
    c.tokenizer.model_path = SPM_PATH
    c.tokenizer.context_length = 64
    c.tokenizer.pad = 'eos'
    c.tokenizer.eos_mode = 'native'

    m = c.model
    m.embed_dim = 768
    m.logit_scale_init = 10.0
    m.logit_bias_init = -10.0
    m.dtype = 'bfloat16'
    m.image.variant = 'B/16'
    m.image.pool = 'map'
    m.image.posemb = 'learn'
    m.image.head = False
    m.text.variant = 'B'  # Width 768, depth 12, MLP 3072, 12 heads: no explicit sizes.
    m.text.width = m.text.depth = m.text.mlp_dim = m.text.num_heads = None
    m.text.vocab_size = 32_000
    m.text.context_length = 64
    m.text.convention = 'big_vision'
    m.text.pad_id = 1  # c4_en's EOS, which pads (sticky EOS).
    m.text.head = True
    m.text.head_bias = True

    c.loss = loss_config('siglip', impl='ring')
    c.optim.lr = 1e-3
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.95, 1e-8
    c.optim.weight_decay = 0.1
    c.optim.schedule = 'warmup_cosine'
    c.optim.warmup_steps = 20_000
    c.optim.grad_clip_norm = 1.0
    c.optim.clamp_logit_scale = False

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
    m.text.variant = None
    for tower in (m.image, m.text):
        tower.width, tower.depth, tower.mlp_dim, tower.num_heads = 32, 2, 64, 2
    m.text.vocab_size, m.text.context_length = 4096, 16
    m.text.pad_id = 4095  # word_hash's EOS (its largest id), which pads with pad='eos'.
    c.optim.warmup_steps = 1
    common = dict(data='synthetic:shapes', split='test', num_examples=64, batch_size=32)
    c.evals = dict(
        shapes=dict(type='zeroshot', **common), shapes_retrieval=dict(type='retrieval', **common)
    )
