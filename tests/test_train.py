"""The trainer: mesh equivalence, multi-process, exact gradient accumulation, freezing,
NaN handling and input errors. Tiny models; each run takes seconds. Resume, kill and
preemption: tests/test_checkpoint_faults.py."""

import math
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_config
from conftest import xla_flags
from alignjax import optim, train, workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
    return np.array(
        [r['train/loss'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
    )


def _run(tmp_path, name, devices=None, **overrides):
    c = tiny_config.get_config()
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split('.')
        for p in parents:
            target = target[p]
        target[leaf] = value
    workdir = str(tmp_path / name)
    summary = train.train_and_evaluate(c, workdir, devices=devices)
    return workdir, summary


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
    """(workdir, summary) of 20 steps on 8 devices, mesh data=8, a checkpoint every 10."""
    return _run(tmp_path_factory.mktemp('ref'), 'ref', mesh=dict(data=8, fsdp=1, tensor=1))


@pytest.fixture(scope='module')
def reference_8x1(reference_run):
    return _losses(reference_run[0])


def test_losses_decrease_and_workdir_complete(reference_run, reference_8x1):
    workdir, summary = reference_run  # The reference run's own workdir (no run of its own).
    for name in ('config.json', 'metrics.jsonl', 'summary.json'):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, 'tensorboard'))
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']
    records = [r for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
    assert {'step', 'time', 'train/loss', 'train/lr'} <= set(records[0])
    # The first step includes compiling: no rate is measured over it; the next ones have one.
    assert 'train/samples_per_s' not in records[0]
    assert {'train/samples_per_s', 'train/eta_s'} <= set(records[1])
    assert summary['step'] == 20
    assert reference_8x1.shape == (20,)
    assert reference_8x1[-3:].mean() < reference_8x1[:3].mean()


@pytest.mark.parametrize(
    'mesh, n_devices',
    [
        (dict(data=1, fsdp=1, tensor=1), 1),
        (dict(data=2, fsdp=4, tensor=1), 8),
    ],
)
def test_same_losses_on_any_mesh(tmp_path, reference_8x1, mesh, n_devices):
    workdir, _ = _run(tmp_path, 'run', devices=jax.devices()[:n_devices], mesh=mesh)
    np.testing.assert_allclose(_losses(workdir), reference_8x1, rtol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, reference_8x1):
    """2 local processes x 4 CPU devices == 1 process x 8 devices, step by step."""
    workdir = str(tmp_path / 'mp')
    port = _free_port()
    env = dict(
        os.environ,
        XLA_FLAGS=xla_flags(4),
        JAX_PLATFORMS='cpu',
        PYTHONPATH=os.path.join(REPO, 'tests'),
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                '-m',
                'alignjax.train',
                '--config',
                'tests/tiny_config.py',
                '--workdir',
                workdir,
                '--config.mesh.data=8',
                f'--coordinator_address=localhost:{port}',
                '--num_processes=2',
                f'--process_id={i}',
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    np.testing.assert_allclose(_losses(workdir), reference_8x1, rtol=1e-5)


def test_frozen_image_tower_is_bit_identical(tmp_path):
    c = tiny_config.get_config()
    c.optim.freeze = ('img/.*',)
    t = train.build_trainer(c)
    state = t.init_fn()
    init = jax.device_get(state.params)
    rng = np.random.default_rng(1)
    for _ in range(3):
        batch = t.global_batch(
            {
                'image': rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
                'tokens': rng.integers(1, 255, size=(16, 8)).astype(np.int32),
            }
        )
        state, metrics = t.step_fn(state, batch)
    final = jax.device_get(state.params)
    for a, b in zip(
        jax.tree_util.tree_leaves(init['img']), jax.tree_util.tree_leaves(final['img'])
    ):
        np.testing.assert_array_equal(a, b)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree_util.tree_leaves(init['txt']), jax.tree_util.tree_leaves(final['txt'])
        )
    ]
    assert all(changed)


def test_train_step_keeps_activation_sharding_constraints():
    """The step must be traced with the logical axis rules in context: flax drops
    `with_logical_constraint` silently without them (jit traces at the first call)."""
    c = tiny_config.get_config()
    c.mesh = dict(data=2, fsdp=4, tensor=1)
    t = train.build_trainer(c)
    batch = {
        'image': jax.ShapeDtypeStruct((16, 16, 16, 3), jnp.float32),
        'tokens': jax.ShapeDtypeStruct((16, 8), jnp.int32),
    }
    hlo = t.step_fn.lower(t.abstract_state, batch).as_text()
    assert hlo.count('sharding_constraint') + hlo.count('Sharding') > 0


def test_clip_logit_scale_is_clamped_after_update():
    c = tiny_config.get_config()
    c.model.logit_scale_init = math.exp(5.0)  # Above ln 100: the first update clamps it.
    t = train.build_trainer(c)
    state = t.init_fn()
    assert float(state.params['log_scale']) == pytest.approx(5.0)
    rng = np.random.default_rng(2)
    batch = t.global_batch(
        {
            'image': rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
            'tokens': rng.integers(1, 255, size=(16, 8)).astype(np.int32),
        }
    )
    state, _ = t.step_fn(state, batch)
    assert float(state.params['log_scale']) == pytest.approx(math.log(100), abs=1e-6)


def test_nan_loss_stops_naming_step_and_saves_nothing(tmp_path):
    with pytest.raises(train.NonFiniteError, match=r'step 1: .*train/loss'):
        _run(tmp_path, 'nan', **{'model.logit_scale_init': float('inf')})
    ckpt_dir = tmp_path / 'nan' / 'checkpoints'
    assert not ckpt_dir.exists() or not [p for p in os.listdir(ckpt_dir) if p.isdigit()]


def test_nan_policy_skip_counts_and_never_saves_a_non_finite_state(tmp_path):
    # An infinite logit scale: every loss is NaN, and the initial parameters hold an Inf.
    overrides = {'model.logit_scale_init': float('inf'), 'nan_policy': 'skip'}
    with pytest.raises(train.NonFiniteError, match=r'state at step 2 holds NaN or Inf'):
        _run(tmp_path, 'skip', total_steps=3, checkpoint_every_steps=2, **overrides)
    records = [r for r in workdir_lib.read_metrics(str(tmp_path / 'skip')) if 'train/loss' in r]
    assert [r['train/nonfinite_steps'] for r in records] == [1, 2]  # Skipped, not halted.
    ckpt_dir = tmp_path / 'skip' / 'checkpoints'
    assert not ckpt_dir.exists() or not [p for p in os.listdir(ckpt_dir) if p.isdigit()]


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
    with pytest.raises(
        ValueError, match=r'batch_size=12 is not divisible by the data-parallel size 8'
    ):
        _run(tmp_path, 'bad', batch_size=12, mesh=dict(data=8, fsdp=1, tensor=1))


def test_unknown_loss_names_valid_choices(tmp_path):
    with pytest.raises(ValueError, match='siglip'):
        _run(tmp_path, 'bad', **{'loss.name': 'clipp'})
