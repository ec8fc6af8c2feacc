"""DreamLIP on the demo data: K sub-captions from long captions, multi-positive loss.

Zheng et al., "DreamLIP: Language-Image Pre-training with Long Captions", ECCV 2024
(arXiv:2403.17007). The shapes dataset writes a four-sentence long caption per image
(`extra_captions=true`); the pipeline samples K = 3 of its sentences
(alignjax.objectives.dreamlip.SampleSubCaptions, tokenised in the workers).

  python -m alignjax.train --config configs/dreamlip.py --workdir runs/dreamlip

Baseline: `configs/demo.py:clip`, the same model, optimizer, steps and evaluators trained
with CLIP on the caption alone (plain `synthetic:shapes`); this config changes
`config.loss` and adds the long captions to the data (`extra_captions=true`).
`configs/demo.py` without an argument is the step between the two: the multi-positive loss
over 2 sentences, without the grouping loss.

Loss: multi-positive InfoNCE over the caption and its K sub-captions (reduces to CLIP when
K = 0) plus the sub-caption-specific grouping loss (min-max normalised text-to-patch
weights, threshold 0, its own learnable temperature initialised at 1/0.07, since the
released model leaves it unset). The released code's Circle loss is available with
`--config.loss.circle_weight=0.1`; the paper uses K = 6 sub-captions of MLLM captions, our
captions have four sentences.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/demo.py:clip'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/dreamlip.py takes no argument, got {arg!r}.')
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base().
    c.data.train = 'synthetic:shapes?extra_captions=true'  # The long captions to sample from.
    c.loss = loss_config('dreamlip', num_sub_captions=3, group_weight=1.0)
    return c
