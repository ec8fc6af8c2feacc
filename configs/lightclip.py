"""LightCLIP on the demo data: progressive softened labels, word->patch matching, MLM.

Nie et al., "LightCLIP: Learning Multi-Level Interaction for Lightweight Vision-Language
Models", arXiv:2312.00674 (2023; no public code).

  python -m alignjax.train --config configs/lightclip.py --workdir runs/lightclip

Defaults and why (methods.md §7 flags every one as unverified): the softening weight grows
linearly from 0 to alpha_max = 0.2 over the whole run (`ramp_steps = total_steps`, so the
first steps are plain CLIP); negatives share it uniformly (`neg_weighting='uniform'`); the
relaxed bipartite token loss (each word takes its best patch) has weight 1; the MLM head
(one image-fused cross-attention block after the text tower, discarded at inference) has
weight 0.1 and masks 15% of the words with the tokenizer's reserved id 2.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config


def _demo_config():
    """configs/demo.py's config: the same model, data, optimizer and evaluations."""
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py'))


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/lightclip.py takes no argument, got {arg!r}.')
    c = _demo_config()
    c.loss = loss_config(
        'lightclip', alpha_max=0.2, ramp_steps=c.total_steps, token_weight=1.0, mlm_weight=0.1
    )
    return c
