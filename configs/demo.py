"""The main job: a small CLIP trained on the embedded procedural shapes dataset, on CPU.

  python -m alignjax.train --config configs/demo.py --workdir runs/demo

Data: `synthetic:shapes` (alignjax.data.synthetic): 32 px renderings of objects with a
shape, colour, size and position, and captions built from templates and synonyms. Some
(shape, colour) pairs never appear in training; the evaluators use only those.

Expected (2-core CPU, about 8-9 minutes including compilation and evaluation): zero-shot
acc1 >= 0.9 on held-out combinations for shape and colour, retrieval recall@1 well above
chance; see README.md for the figures of the last measured run.

`--config configs/demo.py:siglip` trains the same model with the SigLIP loss.
"""

from alignjax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.seed = 0
    c.total_steps = 600
    c.batch_size = 128
    c.log_every_steps = 25
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200

    c.data.train = 'synthetic:shapes'
    c.data.image_size = 32
    c.data.num_workers = 0

    c.tokenizer.name = 'word_hash'
    c.tokenizer.vocab_size = 1024
    c.tokenizer.context_length = 16

    m = c.model
    m.embed_dim = 64
    m.image.variant = None
    m.image.patch_size = 4
    m.image.width = 96
    m.image.depth = 3
    m.image.mlp_dim = 384
    m.image.num_heads = 4
    m.image.pool = 'gap'
    m.image.posemb = 'learn'
    m.text.width = 96
    m.text.depth = 2
    m.text.mlp_dim = 384
    m.text.num_heads = 4
    m.text.vocab_size = 1024
    m.text.context_length = 16
    m.text.convention = 'clip'

    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.05

    if arg == 'siglip':
        c.loss.name = 'siglip'
        m.logit_scale_init = 10.0
        m.logit_bias_init = -10.0
        c.optim.clamp_logit_scale = False
    elif arg:
        raise ValueError(f"configs/demo.py takes no argument or 'siglip', got {arg!r}.")

    common = dict(data='synthetic:shapes', split='test', num_examples=1000, batch_size=250)
    c.evals.shapes = dict(type='zeroshot', **common)
    c.evals.shapes_retrieval = dict(type='retrieval', **common)
    return c
