"""The command line: `--config.*` overrides, one-line errors, --dry_run, safe resumes.

Every user error from a CLI is one `error:` line (no traceback) and changes nothing in the
workdir; `--debug` shows the traceback.
"""

import errno
import io
import os
import signal
import subprocess
import sys

import pytest
from ml_collections import ConfigDict

from alignjax import cli, errors, preemption, train
from alignjax import config as config_lib
from alignjax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'tests', 'tiny_config.py')


def run_cli(*args, env=None, timeout=600):
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO, **(env or {})}
    return subprocess.run(
        [sys.executable, '-m', *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def one_error_line(proc) -> str:
    """The `error:` line of a failed command, checking it is the whole story."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error: ')]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def tree(path):
    """{relative path: bytes} of every file under `path` (what a refused run must keep)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, 'rb') as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


# --------------------------------------------------------------------------------------
# Overrides.


def base():
    return config_lib.base_config()


def test_split_overrides_both_spellings():
    rest, ov = cli.split_overrides(
        ['prog', '--workdir', 'w', '--config.total_steps=5', '--config.model.dtype', 'float32']
    )
    assert rest == ['prog', '--workdir', 'w']
    assert [(o.path, o.raw) for o in ov] == [
        (('total_steps',), '5'),
        (('model', 'dtype'), 'float32'),
    ]
    with pytest.raises(cli.UsageError, match='has no value'):
        cli.split_overrides(['prog', '--config.total_steps'])


@pytest.mark.parametrize(
    'flag, value, expected',
    [
        ('total_steps', '7', 7),
        ('optim.lr', '1e-3', 1e-3),
        ('optim.clamp_logit_scale', 'false', False),
        ('tokenizer.name', 'clip_bpe', 'clip_bpe'),
        ('optim.freeze', 'img/.*,txt/.*', ('img/.*', 'txt/.*')),
        ('optim.freeze', "('a',)", ('a',)),
        ('optim.freeze', '', ()),
        ('model.text.variant', 'None', None),
    ],
)
def test_override_parses_as_the_fields_type(flag, value, expected):
    (o,) = cli.split_overrides([f'--config.{flag}={value}'])[1]
    c = cli.apply_overrides(base(), [o])
    node = c
    for key in flag.split('.'):
        node = node[key]
    assert node == expected and type(node) is type(expected)


def test_override_of_a_wrong_type_names_the_flag():
    (o,) = cli.split_overrides(['--config.total_steps=many'])[1]
    with pytest.raises(cli.UsageError, match=r"--config.total_steps='many': expected an integer"):
        cli.apply_overrides(base(), [o])


def test_misspelled_field_names_the_closest_or_lists_all():
    (o,) = cli.split_overrides(['--config.model.image.widht=5'])[1]
    with pytest.raises(
        cli.UsageError, match=r"config.model.image has no field 'widht' \(did you mean 'width'\?\)"
    ):
        cli.apply_overrides(base(), [o])
    (o,) = cli.split_overrides(['--config.model.xyzzy=5'])[1]
    with pytest.raises(cli.UsageError, match=r'Valid fields of config.model: act, .*embed_dim'):
        cli.apply_overrides(base(), [o])
    (o,) = cli.split_overrides(['--config.model=5'])[1]
    with pytest.raises(cli.UsageError, match='is a section, not a value'):
        cli.apply_overrides(base(), [o])


def test_overrides_add_an_evaluator_and_loss_fields():
    _, ov = cli.split_overrides(
        [
            '--config.evals.inet.type=zeroshot',
            '--config.evals.inet.classnames=cat,dog',
            '--config.evals.inet.every_steps=100',
            '--config.loss.name=filip',
            '--config.loss.chunk_size=64',
        ]
    )
    c = cli.apply_overrides(base(), ov)
    assert c.evals.inet.to_dict() == {
        'type': 'zeroshot',
        'classnames': 'cat,dog',
        'every_steps': 100,
    }
    resolved = config_lib.resolve(c)
    assert resolved.loss.name == 'filip' and resolved.loss.chunk_size == 64
    # A misspelled method field is caught when the config is resolved.
    _, ov = cli.split_overrides(['--config.loss.name=filip', '--config.loss.chunk_sise=64'])
    with pytest.raises(ValueError, match="did you mean 'chunk_size'"):
        config_lib.resolve(cli.apply_overrides(base(), ov))


def test_load_config_errors_and_json(tmp_path):
    with pytest.raises(cli.UsageError, match='no config file at'):
        cli.load_config(str(tmp_path / 'nope.py'))
    bad = tmp_path / 'config.json'
    bad.write_text('{"total_steps": ')
    with pytest.raises(cli.UsageError, match='is not valid JSON'):
        cli.load_config(str(bad))
    bad.write_text('{"total_steps": 3}')
    assert cli.load_config(str(bad)).total_steps == 3


# --------------------------------------------------------------------------------------
# Error classification and printing.


def test_user_message_classifies_errors():
    full = OSError(errno.ENOSPC, 'No space left on device', '/w/checkpoints/4')
    wrapped = RuntimeError('async save failed')
    wrapped.__cause__ = full
    assert 'No space left on device writing /w/checkpoints/4' in errors.user_message(wrapped)
    missing = ModuleNotFoundError(
        "No module named 'tensorflow_datasets'", name='tensorflow_datasets'
    )
    assert "pip install 'alignjax[data]'" in errors.user_message(missing)
    assert errors.user_message(ModuleNotFoundError('x', name='numpyy')) is None  # A bug: traceback.
    gone = FileNotFoundError(errno.ENOENT, 'No such file or directory', '/data/x.csv')
    assert errors.user_message(gone) == 'No such file or directory: /data/x.csv (check the path).'
    assert errors.user_message(ValueError('bad field')) == 'bad field'
    assert errors.user_message(KeyError('k')) is None
    assert errors.user_message(TypeError('t')) is None


def test_print_error_is_one_line_plus_bounded_context():
    out = io.StringIO()
    errors.print_error('first\nsecond\n' + '\n'.join(f'l{i}' for i in range(20)), file=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == 'error: first' and lines[1] == '  second'
    assert len(lines) == 1 + 4 + 1 and 'more lines with --debug' in lines[-1]


# --------------------------------------------------------------------------------------
# The trainer's command line.


def test_train_cli_errors_are_one_line(tmp_path):
    line = one_error_line(
        run_cli(
            'alignjax.train',
            '--config',
            TINY,
            '--workdir',
            str(tmp_path / 'w'),
            '--config.total_stepz=5',
        )
    )
    assert "did you mean 'total_steps'" in line
    assert not (tmp_path / 'w').exists()

    line = one_error_line(
        run_cli(
            'alignjax.train', '--config', str(tmp_path / 'x.py'), '--workdir', str(tmp_path / 'w')
        )
    )
    assert 'no config file at' in line

    afile = tmp_path / 'afile'
    afile.write_text('keep me')
    line = one_error_line(run_cli('alignjax.train', '--config', TINY, '--workdir', str(afile)))
    assert 'is a file, not a directory' in line and afile.read_text() == 'keep me'

    line = one_error_line(
        run_cli(
            'alignjax.train',
            '--config',
            TINY,
            '--workdir',
            str(tmp_path / 'w'),
            '--config.total_steps=2',
            '--config.optim.warmup_steps=5',
        )
    )
    assert '--config.optim.warmup_steps=' in line

    # --debug: the traceback, for a bug report.
    proc = run_cli('alignjax.train', '--config', TINY, '--workdir', str(afile), '--debug')
    assert proc.returncode != 0 and 'Traceback' in proc.stderr


def test_a_url_workdir_is_refused_and_nothing_local_is_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match='a URL is not supported as a workdir'):
        workdir_lib.check_writable('gs://bucket/run')
    assert not os.listdir(tmp_path)  # no local 'gs:' folder


def test_read_only_workdir_is_refused_before_building(tmp_path):
    with pytest.raises(ValueError, match='cannot be created'):
        workdir_lib.check_writable('/proc/alignjax_cannot_be_here')
    ro = tmp_path / 'ro'
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip('running as a user that can write anywhere')
        with pytest.raises(ValueError, match='is not writable'):
            workdir_lib.check_writable(str(ro))
    finally:
        os.chmod(ro, 0o700)


def tiny(**changes):
    c = config_lib.load_config_file(TINY)
    c.optim.warmup_steps = 1
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split('.')
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_dry_run_reads_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / 'w'
    out = train.dry_run(tiny(), str(workdir))
    assert not workdir.exists(), 'a dry run writes nothing into the workdir'
    assert out['resume_step'] is None and out['config_path'] == str(workdir / 'config.json')
    assert out['params']['params'] > 0
    assert out['step_bytes_per_device'] >= out['state_bytes_per_device'] > 0
    printed = capsys.readouterr().out
    assert 'parameters (params)' in printed and 'would start a new run' in printed


def test_dry_run_reads_no_vocabulary_file(tmp_path):
    c = tiny()
    c.tokenizer = ConfigDict(
        {
            'name': 'clip_bpe',
            'context_length': c.model.text.context_length,
            'bpe_path': str(tmp_path / 'missing.txt.gz'),
        }
    )
    c.model.text.vocab_size = 49_408
    out = train.dry_run(c, None, compile=False)
    assert out['step_bytes_per_device'] is None and out['params']['params'] > 0


@pytest.mark.slow  # Two short training runs (about 40 s).
def test_refused_resume_changes_nothing_and_allowed_one_keeps_the_old_config(tmp_path):
    workdir = str(tmp_path / 'w')
    train.train_and_evaluate(tiny(total_steps=2, checkpoint_every_steps=2), workdir)
    before = tree(workdir)
    for change in (
        {'batch_size': 8},
        {'model.embed_dim': 8},
        {'loss.name': 'siglip', 'model.logit_bias_init': -10.0},
        {'data.train': 'synthetic:shapes?extra_captions=true'},
    ):
        with pytest.raises(ValueError, match='holds a run with another config') as e:
            train.train_and_evaluate(tiny(total_steps=4, **change), workdir)
        assert 'Nothing was written' in str(e.value)
        assert tree(workdir) == before, f'{change}: the workdir changed'
    with pytest.raises(ValueError, match='holds a run with another config'):
        train.dry_run(tiny(total_steps=4, batch_size=8), workdir, compile=False)
    assert train.dry_run(tiny(total_steps=4), workdir, compile=False)['resume_step'] == 2

    # More steps: allowed; the first config is kept beside the new one.
    summary = train.train_and_evaluate(tiny(total_steps=3, checkpoint_every_steps=2), workdir)
    assert summary['step'] == 3
    kept = os.path.join(workdir, 'config.before_step_2.json')
    with open(kept, 'rb') as f:
        assert f.read() == before['config.json']


def test_ctrl_c_is_acknowledged_and_a_second_stops(capsys):
    watcher = preemption.PreemptionWatcher(signals=(signal.SIGINT,))
    try:
        watcher.current_step = 7
        os.kill(os.getpid(), signal.SIGINT)
        assert watcher.reached(7)
        assert 'finishing step 7, saving' in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt, match='stopped without saving'):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        watcher.close()
