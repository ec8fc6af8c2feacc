"""LiT: a locked pre-trained ViT-B/16 image tower, a text tower trained from scratch.

Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning"; big_vision's
`lit_coco` recipe. Launch on a TPU v3-32 (or one 8-GPU host), with the pre-trained image
tower and the tokenizer model:

  python -m alignjax.train --config configs/lit_vit_b16.py --workdir /mnt/shared/lit_b16 \
    --config.init_from.path=/ckpt/vit_b16 --config.init_from.mapping='("img",)' \
    --config.tokenizer.model_path=/data/cc_en.32000/sentencepiece.model

Check it first on any CPU machine with `configs/lit_vit_b16.py:runlocal` (below).

The image tower: `init_from` is a group; `init_from.path` is an alignjax run, export or
converted folder holding a ViT-B/16 image tower in big_vision's layout (class-token pooling,
no pre-LayerNorm, tanh-GELU, LayerNorm eps 1e-6, no image head), e.g. a big_vision two-tower
`.npz` converted with `python -m alignjax.convert --from big_vision ... --out /ckpt/vit_b16`
(docs/PRETRAINED.md); `init_from.mapping=("img",)` (the config's default, given above for
clarity) loads only the parameters under `img/`, so the text tower and the logit scale start
fresh. The run writes `init_from.json` in the workdir: its `fresh` list must hold no `img/`
parameter (a shape or layout mismatch would leave part of the locked tower random).
Everything matching `img/.*` is frozen (`optim.freeze`): no gradient is computed through
the image tower, it gets no update and no optimizer state. The image tower has no
projection head (LiT-B16B_2, the better variant); the text head maps to its 768 width.

Data: COCO captions (TFDS `coco_captions`, 118k images x 5 captions) for the quick recipe,
or CC12M / LAION for the paper-scale one (`--config.data.train=wds:...`, docs/DATA.md).
224 px, [-1, 1] normalisation; SentencePiece tokenizer `c4_en` (a local copy of
gs://t5-data/vocabs/cc_en.32000/sentencepiece.model), context 16, sticky EOS padding for the
big_vision text convention (last-position pooling). Evaluation: ImageNet-1k zero-shot on the
validation split of TFDS `imagenet2012` (CLIP's class names and 80 templates, built in) and
COCO retrieval on the 5000-image Karpathy test split of TFDS `coco_captions`; add
`?data_dir=/path/to/tfds` to the specs when the datasets are not in the default TFDS folder.

Expected (big_vision lit_coco, AugReg ViT-B/16 tower, 5000 steps at batch 512): ImageNet
zero-shot about 50-55%, COCO retrieval I->T R@1 about 55%. Without pre-trained image
weights (e.g. on synthetic data) the locked random tower bounds accuracy far lower.

Recipe: Adam lr 1e-3; big_vision weight decay 1e-2, which is *not* multiplied by the lr,
so the optax value is 1e-2 / 1e-3 = 10.0 (the same 1% shrink per step at peak; see
alignjax/optim.py); cosine with 3% warmup, grad clip 1.0, temperature init 10, softmax
(CLIP) loss.

`:runlocal` keeps the recipe's conventions (the locked `img/.*` tower, class-token pooling
without an image head and without pre-LayerNorm, the big_vision text tower pooled at the last
position with sticky EOS padding, the CLIP loss without clamp, [-1, 1] normalisation) and
shrinks the rest to what a fresh CPU machine has: a 2-layer model at 32 px, batch 32, 20
steps, `synthetic:shapes` data, the `word_hash` tokenizer with `pad='eos'`, the shapes
data's zero-shot and retrieval tasks, and no `init_from` (there are no weights to load, so
the locked tower stays random: it checks the run, not the accuracy).
"""

from alignjax.config import base_config
from alignjax.objectives import loss_config

TRAIN_DATA = 'tfds:coco_captions'
IMAGE_TOWER = '/path/to/converted/vit_b16'  # init_from.path: see the docstring.
SPM_PATH = '/path/to/cc_en.32000/sentencepiece.model'
IMAGENET = 'tfds:imagenet2012'
COCO = 'tfds:coco_captions'
ARGS = ('runlocal',)


def get_config(arg=None):
    if arg and arg not in ARGS:
        raise ValueError(f'configs/lit_vit_b16.py takes no argument or one of {ARGS}; got {arg!r}.')
    c = base_config()
    c.total_steps = 5_000
    c.batch_size = 512
    c.log_every_steps = 50
    c.eval_every_steps = 1_000
    c.checkpoint_every_steps = 1_000
    c.init_from.path = IMAGE_TOWER
    c.init_from.mapping = ('img',)  # Only the image tower: 'img' is short for 'img=img'.

    c.data.train = TRAIN_DATA
    c.data.image_size = 224
    c.data.normalize = 'minus_one_one'
    c.data.num_workers = 8

    c.tokenizer.name = 'sentencepiece'
    c.tokenizer.model_path = SPM_PATH
    c.tokenizer.context_length = 16
    c.tokenizer.pad = 'eos'
    c.tokenizer.eos_mode = 'native'

    m = c.model
    m.embed_dim = 768
    m.logit_scale_init = 10.0
    m.logit_bias_init = None
    m.act = 'gelu_tanh'  # big_vision's towers (the locked image tower was trained with it).
    m.ln_eps = 1e-6
    m.image.variant = 'B/16'
    m.image.pool = 'tok'
    m.image.posemb = 'learn'
    m.image.pre_norm = False  # big_vision's ViT has no LayerNorm before the encoder.
    m.image.head = False
    m.text.variant = 'B'  # Width 768, depth 12, MLP 3072, 12 heads: no explicit sizes.
    m.text.width = m.text.depth = m.text.mlp_dim = m.text.num_heads = None
    m.text.vocab_size = 32_000
    m.text.context_length = 16
    m.text.convention = 'big_vision'
    m.text.pad_id = 1  # c4_en's EOS, which pads (sticky EOS).
    m.text.head = True

    c.loss = loss_config('clip')
    c.optim.lr = 1e-3
    c.optim.weight_decay = 10.0  # = big_vision wd 1e-2 / lr 1e-3.
    c.optim.schedule = 'warmup_cosine'
    c.optim.warmup_steps = 150
    c.optim.grad_clip_norm = 1.0
    c.optim.freeze = ('img/.*',)
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
    c.init_from.path = ''  # No pre-trained tower on a fresh machine.
    c.data.train, c.data.image_size, c.data.num_workers = 'synthetic:shapes', 32, 0
    c.tokenizer.name, c.tokenizer.vocab_size, c.tokenizer.context_length = 'word_hash', 4096, 16
    m = c.model
    m.embed_dim = 32
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
