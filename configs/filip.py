"""FILIP: token-wise late interaction on the demo data (configs/demo.py, loss swapped).

Yao et al., "FILIP: Fine-grained Interactive Language-Image Pre-Training", ICLR 2022
(arXiv:2111.07783). Each image token takes its best-matching caption token (and vice versa);
the averaged maxima replace the global cosine in both directions of the InfoNCE loss
(alignjax.losses.tokenwise.filip_loss).

  python -m alignjax.train --config configs/filip.py --workdir runs/filip

Baseline: `configs/demo.py:clip`. This config is that one (the demo model, plain
`synthetic:shapes` with one caption per image, optimizer, steps, evaluators) with only
`config.loss` changed, so the two runs compare directly.

Defaults and why: no label smoothing (the Huawei reference uses 0.1, uniform over all
classes; `--config.loss.label_smoothing=0.1` for parity) so the result compares with demo
CLIP; padding excluded by a proper mask (`zero_pad_floor=False`; the reference zeroes pad
features, i.e. a similarity floor of 0); token selection off (keep ratios 1.0; the paper
reports keeping 25% of the tokens at scale, a setting not checked against released code);
`chunk_size=0` (dense): at the demo's batch of 128 the [B, B, 64, 16] interaction is 67 MB;
set e.g. `--config.loss.chunk_size=256` for large global batches (memory table in
docs/OBJECTIVES.md). The evaluators rank with the global embeddings (zimg, ztxt) and with
the token-wise similarity.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/demo.py:clip'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/filip.py takes no argument, got {arg!r}.')
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base().
    c.data.train = 'synthetic:shapes'  # One caption per image: FILIP reads nothing else.
    c.loss = loss_config('filip', chunk_size=0, label_smoothing=0.0)
    return c
