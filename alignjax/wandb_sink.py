"""Weights & Biases as a metrics sink: every record of metrics.jsonl, also in a W&B run.

``MetricsWriter(workdir, wandb=config.log.wandb)`` builds one when ``project`` is set (only
on process 0, which alone writes metrics); ``wandb`` is imported only then, so runs without
it neither need nor load the package (``pip install 'alignjax[wandb]'``).

What the run gets: ``run.log(metrics, step=step)`` for each ``MetricsWriter.write`` call,
with the same keys and values as the metrics.jsonl line (``step`` becomes W&B's step;
``time`` is left out, W&B stamps its own ``_timestamp``). Records of one step (training
metrics, then evaluation metrics) are merged into one W&B history row.

Files: the run lives under ``<workdir>/wandb/`` (``offline-run-*`` in offline mode: upload it
later with ``wandb sync <workdir>/wandb/offline-run-*``). The run id is kept in
``<workdir>/wandb/alignjax_run_id``, so a resumed training run continues the same W&B run
(``resume='allow'``). W&B drops a record whose step is below one it already has: after a
crash, the steps between the last checkpoint and the crash, trained again, are not logged
twice there (metrics.jsonl keeps both).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MODES", "WandbSink"]

#: W&B modes: 'online' uploads as it goes, 'offline' writes files only (no network),
#: 'disabled' makes every call a no-op.
MODES = ("online", "offline", "disabled")
_RUN_ID_FILE = "alignjax_run_id"


def _import_wandb():
    try:
        import wandb  # pylint: disable=g-import-not-at-top
    except ModuleNotFoundError as e:
        if e.name != "wandb":
            raise  # wandb itself is there but broken: keep its own error
        raise ModuleNotFoundError(
            "config.log.wandb.project is set but wandb is not installed: pip install wandb "
            "(or pip install 'alignjax[wandb]'), or set config.log.wandb.project=''.",
            name="wandb",
        ) from None
    return wandb


def _run_id(folder: str) -> str:
    """The workdir's W&B run id: read back on resume, made and kept on the first run."""
    path = os.path.join(folder, _RUN_ID_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            run_id = f.read().strip()
        if run_id:
            return run_id
    run_id = secrets.token_hex(4)  # 8 lower-case characters, as W&B's own ids
    with open(path, "w") as f:
        f.write(run_id + "\n")
    return run_id


class WandbSink:
    """Logs metrics records to one W&B run (the fields of ``config.log.wandb``).

    Args:
      workdir: the run's workdir; W&B writes under ``<workdir>/wandb/``.
      project: W&B project (required: an empty project means no sink; MetricsWriter then
        builds none).
      mode: one of ``MODES``; ``'offline'`` (the default) needs no account or network.
      entity, name, group: W&B entity (team/user), run display name, run group; '' lets
        W&B choose.
      tags: run tags.
      config: the run's resolved config (a dict), shown as the W&B run's config.
    """

    def __init__(
        self,
        workdir: str,
        project: str,
        mode: str = "offline",
        entity: str = "",
        name: str = "",
        group: str = "",
        tags: Sequence[str] = (),
        config: Mapping[str, Any] | None = None,
    ):
        if not project:
            raise ValueError(
                "config.log.wandb.project is empty: give a W&B project name to log there."
            )
        if mode not in MODES:
            raise ValueError(f"config.log.wandb.mode must be one of {list(MODES)}, got {mode!r}.")
        wandb = _import_wandb()
        folder = os.path.join(workdir, "wandb")
        os.makedirs(folder, exist_ok=True)
        self.run = wandb.init(
            project=project,
            entity=entity or None,
            name=name or None,
            group=group or None,
            tags=list(tags) or None,
            mode=mode,
            dir=workdir,  # W&B adds its own `wandb/` below it.
            id=_run_id(folder),
            resume="allow",
            config=dict(config) if config else None,
        )

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        """Logs one metrics.jsonl record (its ``step`` and ``time`` are not metrics)."""
        metrics = {k: v for k, v in record.items() if k not in ("step", "time")}
        self.run.log(metrics, step=int(step))

    def close(self) -> None:
        self.run.finish()
