"""A tiny CLIP for trainer tests: seconds per run on CPU.

python -m alignjax.train --config tests/tiny_config.py --workdir /tmp/x
python -m alignjax.train --config tests/tiny_config.py:siglip --workdir /tmp/x
"""

import numpy as np

from alignjax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.total_steps = 20
    c.batch_size = 16
    c.log_every_steps = 1
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 10
    c.log.pictures = False  # Drawing costs seconds per evaluation; tests/test_report.py draws.
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data.image_size = 16
    c.tokenizer.vocab_size = 256
    c.tokenizer.context_length = 8
    m = c.model
    m.embed_dim = 16
    m.image.variant = None
    m.image.patch_size = 4
    m.image.width = 32
    m.image.depth = 1
    m.image.mlp_dim = 64
    m.image.num_heads = 2
    m.image.pool = 'gap'
    m.text.width = 32
    m.text.depth = 1
    m.text.mlp_dim = 64
    m.text.num_heads = 2
    m.text.vocab_size = 256
    m.text.context_length = 8
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    if arg == 'siglip':
        c.loss.name = 'siglip'
        m.logit_scale_init, m.logit_bias_init = 10.0, -10.0
        c.optim.clamp_logit_scale = False
    return c


def random_batch(seed: int) -> dict:
    """A host batch for this config's defaults: 16 random 16 px images and token rows."""
    rng = np.random.default_rng(seed)
    return {
        'image': rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
        'tokens': rng.integers(1, 255, size=(16, 8)).astype(np.int32),
    }

