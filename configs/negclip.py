"""NegCLIP on the demo data: each caption's hard negative joins the image->text softmax.

Yuksekgonul et al., "When and why vision-language models behave like bags-of-words, and
what to do about it?", ICLR 2023 (arXiv:2210.01936). The shapes dataset writes, per
example, the caption with its shape swapped (else another mentioned attribute), same
template and synonyms (`hard_negatives=true`; a swapped (shape, colour) pair is always a
training pair); the pipeline tokenises it in the workers
(alignjax.objectives.negclip.TokenizeNegative).

  python -m alignjax.train --config configs/negclip.py --workdir runs/negclip

Baseline: `configs/demo.py:clip`, the same model, optimizer, steps and evaluators trained
with CLIP on the same captions without negatives (plain `synthetic:shapes`); this config
changes `config.loss` and adds the negatives to the data (`hard_negatives=true`).

Loss (alignjax/losses/negclip.py): CLIP's symmetric InfoNCE where the image->text softmax
runs over the B captions and the B hard negatives; `train/loss_clip` logs the plain CLIP
part. The paper also mines hard negative images; here a batch of random examples serves.
With another source, name the field that holds the negative caption in
`--config.loss.neg_key` (a CSV/JSONL column).
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/demo.py:clip'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')


def get_config(arg=None):
    if arg:
        raise ValueError(f'configs/negclip.py takes no argument, got {arg!r}.')
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base().
    c.data.train = 'synthetic:shapes?hard_negatives=true'  # A negative caption per example.
    c.loss = loss_config('negclip')
    return c
