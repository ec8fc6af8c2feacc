"""PyramidCLIP on the demo data: two views x two captions, softened negatives.

Gao et al., "PyramidCLIP: Hierarchical Feature Alignment for Vision-language Model
Pretraining", NeurIPS 2022 (arXiv:2204.14095). The pipeline makes a global view (90-100% of
the area) and a local view (50-100%) of each image (method_transforms.TwoViews); the shapes
dataset gives a short summary caption next to the original one (`extra_captions=true`).

  python -m alignjax.train --config configs/pyramid.py --workdir runs/pyramid

Loss: peer-level pairs global<->summary and local<->original, cross-level pairs
global<->original and local<->summary weighted lambda = 1, each a symmetric InfoNCE with
softened targets alpha = 0.2 (diag 1 - alpha, off-diagonal alpha / (N - 1)). methods.md §5
flags the paper's exact pairing, alpha and lambda as unverified: all three are config fields
(`loss.pyramid.peer_pairs`, `cross_pairs`, `alpha`, `cross_weight`). The ROI branch needs
detector features the demo data do not have, so it is not used.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config


def _demo_config():
    """configs/demo.py's config: the same model, data, optimizer and evaluations."""
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py'))


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/pyramid.py takes no argument, got {arg!r}.')
    c = _demo_config()
    c.data.train = 'synthetic:shapes?extra_captions=true'
    c.loss = loss_config('pyramid', alpha=0.2, cross_weight=1.0)
    return c
