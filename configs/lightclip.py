"""LightCLIP on the demo data: progressive softened labels, word->patch matching, MLM.

Nie et al., "LightCLIP: Learning Multi-Level Interaction for Lightweight Vision-Language
Models", arXiv:2312.00674 (2023; no public code).

  python -m alignjax.train --config configs/lightclip.py --workdir runs/lightclip

Baseline: `configs/demo.py:clip`. This config is that one (the demo model, plain
`synthetic:shapes` with one caption per image, optimizer, steps, evaluators) with only
`config.loss` changed; its first steps are plain CLIP.

Defaults and why (with no public code, none of these could be checked against an
implementation; each is a `config.loss` field): the softening weight grows linearly from 0
to alpha_max = 0.2 over the whole run (`ramp_steps = total_steps`, so the first steps are
plain CLIP); negatives share it uniformly (`neg_weighting='uniform'`); the relaxed bipartite
token loss (each word takes its best patch) has weight 1; the MLM head (one image-fused
cross-attention block after the text tower, discarded at inference) has weight 0.1 and
masks 15% of the words with the tokenizer's reserved id 2.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/demo.py:clip'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/lightclip.py takes no argument, got {arg!r}.')
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base().
    c.data.train = 'synthetic:shapes'  # One caption per image: LightCLIP reads nothing else.
    c.loss = loss_config(
        'lightclip', alpha_max=0.2, ramp_steps=c.total_steps, token_weight=1.0, mlm_weight=0.1
    )
    return c
