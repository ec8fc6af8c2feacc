"""PyramidCLIP on the demo data: two views x two captions, softened negatives.

Gao et al., "PyramidCLIP: Hierarchical Feature Alignment for Vision-language Model
Pretraining", NeurIPS 2022 (arXiv:2204.14095). The pipeline makes a global view (90-100% of
the area) and a local view (50-100%) of each image (alignjax.objectives.pyramid.TwoViews);
the shapes dataset gives a short summary caption next to the original one
(`extra_captions=true`).

  python -m alignjax.train --config configs/pyramid.py --workdir runs/pyramid

Baseline: `configs/demo.py:clip`, the same model, optimizer, steps and evaluators trained
with CLIP on one view and the original caption (plain `synthetic:shapes`); this config
changes `config.loss` and adds the summaries to the data (`extra_captions=true`).

Loss: peer-level pairs global<->summary and local<->original, cross-level pairs
global<->original and local<->summary weighted lambda = 1, each a symmetric InfoNCE with
softened targets alpha = 0.2 (diag 1 - alpha, off-diagonal alpha / (N - 1)). The paper's
exact pairing, alpha and lambda could not be confirmed from released code, so all three are
config fields (`--config.loss.peer_pairs`, `cross_pairs`, `alpha`, `cross_weight`). The
ROI branch needs detector features the demo data do not have, so it is not used.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/demo.py:clip'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/pyramid.py takes no argument, got {arg!r}.')
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base().
    c.data.train = 'synthetic:shapes?extra_captions=true'  # The summary captions.
    c.loss = loss_config('pyramid', alpha=0.2, cross_weight=1.0)
    return c
