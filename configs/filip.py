"""FILIP: token-wise late interaction on the demo data (configs/demo.py, loss swapped).

Yao et al., "FILIP: Fine-grained Interactive Language-Image Pre-Training", ICLR 2022
(arXiv:2111.07783). Each image token takes its best-matching caption token (and vice versa);
the averaged maxima replace the global cosine in both directions of the InfoNCE loss
(alignjax.losses.tokenwise.filip_loss).

  python -m alignjax.train --config configs/filip.py --workdir runs/filip

Defaults and why: no label smoothing (the Huawei reference uses 0.1, uniform over all
classes; `--config.loss.filip.label_smoothing=0.1` for parity) so the result compares with
demo CLIP; padding excluded by a proper mask (`zero_pad_floor=False`; the reference zeroes pad
features, i.e. a similarity floor of 0); token selection off (keep ratios 1.0; the paper
keeps 25% at scale, flagged unverified in methods.md §4); `chunk_size=0` (dense): at the demo's
batch of 128 the [B, B, 64, 16] interaction is 67 MB; set e.g. `chunk_size=256` for large
global batches (memory table in docs/OBJECTIVES.md). The global embeddings (zimg, ztxt) are
still used by the zero-shot and retrieval evaluators.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config


def _demo_config():
    """configs/demo.py's config: the same model, data, optimizer and evaluations."""
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py'))


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/filip.py takes no argument, got {arg!r}.')
    c = _demo_config()
    c.loss = loss_config('filip', chunk_size=0, label_smoothing=0.0)
    return c
