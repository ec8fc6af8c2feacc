"""CLIM on the demo data: mosaics of batch images as pseudo region-caption pairs.

Wu et al., "CLIM: Contrastive Language-Image Mosaic for Region Representation", AAAI 2024
(arXiv:2312.11376). Half the batch (64 images) is tiled 2x2 into 16 mosaics at the training
size; each tile's feature is pooled from the mosaic's patch-token grid (here a 4x4 block of
the 8x8 grid) and contrasted with its image's caption, together with the 64 single images.

  python -m alignjax.train --config configs/clim.py --workdir runs/clim

Baseline: `configs/demo.py:clip`. This config is that one (the demo model, plain
`synthetic:shapes` with one caption per image, optimizer, steps, evaluators) with only
`config.loss` changed.

Defaults and why: grid 2 (CLIM mixes 2x2, 3x3 and 4x4 at 1024 px; 48 px images keep 2x2
readable, and 48 / 3 is not a whole number of 6 px patches); the text tower trains
(`freeze_text=False`): CLIM fine-tunes a pre-trained CLIP with the text tower frozen, the
demo starts from scratch. Gradient accumulation is refused (mosaics mix examples).
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/demo.py:clip'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/clim.py takes no argument, got {arg!r}.')
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base().
    c.data.train = 'synthetic:shapes'  # One caption per image: CLIM reads nothing else.
    c.loss = loss_config('clim', grid=2, num_mosaics=0, freeze_text=False)
    return c
