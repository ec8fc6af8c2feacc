"""Distillation from a frozen teacher of another size (open_clip's DistillClipLoss)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config
from conftest import larger_tiny_config

from alignjax import checkpoint as checkpoint_lib
from alignjax import config as config_lib
from alignjax import objectives, optim, train
from alignjax import state as state_lib
from alignjax.losses import refine
from alignjax.models.two_tower import l2_normalize


def _unit(seed, b=6, d=8):
    return l2_normalize(jnp.asarray(np.random.default_rng(seed).normal(size=(b, d)), jnp.float32))


def _entropy(logits):
    p = jax.nn.softmax(logits, -1)
    return float(-jnp.sum(p * jax.nn.log_softmax(logits, -1)) / logits.shape[0])


def test_distill_term_of_a_student_equal_to_its_teacher_is_the_teachers_entropy():
    """open_clip's dist_loss is a soft cross-entropy (not a KL): equal logits give H(p)."""
    x, y = _unit(0), _unit(1)
    got = float(refine.distill_loss(x, y, 5.0, x, y, 5.0))
    logits = 5.0 * x @ y.T
    want = 0.5 * (_entropy(logits) + _entropy(logits.T))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want > 0.1  # So it is not the KL, which would be 0 here.
    # The teacher may have another width: only the [B, B] logits are compared.
    other = float(refine.distill_loss(x, y, 5.0, _unit(2, d=12), _unit(3, d=12), 9.0))
    assert np.isfinite(other) and other != got


def test_distill_term_is_minimal_at_the_teacher_logits():
    x, y = _unit(0), _unit(1)
    at_teacher = refine.soft_cross_entropy(x @ y.T, x @ y.T)
    for seed in range(3):
        assert refine.soft_cross_entropy(_unit(seed + 5) @ y.T, x @ y.T) > at_teacher


# ----------------------------------------------------------------------------- a real teacher
@pytest.fixture(scope='module')
def teacher_run(larger_tiny_run):
    """A larger tiny model's run (tests/conftest.py: embed 24, towers 48 wide, 2 steps)."""
    return larger_tiny_run


def _student_config(teacher, accum=1):
    c = tiny_config.get_config()
    c.batch_size, c.grad_accum_steps = 16, accum
    c.mesh = {'data': 2, 'fsdp': 1, 'tensor': 1}
    c.loss = objectives.loss_config('distill', teacher=teacher)
    c.optim.eps, c.optim.weight_decay, c.optim.grad_clip_norm = 1e3, 0.0, 0.0
    c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 10.0, 0, 'constant'
    return c


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, 8), np.int32)
    for i, k in enumerate(rng.integers(1, 6, size=n)):
        tokens[i, 0], tokens[i, 1 : 1 + k], tokens[i, 1 + k] = 1, rng.integers(3, 250, size=k), 255
    return {'image': rng.normal(size=(n, 16, 16, 3)).astype(np.float32), 'tokens': tokens}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _started(config):
    """A trainer and its first state with the teacher loaded (as train_and_evaluate does)."""
    t = train.build_trainer(config, jax.devices()[:2])
    state, _ = state_lib.init_weight_sets(t.init_fn(), t.build)
    return t, state


@pytest.fixture(scope='module')
def student(teacher_run):
    """The student trainer (no accumulation) and its first state, teacher loaded, on the host.

    Both tests below start from it: its init, teacher load and step compile once instead of
    once per test (each `step_fn` call donates its state: start from a `_put` copy).
    """
    t, state = _started(_student_config(teacher_run))
    return t, jax.device_get(state)


def _put(t, host_state):
    return jax.device_put(host_state, t.state_shardings)


def test_teacher_of_another_size_loads_and_gets_no_update(teacher_run, student):
    ckpt = checkpoint_lib.Checkpointer(teacher_run + '/checkpoints')
    saved = ckpt.restore(2, train.build_trainer(larger_tiny_config()).abstract_state, None).params
    ckpt.close()
    t, start_state = student
    state = _put(t, start_state)
    teacher = state.weights['teacher']
    assert sum(x.size for x in _leaves(teacher)) > sum(x.size for x in _leaves(state.params))
    start = _leaves(state.params)
    for step in range(2):
        state, metrics = t.step_fn(state, t.global_batch(_batch(seed=step)))
    assert {'train/loss_clip', 'train/loss_distill'} <= set(metrics)
    np.testing.assert_allclose(
        metrics['train/loss'], metrics['train/loss_clip'] + metrics['train/loss_distill'], rtol=1e-5
    )
    for x, y in zip(_leaves(state.weights['teacher']), _leaves(saved)):  # Loaded, never moved.
        np.testing.assert_array_equal(x, y)
    assert not any(np.array_equal(x, y) for x, y in zip(_leaves(state.params), start))


def test_gradient_accumulation_is_exact(teacher_run, student):
    """The same started state (grad_accum_steps does not enter it) through both steps."""
    full_t, start_state = student
    accum_t = train.build_trainer(_student_config(teacher_run, 2), jax.devices()[:2])
    runs = []
    for t in (full_t, accum_t):
        new, metrics = t.step_fn(_put(t, start_state), t.global_batch(_batch()))
        runs.append((start_state.params, jax.device_get(new.params), jax.device_get(metrics)))
    (before, full, m_full), (_, acc, m_acc) = runs
    for key in ('train/loss', 'train/grad_norm', 'train/loss_distill'):
        np.testing.assert_allclose(m_acc[key], m_full[key], rtol=1e-5, err_msg=key)
    paths = jax.tree_util.tree_leaves(optim.tree_paths(before))
    for path, b, f, a in zip(paths, _leaves(before), _leaves(full), _leaves(acc)):
        scale = 4 * float(np.spacing(np.float32(np.abs(b).max())))
        np.testing.assert_allclose(a - b, f - b, rtol=1e-4, atol=max(scale, 1e-7), err_msg=path)


@pytest.mark.parametrize('fields, message', [
    ({}, r'config.loss.teacher is empty: give the teacher'),
    ({'teacher': '/t', 'clip_weight': -1.0}, r'config.loss.clip_weight must be >= 0'),
    ({'teacher': '/t', 'clip_weight': 0.0, 'distill_weight': 0.0}, r'both 0; set one > 0'),
    ({'teacher': '/t', 'distil_weight': 1.0}, r"did you mean 'distill_weight'"),
])  # fmt: skip
def test_config_errors_are_one_line(fields, message):
    c = tiny_config.get_config()
    with pytest.raises(ValueError, match=message) as e:
        c.loss = objectives.loss_config('distill', **fields)
        config_lib.resolve(c)
    assert '\n' not in str(e.value)
