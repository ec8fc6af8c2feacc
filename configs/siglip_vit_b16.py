"""SigLIP ViT-B/16 from scratch with the pairwise sigmoid loss (Zhai et al. 2023).

Launch on a TPU v4-256 slice (every host runs the same command):

  gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
    "python -m alignjax.train --config configs/siglip_vit_b16.py --workdir gs://$BUCKET/siglip_b16"

Data: an image-text corpus of billions of pairs (the paper uses WebLI; LAION-2B or
DataComp-1B as WebDataset shards are the open substitutes), 224 px, SentencePiece
tokenizer (32k vocab, context 64, sticky EOS padding; big_vision text convention). The
hashed-word tokenizer here is a stand-in until a SentencePiece model path is set.
Batch 32k; 9B examples seen = 275k steps. Expected: ImageNet-1k zero-shot acc1 about 73%
at 9B examples seen, about 76% for the released 40B-example weights (CLIP_benchmark:
ViT-B-16-SigLIP 76.04%); on LAION/DataComp a few points lower.

Recipe: Adam lr 1e-3 with big_vision weight decay 1e-4 -> optax weight_decay 0.1 (see
alignjax/optim.py), b2 0.95, 20k warmup steps then cosine; logit scale init 10 and bias
-10, no clamp. The loss is the ring (ppermute) implementation, so the loss's memory per
device is one b x b block.
"""

from alignjax.config import base_config
from alignjax.objectives import loss_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.total_steps = 275_000
    c.batch_size = 32_768
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 2_000
    c.mesh = dict(data=-1, fsdp=1, tensor=1)

    c.data.train = 'wds:gs://BUCKET/datacomp1b/{00000000..00139999}.tar'
    c.data.image_size = 224
    c.data.normalize = 'minus_one_one'
    c.data.num_workers = 16

    c.tokenizer.name = 'word_hash'
    c.tokenizer.vocab_size = 32_000
    c.tokenizer.context_length = 64
    c.tokenizer.pad = 'eos'

    m = c.model
    m.embed_dim = 768
    m.logit_scale_init = 10.0
    m.logit_bias_init = -10.0
    m.dtype = 'bfloat16'
    m.image.variant = 'B/16'
    m.image.pool = 'map'
    m.image.posemb = 'learn'
    m.image.head = False
    m.text.variant = 'B'
    m.text.vocab_size = 32_000
    m.text.context_length = 64
    m.text.convention = 'big_vision'
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
    return c
