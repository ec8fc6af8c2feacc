"""CoOp prompt learning (Zhou et al., IJCV 2022) on a trained demo model, 16 shots of shape.

  python -m alignjax.train --config configs/demo.py:clip --workdir runs/demo_clip
  python -m alignjax.train --config configs/coop.py:runs/demo_clip --workdir runs/coop

Starts from a trained run (its workdir, a checkpoint or an export of the demo's
architecture) given as the argument, freezes both towers and learns M = 4 context vectors
("a photo of a" at the start) for the eight shape classes (alignjax/objectives/coop.py):

* data: `fewshot:synthetic:shapes?label=shape&shots=16`: 16 training images per shape
  (128 in all; `k_shot_indices`, seed 0, drawn from the first 2000 of the train split),
  repeated and reshuffled each epoch by the grain pipeline, so a resumed run continues
  exactly;
* optimizer: Adam(W) at 2e-3 with cosine decay, no weight decay, 200 steps at batch 32
  (50 epochs of the 128 shots; CoOp: SGD 2e-3, 200 epochs at 16 shots, batch 32);
* evaluation: zero-shot shape accuracy on 1000 images of the val split, with the
  hand-crafted prompt (`zeroshot/shapes/acc1`) and with the learned one
  (`zeroshot/shapes_coop@coop/acc1`), and the few-shot baselines on the same shots
  (`fewshot/shapes_fewshot/16shot/{class_mean,tip_adapter,linear_probe}_acc1`).

Arguments: `PATH` (the start), or `PATH,k=K` for K shots (1, 2, 4, 8 or 16; the steps stay
200), `PATH,csc` for class-specific contexts, `PATH,random` for CoOp's random init, comma
separated in any order. Without a path the start is a placeholder: training stops with a
one-line error naming it; `--dry_run` still works (it reads no weights).
"""

import os

from alignjax.config import load_config_file
from alignjax.data.synthetic import SHAPES
from alignjax.objectives import loss_config

DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
START = '/path/to/demo_clip_workdir'  # Placeholder: pass the trained run as the argument.
TRAIN = 'fewshot:synthetic:shapes?label=shape&shots={k}&pool=2000'


def get_config(arg=None):
    path, shots, csc, random_init = START, 16, False, False
    for part in [p for p in str(arg or '').split(',') if p]:
        if part.startswith('k='):
            shots = int(part[2:])
        elif part == 'csc':
            csc = True
        elif part == 'random':
            random_init = True
        else:
            path = part
    c = load_config_file(DEMO, 'base')  # The demo's model, tokenizer and data settings.
    c.init_from.path = path
    c.total_steps = 200
    c.batch_size = 32
    c.log_every_steps = 20
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    c.data.train = TRAIN.format(k=shots)
    c.loss = loss_config(
        'coop',
        classnames=SHAPES,
        label_key='shape',
        n_ctx=4,
        ctx_init='' if random_init else 'a photo of a',
        class_specific=csc,
    )
    c.optim.freeze = ('(?!coop_context).*',)  # Both towers and the temperature.
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    common = dict(
        data='synthetic:shapes',
        split='val',
        num_examples=1000,
        batch_size=250,
        classnames=list(SHAPES),
        label_key='shape',
    )
    c.evals = dict(
        # The hand-crafted prompt: the phrase CoOp starts from.
        shapes=dict(type='zeroshot', templates=['a photo of a {}.'], **common),
        # CoOp's layout, the class name alone: its @coop metrics splice the learned context in.
        shapes_coop=dict(type='zeroshot', templates=['{}.'], **common),
        # The baselines at the same shots (seed 0 draws the training shots exactly).
        shapes_fewshot=dict(
            type='fewshot', templates=['a photo of a {}.'], train_split='train',
            pool_size=2000, shots=(shots,), seeds=(0,), **common,
        ),
    )  # fmt: skip
    return c
