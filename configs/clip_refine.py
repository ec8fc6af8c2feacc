"""CLIP-Refine on the demo data: post-pre-training of a trained model towards a small gap.

Yamaguchi et al., "Post-pre-training for Modality Alignment in Vision-Language Foundation
Models", CVPR 2025. Starts from a trained run (its workdir, a checkpoint or an export, or
converted weights of the same architecture) given as the config argument, and trains both
towers with RaFA (raw features of each pair pulled to a shared random reference drawn from
N(0, I)) plus HyCD (KL to `alpha I + (1 - alpha) softmax(teacher logits)`, the teacher a
frozen copy of the starting model), without a contrastive term
(alignjax/objectives/clip_refine.py, alignjax/losses/refine.py):

  python -m alignjax.train --config configs/demo.py:clip --workdir runs/demo_clip
  python -m alignjax.train --config configs/clip_refine.py:runs/demo_clip \
    --workdir runs/demo_clip_refine

Baseline: `configs/clip_refine.py:finetune`, plain fine-tuning with the CLIP loss from the
same start with the same data, optimizer and steps (`configs/clip_refine.py:finetune,PATH`).

Recipe (the paper's, scaled to the demo): a small constant learning rate (the paper: AdamW
1e-6, weight decay 0.1, no schedule, batch 512, one epoch of COCO captions; here 1e-4 at
batch 128, 1/20 of the demo's peak 2e-3: chosen so that a few hundred steps move the tiny
model measurably, not tuned; experiments/clip_refine.py uses it), 200 steps: 25,600 captions,
each seen once (the shapes train split renders a new example per index), i.e. one epoch
of a small caption set. With a real caption set pass it and one epoch's steps, e.g.
`--config.data.train=tfds:coco_captions --config.total_steps=<examples / batch>`.
The model config must match the starting run's (here the demo's, configs/demo.py).

Without an argument the start is the placeholder `init_from.path` below (a run of
configs/demo.py:clip): training then stops with a one-line error naming it; the config
still dry-runs (`--dry_run` reads no weights).
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/clip_refine.py:finetune'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
START = '/path/to/demo_clip_workdir'  # Placeholder: pass the trained run as the argument.


def get_config(arg=None):
    mode, path = 'refine', START
    if arg:
        head, _, tail = str(arg).partition(',')
        if head == 'finetune':
            mode, path = 'finetune', tail or START
        elif head == 'refine':
            path = tail or START
        elif tail:
            raise ValueError(
                f"configs/clip_refine.py takes PATH, 'finetune', 'finetune,PATH' or "
                f"'refine,PATH'; got {arg!r}."
            )
        else:
            path = head
    c = load_config_file(DEMO, 'base')  # The demo's model, data, tokenizer, evaluators.
    c.init_from.path = path
    c.total_steps = 200
    c.log_every_steps = 20
    c.eval_every_steps = 0  # Evaluated at the end (and the start is the trained run).
    c.checkpoint_every_steps = 200
    c.optim.lr = 1e-4
    c.optim.schedule = 'constant'
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.1
    if mode == 'finetune':
        c.loss = loss_config('clip')
    else:
        c.loss = loss_config('clip_refine')
    return c
