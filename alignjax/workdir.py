"""A run is its workdir: config.json, metrics.jsonl, TensorBoard events, summary.json,
pictures/ (`PICTURES_DIR`: `step_<N>/*.png` per evaluation, `CURVES_FILE`) and report.html.

Only process 0 writes files; every process may call these (they no-op elsewhere).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from alignjax import wandb_sink


def _is_writer() -> bool:
    return jax.process_index() == 0


def to_python(x: Any) -> Any:
    """Full-precision JSON-able Python value (float64 for floats, NaN kept as NaN)."""
    if isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) == 0:
        x = np.asarray(x).item()
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


def write_json(path: str, obj: Any) -> None:
    """Atomically writes JSON (a reader never sees half a file)."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def check_writable(workdir: str) -> None:
    """Creates `workdir` if needed; ValueError naming the fix if it cannot hold a run.

    Called before anything is built or written, so a bad --workdir costs nothing. A URL
    (gs://, s3://) is refused: the workdir is read and written with local file calls, and
    `os.makedirs('gs://b/run')` would make a local folder `gs:/b/run` on every host.
    """
    if '://' in str(workdir):
        raise ValueError(
            f'--workdir {workdir}: a URL is not supported as a workdir (it would be a local '
            'folder on each host); give a directory every host sees at the same path, e.g. '
            'an NFS or Filestore mount (docs/TPU_PODS.md). Data may stay on gs:// (wds:gs://...).'
        )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f'--workdir {workdir} is a file, not a directory: give a directory.')
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f'--workdir {workdir} cannot be created ({e.strerror}): give a directory you can '
            f'write to.'
        ) from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f'--workdir {workdir} is not writable: give a directory you can write to.')


PICTURES_DIR = 'pictures'
CURVES_FILE = 'curves.png'
REPORT_FILE = 'report.html'

# What a resumed run must share with the run that wrote the checkpoint: everything that
# decides the parameters' shapes, the loss, the data order and its tokens. The rest (steps,
# schedule length, evaluation, logging, checkpoint cadence, mesh, workers) may change.
RESUME_FIXED = (
    'model',
    'loss',
    'tokenizer',
    'batch_size',
    'seed',
    'imports',
    'data.train',
    'data.image_size',
    'data.normalize',
)
# ... except how they are computed, which changes no result beyond float rounding.
RESUME_FREE = ('model.dtype', 'model.remat', 'model.attention_impl', 'loss.impl', 'loss.chunk_size')


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    for key in dotted.split('.'):
        if not isinstance(tree, Mapping) or key not in tree:
            return '(absent)'
        tree = tree[key]
    return tree


def _differences(old: Any, new: Any, where: str) -> list[str]:
    if where in RESUME_FREE:
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        if 'name' in old and old.get('name') != new.get('name'):  # Another method / tokenizer.
            return [f"{where}.name: {old['name']!r} -> {new.get('name', '(absent)')!r}"]
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(
                old.get(key, '(absent)'), new.get(key, '(absent)'), f'{where}.{key}'
            )
        return out
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v
    return [] if norm(old) == norm(new) else [f'{where}: {old!r} -> {new!r}']


def check_resume_config(saved: Mapping[str, Any], config, workdir: str) -> None:
    """ValueError if `config` cannot resume the run whose resolved config is `saved`.

    Names each changed field (up to 5) and both ways out: the run's own config, or a new
    workdir (starting from the run's weights with `init_from` if wanted).
    """
    new = json.loads(json.dumps(config.to_dict(), default=str))
    saved = json.loads(json.dumps(dict(saved), default=str))
    changed = []
    for field in RESUME_FIXED:
        changed += _differences(_get(saved, field), _get(new, field), field)
    if not changed:
        return
    shown = '; '.join(changed[:5]) + (f'; and {len(changed) - 5} more' if len(changed) > 5 else '')
    raise ValueError(
        f'--workdir {workdir} holds a run with another config ({shown}), so it cannot be '
        f'resumed with this one. To continue that run, use its config: --config '
        f'{os.path.join(workdir, "config.json")} (only steps, evaluation, logging and '
        f'checkpointing may change). For a new run, use a new --workdir (add '
        f'--config.init_from.path={workdir} to start from its weights). Nothing was written.'
    )


def write_config(workdir: str, config, step: int = 0) -> str | None:
    """Writes `<workdir>/config.json` (process 0) and returns its path.

    A config.json that differs (a resumed run with more steps, another evaluation) is
    kept as `config.before_step_<step>.json`, never overwritten. Call it only once the run
    is known to start: a run that refuses to start leaves the workdir as it was.
    """
    if not _is_writer():
        return None
    path = os.path.join(workdir, 'config.json')
    new = json.loads(json.dumps(config.to_dict(), default=str))
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None  # Unreadable: keep it aside all the same.
        if old == new:
            return path
        kept = os.path.join(workdir, f'config.before_step_{step}.json')
        n = 1
        while os.path.exists(kept):
            kept = os.path.join(workdir, f'config.before_step_{step}.{n}.json')
            n += 1
        os.replace(path, kept)
    write_json(path, new)
    return path


class MetricsWriter:
    """Appends one JSON object per call to metrics.jsonl and mirrors it to TensorBoard and
    to further sinks (Weights & Biases), process 0 only.

    Args:
      workdir: the run's workdir.
      wandb: the fields of ``config.log.wandb`` (``project``, ``mode``, ``entity``, ``name``,
        ...; see ``alignjax.wandb_sink.WandbSink``); a non-empty ``project`` adds a W&B sink
        (``wandb`` is imported only then).
      sinks: more sinks: objects with ``write(step, record)`` (``record``: the metrics.jsonl
        dict, ``step`` and ``time`` included) and ``close()``.
      run_config: the resolved config as a dict, recorded by sinks that keep one (W&B).
    """

    def __init__(
        self,
        workdir: str,
        wandb: Mapping[str, Any] | None = None,
        sinks: Sequence[Any] = (),
        run_config: Mapping[str, Any] | None = None,
    ):
        self.enabled = _is_writer()
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._tb = None
        self._sinks: list[Any] = []
        if self.enabled:
            from tensorboardX import SummaryWriter  # A maintained writer without TensorFlow.

            self._tb = SummaryWriter(logdir=os.path.join(workdir, 'tensorboard'))
            self._sinks = list(sinks)
            wandb = wandb.to_dict() if hasattr(wandb, 'to_dict') else dict(wandb or {})
            if wandb.get('project'):
                # WandbSink imports wandb (optional) only when it is built.
                self._sinks.append(wandb_sink.WandbSink(workdir, config=run_config, **wandb))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {'step': int(step), 'time': time.time()}
        record.update({k: to_python(v) for k, v in metrics.items()})
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        for key, value in record.items():
            if key not in ('step', 'time') and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, global_step=int(step))
        self._tb.flush()
        for sink in self._sinks:  # The same record metrics.jsonl got.
            sink.write(int(step), record)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        for sink in self._sinks:
            sink.close()
        self._sinks = []


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of metrics.jsonl."""
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return '?'
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class Progress:
    """Steps/s and ETA between log points; prints one line per report (process 0)."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._start = self._last_time

    def restart(self, step: int) -> None:
        """Measure from `step` on (after the first step, which includes compiling)."""
        self._last_step, self._last_time = step, time.perf_counter()

    def measure(self, step: int) -> dict[str, float]:
        """Rates since the previous call; {} when no step ran since (right after compiling)."""
        now = time.perf_counter()
        steps = step - self._last_step
        if steps <= 0:
            return {}
        steps_per_s = steps / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        return {
            'steps_per_s': steps_per_s,
            'samples_per_s': steps_per_s * self.batch_size,
            'eta_s': (self.total_steps - step) / steps_per_s,
        }

    def report(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not _is_writer():
            return
        shown = ' '.join(
            f'{k.split("/", 1)[-1]}={to_python(v):.4g}'
            for k, v in metrics.items()
            if k in ('train/loss', 'train/lr', 'train/logit_scale')
        )
        elapsed = time.perf_counter() - self._start
        skipped = int(metrics.get('data/skipped', 0) or 0)
        # Examples the pipeline dropped (corrupt images, empty captions): the log names them.
        bad = f'skipped={skipped} ' if skipped else ''
        if 'train/steps_per_s' in metrics:
            rate = (
                f"{to_python(metrics['train/steps_per_s']):.2f} steps/s "
                f"elapsed {format_duration(elapsed)} "
                f"ETA {format_duration(to_python(metrics['train/eta_s']))}"
            )
        else:  # The step that included compiling: no rate to show yet.
            rate = f'(compiled) elapsed {format_duration(elapsed)}'
        print(f'[step {step:>6}/{self.total_steps}] {shown} {bad}{rate}', flush=True)


def print_table(title: str, metrics: Mapping[str, Any], file=sys.stdout) -> None:
    """A two-column table of metrics (process 0)."""
    if not _is_writer() or not metrics:
        return
    width = max(len(k) for k in metrics)
    print(f'\n{title}\n' + '-' * (width + 12), file=file)
    for key in sorted(metrics):
        value = to_python(metrics[key])
        shown = f'{value:.4f}' if isinstance(value, float) else str(value)
        print(f'{key:<{width}}  {shown:>9}', file=file)
    print('-' * (width + 12), file=file, flush=True)
