"""Bad input and faults a new user hits -> one clear line, nothing lost?

    python experiments/bad_inputs.py                  # every case, ~8 min on 2 CPU cores
    python experiments/bad_inputs.py --cases csv_byte_order_mark,wds_glob   # rerun some
    python experiments/reliability.py --bad-inputs    # the same, from the reliability script

Each case prepares a bad input (a misspelled flag, a damaged checkpoint, a garbage weight
file, a spreadsheet-made CSV, ...) in a fresh directory, runs the real command line
(`python -m alignjax.<tool> ...`) once, and records:

  outcome     'error' (exit 1 with an `error:` line), 'ok' (it worked: the input was
              valid after all, e.g. a CSV with a byte-order mark) or 'fallback' (it worked
              around the fault with a warning, e.g. the previous checkpoint);
  one_line    the failure is one `error:` line (plus at most 4 lines of context) and no
              traceback; for 'ok' / 'fallback' cases: no traceback at all;
  lost        files under the case's directory whose content the command destroyed:
              deleted or changed, unless appended to or kept elsewhere (a checkpoint moved
              to checkpoints.corrupt/, a config kept as config.before_step_<N>.json); a
              run that goes on may rewrite its summary.json. Must be none;
  message     the `error:` line or the warning the user sees.

Prints a table, writes `experiments/results/bad_inputs.json` and the table between the
markers of docs/ERRORS.md. `--cases` reruns some cases and replaces their rows of the
table already in the JSON file.
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


def snapshot(root: str) -> dict[str, bytes]:
    """{relative path: content} of every file under `root`."""
    out = {}
    for path in glob.glob(os.path.join(root, '**'), recursive=True):
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


# What a run that goes on (after a fallback) rewrites by design: its final metrics.
REWRITTEN_BY_A_RUN = ('summary.json',)


def lost_files(before: dict[str, bytes], after: dict[str, bytes], outcome: str) -> list[str]:
    """Files whose content is gone: not at their path (an append counts as kept) and not
    anywhere else either (a checkpoint moved aside to checkpoints.corrupt/, a config kept as
    config.before_step_<N>.json). A run that goes on may rewrite `REWRITTEN_BY_A_RUN`."""
    elsewhere = {hashlib.sha1(v).hexdigest() for v in after.values()}
    lost = []
    for path, old in before.items():
        new = after.get(path)
        if new is not None and new.startswith(old):
            continue
        if hashlib.sha1(old).hexdigest() in elsewhere:
            continue
        if outcome != 'error' and os.path.basename(path) in REWRITTEN_BY_A_RUN:
            continue
        lost.append(path)
    return sorted(lost)


def api(code: str) -> list[str]:
    """A Python API call, its errors classified as the command lines do (`errors.guard`)."""
    return python('-c', f'from alignjax import errors\nerrors.guard(lambda: exec({code!r}, {{}}))')


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


def make_images(folder: str, n: int = 12, captions: bool = True) -> list[str]:
    """`n` small coloured squares (red, green, blue in turn), with same-named .txt captions."""
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    colours = {'red': (220, 30, 30), 'green': (30, 200, 30), 'blue': (30, 30, 220)}
    names = []
    for i in range(n):
        colour = list(colours)[i % 3]
        path = os.path.join(folder, f'{i:03d}.png')
        Image.fromarray(np.full((16, 16, 3), colours[colour], np.uint8)).save(path)
        if captions:
            with open(path[:-4] + '.txt', 'w') as f:
                f.write(f'a {colour} square')
        names.append(colour)
    return names


def write_table(path: str, text: str | bytes) -> str:
    with open(path, 'wb') as f:
        f.write(text.encode() if isinstance(text, str) else text)
    return path


def newest_array_files(workdir: str) -> list[str]:
    step = max(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
    return glob.glob(os.path.join(workdir, 'checkpoints', str(step), 'state', 'ocdbt.process_0', 'd', '*'))


def truncate_newest(workdir: str) -> None:
    for f in newest_array_files(workdir):
        os.truncate(f, os.path.getsize(f) // 2)


def flip_a_bit_in_newest(workdir: str) -> None:
    f = max(newest_array_files(workdir), key=os.path.getsize)
    with open(f, 'rb') as fh:
        b = bytearray(fh.read())
    b[len(b) // 2] ^= 0x10
    with open(f, 'wb') as fh:
        fh.write(b)


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
    return ['env', 'XLA_FLAGS=--xla_force_host_platform_device_count=8', *cmd], 'ok', 'train step per device'


# Checkpoints: one rule for every reader (validate, name the bad file, fall back, never delete).
RESUME = ('--config.total_steps=6', '--config.checkpoint_every_steps=2', '--config.optim.warmup_steps=1', '--config.keep_checkpoints=10')  # fmt: skip
EVAL = ('--config.evals.s.type=retrieval', '--config.evals.s.num_examples=16', '--config.evals.s.batch_size=8')  # fmt: skip
FELL_BACK = 'Falling back to the previous checkpoint'


@case('ckpt_data_state_garbage', 'resume: the newest data-iterator state holds garbage')
def _(d, inputs):
    w = inputs.copy_trained(d)
    write_table(os.path.join(w, 'checkpoints', str(TRAINED_STEPS), 'data', 'metadata'), b'{"next_b\x01": 3}')
    return tool('train', '--config', TINY, '--workdir', w, *RESUME), 'fallback', FELL_BACK


@case('ckpt_data_state_missing', 'resume: the newest data-iterator state is missing')
def _(d, inputs):
    w = inputs.copy_trained(d)
    shutil.rmtree(os.path.join(w, 'checkpoints', str(TRAINED_STEPS), 'data'))
    return tool('train', '--config', TINY, '--workdir', w, *RESUME), 'fallback', FELL_BACK


@case('ckpt_bit_flip_resume', 'resume: one bit flipped inside an array file')
def _(d, inputs):
    w = inputs.copy_trained(d)
    flip_a_bit_in_newest(w)
    return tool('train', '--config', TINY, '--workdir', w, *RESUME), 'fallback', FELL_BACK


@case('ckpt_bit_flip_evaluate', 'evaluate: one bit flipped inside an array file')
def _(d, inputs):
    w = inputs.copy_trained(d)
    flip_a_bit_in_newest(w)
    return tool('evaluate', '--workdir', w, *EVAL), 'fallback', FELL_BACK


@case('ckpt_truncated_evaluate', 'evaluate: the newest array files are truncated')
def _(d, inputs):
    w = inputs.copy_trained(d)
    truncate_newest(w)
    return tool('evaluate', '--workdir', w, *EVAL), 'fallback', FELL_BACK


@case('ckpt_truncated_evaluate_step', 'evaluate --step N of a damaged step')
def _(d, inputs):
    w = inputs.copy_trained(d)
    truncate_newest(w)
    return tool('evaluate', '--workdir', w, '--step', str(TRAINED_STEPS), *EVAL), 'error'


@case('ckpt_truncated_export', 'export: the newest array files are truncated')
def _(d, inputs):
    w = inputs.copy_trained(d)
    truncate_newest(w)
    return tool('export', '--workdir', w, '--out', f'{d}/out.safetensors'), 'fallback', FELL_BACK


# Weight files: never trusted, every error names the file (and the tensor).


@case('weights_random_safetensors', 'a .safetensors file of random bytes')
def _(d, inputs):
    write_table(f'{d}/model.safetensors', os.urandom(4096))
    return tool('convert', '--from', 'alignjax', f'{d}/model.safetensors', '--out', f'{d}/o'), 'error'


@case('weights_truncated_safetensors', 'an export cut short (an interrupted download)')
def _(d, inputs):
    subprocess.run(tool('export', '--workdir', inputs.trained(), '--out', f'{d}/e'), env=env(), check=True, capture_output=True, cwd=REPO)  # fmt: skip
    path = f'{d}/e/params.safetensors'
    os.truncate(path, os.path.getsize(path) - 3000)
    return tool('convert', '--from', 'alignjax', f'{d}/e', '--out', f'{d}/o'), 'error'


@case('weights_garbage_npz', 'a big_vision .npz of random bytes')
def _(d, inputs):
    write_table(f'{d}/webli.npz', os.urandom(3000))
    return tool('convert', '--from', 'big_vision', f'{d}/webli.npz', '--out', f'{d}/o'), 'error'


@case('weights_garbage_pt', 'an OpenAI .pt of random bytes')
def _(d, inputs):
    write_table(f'{d}/ViT-B-32.pt', os.urandom(3000))
    return tool('convert', '--from', 'openai', f'{d}/ViT-B-32.pt', '--out', f'{d}/o'), 'error'


@case('weights_hf_on_a_workdir', 'convert --from hf given a training workdir')
def _(d, inputs):
    w = inputs.copy_trained(d)
    return tool('convert', '--from', 'hf', w, '--out', f'{d}/o'), 'error'


@case('export_encodes', 'an export of the 16 px tiny run: image + string -> embeddings')
def _(d, inputs):
    subprocess.run(tool('export', '--workdir', inputs.trained(), '--out', f'{d}/e'), env=env(), check=True, capture_output=True, cwd=REPO)  # fmt: skip
    code = (
        'import alignjax, stat, os, glob\nfrom PIL import Image\n'
        f'm = alignjax.load_pretrained({d + "/e"!r})\n'
        'print("encoded", m.encode_image([Image.new("RGB", (30, 20))]).shape, m.encode_text(["a red square"]).shape, '
        f'"size", m.preprocess.size, "modes", sorted({{oct(os.stat(p).st_mode & 0o777) for p in glob.glob({d + "/e/*"!r})}}))'
    )
    return api(code), 'ok', 'encoded'


@case('load_pretrained_workdir', 'load_pretrained on a training workdir')
def _(d, inputs):
    w = inputs.copy_trained(d)
    code = f'import alignjax\nm = alignjax.load_pretrained({w!r})\nprint("loaded", m.source, m.preprocess.size)'
    return api(code), 'ok', 'loaded'


@case('export_without_preprocessing', 'load_pretrained on an export that does not record its preprocessing')
def _(d, inputs):
    subprocess.run(tool('export', '--workdir', inputs.trained(), '--out', f'{d}/e'), env=env(), check=True, capture_output=True, cwd=REPO)  # fmt: skip
    code = (
        'import alignjax\nfrom alignjax import export\n'
        f'p, c = export.load({d + "/e"!r})\nexport.save({d + "/old.safetensors"!r}, p, c)\n'
        f'alignjax.load_pretrained({d + "/old.safetensors"!r})'
    )
    return api(code), 'error'


# Data.


@case('csv_byte_order_mark', 'a CSV saved with a byte-order mark and CRLF line ends')
def _(d, inputs):
    make_images(d, 3)
    write_table(f'{d}/t.csv', '\ufefffilepath,title\r\n000.png,a red square\r\n001.png,a green square\r\n')
    return tool('data.stats', f'csv:{d}/t.csv'), 'ok', 'examples'


@case('csv_semicolons', 'a CSV with ; separators (a European spreadsheet)')
def _(d, inputs):
    make_images(d, 3)
    write_table(f'{d}/t.csv', 'filepath;title\n000.png;red, round\n001.png;green, square\n')
    return tool('data.stats', f'csv:{d}/t.csv'), 'ok', 'examples'


@case('csv_unquoted_separator', 'a caption with an unquoted comma (would be cut)')
def _(d, inputs):
    make_images(d, 3)
    write_table(f'{d}/t.csv', 'filepath,title\n000.png,a photo\n001.png,red, round\n')
    return tool('data.stats', f'csv:{d}/t.csv'), 'error'


@case('csv_not_utf8', 'a CSV saved as Windows-1252')
def _(d, inputs):
    make_images(d, 3)
    write_table(f'{d}/t.csv', 'filepath,title\n000.png,café\n'.encode('cp1252'))
    return tool('data.stats', f'csv:{d}/t.csv'), 'error'


@case('wds_glob', 'a wds: spec with a glob')
def _(d, inputs):
    make_images(f'{d}/img', 12)
    subprocess.run(tool('data.write', 'wds', '--input', f'{d}/img', '--output', f'{d}/shards', '--shard_size', '4'), env=env(), check=True, capture_output=True, cwd=REPO)  # fmt: skip
    return tool('data.stats', f'wds:{d}/shards/*.tar'), 'ok', 'examples'


@case('wds_glob_nothing', 'a wds: glob that matches no file')
def _(d, inputs):
    return tool('data.stats', f'wds:{d}/nothing-*.tar'), 'error'


@case('wds_truncated_shard', 'a truncated .tar shard (warns once)')
def _(d, inputs):
    make_images(f'{d}/img', 12)
    subprocess.run(tool('data.write', 'wds', '--input', f'{d}/img', '--output', f'{d}/shards', '--shard_size', '4'), env=env(), check=True, capture_output=True, cwd=REPO)  # fmt: skip
    os.truncate(sorted(glob.glob(f'{d}/shards/*.tar'))[1], 3000)  # Inside its 2nd sample.
    return tool('data.stats', f'wds:{d}/shards/*.tar'), 'fallback', 'is broken'


@case('write_missing_caption', 'data.write: an image without a caption')
def _(d, inputs):
    make_images(f'{d}/img', 3)
    os.remove(f'{d}/img/001.txt')
    return tool('data.write', 'wds', '--input', f'{d}/img', '--output', f'{d}/shards'), 'fallback', 'has no caption'


@case('train_bad_image_file', 'training data with a missing image file')
def _(d, inputs):
    make_images(d, 8)
    rows = ''.join(f'{i:03d}.png,a square\n' for i in range(8)) + 'gone.png,a lost square\n'
    write_table(f'{d}/t.csv', 'filepath,title\n' + rows)
    return (
        tool('train', '--config', TINY, '--workdir', f'{d}/w', f'--config.data.train=csv:{d}/t.csv', '--config.total_steps=3', '--config.optim.warmup_steps=1', '--config.batch_size=8'),
        'fallback', 'skipped',
    )  # fmt: skip


@case('train_no_usable_example', 'training data in which no image can be read')
def _(d, inputs):
    rows = ''.join(f'gone{i}.png,a lost square\n' for i in range(8))
    write_table(f'{d}/t.csv', 'filepath,title\n' + rows)
    return tool('train', '--config', TINY, '--workdir', f'{d}/w', f'--config.data.train=csv:{d}/t.csv', '--config.total_steps=3', '--config.optim.warmup_steps=1', '--config.batch_size=8'), 'error'  # fmt: skip


# Evaluation.


def labelled_csv(d: str) -> str:
    names = make_images(d, 12)
    rows = ''.join(f'{i:03d}.png,a {n} square,{n}\n' for i, n in enumerate(names))
    return write_table(f'{d}/test.csv', 'filepath,title,label\n' + rows)


def zeroshot(d: str, classnames: str) -> tuple[str, ...]:
    return (
        '--config.evals.c.type=zeroshot', f'--config.evals.c.data=csv:{labelled_csv(d)}?label_key=label',
        '--config.evals.c.batch_size=4', f'--config.evals.c.classnames={classnames}', '--evals', 'c',
    )  # fmt: skip


@case('eval_add_evaluator', 'evaluate: add an evaluator from the command line (the --help example)')
def _(d, inputs):
    w = inputs.copy_trained(d)
    return tool('evaluate', '--workdir', w, '--config.evals.inet.type=zeroshot', '--config.evals.inet.num_examples=40', '--config.evals.inet.batch_size=16'), 'ok', 'Wrote'  # fmt: skip


@case('eval_nothing_to_evaluate', 'evaluate a run that has no evaluators')
def _(d, inputs):
    w = inputs.copy_trained(d)
    return tool('evaluate', '--workdir', w), 'error'


@case('eval_label_names', 'evaluate: a label column of class names, class names from the command line')
def _(d, inputs):
    w = inputs.copy_trained(d)
    return tool('evaluate', '--workdir', w, *zeroshot(d, 'red,green,blue')), 'ok', 'Wrote'


@case('eval_label_no_match', 'evaluate: labels that match none of the class names')
def _(d, inputs):
    w = inputs.copy_trained(d)
    return tool('evaluate', '--workdir', w, *zeroshot(d, 'red,green,yellow')), 'error'


@case('eval_output_unwritable', 'evaluate: --output_dir cannot be written')
def _(d, inputs):
    w = inputs.copy_trained(d)
    write_table(f'{d}/afile', 'keep me')
    return tool('evaluate', '--workdir', w, *EVAL, '--output_dir', f'{d}/afile/out'), 'error'


@case('eval_twice_keeps_results', 'evaluate the same step twice (the first result is kept)')
def _(d, inputs):
    w = inputs.copy_trained(d)
    subprocess.run(tool('evaluate', '--workdir', w, *EVAL), env=env(), check=True, capture_output=True, cwd=REPO)  # fmt: skip
    return tool('evaluate', '--workdir', w, *EVAL), 'ok', 'Wrote'


@case('eval_checkpoint_alone', 'evaluate --checkpoint without --config (the stored config)')
def _(d, inputs):
    w = inputs.copy_trained(d)
    return tool('evaluate', '--checkpoint', f'{w}/checkpoints/2', '--output_dir', f'{d}/o', *EVAL), 'ok', 'Wrote'


# --------------------------------------------------------------------------------------
# Running.


def run_case(name: str, root: str, inputs: Inputs, timeout: int = 900) -> dict:
    what, prepare = CASES[name]
    d = os.path.join(root, name)
    os.makedirs(d)
    cmd, expected, *show = prepare(d, inputs)
    if cmd is None:
        return {'case': name, 'what': what, 'expected': expected, 'outcome': 'skipped',
                'as_expected': False, 'one_line': False, 'lost': [], 'message': expected,
                'stderr_lines': 0, 'seconds': 0.0}  # fmt: skip
    try:
        row = _run(cmd, d, expected, show[0] if show else None, timeout)
    finally:
        while inputs.cleanups:
            inputs.cleanups.pop()()
    row['message'] = row['message'].replace(d, '$D').replace(root, '$ROOT')
    return {'case': name, 'what': what, **row}


def _run(cmd, d, expected, show, timeout) -> dict:
    """Runs `cmd` once; `show`: a substring picking the output line to report when it
    succeeds (a warning for 'fallback' cases)."""
    before = snapshot(d)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 'timeout', str(e.stdout or ''), str(e.stderr or '')
    after = snapshot(d)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error: ')]
    traceback = 'Traceback' in err
    if rc == 1 and errors:
        outcome = 'error'
        tail = lines[lines.index(errors[0]) + 1 :]
        one_line = len(errors) == 1 and not traceback and len(tail) <= 4
        message = errors[0][len('error: ') :]
    elif rc == 0:
        everything = [line for line in (out + '\n' + err).splitlines() if line.strip()]
        shown = [line for line in everything if show and show in line]
        outcome = 'fallback' if expected == 'fallback' and shown else 'ok'
        one_line = not traceback
        message = shown[0] if shown else (everything or [''])[-1]
    else:
        outcome, one_line = f'exit {rc}', False
        message = (lines or [''])[-1]
    return {
        'expected': expected,
        'outcome': outcome,
        'lost': lost_files(before, after, outcome),
        'as_expected': outcome == expected,
        'one_line': one_line,
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
        'skipped': sum(r['outcome'] == 'skipped' for r in rows),
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
    command = 'python experiments/bad_inputs.py'
    if a.cases and os.path.exists(a.out):
        # Rerun cases replace their rows of the full table; the others are kept.
        with open(a.out) as f:
            kept = {r['case']: r for r in json.load(f)['cases']}
        kept.update({r['case']: r for r in rows})
        rows = [kept[n] for n in CASES if n in kept]
    summary = summarize(rows)
    print('\n' + table(rows) + '\n')
    print(json.dumps(summary))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, 'w') as f:
        json.dump({'command': command, 'summary': summary, 'cases': rows}, f, indent=2)
    if not a.no_doc and len(rows) == len(CASES):
        write_doc(rows, summary, command)
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return summary


if __name__ == '__main__':
    main()
