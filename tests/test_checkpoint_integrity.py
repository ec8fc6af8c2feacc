"""Checkpoint integrity: checksums, damaged data state, readers that fall back, explicit steps.

The rule under test (docs/CHECKPOINTS.md, guarantee 4): every reader validates a step, names
the bad file, falls back to the newest good step with one warning, and never deletes; an
explicitly requested bad step is an error naming the file and the good steps.
"""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alignjax import checkpoint as ckpt_lib
from alignjax import checksums, restore, train


def _mesh():
    return jax.make_mesh((8,), ('data',), devices=jax.devices())


def _state(mesh, value=0.0):
    return {
        'w': jax.device_put(
            jnp.arange(4096, dtype=jnp.float32) + value, NamedSharding(mesh, P('data'))
        ),
        'b': jax.device_put(jnp.full((3,), value, jnp.float32), NamedSharding(mesh, P())),
    }


def _abstract(state):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


class FakeIterator:
    def __init__(self, position=0):
        self.position = position

    def get_state(self):
        return {'next_batch': self.position}

    def set_state(self, state):
        self.position = state['next_batch']


def _saved(directory, steps=(1, 2, 3)):
    ck = ckpt_lib.Checkpointer(directory, keep=5)
    mesh = _mesh()
    for s in steps:
        ck.save(s, _state(mesh, s), FakeIterator(10 * s), {'seed': s})
    ck.close()
    return mesh


def _largest_array_file(step_path):
    files = glob.glob(os.path.join(step_path, 'state', 'ocdbt.process_*', 'd', '*'))
    return max(files, key=os.path.getsize)


def _flip_a_bit(path):
    with open(path, 'r+b') as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))


def _tree_listing(d):
    return sorted(os.path.relpath(os.path.join(r, n), d) for r, _, ns in os.walk(d) for n in ns)


def test_every_committed_step_has_checksums_of_all_its_files(tmp_path):
    d = str(tmp_path / 'ck')
    _saved(d)
    for s in (1, 2, 3):
        path = os.path.join(d, str(s))
        manifest = checksums.read(path)
        assert manifest is not None, os.listdir(path)
        covered = set(manifest['files'])
        assert {'data/metadata', 'config/metadata', 'state/_METADATA'} <= covered
        assert os.path.relpath(_largest_array_file(path), path) in covered
        assert checksums.verify(path) is None
    assert not glob.glob(os.path.join(d, '*.tmp'))


def test_bit_flip_inside_an_array_file_is_detected_and_resume_falls_back(tmp_path, capsys):
    d = str(tmp_path / 'ck')
    mesh = _saved(d)
    bad_file = _largest_array_file(os.path.join(d, '3'))
    _flip_a_bit(bad_file)
    capsys.readouterr()
    ck = ckpt_lib.Checkpointer(d)
    it = FakeIterator()
    step, state = ck.restore_latest(_abstract(_state(mesh)), it)
    ck.close()
    err = capsys.readouterr().err
    assert step == 2 and it.position == 20
    np.testing.assert_array_equal(state['w'], np.arange(4096) + 2.0)
    rel = os.path.relpath(bad_file, os.path.join(d, '3'))
    assert f'Checkpoint {os.path.join(d, "3")} is bad: {rel}: its sha256 differs' in err, err
    assert os.path.isfile(os.path.join(d + '.corrupt', '3', rel))  # Moved, not deleted.


@pytest.mark.parametrize('how', ['garbage', 'garbage_without_checksums', 'missing'])
def test_damaged_or_missing_data_state_falls_back_naming_the_file(tmp_path, capsys, how):
    d = str(tmp_path / 'ck')
    mesh = _saved(d)
    path = os.path.join(d, '3')
    if how == 'missing':
        os.remove(os.path.join(path, 'data', 'metadata'))
    else:
        if how == 'garbage_without_checksums':
            os.remove(os.path.join(path, checksums.FILE_NAME))
        with open(os.path.join(path, 'data', 'metadata'), 'w') as f:
            f.write('{"next_b\x01": 3}')  # json: Invalid control character at: line 1 column 10
    capsys.readouterr()
    ck = ckpt_lib.Checkpointer(d)
    it = FakeIterator()
    step, _ = ck.restore_latest(_abstract(_state(mesh)), it)
    ck.close()
    err = capsys.readouterr().err
    assert step == 2 and it.position == 20
    line = next(line for line in err.splitlines() if 'is bad' in line)
    assert line.startswith(f'WARNING: Checkpoint {path} is bad: data/metadata'), line
    expected = {
        'garbage': 'when saved',
        'garbage_without_checksums': 'is not valid JSON (Invalid control character',
        'missing': 'data/metadata is missing',
    }[how]
    assert expected in line, line


def test_a_read_failure_of_a_verified_step_is_not_called_corruption(tmp_path, monkeypatch):
    # Checksums verified: the files are as written, so an error while reading (out of
    # memory, ...) must propagate instead of moving every good checkpoint aside.
    d = str(tmp_path / 'ck')
    mesh = _saved(d)
    before = _tree_listing(d)

    def fail(*args, **kwargs):
        raise RuntimeError('RESOURCE_EXHAUSTED: out of memory')

    ck = ckpt_lib.Checkpointer(d)
    monkeypatch.setattr(ck._manager, 'restore', fail)
    with pytest.raises(RuntimeError, match='RESOURCE_EXHAUSTED'):
        ck.restore_latest(_abstract(_state(mesh)), FakeIterator())
    ck.close()
    assert _tree_listing(d) == before and not os.path.exists(d + '.corrupt')


def test_checkpoints_without_checksums_still_load(tmp_path, capsys):
    d = str(tmp_path / 'ck')
    mesh = _saved(d)
    for s in (1, 2, 3):
        os.remove(os.path.join(d, str(s), checksums.FILE_NAME))
    with open(_largest_array_file(os.path.join(d, '3')), 'r+b') as f:
        f.truncate(100)
    ck = ckpt_lib.Checkpointer(d)
    step, state = ck.restore_latest(_abstract(_state(mesh)), FakeIterator())
    ck.close()
    assert step == 2
    np.testing.assert_array_equal(state['w'], np.arange(4096) + 2.0)
    assert 'its arrays failed to load' in capsys.readouterr().err


def test_readers_fall_back_to_the_newest_good_step_and_move_nothing(tmp_path, capsys):
    d = str(tmp_path / 'ck')
    _saved(d)
    _flip_a_bit(_largest_array_file(os.path.join(d, '3')))
    before = _tree_listing(d)
    capsys.readouterr()
    assert ckpt_lib.find_checkpoint_dir(d) == (d, 2)
    err = capsys.readouterr().err
    assert f'Checkpoint {os.path.join(d, "3")} is bad: state/ocdbt.process_0/d/' in err, err
    assert 'left in place' in err and err.count(' is bad: ') == 1
    assert _tree_listing(d) == before and not os.path.exists(d + '.corrupt')
    # The JSON items of a step are checked too (the config, here).
    with open(os.path.join(d, '2', 'config', 'metadata'), 'w') as f:
        f.write('{')
    assert ckpt_lib.find_checkpoint_dir(d) == (d, 1)
    assert 'config/metadata' in capsys.readouterr().err


def test_an_explicit_bad_step_is_an_error_naming_the_file_and_the_good_steps(tmp_path):
    d = str(tmp_path / 'ck')
    _saved(d)
    bad = _largest_array_file(os.path.join(d, '3'))
    _flip_a_bit(bad)
    rel = os.path.relpath(bad, os.path.join(d, '3'))
    with pytest.raises(ckpt_lib.CheckpointCorruptError) as e:
        ckpt_lib.find_checkpoint_dir(os.path.join(d, '3'))  # A step directory is explicit.
    message = str(e.value)
    assert message.startswith(f'Checkpoint {os.path.join(d, "3")} is bad: {rel}: its sha256')
    assert 'Steps that look intact: [1, 2]; choose one with --step' in message
    assert '\n' not in message
    with pytest.raises(ckpt_lib.CheckpointCorruptError, match='choose one with init_from.step'):
        ckpt_lib.find_checkpoint_dir(d, 3, 'init_from.step')
    with pytest.raises(ValueError, match=r'No checkpoint for step 7 .*steps: \[1, 2, 3\]'):
        ckpt_lib.find_checkpoint_dir(d, 7)
    with pytest.raises(ValueError, match=r'ck2 does not exist: expected a run'):
        restore.load_run(None, d + '2')
    assert os.path.isfile(bad)


def test_export_reader_falls_back_past_unreadable_arrays_of_a_step_without_checksums(
    tmp_path, capsys
):
    d = str(tmp_path / 'ck')
    ck = ckpt_lib.Checkpointer(d, keep=5)
    mesh = _mesh()
    for s in (1, 2):
        ck.save(s, {'params': _state(mesh, s)}, None)
    ck.close()
    for s in (1, 2):  # As saved before checksums existed.
        os.remove(os.path.join(d, str(s), checksums.FILE_NAME))
    with open(_largest_array_file(os.path.join(d, '2')), 'r+b') as f:
        f.truncate(100)
    source, flat = ckpt_lib.read_params_host(d)
    assert source.step == 1
    np.testing.assert_array_equal(flat['w'], np.arange(4096) + 1.0)
    assert 'its arrays failed to load' in capsys.readouterr().err
    with pytest.raises(ckpt_lib.CheckpointCorruptError, match='arrays failed to load'):
        ckpt_lib.read_params_host(d, 2)


def test_a_damaged_checksum_file_is_named(tmp_path):
    (tmp_path / checksums.FILE_NAME).write_text('{"algorithm": "sha256", "files": 3}')
    assert checksums.verify(str(tmp_path)).startswith('checksums.json is damaged')


# --------------------------------------------------------------------------------------
# load_run (evaluation): the stored config, only the selected weights, fallback.


@pytest.fixture(scope='module')
def saved_run(tmp_path_factory):
    """A workdir with steps 5 and 6 of the tiny model, saved with their config, and a
    `config.json` that says another model (as after a refused resume)."""
    workdir = tmp_path_factory.mktemp('run')
    c = tiny_config.get_config()
    t = train.build_trainer(c)
    state = t.init_fn()
    ck = ckpt_lib.Checkpointer(str(workdir / 'checkpoints'))
    params = {}
    for step in (5, 6):
        state = state.replace(params=jax.tree_util.tree_map(lambda x: x + 1.0, state.params))
        params[step] = ckpt_lib.flat_by_path(jax.device_get(state.params))
        # No optimizer state in the checkpoint: evaluation must not need it.
        ck.save(step, {'params': state.params, 'step': state.step}, None, t.config)
    ck.close()
    other = t.config.to_dict()
    other['model']['image']['width'] = 64
    with open(workdir / 'config.json', 'w') as f:
        json.dump(json.loads(json.dumps(other, default=str)), f)
    return str(workdir), params


def test_load_run_uses_the_stored_config_and_reads_only_the_params(saved_run):
    workdir, params = saved_run
    run = restore.load_run(None, os.path.join(workdir, 'checkpoints'))
    assert run.step == 6 and run.config.model.image.width == 32
    for k, x in ckpt_lib.flat_by_path(run.params).items():
        np.testing.assert_array_equal(np.asarray(x), params[6][k], err_msg=k)
    cfg = restore.checkpoint_config(os.path.join(workdir, 'checkpoints'), 5)
    assert cfg.model.image.width == 32
    assert restore.checkpoint_config(workdir).model.image.width == 32  # A workdir works too.


def test_load_run_falls_back_past_a_damaged_step_unless_it_was_asked_for(
    saved_run, tmp_path, capsys
):
    workdir, params = saved_run
    d = str(tmp_path / 'checkpoints')
    shutil.copytree(os.path.join(workdir, 'checkpoints'), d)
    bad = _largest_array_file(os.path.join(d, '6'))
    _flip_a_bit(bad)
    capsys.readouterr()
    run = restore.load_run(None, d)
    assert run.step == 5
    for k, x in ckpt_lib.flat_by_path(run.params).items():
        np.testing.assert_array_equal(np.asarray(x), params[5][k], err_msg=k)
    assert f'Checkpoint {os.path.join(d, "6")} is bad: state/' in capsys.readouterr().err
    with pytest.raises(ckpt_lib.CheckpointCorruptError, match=r'Steps that look intact: \[5\]'):
        restore.load_run(None, d, step=6)
    assert os.path.isfile(bad)


def test_load_run_without_any_config_says_what_to_pass(tmp_path):
    d = str(tmp_path / 'w' / 'checkpoints')
    _saved(d, (1,))
    os.remove(os.path.join(d, '1', 'config', 'metadata'))
    with pytest.raises(ValueError, match=r'No config for any committed step .*pass --config'):
        restore.checkpoint_config(d)


def test_a_save_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """A full disk found by Orbax's writes is hundreds of lines from its threads and a
    half-written step; the free space is checked first, and the earlier steps stay."""
    directory = str(tmp_path / 'checkpoints')
    _saved(directory, steps=(1,))
    before = sorted(os.listdir(directory))
    usage = shutil.disk_usage(directory)
    monkeypatch.setattr(ckpt_lib.shutil, 'disk_usage', lambda path: usage._replace(free=64 << 10))
    ck = ckpt_lib.Checkpointer(directory, keep=5)
    try:
        with pytest.raises(
            ValueError, match=r'Not enough disk space to save step 2: .* MiB are free'
        ):
            ck.save(2, _state(_mesh(), 2), FakeIterator(20), {'seed': 2})
    finally:
        ck.close()
    assert sorted(os.listdir(directory)) == before
    assert ck_steps(directory) == [1]


def ck_steps(directory):
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
