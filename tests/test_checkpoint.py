"""Checkpoints: retention, deletion order, corruption fallback, per-process data state,
preemption flag, restore on another mesh, init_from, export and nan_policy.

In-process and small; the kill / SIGTERM / multi-process runs are in
tests/test_checkpoint_faults.py.
"""

import functools
import glob
import json
import os
import shutil
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alignjax import checkpoint as ckpt_lib
from alignjax import export, models, preemption, train
from alignjax import init_from as init_from_lib
from alignjax import workdir as workdir_lib

# --------------------------------------------------------------------------------------
# Checkpointer on a small sharded tree.


def _mesh():
    return jax.make_mesh((8,), ('data',), devices=jax.devices())


def _state(mesh, value=0.0):
    sh = NamedSharding(mesh, P('data'))
    return {
        'w': jax.device_put(jnp.arange(64, dtype=jnp.float32) + value, sh),
        'b': jax.device_put(jnp.full((3,), value, jnp.float32), NamedSharding(mesh, P())),
        'step': jax.device_put(jnp.array(int(value), jnp.int32), NamedSharding(mesh, P())),
    }


def _abstract(state):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


class FakeIterator:
    def __init__(self, position=0):
        self.position = position

    def get_state(self):
        return {'next_batch': self.position, 'process': jax.process_index()}

    def set_state(self, state):
        self.position = state['next_batch']


def _saved(directory, steps, keep=5, keep_every=0):
    ck = ckpt_lib.Checkpointer(directory, keep=keep, keep_every=keep_every)
    mesh = _mesh()
    for s in steps:
        ck.save(s, _state(mesh, s), FakeIterator(10 * s), {'seed': 3, 'note': 'x'})
    ck.close()
    return mesh


def test_keeps_last_k_and_every_mth_and_holds_data_and_config(tmp_path):
    d = str(tmp_path / 'ck')
    mesh = _saved(d, range(1, 11), keep=2, keep_every=4)
    ck = ckpt_lib.Checkpointer(d)
    assert ck.all_steps() == [4, 8, 9, 10]
    assert ck.saved_config(10) == {'seed': 3, 'note': 'x'}
    it = FakeIterator()
    state = ck.restore(9, _abstract(_state(mesh)), it)
    assert it.position == 90
    np.testing.assert_array_equal(state['w'], np.arange(64) + 9.0)
    assert state['w'].sharding.spec == P('data')
    with open(os.path.join(d, '9', 'data', 'metadata')) as f:
        saved = json.load(f)
    assert saved == {'process_count': 1, 'processes': [{'next_batch': 90, 'process': 0}]}
    ck.close()


def test_old_checkpoint_deleted_only_after_newer_one_committed(tmp_path):
    d = str(tmp_path / 'ck')
    ck = ckpt_lib.Checkpointer(d, keep=1)
    deleter = ck._manager._checkpoint_deleter
    original = deleter.delete_steps
    seen = []

    def delete_steps(steps):
        committed = [s for s in range(1, 10) if ckpt_lib.checkpoint_problem(d, s) is None]
        seen.append((list(steps), committed))
        return original(steps)

    deleter.delete_steps = delete_steps
    mesh = _mesh()
    for s in (1, 2, 3):
        ck.save(s, _state(mesh, s), None)
    ck.close()
    deletions = [(steps, committed) for steps, committed in seen if steps]
    assert [steps for steps, _ in deletions] == [[1], [2]]
    for steps, committed in deletions:  # A newer, committed checkpoint existed.
        assert max(committed) > max(steps)
    assert ck.all_steps() == [3]


def _truncate_arrays(path):
    # Array data and B-tree nodes (small arrays are stored inline in the nodes).
    files = glob.glob(os.path.join(path, 'state', 'd', '*'))
    files += glob.glob(os.path.join(path, 'state', 'ocdbt.process_*', 'd', '*'))
    assert files
    for name in files:
        with open(name, 'r+b') as f:
            f.truncate(os.path.getsize(name) // 2)


def _damage(d, how):
    path = os.path.join(d, '3')
    if how == 'truncated':
        _truncate_arrays(path)
    elif how == 'no_commit_marker':
        os.remove(os.path.join(path, ckpt_lib.COMMIT_FILE))
    elif how == 'no_metadata':
        os.remove(os.path.join(path, 'state', '_METADATA'))
    elif how == 'half_written_tmp':
        tmp = os.path.join(d, f'3{ckpt_lib.TMP_MARK}-1234')
        os.replace(path, tmp)
        os.remove(os.path.join(tmp, ckpt_lib.COMMIT_FILE))
        shutil.rmtree(os.path.join(tmp, 'data'))
        return tmp
    return path


@pytest.mark.parametrize(
    'how', ['truncated', 'no_commit_marker', 'no_metadata', 'half_written_tmp']
)
def test_corrupt_latest_falls_back_with_warning_naming_it(tmp_path, capsys, how):
    d = str(tmp_path / 'ck')
    mesh = _saved(d, (1, 2, 3))
    bad = _damage(d, how)
    capsys.readouterr()
    ck = ckpt_lib.Checkpointer(d)
    it = FakeIterator()
    step, state = ck.restore_latest(_abstract(_state(mesh)), it)
    err = capsys.readouterr().err
    assert step == 2 and it.position == 20
    np.testing.assert_array_equal(state['w'], np.arange(64) + 2.0)
    assert f'Checkpoint {bad} is bad' in err, err
    # Moved aside, not deleted; the good ones are untouched.
    assert os.path.isdir(os.path.join(d + '.corrupt', os.path.basename(bad)))
    assert not os.path.exists(bad)
    assert sorted(n for n in os.listdir(d) if n.isdigit()) == ['1', '2']
    # Training continues: the next save at step 3 works.
    ck.save(3, _state(mesh, 3.5), None)
    ck.close()
    assert ckpt_lib.checkpoint_problem(d, 3) is None


def test_every_checkpoint_bad_means_fresh_start(tmp_path, capsys):
    d = str(tmp_path / 'ck')
    mesh = _saved(d, (1,))
    os.remove(os.path.join(d, '1', ckpt_lib.COMMIT_FILE))
    ck = ckpt_lib.Checkpointer(d)
    assert ck.latest_step() is None  # An uncommitted step is never reported as the latest.
    assert ck.restore_latest(_abstract(_state(mesh)), None) == (None, None)
    assert 'is bad' in capsys.readouterr().err
    ck.close()


def test_other_model_is_a_config_error_not_corruption(tmp_path):
    d = str(tmp_path / 'ck')
    mesh = _saved(d, (1,))
    other = _abstract(_state(mesh))
    other['b'] = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=other['b'].sharding)
    ck = ckpt_lib.Checkpointer(d)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"shape .*b \(3,\) vs \(4,\)"):
        ck.restore_latest(other, None)
    assert os.listdir(d) == ['1'] and not os.path.exists(d + '.corrupt')
    ck.close()


def test_preemption_watcher_sets_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    watcher = preemption.PreemptionWatcher()
    try:
        assert not watcher.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.reached(2) and watcher.signal_name == 'SIGTERM'
    finally:
        watcher.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_data_skipped_is_summed_by_reason():
    class Iterator:
        def skipped_counts(self):
            return {'undecodable': 2, 'empty_caption': 1}

    assert train._data_skipped(Iterator()) == {
        'data/skipped': 3,
        'data/skipped/empty_caption': 1,
        'data/skipped/undecodable': 2,
    }


def test_is_finite_tree():
    assert ckpt_lib.is_finite_tree({'a': jnp.ones(3), 'i': jnp.arange(2)})
    assert not ckpt_lib.is_finite_tree({'a': jnp.array([1.0, jnp.nan])})
    assert not ckpt_lib.is_finite_tree([jnp.array(jnp.inf)])


# --------------------------------------------------------------------------------------
# Restore on another mesh (written on data x fsdp = 2 x 4).


def _run(workdir, devices=None, **overrides):
    c = tiny_config.get_config()
    c.optim.schedule = 'constant'
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split('.')
        for p in parents:
            target = target[p]
        target[leaf] = value
    return train.train_and_evaluate(c, str(workdir), devices=devices)


def _losses(workdir):
    out = {}
    for r in workdir_lib.read_metrics(str(workdir)):
        if 'train/loss' in r:
            out[r['step']] = r['train/loss']
    return out


@pytest.mark.slow
def test_restore_on_another_mesh_reshards_and_continues(tmp_path):
    src = tmp_path / 'src'
    mesh24 = {'data': 2, 'fsdp': 4, 'tensor': 1}
    # The source run itself starts from an export (init_from through the trainer).
    c, _, params, _, _ = _model_and_params(seed=3)
    exported = export.save(str(tmp_path / 'init.safetensors'), params, c.model)
    overrides = {'init_from.path': exported, 'keep_checkpoints': 5}
    _run(src, mesh=mesh24, total_steps=6, checkpoint_every_steps=4, **overrides)
    with open(src / 'init_from.json') as f:
        report = json.load(f)
    assert report['fresh'] == [] and len(report['loaded']) == len(export.flatten(params))
    reference = _losses(src)
    ck = ckpt_lib.Checkpointer(str(src / 'checkpoints'))
    saved = init_from_lib.ParamsSource(str(src / 'checkpoints' / '4')).read_host()
    ck.close()
    for name, n_devices, mesh in [
        ('4dev', 4, {'data': -1, 'fsdp': 1, 'tensor': 1}),
        ('8x1', 8, None),
    ]:
        work = tmp_path / name
        shutil.copytree(src, work)
        shutil.rmtree(work / 'checkpoints' / '6')  # Resume from step 4 on the new mesh.
        c = tiny_config.get_config()
        c.optim.schedule = 'constant'
        c.total_steps = 6
        if mesh:
            c.mesh = mesh
        t = train.build_trainer(c, jax.devices()[:n_devices])
        ck = ckpt_lib.Checkpointer(str(work / 'checkpoints'))
        step, state = ck.restore_latest(t.abstract_state, None)
        ck.close()
        assert step == 4
        for path, x in ckpt_lib.flat_by_path(state.params).items():
            np.testing.assert_array_equal(np.asarray(x), saved[path], err_msg=path)
            assert x.sharding.mesh.devices.size == n_devices
        # Training continues on the new mesh: the same losses up to float summation order.
        overrides = {'mesh': mesh} if mesh else {}
        _run(work, jax.devices()[:n_devices], total_steps=6, checkpoint_every_steps=4, **overrides)
        resumed = _losses(work)
        np.testing.assert_allclose(
            [resumed[s] for s in (5, 6)], [reference[s] for s in (5, 6)], rtol=1e-5
        )


# --------------------------------------------------------------------------------------
# Export and init_from.


@functools.lru_cache
def _model(width=32):
    c = tiny_config.get_config()
    c.model.image.width = width
    model = models.build(c.model)
    images = jnp.zeros((2, 16, 16, 3))
    tokens = jnp.ones((2, 8), jnp.int32)
    init = jax.jit(lambda k: nn.unbox(model.init(k, images, tokens)['params']))
    return c, model, init, images, tokens


def _model_and_params(width=32, seed=0):
    c, model, init, images, tokens = _model(width)
    return c, model, init(jax.random.key(seed)), images, tokens


@pytest.mark.parametrize('ext', ['safetensors', 'msgpack'])
def test_export_round_trip_rebuilds_the_model(tmp_path, ext):
    c, model, params, images, tokens = _model_and_params()
    path = export.save(str(tmp_path / f'm.{ext}'), params, c.model)
    assert os.path.isfile(tmp_path / 'model_config.json')
    # What another project does: one load call plus models.build.
    loaded, cfg = export.load(path)
    rebuilt = models.build(cfg)
    out_a = model.apply({'params': params}, images, tokens)
    out_b = rebuilt.apply({'params': loaded}, images, tokens)
    np.testing.assert_array_equal(out_a.zimg, out_b.zimg)
    np.testing.assert_array_equal(out_a.ztxt, out_b.ztxt)
    a = export.flatten(params)
    b = export.flatten(loaded)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_match_params_mapping_and_errors():
    dst = {'img/a': (2,), 'img/b': (3,), 'txt/a': (2,)}
    src = {'visual/a': (2,), 'visual/b': (3,), 'txt/a': (2,)}
    assert init_from_lib.match_params(dst, src, ('img=visual',)) == {
        'img/a': 'visual/a',
        'img/b': 'visual/b',
    }
    assert init_from_lib.match_params(dst, src, ()) == {'txt/a': 'txt/a'}
    assert init_from_lib.match_params(dst, src, ('txt',)) == {'txt/a': 'txt/a'}
    with pytest.raises(ValueError, match="'img=image' loads nothing"):
        init_from_lib.match_params(dst, src, ('img=image',))
    with pytest.raises(ValueError, match=r'shape mismatch .*img/b \(3,\) <- visual/b \(4,\)'):
        init_from_lib.match_params(dst, {**src, 'visual/b': (4,)}, ('img=visual',))


@pytest.fixture(scope='module')
def trainer():
    c = tiny_config.get_config()
    c.optim.freeze = ('img/.*',)
    return train.build_trainer(c)


def test_init_from_export_loads_only_the_image_tower(tmp_path, trainer):
    c, _, source, _, _ = _model_and_params(seed=7)
    path = export.save(str(tmp_path / 'src.safetensors'), source, c.model)
    fresh = trainer.init_fn()
    fresh_host = ckpt_lib.flat_by_path(jax.device_get(fresh.params))
    init_from = train.ConfigDict({'path': path, 'mapping': ('img',), 'step': -1})
    state, report = init_from_lib.init_params_from(
        init_from, trainer.init_fn(), trainer.abstract_state.params, ('img/.*',)
    )
    got = ckpt_lib.flat_by_path(state.params)
    src = export.flatten(source)
    for k, x in got.items():
        expected = src[k] if k.startswith('img/') else fresh_host[k]
        np.testing.assert_array_equal(np.asarray(x), expected, err_msg=k)
        assert x.sharding == ckpt_lib.flat_by_path(trainer.abstract_state.params)[k].sharding
    assert set(report['loaded']) == {k for k in got if k.startswith('img/')}
    assert set(report['fresh']) == {k for k in got if not k.startswith('img/')}
    assert report['frozen'] == sorted(report['loaded'])
    assert 'loaded: img (' in report['text'] and 'frozen (optim.freeze): img (' in report['text']


def test_init_from_checkpoint_directory_loads_everything(tmp_path, trainer):
    source = trainer.init_fn()
    source = source.replace(params=jax.tree_util.tree_map(lambda x: x + 1.0, source.params))
    expected = ckpt_lib.flat_by_path(jax.device_get(source.params))
    ck = ckpt_lib.Checkpointer(str(tmp_path / 'run' / 'checkpoints'))
    ck.save(5, source, None, trainer.config)
    ck.close()
    init_from = train.ConfigDict({'path': str(tmp_path / 'run'), 'mapping': (), 'step': -1})
    state, report = init_from_lib.init_params_from(
        init_from, trainer.init_fn(), trainer.abstract_state.params
    )
    assert report['fresh'] == [] and report['source'].endswith(os.path.join('checkpoints', '5'))
    for k, x in ckpt_lib.flat_by_path(state.params).items():
        np.testing.assert_array_equal(np.asarray(x), expected[k], err_msg=k)
    # The export CLI reads the same checkpoint (model config saved with it).
    out = export.export_checkpoint(str(tmp_path / 'run'), str(tmp_path / 'exp'))
    params, cfg = export.load(out)
    assert cfg['image']['width'] == 32
    for k, x in export.flatten(params).items():
        np.testing.assert_array_equal(x, expected[k])


def test_init_from_shape_mismatch_is_a_clear_error(tmp_path, trainer):
    c, _, source, _, _ = _model_and_params(width=16)
    path = export.save(str(tmp_path / 'narrow.safetensors'), source, c.model)
    init_from = train.ConfigDict({'path': path, 'mapping': ('img',), 'step': -1})
    with pytest.raises(ValueError, match=r'init_from: shape mismatch .*img/.*\(32,\) <- img/'):
        init_from_lib.init_params_from(init_from, trainer.init_fn(), trainer.abstract_state.params)


# --------------------------------------------------------------------------------------
# nan_policy.


def _batch(t, rng, nan=False):
    images = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    if nan:
        images[0, 0, 0, 0] = np.nan
    return t.global_batch(
        {'image': images, 'tokens': rng.integers(1, 255, size=(16, 8)).astype(np.int32)}
    )


def test_nan_policy_skip_drops_the_update_and_counts_it():
    c = tiny_config.get_config()
    c.nan_policy = 'skip'
    c.optim.schedule = 'constant'  # A warmup would start at lr 0 after the skipped step.
    t = train.build_trainer(c)
    rng = np.random.default_rng(0)
    state = t.init_fn()
    before = jax.device_get(state.params)
    state, m = t.step_fn(state, _batch(t, rng, nan=True))
    assert not bool(m['finite']) and int(m['train/nonfinite_steps']) == 1
    assert int(state.step) == 1 and int(state.nonfinite_steps) == 1
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    assert ckpt_lib.is_finite_tree((state.params, state.opt_state))
    state, m = t.step_fn(state, _batch(t, rng))
    assert bool(m['finite']) and int(state.step) == 2 and int(state.nonfinite_steps) == 1
    changed = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), before, state.params)
    )
    assert any(changed)


def test_unknown_nan_policy_names_choices():
    c = tiny_config.get_config()
    c.nan_policy = 'ignore'
    with pytest.raises(ValueError, match="Invalid nan_policy='ignore'.*'halt', 'skip'"):
        train.build_trainer(c)
