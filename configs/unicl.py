"""UniCL with prefix conditioning (Saito et al., CVPR 2023): the demo model trained on shape
labels and captions together.

  python -m alignjax.train --config configs/unicl.py --workdir runs/unicl
  python -m alignjax.train --config configs/unicl.py:none --workdir runs/unicl_naive

Data: `mix:0.5*labels:synthetic:shapes?label=shape;0.5*synthetic:shapes`: half the
examples are classification data (each image's text is "a photo of a <shape>.", its class
the shape), half are the dataset's captions. Loss: UniCL's label-equality targets
(alignjax/objectives/unicl.py): images of one shape are positives of each other's prompts;
a caption is the positive of its own image only.

Text prefix (the argument): `prepend` (default: a learned embedding per data type before
the tokens), `replace_sos` (it replaces the SOS embedding), or `none` (naive mixing, the
baseline). The evaluators are the demo's (held-out (shape, colour) pairs of the test
split); with a prefix they also score with each prefix: `zeroshot/shapes_*@caption/acc1`
(caption mode, the paper's choice for zero-shot transfer) and `...@classification/...`.

Baseline: `configs/demo.py:clip`, the same model, optimizer, steps and evaluators trained
with CLIP on the captions alone; the baseline for the prefix is this config's `none`
(experiments/unicl.py compares them).
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
MIX = 'mix:0.5*labels:synthetic:shapes?label=shape;0.5*synthetic:shapes'
PREFIXES = ('prepend', 'replace_sos', 'none')
BASELINE = 'configs/demo.py:clip'


def get_config(arg=None):
    prefix = arg or 'prepend'
    if prefix not in PREFIXES:
        raise ValueError(f'configs/unicl.py takes one of {PREFIXES}; got {arg!r}.')
    c = load_config_file(DEMO, 'base')
    c.data.train = MIX
    c.loss = loss_config('unicl', prefix=prefix)
    return c
