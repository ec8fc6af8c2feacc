"""Distillation on the demo data: the demo model learns from a larger, trained teacher.

open_clip's distillation (`DistillClipLoss`): CLIP's loss plus the soft cross-entropy of
the student's image->text and text->image softmaxes against the frozen teacher's
(alignjax/objectives/distill.py, alignjax/losses/refine.py). Train the teacher (the demo
recipe with wider, deeper towers), then the student with the teacher's run as argument:

  python -m alignjax.train --config configs/distill.py:teacher --workdir runs/teacher
  python -m alignjax.train --config configs/distill.py:runs/teacher --workdir runs/distill

Baseline: `configs/demo.py:clip`, the same student (the demo model), data, optimizer,
steps and evaluators trained with CLIP alone; this config only changes `config.loss`.

The teacher may be any alignjax workdir, checkpoint or export (converted weights too)
whose images and tokens match the student's data pipeline (image size, normalisation,
tokenizer); its architecture is read from it. Without an argument the teacher is the
placeholder path below with the `:teacher` architecture written out
(`config.loss.teacher_model`), so the config dry-runs anywhere; training then stops with a
one-line error naming the missing path.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

BASELINE = 'configs/demo.py:clip'
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
TEACHER = '/path/to/teacher_workdir'  # Placeholder: pass the teacher run as the argument.


def teacher_model(model):
    """The teacher: the demo model with 1.5x wider towers and one more layer each."""
    m = model.copy_and_resolve_references()
    m.embed_dim = 96
    for tower in (m.image, m.text):
        tower.width, tower.mlp_dim, tower.num_heads = 144, 576, 4
        tower.depth += 1
    return m


def get_config(arg=None):
    c = load_config_file(DEMO, 'base')  # configs/demo.py's base(): the student.
    if arg == 'teacher':
        c.model = teacher_model(c.model)
        return c
    if arg:
        c.loss = loss_config('distill', teacher=str(arg))
    else:
        c.loss = loss_config(
            'distill', teacher=TEACHER, teacher_model=teacher_model(c.model).to_dict()
        )
    return c
