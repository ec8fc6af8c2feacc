"""Extra weight sets in the train state: EMA updates, checkpoints, resume, evaluation."""

import shutil

import jax
import numpy as np
import pytest
import tiny_config
from conftest import larger_tiny_config

from alignjax import checkpoint as checkpoint_lib
from alignjax import objectives, train
from alignjax.losses import clip_loss
from alignjax.evaluate import __main__ as eval_cli


def _leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


@pytest.mark.parametrize('schedule', ['constant', 'warmup'])
def test_ema_update_equals_its_formula(schedule):
    c = tiny_config.get_config()
    c.ema.decay, c.ema.schedule = 0.8, schedule
    t = train.build_trainer(c, jax.devices()[:2])
    state = t.init_fn()
    ema = _leaves(state.params)  # The EMA starts as a copy of the initial parameters.
    for leaf, got in zip(ema, _leaves(state.weights['ema'])):
        np.testing.assert_array_equal(got, leaf)
    for step in range(3):
        state, _ = t.step_fn(state, t.global_batch(tiny_config.random_batch(step)))
        d = 0.8 if schedule == 'constant' else min(0.8, (1 + step) / (10 + step))
        ema = [d * e + (1 - d) * p for e, p in zip(ema, _leaves(state.params))]
        for want, got in zip(ema, _leaves(state.weights['ema'])):
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_weight_set_spec_is_checked():
    with pytest.raises(ValueError, match="Valid choices: 'frozen', 'ema'"):
        objectives.WeightSet(kind='momentun')
    with pytest.raises(ValueError, match='needs init_from'):
        objectives.WeightSet(init='init_from')
    with pytest.raises(ValueError, match='decay must be in'):
        objectives.WeightSet(kind='ema', decay=1.0)
    c = tiny_config.get_config()
    c.ema.decay = 1.5
    with pytest.raises(ValueError, match=r'config.ema.decay must be in \[0, 1\)'):
        train.build_trainer(c)


def _ema_config(total_steps, evals=False):
    c = tiny_config.get_config()
    c.ema.decay = 0.9
    c.total_steps, c.checkpoint_every_steps = total_steps, 2
    c.optim.warmup_steps = 1
    if evals:  # Only for evaluating the checkpoint: training runs skip evaluation.
        c.evals = {
            'shapes': dict(type='zeroshot', data='synthetic:shapes', split='test',
                           num_examples=32, batch_size=16, tasks=('color',)),
        }
    return c


def test_resume_with_an_ema_copy_is_bit_exact_and_evaluate_reads_it(tmp_path):
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    train.train_and_evaluate(_ema_config(4), str(straight))
    # The run as it was at its step-2 checkpoint (as if stopped there: a run of its own
    # would compile and train the same two steps again)...
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / 'checkpoints' / '4')
    train.train_and_evaluate(_ema_config(4), str(resumed))  # ...resumes to 4.
    t = train.build_trainer(_ema_config(4))
    states = []
    for workdir in (straight, resumed):
        ckpt = checkpoint_lib.Checkpointer(str(workdir / 'checkpoints'))
        states.append(ckpt.restore(4, t.abstract_state, None))
        ckpt.close()
    a, b = states
    for x, y in zip(_leaves((a.params, a.weights)), _leaves((b.params, b.weights))):
        np.testing.assert_array_equal(x, y)
    assert not all(
        np.array_equal(x, y) for x, y in zip(_leaves(a.params), _leaves(a.weights['ema']))
    )
    # `python -m alignjax.evaluate --weights ema` scores the EMA copy, not the parameters.
    ckpt_dir = str(straight / 'checkpoints')
    config = _ema_config(4, evals=True)
    _, on_params = eval_cli.evaluate_checkpoint(config, ckpt_dir, 4, None, str(straight))
    _, on_ema = eval_cli.evaluate_checkpoint(config, ckpt_dir, 4, None, str(straight), 'ema')
    assert (straight / 'eval_4_ema.json').exists() and (straight / 'eval_4.json').exists()
    assert set(on_params) == set(on_ema)
    with pytest.raises(ValueError, match=r"--weights='teacher'.*valid: \['params', 'ema'\]"):
        eval_cli.evaluate_checkpoint(config, ckpt_dir, 4, None, None, 'teacher')


@objectives.register
class _DistillFromRun(objectives.Objective):
    """CLIP on the student; a frozen teacher of another size loaded from another run."""

    name = 'test_distill_from_run'
    defaults = {'teacher_path': ''}

    def weight_sets(self):
        init_from = {'path': self.cfg['teacher_path'], 'mapping': (), 'step': -1}
        return {
            'teacher': objectives.WeightSet(init='init_from', init_from=init_from, model='source')
        }

    def forward(self, apply, batch, ctx):
        return {
            'student': apply(batch['image'], batch['tokens']),
            'teacher': ctx.apply_with['teacher'](batch['image'], batch['tokens']),
        }

    def loss(self, out, batch, ctx):
        s, t = out['student'], out['teacher']
        loss = clip_loss(s.zimg, s.ztxt, s.logit_scale)
        agree = jax.numpy.mean(s.zimg @ s.ztxt.T * (t.zimg @ t.ztxt.T))
        return loss, self.metrics(loss, s, agree=agree)


def test_teacher_of_another_architecture_loads_from_another_run(tmp_path, larger_tiny_run):
    # A larger teacher: tests/conftest.py's run of a larger tiny model (shared with
    # test_distill.py), read only.
    ckpt = checkpoint_lib.Checkpointer(f'{larger_tiny_run}/checkpoints')
    saved = ckpt.restore(2, train.build_trainer(larger_tiny_config()).abstract_state, None)
    ckpt.close()

    s = tiny_config.get_config()
    s.loss = objectives.loss_config('test_distill_from_run', teacher_path=larger_tiny_run)
    s.total_steps = s.checkpoint_every_steps = 2
    s.optim.warmup_steps = 1
    student = tmp_path / 'student'
    train.train_and_evaluate(s, str(student))
    t = train.build_trainer(s)
    ckpt = checkpoint_lib.Checkpointer(str(student / 'checkpoints'))
    state = ckpt.restore(2, t.abstract_state, None)
    ckpt.close()
    teacher = state.weights['teacher']
    assert sum(x.size for x in _leaves(teacher)) > sum(x.size for x in _leaves(state.params))
    for x, y in zip(_leaves(teacher), _leaves(saved.params)):  # Loaded, then never updated.
        np.testing.assert_array_equal(x, y)
