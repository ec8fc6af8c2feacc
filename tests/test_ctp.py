"""CTP: loss math, the momentum and reference weight sets, the queue buffers, config errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import checkpoint as checkpoint_lib
from alignjax import continual, data, objectives, train
from alignjax.config import resolve
from alignjax.losses import ctp as ctp_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUEUE = 48  # Three batches of 16: the pointer runs 16, 32, 0, 16, ...


def _unit(rng, *shape):
    z = rng.normal(size=shape).astype(np.float32)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def _kl_rows(p_logits, q_logits):
    """numpy batch-mean KL(softmax(p) || softmax(q)) over rows."""
    p = np.exp(p_logits - p_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    logq = q_logits - q_logits.max(1, keepdims=True)
    logq -= np.log(np.exp(logq).sum(1, keepdims=True))
    return float(np.sum(p * (np.log(p) - logq)) / p.shape[0])


# ----------------------------------------------------------------------------------------
# Pure functions.


def test_compatible_momentum_with_reference_equal_to_params_is_a_plain_ema():
    rng = np.random.default_rng(0)
    w, p = ({'a': rng.normal(size=(3, 4)).astype(np.float32)} for _ in range(2))
    got = ctp_lib.compatible_momentum(w, p, p, 0.9)
    np.testing.assert_allclose(got["a"], 0.9 * w["a"] + 0.1 * p["a"], rtol=1e-5, atol=1e-7)
    r = {'a': rng.normal(size=(3, 4)).astype(np.float32)}
    got = ctp_lib.compatible_momentum(w, p, r, 0.9)
    np.testing.assert_allclose(got["a"], 0.9 * w["a"] + 0.05 * p["a"] + 0.05 * r["a"], rtol=1e-5, atol=1e-7)


def test_topology_loss_is_zero_when_current_equals_reference_and_matches_numpy():
    rng = np.random.default_rng(1)
    x, y, xr, yr = (_unit(rng, 6, 8) for _ in range(4))
    cross, same = ctp_lib.topology_kl(x, y, x, y, 10.0)
    assert abs(float(cross)) < 1e-6 and abs(float(same)) < 1e-6
    grads = jax.grad(lambda a: sum(ctp_lib.topology_kl(a, y, x, y, 10.0)))(jnp.asarray(x))
    np.testing.assert_allclose(grads, 0.0, atol=1e-6)

    cross, same = ctp_lib.topology_kl(x, y, xr, yr, 10.0)
    s, r = 10 * x @ y.T, 10 * xr @ yr.T
    np.testing.assert_allclose(float(cross), 0.5 * (_kl_rows(r, s) + _kl_rows(r.T, s.T)), rtol=1e-5)

    # Same-modal rows over the other B - 1 examples only: what masking self to -1000 means.
    def off_diagonal(m):
        return m[~np.eye(6, dtype=bool)].reshape(6, 5)

    want = 0.5 * sum(
        _kl_rows(off_diagonal(10 * b @ b.T), off_diagonal(10 * a @ a.T)) for a, b in ((x, xr), (y, yr))
    )
    np.testing.assert_allclose(float(same), want, rtol=1e-5)
    assert float(cross) > 0 and float(same) > 0


def test_masked_self_similarity_is_never_selected():
    rng = np.random.default_rng(2)
    x = _unit(rng, 5, 4)
    logits = ctp_lib.mask_self(jnp.asarray(10 * x @ x.T))  # Self-similarity is each row's max.
    probs = jax.nn.softmax(logits, axis=-1)
    assert np.all(np.diag(np.asarray(probs)) == 0.0)
    assert np.all(np.argmax(np.asarray(logits), axis=1) != np.arange(5))


def test_enqueue_keeps_size_and_moves_the_pointer_modulo_the_queue():
    rng = np.random.default_rng(3)
    queue, ptr = jnp.zeros((QUEUE, 4)), jnp.zeros((), jnp.int32)
    written = []
    for step in range(7):
        rows = rng.normal(size=(16, 4)).astype(np.float32)
        at = int(ptr)
        queue, ptr = ctp_lib.enqueue(queue, ptr, rows)
        written.append(rows)
        assert queue.shape == (QUEUE, 4) and ptr.dtype == jnp.int32
        assert int(ptr) == (16 * (step + 1)) % QUEUE
        np.testing.assert_array_equal(queue[at : at + 16], rows)
    # FIFO: the queue holds the last three batches, in pointer order.
    np.testing.assert_array_equal(queue, np.concatenate([written[6], written[4], written[5]]))
    with pytest.raises(ValueError, match='queue size 48 is not a multiple of the batch 20'):
        ctp_lib.enqueue(queue, ptr, np.zeros((20, 4), np.float32))


def test_moco_targets_have_one_positive_per_row_in_the_first_b_columns():
    t = np.asarray(ctp_lib.moco_targets(4, QUEUE))
    assert t.shape == (4, 4 + QUEUE)
    np.testing.assert_array_equal(t.sum(1), 1.0)
    np.testing.assert_array_equal(t[:, :4], np.eye(4))
    assert not t[:, 4:].any()

    rng = np.random.default_rng(4)
    x, y, xm, ym = (_unit(rng, 4, 8) for _ in range(4))
    qx, qy = _unit(rng, QUEUE, 8), _unit(rng, QUEUE, 8)

    def ce(a, keys):
        logits = 10 * a @ keys.T
        logits -= logits.max(1, keepdims=True)
        return -np.mean(np.diag(logits[:, :4]) - np.log(np.exp(logits).sum(1)))

    want = 0.5 * (ce(x, np.concatenate([ym, qy])) + ce(y, np.concatenate([xm, qx])))
    got = ctp_lib.moco_loss(x, y, xm, ym, qx, qy, 10.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# In the trainer: task 1 (plain EMA) then task 2 (compatible momentum, reference, topology).


def _config(task_index=0, reference='', **loss):
    c = tiny_config.get_config()
    c.loss = objectives.loss_config(
        'ctp', task_index=task_index, reference=reference, queue_size=QUEUE, **loss
    )
    c.total_steps, c.checkpoint_every_steps = 4, 2
    c.optim.warmup_steps = 1  # So that a run stopped at step 2 may resume to 4.
    if reference:
        c.init_from.path = reference
    return c


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _leaves(tree):
    return jax.tree_util.tree_leaves(_host(tree))


@pytest.fixture(scope='module')
def first_task(tmp_path_factory):
    """A first-task run of 4 steps, stopped after 2 and resumed (its workdir)."""
    workdir = str(tmp_path_factory.mktemp('ctp') / 'task_0')
    devices = jax.devices()[:2]
    c = _config()
    c.total_steps = 2
    train.train_and_evaluate(c, workdir, devices)
    train.train_and_evaluate(_config(), workdir, devices)  # Resumes from step 2.
    return workdir


@pytest.fixture(scope='module')
def first_trainer():
    return train.build_trainer(_config(), jax.devices()[:2])


def _restore(workdir, t, step):
    ckpt = checkpoint_lib.Checkpointer(f'{workdir}/checkpoints')
    state = ckpt.restore(step, t.abstract_state, None)
    ckpt.close()
    return state


def test_first_task_has_a_momentum_ema_and_checkpointed_queues(first_task, first_trainer):
    t = first_trainer
    at4 = _restore(first_task, t, 4)
    assert set(at4.weights) == {'momentum'}
    assert t.build.extra['momentum'].spec.decay == 0.995
    at2 = _restore(first_task, t, 2)
    # Had the resumed run restarted its queues, its pointer would be at 32 again, not 16.
    assert int(at2.buffers['queue_ptr']) == 32 and int(at4.buffers['queue_ptr']) == 16
    q2, q4 = np.asarray(at2.buffers['image_queue']), np.asarray(at4.buffers['image_queue'])
    np.testing.assert_array_equal(q4[16:32], q2[16:32])  # Written at step 2, kept.
    assert not np.array_equal(q4[:16], q2[:16]) and not np.array_equal(q4[32:], q2[32:])
    np.testing.assert_allclose(np.linalg.norm(q4, axis=1), 1.0, rtol=1e-5)


@pytest.fixture(scope='module')
def second_task(first_task):
    return train.build_trainer(_config(1, first_task), jax.devices()[:2])


def _started(trainer):
    """A fresh task-2 state as the trainer starts it: init_from, then the weight sets."""
    from alignjax import init_from as init_from_lib
    from alignjax import state as state_lib

    state = trainer.init_fn()
    state, _ = init_from_lib.init_params_from(
        trainer.config.init_from, state, trainer.abstract_state.params, ()
    )
    state, _ = state_lib.init_weight_sets(state, trainer.build)
    return state


def test_later_task_reference_is_frozen_and_momentum_is_compatible(
    first_task, first_trainer, second_task
):
    t = second_task
    previous = _restore(first_task, first_trainer, 4)
    state = _started(t)
    assert set(state.weights) == {'momentum', 'reference'}
    for a, b in zip(_leaves(state.weights['reference']), _leaves(previous.params)):
        np.testing.assert_array_equal(a, b)
    ref = _host(state.weights['reference'])
    for step in range(2):
        before = _host(state)
        state, metrics = t.step_fn(state, t.global_batch(tiny_config.random_batch(step)))
        if step == 0:  # The parameters start as the reference: nothing to preserve yet.
            assert abs(float(metrics['train/loss_topology_cross'])) < 1e-5
            assert abs(float(metrics['train/loss_topology_same'])) < 1e-5
        # The reference never moves; the momentum absorbs both the update and the reference.
        for a, b in zip(_leaves(state.weights['reference']), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_array_equal(a, b)
        want = ctp_lib.compatible_momentum(before.weights['momentum'], _host(state.params), ref, 0.9)
        for a, b in zip(_leaves(state.weights['momentum']), _leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_is_exact(first_task, second_task):
    c = _config(1, first_task)
    c.grad_accum_steps = 2
    # One started state for both (grad_accum_steps does not enter it): its init and
    # init_from compile once; each run gets its own copy (a step donates its state).
    start = jax.device_get(_started(second_task))
    results = []
    for t in (second_task, train.build_trainer(c, jax.devices()[:2])):
        state, losses = jax.device_put(start, t.state_shardings), []
        for step in range(2):
            state, metrics = t.step_fn(state, t.global_batch(tiny_config.random_batch(step)))
            losses.append([float(metrics[k]) for k in ('train/loss', 'train/grad_norm')])
        results.append((losses, _host(state)))
    (la, a), (lb, b) = results
    np.testing.assert_allclose(la, lb, rtol=2e-5)
    for x, y in zip(_leaves(a.params), _leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    for k in a.buffers:
        np.testing.assert_allclose(a.buffers[k], b.buffers[k], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Config errors and the data option for task splits.


@pytest.mark.parametrize(
    'loss, message',
    [
        ({'task_index': 1}, r'task_index=1 needs config.loss.reference'),
        ({'reference': '/tmp/x'}, r"reference='/tmp/x' is only read on later tasks"),
        ({'queue_size': 40}, r'queue_size=40 must be a positive multiple of config.batch_size=16'),
        ({'task_index': -1}, r'task_index must be >= 0'),
        ({'momentum': 1.0}, r'momentum must be in \[0, 1\)'),
        ({'temperature': -0.1}, r'temperature must be > 0'),
    ],
)
def test_config_errors_are_one_line(loss, message):
    c = tiny_config.get_config()
    c.loss = objectives.loss_config('ctp', **{'queue_size': 32, **loss})
    with pytest.raises(ValueError, match=message) as e:
        resolve(c)
    assert '\n' not in str(e.value)


def test_shapes_source_keeps_only_the_listed_classes():
    src = data.get_source('synthetic:shapes?shapes=star,ring&colors=red,blue,green', 'val', num_examples=64)
    labels = [src[i]['labels'] for i in range(64)]
    assert {lab['shape'] for lab in labels} == {3, 6}  # Labels still index all classes.
    assert {lab['color'] for lab in labels} <= {0, 3, 5}
    with pytest.raises(ValueError, match=r"shapes='disc': unknown or no class names \['disc'\]") as e:
        data.get_source('synthetic:shapes?shapes=disc', 'train')
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match='leave no \\(shape, color\\) pair'):
        data.get_source('synthetic:shapes?shapes=star&colors=cyan', 'test')  # (star, cyan) is seen.


# ----------------------------------------------------------------------------------------
# The task-sequence driver and the continual-learning metrics.


def test_continual_metrics_follow_the_standard_definitions():
    r = [[0.9, 0.1, 0.2], [0.5, 0.8, 0.1], [0.6, 0.4, 0.7]]
    m = continual.continual_metrics(r)
    assert m['average_accuracy'] == pytest.approx((0.6 + 0.4 + 0.7) / 3)
    assert m['forgetting'] == pytest.approx([0.9 - 0.6, 0.8 - 0.4])
    assert m['average_forgetting'] == pytest.approx(0.35)
    assert continual.continual_metrics([[0.5]])['average_forgetting'] is None


def _sequence_config():
    c = _config()
    c.total_steps, c.checkpoint_every_steps = 2, 2
    spec = 'synthetic:shapes?shapes={}'
    ev = dict(type='zeroshot', split='val', num_examples=32, batch_size=16, tasks=('shape',))
    tasks = [
        continual.Task(train=spec.format(s), eval=dict(ev, data=spec.format(s)), steps=2)
        for s in ('circle,square', 'star,ring')
    ]
    return c, tasks


def test_the_driver_trains_every_task_from_the_previous_one_and_resumes(tmp_path, capsys):
    c, tasks = _sequence_config()
    workdir = str(tmp_path / 'seq')
    devices = jax.devices()[:2]
    out = continual.run_sequence(c, tasks, workdir, devices)
    r = np.asarray(out['accuracy_matrix'])
    assert r.shape == (2, 2) and np.all((0 <= r) & (r <= 1))
    assert out['average_accuracy'] == pytest.approx(r[1].mean())
    with open(f'{workdir}/continual.json') as f:
        assert json.load(f)['accuracy_matrix'] == out['accuracy_matrix']
    # Task 1 started from task 0's run, with it as CTP's frozen reference.
    with open(f'{workdir}/task_1/config.json') as f:
        saved = json.load(f)
    assert saved['init_from']['path'] == saved['loss']['reference'] == f'{workdir}/task_0'
    assert saved['loss']['task_index'] == 1 and set(saved['evals']) == {'task_0', 'task_1'}

    # Finished tasks are skipped; a task whose final summary is missing resumes (its last
    # checkpoint is the final step: only the final evaluation runs again).
    os.remove(f'{workdir}/task_1/summary.json')
    capsys.readouterr()
    again = continual.run_sequence(c, tasks, workdir, devices)
    log = capsys.readouterr().out
    assert 'task 0: finished at step 2 (skipped)' in log and 'Resumed from step 2' in log
    np.testing.assert_allclose(again['accuracy_matrix'], out['accuracy_matrix'], atol=1e-6)


def test_the_ctp_config_gives_its_task_sequence():
    config, tasks = continual.load(os.path.join(REPO, 'configs', 'ctp.py'))
    assert config.loss.name == 'ctp' and len(tasks) == 4
    shapes = [t.train.split('shapes=')[1].split(',') for t in tasks]
    assert len({s for ss in shapes for s in ss}) == 8  # Each task brings new shapes.
    c3 = continual.task_config(config, tasks, 3, '/runs/x')
    assert c3.loss.task_index == 3 and c3.loss.reference == '/runs/x/task_2' == c3.init_from.path
    resolve(c3)
    base, _ = continual.load(os.path.join(REPO, 'configs', 'ctp.py') + ':clip')
    assert base.loss.name == 'clip' and continual.task_config(base, tasks, 1, '/r').init_from.path == '/r/task_0'
