"""CLIP distillation (open_clip's ``DistillClipLoss``): a student learns a teacher's logits.

The teacher is a frozen model of any size loaded from another run's workdir, a checkpoint
or an export (converted weights): weight set ``'teacher'`` with its own architecture (read
from the source, or ``teacher_model``). Both models see the same batch (so they must share
the image size and tokenizer); only their [B, B] logits meet
(:mod:`alignjax.losses.refine`)::

    L = w_clip CLIP(zimg, ztxt, t)
      + w_distill ½ [ CE(softmax(t^t X^t Y^t^T), log_softmax(t X Y^T))
                    + CE(softmax(t^t Y^t X^t^T), log_softmax(t Y X^T)) ]

``CE(p, log q) = -(1/B) Σ_ij p_ij log q_ij`` is a soft cross-entropy as in open_clip (not a
KL): when the student's logits equal the teacher's it is the teacher's entropy. Each model
uses its own logit scale. GradCache is exact: the teacher's forward treats examples
independently and both terms are computed in ``loss`` on the merged outputs.
"""

from __future__ import annotations

import jax

from alignjax.losses.contrastive import clip_loss
from alignjax.losses.refine import distill_loss
from alignjax.objectives import base

#: The frozen teacher, in ``TrainState.weights``.
TEACHER = "teacher"

_NO_TEACHER = (
    "config.loss.teacher is empty: give the teacher's workdir, checkpoint or export "
    "(e.g. configs/distill.py:/runs/teacher, or --config.loss.teacher=PATH)."
)


def _check_weights(c) -> None:
    for field in ("distill_weight", "clip_weight"):
        if float(c[field]) < 0:
            raise ValueError(f"config.loss.{field} must be >= 0, got {c[field]}.")
    if not (float(c["distill_weight"]) or float(c["clip_weight"])):
        raise ValueError("config.loss: distill_weight and clip_weight are both 0; set one > 0.")


@base.register
class Distill(base.Objective):
    """CLIP plus open_clip's soft cross-entropy to a frozen (larger) teacher's logits."""

    name = "distill"
    defaults = {
        "teacher": "",  # Path: workdir, checkpoints dir, step dir or export. Required.
        "teacher_step": -1,  # Checkpoint step of the teacher (-1: the newest).
        "teacher_model": None,  # None: the model config stored with the teacher.
        "distill_weight": 1.0,
        "clip_weight": 1.0,
    }

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        _check_weights(self.cfg)

    @classmethod
    def check(cls, config):
        _check_weights(config.loss)
        if not str(config.loss.teacher or ""):
            raise ValueError(_NO_TEACHER)

    def weight_sets(self):
        path = str(self.cfg["teacher"] or "")
        if not path:
            raise ValueError(_NO_TEACHER)
        init_from = {"path": path, "mapping": (), "step": int(self.cfg["teacher_step"])}
        model = self.cfg["teacher_model"] or "source"
        return {
            TEACHER: base.WeightSet(kind="frozen", init="init_from", init_from=init_from, model=model)
        }

    def forward(self, apply, batch, ctx):
        student = apply(batch["image"], batch["tokens"], train=True)
        t = ctx.apply_with[TEACHER](batch["image"], batch["tokens"])
        return {"student": student, "teacher": jax.lax.stop_gradient((t.zimg, t.ztxt, t.logit_scale))}

    def loss(self, out, batch, ctx):
        s = out["student"]
        t_img, t_txt, t_scale = out["teacher"]
        parts = {
            "clip": clip_loss(s.zimg, s.ztxt, s.logit_scale),
            "distill": distill_loss(s.zimg, s.ztxt, s.logit_scale, t_img, t_txt, t_scale),
        }
        loss = float(self.cfg["clip_weight"]) * parts["clip"]
        loss = loss + float(self.cfg["distill_weight"]) * parts["distill"]
        return loss, self.metrics(loss, s, **parts)
