"""Wukong reduced-token interaction on the demo data.

Gu et al., "Wukong: A 100 Million Large-scale Chinese Cross-modal Pre-training Benchmark",
NeurIPS 2022 Datasets and Benchmarks (arXiv:2202.06767). A learned TokenLearner-like layer
reduces the 64 image patch tokens to K = 12 before FILIP's token-wise similarity
(alignjax.objectives.wukong.TokenReduction; its parameters sit at `wukong_reduce/`).

  python -m alignjax.train --config configs/wukong.py --workdir runs/wukong

Baseline: `configs/filip.py`, the same token-wise loss (no label smoothing, dense) on all 64
patch tokens; this config differs from it only in `config.loss` (the reduction layer), on the
same plain `synthetic:shapes` data with one caption per image. Both start from
`configs/demo.py:base`, whose CLIP run is `configs/demo.py:clip`.

Defaults and why: K = 12 as Wukong's ViT-B/32 (49 patches), 8 groups in the grouped 1x1
convolutions. Wukong locks a pre-trained image tower (LiT); the demo has no pre-trained
tower, so the image tower trains here. With converted weights add
`--config.optim.freeze='("img/.*",)'` (the reduction layer stays trainable).
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/filip.py'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/wukong.py takes no argument, got {arg!r}.')
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base().
    c.data.train = 'synthetic:shapes'  # One caption per image: Wukong reads nothing else.
    c.loss = loss_config('wukong', num_tokens=12, groups=8)
    return c
