"""A method defined outside alignjax: CLIP plus distillation from a frozen copy of the start.

Used by tests/test_custom_method.py and shown whole in docs/OBJECTIVES.md ("Writing a
method"); a test checks that the two are the same code.
"""

import jax

from alignjax import objectives
from alignjax.losses import clip_loss, kl_soft


@objectives.register
class SelfDistillClip(objectives.Objective):
    """CLIP + KL(teacher || student) on the image->text logits; the teacher is frozen."""

    name = 'self_distill_clip'
    defaults = {'weight': 1.0, 'temperature': 1.0, 'teacher': 'start'}
    choices = {'teacher': ('start',)}  # The initial parameters (after config.init_from).

    def weight_sets(self):
        return {'teacher': objectives.WeightSet(kind='frozen', init='params')}

    def forward(self, apply, batch, ctx):
        student = apply(batch['image'], batch['tokens'], train=True)
        teacher = ctx.apply_with['teacher'](batch['image'], batch['tokens'])
        return {'student': student, 'teacher': teacher}

    def loss(self, out, batch, ctx):
        s, t = out['student'], out['teacher']
        clip = clip_loss(s.zimg, s.ztxt, s.logit_scale)
        tau = self.cfg['temperature']
        teacher_probs = jax.nn.softmax(t.logit_scale * t.zimg @ t.ztxt.T / tau, axis=-1)
        distill = kl_soft(s.logit_scale * s.zimg @ s.ztxt.T / tau, teacher_probs)
        loss = clip + self.cfg['weight'] * distill
        return loss, self.metrics(loss, s, clip=clip, distill=distill)

