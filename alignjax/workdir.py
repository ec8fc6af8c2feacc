"""A run is its workdir: config.json, metrics.jsonl, TensorBoard events, summary.json.

Only process 0 writes files; every process may call these (they no-op elsewhere).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np


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


def write_config(workdir: str, config) -> None:
    if _is_writer():
        write_json(os.path.join(workdir, 'config.json'), config.to_dict())


class MetricsWriter:
    """Appends one JSON object per call to metrics.jsonl and mirrors it to TensorBoard."""

    def __init__(self, workdir: str):
        self.enabled = _is_writer()
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # A maintained writer without TensorFlow.

            self._tb = SummaryWriter(logdir=os.path.join(workdir, 'tensorboard'))

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

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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

    def measure(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
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
        print(
            f'[step {step:>6}/{self.total_steps}] {shown} '
            f"{metrics.get('train/steps_per_s', float('nan')):.2f} steps/s "
            f"elapsed {format_duration(elapsed)} "
            f"ETA {format_duration(metrics.get('train/eta_s', float('nan')))}",
            flush=True,
        )


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
