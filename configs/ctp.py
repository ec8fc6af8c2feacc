"""CTP continual pre-training on the demo data: four tasks, each bringing two new shapes.

Zhu et al., "CTP: Towards Vision-Language Continual Pretraining via Compatible Momentum
Contrast and Topology Preservation", ICCV 2023 (arXiv:2308.07146). The task sequence
(`get_tasks`) splits the shapes data by shape: circle+square, then triangle+star, then
cross+diamond, then ring+crescent (every colour in every task), 275 steps each (the demo's
1100 in all). Each task is scored after every task by zero-shot shape classification over
all eight shapes on its own held-out images (split 'val', only its shapes):

  python -m alignjax.continual --config configs/ctp.py --workdir runs/ctp
  python -m alignjax.continual --config configs/ctp.py:clip --workdir runs/ctp_clip

The first trains CTP (alignjax.objectives.ctp), the second the same sequence with the CLIP
loss (sequential fine-tuning, the baseline); both write DIR/continual.json (the accuracy
matrix, average accuracy, average forgetting; alignjax/continual.py). One task on its own
(the first, on all shapes) is an ordinary trainer run:

  python -m alignjax.train --config configs/ctp.py --workdir runs/ctp_task0

Baseline: `configs/demo.py:clip`, the same model, optimizer, steps and evaluators; this
config changes `config.loss` only (the task sequence sets each task's data, steps and
evaluators). CTP's settings: fixed tau = 0.07, a queue of 1024 momentum features per
modality (8 batches), momentum 0.995 (first task) and 0.9 (compatible, later tasks), all
loss weights 1; the paper's MLM branch is left out (the model has none).
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/demo.py:clip'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
ARGS = ('clip',)

#: The shapes each task brings, in order.
TASK_SHAPES = (('circle', 'square'), ('triangle', 'star'), ('cross', 'diamond'), ('ring', 'crescent'))
STEPS_PER_TASK = 275


def get_config(arg=None):
    if arg not in (None, *ARGS):
        raise ValueError(f'configs/ctp.py takes no argument or one of {ARGS}; got {arg!r}.')
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base(), with CLIP's loss.
    if arg != 'clip':
        c.loss = loss_config('ctp', queue_size=1024)
    return c


def shapes_task(shapes, steps, num_eval=500, eval_batch=250):
    """One task: training data of `shapes`, zero-shot shape accuracy on their 'val' images."""
    spec = 'synthetic:shapes?shapes=' + ','.join(shapes)
    return dict(
        train=spec,
        eval=dict(
            type='zeroshot', data=spec, split='val', num_examples=num_eval,
            batch_size=eval_batch, tasks=('shape',),
        ),
        metric='zeroshot/{name}_shape/acc1',
        steps=steps,
    )


def get_tasks(arg=None):
    """The task sequence of `python -m alignjax.continual` (the same for CTP and `:clip`)."""
    get_config(arg)  # Same arguments as get_config.
    return [shapes_task(s, STEPS_PER_TASK) for s in TASK_SHAPES]
