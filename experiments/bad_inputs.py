"""Bad input and faults a new user hits -> one clear line, nothing lost?

    python experiments/bad_inputs.py                  # every case, ~15 min on 2 CPU cores
    python experiments/bad_inputs.py --cases csv_bom,wds_glob
    python experiments/reliability.py --bad-inputs    # the same, from the reliability script

Each case prepares a bad input (a misspelled flag, a damaged checkpoint, a garbage weight
file, a spreadsheet-made CSV, ...) in a fresh directory, runs the real command line
(`python -m alignjax.<tool> ...`) once, and records:

  outcome     'error' (exit 1 with an `error:` line), 'ok' (it worked: the input was
              valid after all, e.g. a CSV with a byte-order mark) or 'fallback' (it worked
              around the fault with a warning, e.g. the previous checkpoint);
  one_line    the failure is one `error:` line (plus at most 4 lines of context) and no
              traceback; for 'ok' / 'fallback' cases: no traceback at all;
  lost        files under the case's directory that were deleted or changed by the
              command (must be none: a refused command leaves everything as it was);
  message     the `error:` line or the warning the user sees.

Prints a table, writes `experiments/results/bad_inputs.json` and the table between the
markers of docs/ERRORS.md.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'tests', 'tiny_config.py')
DEMO = os.path.join(REPO, 'configs', 'demo.py')
DOC = os.path.join(REPO, 'docs', 'ERRORS.md')
BEGIN, END = '<!-- bad-inputs:begin -->', '<!-- bad-inputs:end -->'
# A tiny run shared by the cases that need a trained workdir (copied for each).
TRAINED_STEPS = 4


def env() -> dict:
    return {
        **os.environ,
        'JAX_PLATFORMS': 'cpu',
        'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
        'ALIGNJAX_DEBUG': '',
    }


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def tool(name: str, *args: str) -> list[str]:
    return python('-m', f'alignjax.{name}', *args)


def snapshot(root: str) -> dict[str, str]:
    out = {}
    for path in glob.glob(os.path.join(root, '**'), recursive=True):
        if os.path.isfile(path):
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


# --------------------------------------------------------------------------------------
# Shared inputs.


class Inputs:
    """Lazily made, shared inputs (a trained tiny run, an export); each case copies them."""

    def __init__(self, root: str):
        self.root = root
        self._trained = None
        self.cleanups: list[Callable] = []  # Run after each case (e.g. unmount).

    def trained(self) -> str:
        if self._trained is None:
            w = os.path.join(self.root, 'trained')
            subprocess.run(
                tool(
                    'train', '--config', TINY, '--workdir', w,
                    f'--config.total_steps={TRAINED_STEPS}', '--config.checkpoint_every_steps=2',
                    '--config.optim.warmup_steps=1',
                ),
                env=env(), check=True, capture_output=True, cwd=REPO,
            )  # fmt: skip
            self._trained = w
        return self._trained

    def copy_trained(self, case_dir: str) -> str:
        w = os.path.join(case_dir, 'run')
        shutil.copytree(self.trained(), w)
        return w


# --------------------------------------------------------------------------------------
# The cases: each returns (command, kind) after preparing its inputs under `d`.

CASES: dict[str, tuple[str, Callable]] = {}


def case(name: str, what: str):
    def register(fn):
        CASES[name] = (what, fn)
        return fn

    return register


@case('flag_misspelled', 'a misspelled --config field')
def _(d, inputs):
    return tool('train', '--config', TINY, '--workdir', f'{d}/w', '--config.total_stepz=5'), 'error'


@case('flag_no_close_match', 'a --config field with no close match')
def _(d, inputs):
    return tool('train', '--config', TINY, '--workdir', f'{d}/w', '--config.model.xyzzy=1'), 'error'


@case('flag_wrong_type', 'a --config value of the wrong type')
def _(d, inputs):
    return tool('train', '--config', TINY, '--workdir', f'{d}/w', '--config.batch_size=big'), 'error'


@case('config_missing', 'a config file that does not exist')
def _(d, inputs):
    return tool('train', '--config', f'{d}/nope.py', '--workdir', f'{d}/w'), 'error'


@case('workdir_is_file', '--workdir names a file')
def _(d, inputs):
    with open(f'{d}/afile', 'w') as f:
        f.write('keep me')
    return tool('train', '--config', TINY, '--workdir', f'{d}/afile'), 'error'


@case('short_try_warmup', '--config.total_steps=5 on the demo (warm-up 50)')
def _(d, inputs):
    return tool('train', '--config', DEMO, '--workdir', f'{d}/w', '--config.total_steps=5'), 'error'


@case('data_missing', 'training data that does not exist')
def _(d, inputs):
    return (
        tool('train', '--config', TINY, '--workdir', f'{d}/w', f'--config.data.train=csv:{d}/none.csv'),
        'error',
    )


@case('dependency_missing', "a tfds: source without tensorflow-datasets installed")
def _(d, inputs):
    shim = os.path.join(d, 'shim')
    os.makedirs(shim)
    with open(os.path.join(shim, 'tensorflow_datasets.py'), 'w') as f:
        f.write("raise ModuleNotFoundError(\"No module named 'tensorflow_datasets'\", name='tensorflow_datasets')\n")
    cmd = tool('train', '--config', TINY, '--workdir', f'{d}/w', '--config.data.train=tfds:mnist')
    return ['env', f'PYTHONPATH={shim}{os.pathsep}{REPO}', *cmd], 'error'


@case('disk_full', 'the disk fills up during training (a 1 MB tmpfs)')
def _(d, inputs):
    small = os.path.join(d, 'small')
    os.makedirs(small)
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1M', 'tmpfs', small], capture_output=True)
    if mounted.returncode:
        return None, 'skipped (mounting a tmpfs needs root)'
    inputs.cleanups.append(lambda: subprocess.run(['umount', small], check=False))
    w = os.path.join(small, 'w')
    return tool('train', '--config', TINY, '--workdir', w, '--config.checkpoint_every_steps=2'), 'error'


@case('resume_changed_batch', 'resuming a run with another batch size')
def _(d, inputs):
    w = inputs.copy_trained(d)
    return tool('train', '--config', TINY, '--workdir', w, '--config.batch_size=8'), 'error'


@case('resume_changed_model', 'resuming a run with another model width')
def _(d, inputs):
    w = inputs.copy_trained(d)
    return tool('train', '--config', TINY, '--workdir', w, '--config.model.embed_dim=8'), 'error'


@case('dry_run_scale_config', '--dry_run of the SigLIP B/16 config (32k batch, 8 devices)')
def _(d, inputs):
    cmd = tool('train', '--config', os.path.join(REPO, 'configs', 'siglip_vit_b16.py'), '--workdir', f'{d}/w', '--dry_run')
    return ['env', 'XLA_FLAGS=--xla_force_host_platform_device_count=8', *cmd], 'ok'


# --------------------------------------------------------------------------------------
# Running.


def run_case(name: str, root: str, inputs: Inputs, timeout: int = 900) -> dict:
    what, prepare = CASES[name]
    d = os.path.join(root, name)
    os.makedirs(d)
    cmd, expected = prepare(d, inputs)
    if cmd is None:
        return {'case': name, 'what': what, 'expected': expected, 'outcome': 'skipped',
                'as_expected': False, 'one_line': False, 'lost': [], 'message': expected,
                'stderr_lines': 0, 'seconds': 0.0}  # fmt: skip
    try:
        return _run(name, what, d, cmd, expected, timeout)
    finally:
        while inputs.cleanups:
            inputs.cleanups.pop()()


def _run(name, what, d, cmd, expected, timeout) -> dict:
    before = snapshot(d)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 'timeout', e.stdout or '', e.stderr or ''
    after = snapshot(d)
    lost = sorted(k for k, v in before.items() if after.get(k) != v)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error: ')]
    warnings = [line for line in lines if 'warn' in line.lower() or 'falling back' in line.lower()]
    traceback = 'Traceback' in err
    if rc == 1 and errors:
        outcome = 'error'
        tail = lines[lines.index(errors[0]) + 1 :]
        one_line = len(errors) == 1 and not traceback and len(tail) <= 4
        message = errors[0][len('error: ') :]
    elif rc == 0:
        outcome = 'fallback' if warnings else 'ok'
        one_line = not traceback
        message = warnings[0] if warnings else (out.strip().splitlines() or [''])[-1]
    else:
        outcome, one_line = f'exit {rc}', False
        message = (lines or [''])[-1]
    return {
        'case': name,
        'what': what,
        'expected': expected,
        'outcome': outcome,
        'as_expected': outcome == expected,
        'one_line': one_line,
        'lost': lost,
        'message': message.strip(),
        'stderr_lines': len(lines),
        'seconds': round(time.time() - t0, 1),
    }


def table(rows: list[dict]) -> str:
    out = ['| case | input | outcome | one clear line | data lost | what the user sees |', '|---|---|---|---|---|---|']
    for r in rows:
        msg = r['message'].replace('|', '\\|')
        msg = msg if len(msg) <= 240 else msg[:237] + '...'
        mark = '' if r['as_expected'] else f' (expected {r["expected"]})'
        out.append(
            f'| `{r["case"]}` | {r["what"]} | {r["outcome"]}{mark} | {"yes" if r["one_line"] else "**no**"} '
            f'| {", ".join(r["lost"]) or "none"} | {msg} |'
        )
    return '\n'.join(out)


def summarize(rows: list[dict]) -> dict:
    return {
        'cases': len(rows),
        'as_expected': sum(r['as_expected'] for r in rows),
        'one_clear_line': sum(r['one_line'] for r in rows),
        'files_lost': sum(len(r['lost']) for r in rows),
    }


def write_doc(rows: list[dict], summary: dict, command: str) -> None:
    with open(DOC) as f:
        text = f.read()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    block = (
        f'{BEGIN}\n`{command}` ({time.strftime("%Y-%m-%d")}): {summary["cases"]} cases, '
        f'{summary["as_expected"]} with the expected outcome, {summary["one_clear_line"]} '
        f'giving one clear line, {summary["files_lost"]} files lost.\n\n{table(rows)}\n{END}'
    )
    with open(DOC, 'w') as f:
        f.write(head + block + tail)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cases', default='', help='comma-separated case names (default: all)')
    p.add_argument('--out', default=os.path.join(REPO, 'experiments', 'results', 'bad_inputs.json'))
    p.add_argument('--no-doc', action='store_true', help='do not rewrite docs/ERRORS.md')
    p.add_argument('--keep', action='store_true', help='keep the case directories')
    a = p.parse_args(argv)
    names = [n for n in a.cases.split(',') if n] or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        p.error(f'unknown cases {unknown}; valid: {", ".join(CASES)}')
    root = tempfile.mkdtemp(prefix='alignjax_bad_inputs_')
    inputs = Inputs(root)
    rows = []
    for name in names:
        rows.append(run_case(name, root, inputs))
        r = rows[-1]
        print(f'[{len(rows)}/{len(names)}] {name}: {r["outcome"]} one_line={r["one_line"]} lost={len(r["lost"])} ({r["seconds"]} s)', flush=True)
    summary = summarize(rows)
    command = 'python experiments/bad_inputs.py' + (f' --cases {a.cases}' if a.cases else '')
    print('\n' + table(rows) + '\n')
    print(json.dumps(summary))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, 'w') as f:
        json.dump({'command': command, 'summary': summary, 'cases': rows}, f, indent=2)
    if not a.no_doc and not a.cases:
        write_doc(rows, summary, command)
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return summary


if __name__ == '__main__':
    main()
