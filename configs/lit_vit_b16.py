"""LiT: a locked pre-trained ViT-B/16 image tower, a text tower trained from scratch.

Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning"; big_vision's
`lit_coco` recipe. Launch on a TPU v3-32 (or one 8-GPU host):

  python -m alignjax.train --config configs/lit_vit_b16.py --workdir gs://$BUCKET/lit_b16 \
    --config.init_from=/path/to/converted/vit_b16   # init_from: checkpoint-hardening work

Everything matching `img/.*` is frozen (`optim.freeze`): no gradient is computed through
the image tower, it gets no update and no optimizer state. The image tower has no
projection head (LiT-B16B_2, the better variant); the text head maps to its 768 width.

Data: COCO captions (TFDS `coco_captions`, 118k images x 5 captions) for the quick recipe,
or CC12M / LAION for the paper-scale one. 224 px, BERT/SentencePiece tokenizer, context 16.
Expected (big_vision lit_coco, AugReg ViT-B/16 tower, 5000 steps at batch 512): ImageNet
zero-shot about 50-55%, COCO retrieval I->T R@1 about 55%. Without pre-trained image
weights (e.g. on synthetic data) the locked random tower bounds accuracy far lower.

Recipe: Adam lr 1e-3; big_vision weight decay 1e-2, which is *not* multiplied by the lr,
so the optax value is 1e-2 / 1e-3 = 10.0 (the same 1% shrink per step at peak; see
alignjax/optim.py); cosine with 3% warmup, grad clip 1.0, temperature init 10, softmax
(CLIP) loss.
"""

from alignjax.config import base_config
from alignjax.objectives import loss_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.total_steps = 5_000
    c.batch_size = 512
    c.log_every_steps = 50
    c.eval_every_steps = 1_000
    c.checkpoint_every_steps = 1_000

    c.data.train = 'tfds:coco_captions'
    c.data.image_size = 224
    c.data.normalize = 'minus_one_one'
    c.data.num_workers = 8

    c.tokenizer.name = 'word_hash'
    c.tokenizer.vocab_size = 32_000
    c.tokenizer.context_length = 16
    c.tokenizer.pad = 'eos'

    m = c.model
    m.embed_dim = 768
    m.logit_scale_init = 10.0
    m.logit_bias_init = None
    m.image.variant = 'B/16'
    m.image.pool = 'tok'
    m.image.head = False
    m.text.variant = 'B'
    m.text.vocab_size = 32_000
    m.text.context_length = 16
    m.text.convention = 'big_vision'
    m.text.head = True

    c.loss = loss_config('clip')
    c.optim.lr = 1e-3
    c.optim.weight_decay = 10.0  # = big_vision wd 1e-2 / lr 1e-3.
    c.optim.schedule = 'warmup_cosine'
    c.optim.warmup_steps = 150
    c.optim.grad_clip_norm = 1.0
    c.optim.freeze = ('img/.*',)
    c.optim.clamp_logit_scale = False
    return c
