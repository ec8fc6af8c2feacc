"""Where metrics go besides metrics.jsonl: TensorBoard's own reader, and a W&B offline run.

Both are read back with the tools people use (TensorBoard's event reader and CLI; the W&B
run file with W&B's protobuf records) and compared with metrics.jsonl, value for value.
No network: W&B runs offline, into the test's tmp_path.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import pytest

from alignjax import errors
from alignjax import workdir as workdir_lib

RECORDS = [
    (1, {"train/loss": 2.5, "train/lr": 0.001, "train/steps_per_s": 3.0}),
    (2, {"train/loss": 2.25, "train/lr": 0.002}),
    (2, {"zeroshot/shapes/acc1": 0.5, "retrieval/shapes/image_retrieval_recall@1": 0.25}),
    (4, {"train/loss": float("nan"), "train/lr": 0.004, "data/skipped": 3}),
]


def _write(workdir, **kwargs):
    writer = workdir_lib.MetricsWriter(str(workdir), **kwargs)
    for step, metrics in RECORDS:
        writer.write(step, metrics)
    writer.close()
    return workdir_lib.read_metrics(str(workdir))


def _same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b


# --- TensorBoard -------------------------------------------------------------------------
def test_tensorboard_reads_the_event_files(tmp_path):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard not installed: pip install 'alignjax[tensorboard]'",
    )
    lines = _write(tmp_path)
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for line in lines:
        for key, value in line.items():
            if key in ("step", "time"):
                continue
            # TensorBoard tags allow only [-/\w.]: `recall@1` shows as `recall_1`.
            tag = re.sub(r"[^-/\w.]", "_", key)
            got = [e.value for e in events.Scalars(tag) if e.step == line["step"]]
            assert len(got) == 1, (key, got)
            # TensorBoard keeps float32.
            assert _same(float(got[0]), float(value)) or math.isclose(
                got[0], value, rel_tol=1e-6
            ), (key, got, value)
    # The README's command: the CLI finds the scalars (--inspect reads without serving).
    cli = shutil.which("tensorboard")
    assert cli, "the tensorboard extra installs the `tensorboard` command"
    out = subprocess.run(
        [cli, "--inspect", "--logdir", str(tmp_path / "tensorboard")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0 and "first_step           1" in out.stdout, out.stdout + out.stderr


# --- Weights & Biases ----------------------------------------------------------------------
def _wandb_records(run_file: str) -> list:
    """The records of an offline W&B run file (``wandb_internal_pb2.Record`` protobufs).

    The file is W&B's record log: a 7-byte header (``:W&B``, magic, version), then LevelDB
    log-format records (32 KiB blocks; per chunk crc32 u32, length u16, type u8: 1 full,
    2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    with open(run_file, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", run_file
    block, pos, chunks, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def _wandb_history(run_file: str) -> dict[int, dict]:
    """History rows of a finished offline W&B run file, by step."""
    # W&B's service process writes the file; `run.finish()` may return a moment before the
    # last records (history, then `exit`) reach the disk.
    deadline = time.monotonic() + 60
    while True:
        records = _wandb_records(run_file)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "exit" in kinds, f"{run_file} was not finished: {kinds}"
    return {
        r.history.step.num: {
            i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    }


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed: pip install 'alignjax[wandb]'")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_API_KEY": "",
    }.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_wandb_offline_run_gets_the_metrics_jsonl_records(offline_wandb):
    workdir = offline_wandb / "run"
    fields = dict(project="alignjax-test", mode="offline", name="tiny", tags=("test",))
    lines = _write(workdir, wandb=fields, run_config={"batch_size": 8})
    runs = glob.glob(str(workdir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1, runs
    history = _wandb_history(runs[0])
    # Every metrics.jsonl record, merged per step (train, then evaluation at step 2).
    want = {}
    for line in lines:
        want.setdefault(line["step"], {}).update(
            {k: v for k, v in line.items() if k not in ("step", "time")}
        )
    assert sorted(want) == [1, 2, 4] and sorted(history) == [1, 2, 4], (want, history)
    for step, metrics in want.items():
        row = history[step]
        got = {k: v for k, v in row.items() if not k.startswith("_")}
        assert set(got) == set(metrics), (step, got, metrics)
        for key, value in metrics.items():
            assert _same(got[key], value), (step, key, got[key], value)

    # A resumed run (same workdir) continues the same W&B run id.
    run_id = (workdir / "wandb" / "alignjax_run_id").read_text().strip()
    assert runs[0].endswith(f"run-{run_id}.wandb")
    writer = workdir_lib.MetricsWriter(str(workdir), wandb=fields)
    writer.write(5, {"train/loss": 1.0})
    writer.close()
    again = glob.glob(str(workdir / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))
    assert len(again) >= 1 and any(5 in _wandb_history(r) for r in again)


def test_no_project_no_sink_and_wandb_never_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would now fail
    lines = _write(tmp_path, wandb=dict(project="", mode="offline"))
    assert [line["step"] for line in lines] == [1, 2, 2, 4]
    assert not os.path.exists(tmp_path / "wandb")


def test_missing_wandb_is_one_line_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ModuleNotFoundError) as e:
        workdir_lib.MetricsWriter(str(tmp_path), wandb=dict(project="p"))
    assert "pip install wandb" in str(e.value) and e.value.name == "wandb"
    line = errors.user_message(e.value)
    assert line == "This needs the optional package 'wandb', which is not installed: " + (
        "pip install 'alignjax[wandb]'."
    )


def test_bad_wandb_mode_names_the_field(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # refused before wandb is imported
    with pytest.raises(ValueError, match=r"config.log.wandb.mode must be one of \['online'"):
        workdir_lib.MetricsWriter(str(tmp_path), wandb=dict(project="p", mode="ofline"))


def test_custom_sink_gets_each_record(tmp_path):
    class Recorder:
        def __init__(self):
            self.records, self.closed = [], False

        def write(self, step, record):
            self.records.append((step, dict(record)))

        def close(self):
            self.closed = True

    sink = Recorder()
    lines = _write(tmp_path, sinks=[sink])
    assert sink.closed and len(sink.records) == len(lines) == len(RECORDS)
    for (step, record), line in zip(sink.records, lines):
        assert step == line["step"] and set(record) == set(line)
        assert all(_same(record[k], line[k]) for k in line), (record, line)
