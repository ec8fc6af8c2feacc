"""Kill, preemption and corruption with the real command line (subprocesses).

The scenarios come from experiments/reliability.py (which produces the reliability table),
so the table's script is tested here. Each run is `python -m alignjax.train --config
tests/tiny_config.py --workdir W` (16 steps, a checkpoint every 4, 8 CPU devices) with one
fault injected; "bit-exact" means every logged loss and the final parameters equal the
uninterrupted run's exactly.
"""

import importlib.util
import os
import signal

import pytest
from conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'reliability', os.path.join(REPO, 'experiments', 'reliability.py')
)
R = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(R)
# The runs get the suite's XLA flags (tests/conftest.py), which reliability.py's children
# replace with their device count alone; this module's copy of the script only.
_env = R._env
R._env = lambda devices: {**_env(devices), 'XLA_FLAGS': xla_flags(devices)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('ref') / 'straight')
    ((rc, out),) = R.run(workdir)
    assert rc == 0, out[-3000:]
    # Every save logs how long it blocked the loop.
    saves = [r for r in R.workdir_records(workdir) if 'checkpoint/blocking_s' in r]
    assert [r['step'] for r in saves] == [4, 8, 12, 16]
    assert all(r['checkpoint/blocking_s'] > 0 for r in saves)
    return workdir


def test_sigterm_then_sigkill_then_resume_is_bit_exact(tmp_path, reference):
    w = str(tmp_path / 'run')
    # SIGTERM after step 5: the step finishes, step 5 is saved, exit 0 with one line.
    ((rc, out),) = R.run(w, 'sigterm@5')
    assert rc == 0, out[-3000:]
    lines = [line for line in out.splitlines() if 'run the same command to resume' in line]
    where = os.path.join(w, 'checkpoints', '5')
    expected = f'SIGTERM: saved step 5 to {where}; run the same command to resume.'
    assert lines == [expected], out[-3000:]
    # The same command resumes at 5; SIGKILL after step 10, once step 8 is committed.
    ((rc, out),) = R.run(w, 'kill@10:after=8')
    assert rc == -signal.SIGKILL, out[-3000:]
    assert 'Resumed from step 5' in out
    # The same command again: resumes at 8 and finishes; losses 1..16 and params bit-exact.
    ((rc, out),) = R.run(w)
    assert rc == 0, out[-3000:]
    assert 'Resumed from step 8' in out
    result = R.compare(w, reference)
    assert result['bit_exact'], result


def test_truncated_latest_checkpoint_falls_back_and_resumes_bit_exact(tmp_path, reference):
    result = R.scenario_corrupt(str(tmp_path), reference, 'truncated')
    assert result['detected'], result
    assert result['bit_exact'], result


def test_two_processes_save_the_same_step_on_sigterm_to_one(tmp_path):
    w = str(tmp_path / 'mp')
    outs = R.run(w, 'sigterm@3:p1', processes=2)
    for rc, out in outs:
        assert rc == 0, out[-3000:]
    saved = [R._saved_step(out) for _, out in outs]
    assert saved[0] is not None and saved[0] == saved[1], saved
    steps = sorted(int(n) for n in os.listdir(os.path.join(w, 'checkpoints')) if n.isdigit())
    assert steps[-1] == saved[0] and saved[0] < R.TOTAL
