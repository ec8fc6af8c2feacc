"""Continual pre-training: a sequence of tasks, each one run of the trainer, and its metrics.

  python -m alignjax.continual --config configs/ctp.py --workdir DIR [--config.a.b=v ...]

The config file gives ``get_config(arg)`` (the trainer config every task starts from) and
``get_tasks(arg)``: a list of :class:`Task` (or dicts of its fields), each with its training
data and an evaluator over its held-out data. Task ``k`` trains in ``DIR/task_<k>``:

* its ``data.train`` and ``total_steps`` are the task's, its evaluators are those of
  *every* task (named ``task_<j>``), so its final evaluation scores it on all of them;
* task ``k > 0`` starts from the previous task's run (``init_from.path = DIR/task_<k-1>``,
  a fresh optimizer); with ``loss.name='ctp'`` it also sets ``loss.task_index = k`` and
  ``loss.reference = DIR/task_<k-1>`` (the frozen previous-task model). Any other loss
  (``configs/ctp.py:clip``) is sequential fine-tuning, the baseline.

Resumable at any point: a task whose ``summary.json`` records its final step is skipped;
an interrupted one resumes through the trainer's own checkpoints. After every task the
driver writes ``DIR/continual.json``: the accuracy matrix ``R[i][j]`` (after task i, on
task j's held-out data; rows of tasks not yet trained are absent) and, once all T tasks are
trained (:func:`continual_metrics`)::

    average accuracy   A = (1/T) Σ_j R[T-1][j]
    forgetting of j    F_j = max_{i < T-1} R[i][j] - R[T-1][j]        (j < T-1)
    average forgetting F = (1/(T-1)) Σ_{j < T-1} F_j

This module sits above the trainer (it imports :mod:`alignjax.train`; nothing imports it).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags
from ml_collections import ConfigDict

from alignjax import cli, train
from alignjax import workdir as workdir_lib

__all__ = [
    "Task",
    "accuracy_matrix",
    "continual_metrics",
    "load",
    "run_sequence",
    "task_config",
    "task_dir",
]

RESULTS = "continual.json"


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the sequence.

    Fields:
      train: the training data spec (``config.data.train``), e.g.
        ``'synthetic:shapes?shapes=circle,square'``.
      eval: the evaluator config over the task's held-out data (an entry of
        ``config.evals``), e.g. ``dict(type='zeroshot', data=..., split='val', tasks='shape')``.
      metric: the accuracy read from that evaluator's results; ``{name}`` is its name
        (``task_<j>``).
      steps: ``total_steps`` of this task; None: the config's.
    """

    train: str
    eval: Mapping[str, Any]
    metric: str = "zeroshot/{name}_shape/acc1"
    steps: int | None = None


def _as_task(t: Any, k: int) -> Task:
    if isinstance(t, Task):
        return t
    try:
        return Task(**dict(t))
    except TypeError as e:
        fields = [f.name for f in dataclasses.fields(Task)]
        raise ValueError(f"get_tasks()[{k}] is not a Task: {e}; fields are {fields}.") from None


def task_dir(workdir: str, k: int) -> str:
    """The run directory of task ``k``."""
    return os.path.join(workdir, f"task_{k}")


def eval_name(j: int) -> str:
    return f"task_{j}"


def task_config(config: ConfigDict, tasks: Sequence[Task], k: int, workdir: str) -> ConfigDict:
    """The trainer config of task ``k`` (see the module docstring)."""
    c = ConfigDict(copy.deepcopy(config.to_dict()))
    task = tasks[k]
    c.data.train = task.train
    if task.steps is not None:
        c.total_steps = int(task.steps)
    c.evals = ConfigDict({eval_name(j): dict(t.eval) for j, t in enumerate(tasks)})
    previous = task_dir(workdir, k - 1) if k > 0 else ""
    if k > 0:
        c.init_from.path = previous
    if c.loss.get("name") == "ctp":
        c.loss.task_index = k
        c.loss.reference = previous
    return c


def load(spec: str) -> tuple[ConfigDict, list[Task]]:
    """``(get_config(arg), get_tasks(arg))`` of the config file ``FILE[:ARG]``."""
    path, _, arg = spec.partition(":")
    config = cli.load_config(spec)
    module_spec = importlib.util.spec_from_file_location("alignjax_continual_tasks", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_tasks = getattr(module, "get_tasks", None)
    if get_tasks is None:
        raise ValueError(
            f"--config {spec}: {path} defines no get_tasks(arg) (the task sequence); see "
            f"configs/ctp.py."
        )
    tasks = [_as_task(t, k) for k, t in enumerate(get_tasks(arg or None))]
    if not tasks:
        raise ValueError(f"--config {spec}: get_tasks() returned no task.")
    return config, tasks


def _summary(run_dir: str) -> dict[str, Any] | None:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def accuracy_matrix(summaries: Sequence[Mapping[str, Any]], tasks: Sequence[Task]) -> list[list[float]]:
    """``R[i][j]``: task j's accuracy in the final summary of task i (one row per summary)."""
    rows = []
    for i, s in enumerate(summaries):
        row = []
        for j, t in enumerate(tasks):
            key = t.metric.format(name=eval_name(j))
            if key not in s:
                raise ValueError(
                    f"task_{i}/summary.json has no {key!r} (Task.metric of task {j}); it has "
                    f"{sorted(k for k in s if k.startswith(key.split('/')[0]))[:6]}."
                )
            row.append(float(s[key]))
        rows.append(row)
    return rows


def continual_metrics(r: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Average accuracy and forgetting of a complete T x T accuracy matrix ``r``.

    ``average_accuracy = mean_j R[T-1][j]``; ``forgetting[j] = max_{i<T-1} R[i][j] -
    R[T-1][j]`` for ``j < T-1``; ``average_forgetting`` their mean (None when T = 1).
    """
    r = np.asarray(r, np.float64)
    t = r.shape[0]
    if r.shape != (t, t):
        raise ValueError(f"continual_metrics needs a square T x T matrix, got {r.shape}.")
    forgetting = [float(r[: t - 1, j].max() - r[t - 1, j]) for j in range(t - 1)]
    return {
        "average_accuracy": float(r[t - 1].mean()),
        "forgetting": forgetting,
        "average_forgetting": float(np.mean(forgetting)) if forgetting else None,
    }


def format_table(r: Sequence[Sequence[float]], metrics: Mapping[str, Any] | None) -> str:
    """The accuracy matrix as text: one row per trained task, one column per task."""
    t = len(r[0]) if r else 0
    lines = ["after \\ on " + " ".join(f"{f'task_{j}':>8}" for j in range(t))]
    for i, row in enumerate(r):
        lines.append(f"{f'task_{i}':<11}" + " ".join(f"{v:8.3f}" for v in row))
    if metrics and "average_accuracy" in metrics:
        lines.append(f"average accuracy   {metrics['average_accuracy']:.3f}")
        if metrics["average_forgetting"] is not None:
            lines.append(f"average forgetting {metrics['average_forgetting']:.3f}")
    return "\n".join(lines)


def run_sequence(
    config: ConfigDict, tasks: Sequence[Task], workdir: str, devices=None, verbose: bool = True
) -> dict[str, Any]:
    """Trains every task in order (skipping finished ones) and returns ``continual.json``."""
    tasks = [_as_task(t, k) for k, t in enumerate(tasks)]
    os.makedirs(workdir, exist_ok=True)
    summaries = []
    result: dict[str, Any] = {}
    for k in range(len(tasks)):
        c = task_config(config, tasks, k, workdir)
        run_dir = task_dir(workdir, k)
        done = _summary(run_dir)
        if done is None or int(done.get("step", -1)) != int(c.total_steps):
            if verbose:
                print(f"== task {k}/{len(tasks) - 1}: {tasks[k].train} -> {run_dir}", flush=True)
            out = train.train_and_evaluate(c, run_dir, devices)
            if out.get("preempted"):
                print(f"Stopped during task {k}; run the same command to resume.", flush=True)
                return result
            done = _summary(run_dir)
        elif verbose:
            print(f"== task {k}: finished at step {done['step']} (skipped)", flush=True)
        summaries.append(done)
        r = accuracy_matrix(summaries, tasks)
        complete = len(r) == len(tasks)
        result = {
            "loss": str(config.loss.name),
            "tasks": [dataclasses.asdict(t) for t in tasks],
            "accuracy_matrix": r,
            **(continual_metrics(r) if complete else {}),
        }
        workdir_lib.write_json(os.path.join(workdir, RESULTS), result)
    if verbose:
        print(f"Accuracy R[i][j] (after task i, on task j) -> {os.path.join(workdir, RESULTS)}")
        print(format_table(result["accuracy_matrix"], result))
    return result


def main(argv=None) -> None:
    """``python -m alignjax.continual --config FILE[:ARG] --workdir DIR [--config.a.b=v]``."""
    flags.DEFINE_string("config", None, "Config file with get_config and get_tasks, e.g. configs/ctp.py.")
    flags.DEFINE_string("workdir", None, "Directory of the sequence (one task_<k> run per task).")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(_, overrides):
        config, tasks = load(flags.FLAGS.config)
        config = cli.apply_overrides(config, overrides)
        run_sequence(config, tasks, flags.FLAGS.workdir)

    cli.run(run, argv)


if __name__ == "__main__":
    main()
