"""CLIP + UNITER word-region alignment (IPOT optimal transport) on the demo data.

Chen et al., "UNITER: UNiversal Image-TExt Representation Learning", ECCV 2020
(arXiv:1909.11740); IPOT: Xie et al. 2018. Here the alignment is an auxiliary loss of a
two-tower model: the OT distance between a caption's tokens and its image's patch tokens
(positives) minus that to the next caption in the batch (negatives).

  python -m alignjax.train --config configs/uniter.py --workdir runs/uniter

Baseline: `configs/demo.py:clip`. This config is that one (the demo model, plain
`synthetic:shapes` with one caption per image, optimizer, steps, evaluators) with only
`config.loss` changed: the same CLIP loss plus the alignment term.

Defaults as in UNITER: weight 0.1, beta 0.5, 50 IPOT iterations with 1 inner step, plan
without gradient. UNITER applies WRA to the outputs of its single-stream transformer on ITM
pairs; a two-tower model has no joint encoder, so the towers' token features stand in.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/demo.py:clip'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/uniter.py takes no argument, got {arg!r}.')
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base().
    c.data.train = 'synthetic:shapes'  # One caption per image: UNITER's term reads no more.
    c.loss = loss_config('uniter', weight=0.1)
    return c
