"""Checkpoint reliability table: kills, preemptions and corruptions -> bit-exact resumes?

    python experiments/reliability.py                 # full table, ~10 min on 2 CPU cores
    python experiments/reliability.py --quick         # one scenario per kind
    python experiments/reliability.py --bad-inputs    # the bad-input table (bad_inputs.py)

Prints a table and writes `experiments/reliability.json`. Every scenario trains the tiny
CLIP of `tests/tiny_config.py` (8 forced CPU devices, 2N = 16 steps, a checkpoint every 4)
with the real command line, `python -m alignjax.train --config tests/tiny_config.py
--workdir W`, run through this file's `child` entry, which injects one fault:

  kill@K[:after=S]   SIGKILL the process after step K (first waiting for step S's commit;
                     S < K, since step S is saved after it is logged);
  killsave@S         SIGKILL right after the asynchronous save of step S has started;
  sigterm@K[:pP]     SIGTERM after step K (only to process P in multi-process runs);
  sigint@K           SIGINT (Ctrl-C) after step K;
and the corruption scenarios damage the newest checkpoint of a finished run (truncated array
files, no commit marker, no tree metadata, a half-written temporary directory) before running
the same command again. A scenario passes when the run that follows (the same command, no
fault) produces, for every step, the logged loss of the uninterrupted run bit for bit, and
the final parameters are bit-identical.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # Run as a script from anywhere: import this checkout's alignjax.
    sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, 'tests', 'tiny_config.py')
TOTAL, EVERY = 16, 4


# --------------------------------------------------------------------------------------
# The child: the trainer's CLI with one injected fault.


def _parse_fault(spec: str) -> dict:
    kind, _, rest = spec.partition('@')
    out = {'kind': kind}
    if rest:
        step, *opts = rest.split(':')
        out['step'] = int(step)
        for opt in opts:
            if opt.startswith('after='):
                out['after'] = int(opt[len('after=') :])
            elif opt.startswith('p'):
                out['process'] = int(opt[1:])
    return out


def child(fault: str, argv: list[str]) -> None:
    """Runs `alignjax.train.main(argv)` with `fault` injected (see the module docstring)."""
    import jax

    from alignjax import checkpoint as checkpoint_lib
    from alignjax import train
    from alignjax import workdir as workdir_lib

    f = _parse_fault(fault)
    workdir = argv[argv.index('--workdir') + 1]

    def mine() -> bool:
        return f.get('process') is None or jax.process_index() == f['process']

    if f['kind'] in ('kill', 'sigterm', 'sigint'):
        original_write = workdir_lib.MetricsWriter.write

        def write(self, step, metrics):
            original_write(self, step, metrics)
            if step != f['step'] or 'train/loss' not in metrics or not mine():
                return
            if f['kind'] == 'kill':
                if 'after' in f:  # Wait for the background commit of step `after`.
                    marker = os.path.join(
                        workdir, 'checkpoints', str(f['after']), checkpoint_lib.COMMIT_FILE
                    )
                    deadline = time.time() + 300
                    while not os.path.exists(marker):
                        if time.time() > deadline:  # Never saved: the scenario is wrong.
                            print(f'fault: step {f["after"]} never committed', flush=True)
                            os._exit(3)
                        time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGTERM if f['kind'] == 'sigterm' else signal.SIGINT)

        workdir_lib.MetricsWriter.write = write
    elif f['kind'] == 'killsave':
        original_save = checkpoint_lib.Checkpointer.save

        def save(self, step, *args, **kwargs):
            original_save(self, step, *args, **kwargs)
            if step == f['step']:
                os.kill(os.getpid(), signal.SIGKILL)  # The async write is in flight.

        checkpoint_lib.Checkpointer.save = save
    elif f['kind'] != 'none':
        raise ValueError(f'Unknown fault {fault!r}.')
    train.main([sys.argv[0], *argv])


# --------------------------------------------------------------------------------------
# The parent: scenarios and comparisons.


# A persistent compilation cache shared by the runs (None, the default: every run compiles
# afresh, as a real resume does). Not used by the tests: with it, one run on 8 virtual CPU
# devices aborted in an all-gather (XLA "stuck" check) on a heavily loaded machine.
CACHE_DIR: str | None = None


def _env(devices: int) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
        JAX_PLATFORMS='cpu',
        PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]),
    )
    if CACHE_DIR:
        env.update(
            JAX_COMPILATION_CACHE_DIR=CACHE_DIR,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
        )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def run(workdir: str, fault: str = 'none', processes: int = 1, extra=(), timeout=900):
    """Runs the training command (with `fault`) and returns [(returncode, output)]."""
    base = [
        sys.executable,
        os.path.abspath(__file__),
        'child',
        fault,
        '--config',
        CONFIG,
        '--workdir',
        workdir,
        f'--config.total_steps={TOTAL}',
        f'--config.checkpoint_every_steps={EVERY}',
        *extra,
    ]
    if processes == 1:
        cmds = [base]
    else:
        port = _free_port()
        cmds = [
            base
            + [
                '--config.mesh.data=8',
                f'--coordinator_address=localhost:{port}',
                f'--num_processes={processes}',
                f'--process_id={i}',
            ]
            for i in range(processes)
        ]
    env = _env(8 // processes)
    procs = [
        subprocess.Popen(
            c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c in cmds
    ]
    return [
        (p.returncode, out) for p, out in ((p, p.communicate(timeout=timeout)[0]) for p in procs)
    ]


def workdir_records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(workdir: str) -> dict[int, float]:
    """Logged train loss per step; a step logged twice (killed, then redone) keeps the last."""
    out = {}
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        for line in f:
            r = json.loads(line)
            if 'train/loss' in r:
                out[r['step']] = r['train/loss']
    return out


def final_params(workdir: str) -> dict:
    from alignjax import init_from as init_from_lib

    source = init_from_lib.ParamsSource(workdir)
    return {'step': source.step, 'params': source.read_host()}


def compare(workdir: str, reference: str) -> dict:
    """Bit-exactness of `workdir` against the uninterrupted `reference` run."""
    import numpy as np

    a, b = losses(workdir), losses(reference)
    pa, pb = final_params(workdir), final_params(reference)
    same_losses = sorted(a) == sorted(b) and all(a[s] == b[s] for s in b)
    same_params = pa['step'] == pb['step'] and all(
        np.array_equal(pa['params'][k], pb['params'][k]) for k in pb['params']
    )
    first_diff = next((s for s in sorted(b) if a.get(s) != b[s]), None)
    return {
        'bit_exact': bool(same_losses and same_params),
        'losses_equal': bool(same_losses),
        'params_equal': bool(same_params),
        'final_step': pa['step'],
        'first_differing_step': first_diff,
    }


def _saved_step(output: str) -> int | None:
    for line in output.splitlines():
        if 'run the same command to resume' in line and 'saved step' in line:
            return int(line.split('saved step ')[1].split()[0])
    return None


def scenario_kill(root: str, reference: str, fault: str) -> dict:
    w = os.path.join(root, fault.replace('@', '_').replace(':', '_').replace('=', ''))
    ((rc, _),) = run(w, fault)
    on_disk = (
        sorted(os.listdir(os.path.join(w, 'checkpoints')))
        if os.path.isdir(os.path.join(w, 'checkpoints'))
        else []
    )
    ((rc2, out2),) = run(w)
    result = {
        'scenario': f'SIGKILL {fault}',
        'kind': 'kill',
        'killed': rc == -signal.SIGKILL,
        'left_on_disk': on_disk,
        'resume_rc': rc2,
        'warnings': [
            l[l.index('WARNING: Checkpoint') :]
            for l in out2.splitlines()
            if 'WARNING: Checkpoint' in l
        ],
    }
    result.update(
        compare(w, reference) if rc2 == 0 else {'bit_exact': False, 'error': out2[-2000:]}
    )
    return result


def scenario_signal(root: str, reference: str, fault: str) -> dict:
    w = os.path.join(root, fault.replace('@', '_').replace(':', '_'))
    ((rc, out),) = run(w, fault)
    ((rc2, out2),) = run(w)
    result = {
        'scenario': f'{fault.split("@")[0].upper()} {fault}',
        'kind': 'preemption',
        'exit_code': rc,
        'saved_step': _saved_step(out),
        'resume_rc': rc2,
    }
    result.update(
        compare(w, reference) if rc2 == 0 else {'bit_exact': False, 'error': out2[-2000:]}
    )
    return result


def scenario_multiprocess(root: str, reference_2p: str, fault: str = 'sigterm@5:p1') -> dict:
    w = os.path.join(root, 'mp_' + fault.replace('@', '_').replace(':', '_'))
    outs = run(w, fault, processes=2)
    saved = [_saved_step(o) for _, o in outs]
    committed = sorted(int(n) for n in os.listdir(os.path.join(w, 'checkpoints')) if n.isdigit())
    outs2 = run(w, processes=2)
    result = {
        'scenario': f'SIGTERM to process 1 of 2 ({fault})',
        'kind': 'preemption',
        'exit_code': [rc for rc, _ in outs],
        'saved_step': saved,
        'same_step_on_all_processes': len(set(saved)) == 1 and saved[0] is not None,
        'checkpoints_after_preemption': committed,
        'resume_rc': [rc for rc, _ in outs2],
    }
    if all(rc == 0 for rc, _ in outs2):
        result.update(compare(w, reference_2p))
    else:
        result.update(bit_exact=False, error=outs2[0][1][-2000:])
    return result


def corrupt(workdir: str, how: str) -> str:
    """Damages the newest checkpoint of `workdir` in way `how`; returns what was damaged."""
    ckpts = os.path.join(workdir, 'checkpoints')
    step = max(int(n) for n in os.listdir(ckpts) if n.isdigit())
    path = os.path.join(ckpts, str(step))
    if how == 'truncated':
        files = glob.glob(os.path.join(path, 'state', 'd', '*'))
        files += glob.glob(os.path.join(path, 'state', 'ocdbt.process_*', 'd', '*'))
        for name in files:  # A crash mid-write: every array file cut in half.
            with open(name, 'r+b') as f:
                f.truncate(os.path.getsize(name) // 2)
    elif how == 'no_commit_marker':
        os.remove(os.path.join(path, 'commit_success.txt'))
    elif how == 'no_metadata':
        os.remove(os.path.join(path, 'state', '_METADATA'))
    elif how == 'half_written_tmp':
        # The save of `step` never committed: only its temporary directory exists.
        tmp = os.path.join(ckpts, f'{step}.orbax-checkpoint-tmp-{int(time.time())}')
        os.replace(path, tmp)
        os.remove(os.path.join(tmp, 'commit_success.txt'))
        shutil.rmtree(os.path.join(tmp, 'data'))
    else:
        raise ValueError(how)
    return path


def scenario_corrupt(root: str, reference: str, how: str) -> dict:
    w = os.path.join(root, f'corrupt_{how}')
    shutil.copytree(reference, w)
    damaged = corrupt(w, how)
    ((rc, out),) = run(w)
    # stdout and stderr share one pipe, so another line's tail may precede the warning.
    mark = 'WARNING: Checkpoint'
    warnings = [l[l.index(mark) :] for l in out.splitlines() if mark in l]
    named = any(os.path.basename(damaged) in l.split(' is bad')[0] for l in warnings)
    result = {
        'scenario': f'corrupt: {how}',
        'kind': 'corruption',
        'detected': bool(warnings) and named,
        'warnings': warnings,
        'resume_rc': rc,
    }
    result.update(compare(w, reference) if rc == 0 else {'bit_exact': False, 'error': out[-2000:]})
    return result


def blocking(sizes_mb=(4, 64, 256), repeats=3) -> list[dict]:
    """How long a save blocks the caller vs. the whole save, against a plain host copy.

    Runs in this process (call it with 8 forced CPU devices): a float32 state of each size,
    sharded over all devices, saved `repeats` times (the first, which starts Orbax's
    threads, is dropped from the medians).
    """
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from alignjax import checkpoint as checkpoint_lib

    mesh = jax.make_mesh((len(jax.devices()),), ('d',))
    rows = []
    for mb in sizes_mb:
        n = mb * 2**20 // 4 // 8 * 8
        make = jax.jit(
            lambda k, n=n: {'w': jax.random.normal(k, (n,))},
            out_shardings={'w': NamedSharding(mesh, P('d'))},
        )
        root = tempfile.mkdtemp(prefix='alignjax_blocking_')
        ck = checkpoint_lib.Checkpointer(root, keep=2)
        block, total, copy = [], [], []
        for i in range(repeats + 1):
            state = make(jax.random.key(i))
            jax.block_until_ready(state)
            t0 = time.perf_counter()
            np.asarray(jax.device_get(state['w']))
            copy.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ck.save(i + 1, state, None)
            t1 = time.perf_counter()
            ck.wait()
            block.append(t1 - t0)
            total.append(time.perf_counter() - t0)
        ck.close()
        shutil.rmtree(root, ignore_errors=True)
        rows.append(
            {
                'state_mb': mb,
                'blocking_s': float(np.median(block[1:])),
                'save_total_s': float(np.median(total[1:])),
                'device_get_s': float(np.median(copy[1:])),
                'backend': jax.default_backend(),
                'devices': len(jax.devices()),
            }
        )
    return rows


KILLS = (
    'kill@2',
    'killsave@4',
    'kill@6:after=4',
    'kill@9:after=8',
    'killsave@12',
    'kill@15:after=12',
)
SIGNALS = ('sigterm@5', 'sigint@11')
CORRUPTIONS = ('truncated', 'no_commit_marker', 'no_metadata', 'half_written_tmp')


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='one scenario of each kind')
    p.add_argument('--out', default=os.path.join(REPO, 'experiments', 'reliability.json'))
    p.add_argument('--keep', action='store_true', help='keep the run directories')
    a = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix='alignjax_reliability_')
    t0 = time.time()
    reference = os.path.join(root, 'straight')
    ((rc, out),) = run(reference)
    assert rc == 0, out[-3000:]
    kills = KILLS[2:4] if a.quick else KILLS
    signals = SIGNALS[:1] if a.quick else SIGNALS
    corruptions = CORRUPTIONS[:1] if a.quick else CORRUPTIONS
    rows = [scenario_kill(root, reference, k) for k in kills]
    rows += [scenario_signal(root, reference, s) for s in signals]
    if not a.quick:
        reference_2p = os.path.join(root, 'straight_2p')
        outs = run(reference_2p, processes=2)
        assert all(rc == 0 for rc, _ in outs), outs[0][1][-3000:]
        rows.append(scenario_multiprocess(root, reference_2p))
    rows += [scenario_corrupt(root, reference, c) for c in corruptions]
    measured = subprocess.run(
        [sys.executable, os.path.abspath(__file__), 'blocking', 'x'],
        cwd=REPO,
        env=_env(8),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    save_times = json.loads(measured.strip().splitlines()[-1])
    summary = {
        'command': 'python experiments/reliability.py' + (' --quick' if a.quick else ''),
        'setup': f'tests/tiny_config.py, {TOTAL} steps, checkpoint every {EVERY}, 8 CPU devices',
        'kill_points_tried': sum(r['kind'] == 'kill' for r in rows),
        'kills_resumed_bit_exact': sum(r['kind'] == 'kill' and r['bit_exact'] for r in rows),
        'preemptions': sum(r['kind'] == 'preemption' for r in rows),
        'preemptions_saved_and_resumed_bit_exact': sum(
            r['kind'] == 'preemption' and r['bit_exact'] for r in rows
        ),
        'corrupt_checkpoints': sum(r['kind'] == 'corruption' for r in rows),
        'corrupt_detected': sum(r['kind'] == 'corruption' and r['detected'] for r in rows),
        'corrupt_resumed_bit_exact': sum(
            r['kind'] == 'corruption' and r['bit_exact'] for r in rows
        ),
        'seconds': round(time.time() - t0, 1),
    }
    print_table(rows, summary)
    print('\nHow long a save blocks the training loop (asynchronous Orbax save, 8 CPU devices)')
    print(f'{"state MB":>9} {"blocking s":>11} {"whole save s":>13} {"device_get s":>13}')
    for r in save_times:
        print(
            f'{r["state_mb"]:>9} {r["blocking_s"]:>11.3f} {r["save_total_s"]:>13.3f} '
            f'{r["device_get_s"]:>13.3f}'
        )
    with open(a.out, 'w') as f:
        json.dump({'summary': summary, 'scenarios': rows, 'save_blocking': save_times}, f, indent=2)
    print(f'\nWrote {a.out}')
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


def print_table(rows: list[dict], summary: dict) -> None:
    print(f'\nCheckpoint reliability ({summary["setup"]})')
    print(f'{"scenario":<42} {"outcome":<44} {"bit-exact resume":>16}')
    print('-' * 104)
    for r in rows:
        if r['kind'] == 'kill':
            left = ','.join(r['left_on_disk']) or '-'
            outcome = f'killed={r["killed"]}; on disk: {left}'
        elif r['kind'] == 'preemption':
            outcome = f'exit {r["exit_code"]}, saved step {r["saved_step"]}'
        else:
            outcome = f'detected={r["detected"]}'
        print(f'{r["scenario"]:<42} {outcome[:44]:<44} {r["bit_exact"]!s:>16}')
    print('-' * 104)
    for key in (
        'kill_points_tried',
        'kills_resumed_bit_exact',
        'preemptions',
        'preemptions_saved_and_resumed_bit_exact',
        'corrupt_checkpoints',
        'corrupt_detected',
        'corrupt_resumed_bit_exact',
        'seconds',
    ):
        print(f'{key:<44} {summary[key]}')


if __name__ == '__main__':
    if len(sys.argv) > 2 and sys.argv[1] == 'child':
        child(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 1 and sys.argv[1] == 'blocking':
        print(json.dumps(blocking()))
    elif len(sys.argv) > 1 and sys.argv[1] == '--bad-inputs':
        # Bad input and faults of every kind -> one clear line, nothing lost.
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bad_inputs

        bad_inputs.main(sys.argv[2:])
    else:
        main()
