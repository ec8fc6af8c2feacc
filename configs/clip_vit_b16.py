"""CLIP ViT-B/16 from scratch, open_clip's LAION-400M recipe (Cherti et al. 2023).

Launch on a TPU v4-256 slice (every host runs the same command; JAX detects the slice):

  gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
    "python -m alignjax.train --config configs/clip_vit_b16.py --workdir gs://$BUCKET/clip_b16"

Data: LAION-400M as img2dataset WebDataset shards (`data.train`, the WebDataset reader
comes with the data-formats work; until then only `synthetic:shapes` is readable), 224 px,
CLIP BPE tokenizer with context 77 (from the weight-converter work; the hashed-word
tokenizer set here is a stand-in). 32 epochs of 407M samples at batch 32k = 397k steps.
Expected: ImageNet-1k zero-shot acc1 about 67.1% (open_clip ViT-B-16 laion400m_e32).

Recipe: AdamW lr 5e-4, betas (0.9, 0.98), eps 1e-6, weight decay 0.2 (PyTorch/optax
convention), 10k warmup steps then cosine to 0, logit scale init 1/0.07 clamped to 100.
"""

from alignjax.config import base_config
from alignjax.objectives import loss_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.total_steps = 397_000
    c.batch_size = 32_768
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 2_000
    c.mesh = dict(data=-1, fsdp=1, tensor=1)

    c.data.train = 'wds:gs://BUCKET/laion400m/{00000..41407}.tar'
    c.data.image_size = 224
    c.data.normalize = 'clip'
    c.data.num_workers = 16

    c.tokenizer.name = 'word_hash'
    c.tokenizer.vocab_size = 49_408
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
    return c
