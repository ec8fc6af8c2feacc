"""A trained demo model for the experiments that start from one (cached in a workdir).

``pretrained(root, steps=400, size='demo', seed=0)`` trains ``configs/demo.py:clip`` (CLIP
on one caption per image) at the chosen model size for ``steps`` steps at batch ``BATCH``
into ``root/pretrained_<size>_s<seed>_<steps>`` and returns that workdir; a workdir that
already holds the finished run is reused (the trainer resumes or returns at once). Its
final evaluation (the experiments' held-out evaluators, ``EVALS``) is in
``<workdir>/pretrained.json``.

Sizes: ``'demo'`` (configs/demo.py's model), ``'small'`` (half its width, one layer per
tower less: a student) and ``'large'`` (configs/distill.py's teacher architecture).

``config(...)`` is the shared config every experiment run starts from (same data,
tokenizer, evaluators), so a run started with ``init_from`` on this workdir matches it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64
SIZES = ("demo", "small", "large")
#: Held-out (shape, colour) pairs of the test split; 500 images keep each evaluation short.
EVALS = {
    "shapes": {"type": "zeroshot", "data": "synthetic:shapes", "split": "test",
               "num_examples": 500, "batch_size": 250},
    "shapes_retrieval": {"type": "retrieval", "data": "synthetic:shapes", "split": "test",
                         "num_examples": 500, "batch_size": 250},
}  # fmt: skip


def _config_module(name: str):
    spec = importlib.util.spec_from_file_location(
        f"exp_{name}", os.path.join(ROOT, "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config(size: str = "demo", steps: int = 400, seed: int = 0):
    """configs/demo.py:clip at ``size``, ``steps`` steps, batch BATCH, the EVALS, one checkpoint."""
    if size not in SIZES:
        raise ValueError(f"size {size!r} unknown; valid: {SIZES}.")
    c = _config_module("demo").get_config("clip")
    if size == "large":
        c.model = _config_module("distill").teacher_model(c.model)
    elif size == "small":
        m = c.model
        m.embed_dim = 32
        for tower in (m.image, m.text):
            tower.width, tower.mlp_dim, tower.num_heads = 48, 192, 4
            tower.depth = max(1, tower.depth - 1)
    c.seed = seed
    c.total_steps = steps
    c.batch_size = BATCH
    c.log_every_steps = max(1, steps // 5)
    c.eval_every_steps = 0
    c.checkpoint_every_steps = steps
    c.optim.warmup_steps = min(c.optim.warmup_steps, max(1, steps // 10))
    c.evals = EVALS
    return c


def pretrained(root: str, steps: int = 400, size: str = "demo", seed: int = 0) -> str:
    """The workdir of a finished ``config(size, steps, seed)`` run under ``root`` (trained
    here unless cached there)."""
    from alignjax import train

    workdir = os.path.join(root, f"pretrained_{size}_s{seed}_{steps}")
    done = os.path.join(workdir, "pretrained.json")
    if not os.path.exists(done):
        print(f"== pre-training {size} for {steps} steps into {workdir}", flush=True)
        summary = train.train_and_evaluate(config(size, steps, seed), workdir)
        with open(done, "w") as f:
            json.dump(summary_row(summary), f, indent=1)
    return workdir


#: The start of the few-label experiments (CoOp, LoRA): half of configs/demo.py's schedule.
DEMO_START_STEPS = 550


def demo_start(workdir: str, start: str | None = None) -> str:
    """``start`` if given, else configs/demo.py trained for DEMO_START_STEPS steps (its full
    schedule; about 4 minutes on 2 cores) once into ``workdir/start_demo_550`` and reused."""
    if start:
        return start
    from alignjax import train

    path = os.path.join(workdir, f"start_demo_{DEMO_START_STEPS}")
    if not os.path.exists(os.path.join(path, "summary.json")):  # written when a run ends
        print(f"Training the start (configs/demo.py, {DEMO_START_STEPS} steps) in {path} ...")
        c = _config_module("demo").get_config()
        c.total_steps = c.eval_every_steps = c.checkpoint_every_steps = DEMO_START_STEPS
        train.train_and_evaluate(c, path)
    return path


def start_parser(doc: str, name: str, steps: int) -> argparse.ArgumentParser:
    """The arguments every experiment starting from ``demo_start`` takes: ``--workdir``
    (default /tmp/alignjax_<name>), ``--start``, ``--seeds`` (3), ``--steps`` and ``--out``
    (experiments/results/<name>.json). Add the experiment's own before parsing."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--workdir", default=f"/tmp/alignjax_{name}")
    p.add_argument(
        "--start", default=None, help="a trained run (default: configs/demo.py, 550 steps)"
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", f"{name}.json"))
    return p


def evaluate_run(path: str, config) -> dict[str, float]:
    """The run at ``path`` (its newest checkpoint, as trained) scored by ``config``'s
    evaluators: how an experiment scores its untrained start with a trained arm's config."""
    from alignjax import config as config_lib
    from alignjax import restore
    from alignjax.evaluate import evaluators as evaluators_lib

    run = restore.load_run(None, path)
    evaluators = evaluators_lib.build_evaluators(
        config_lib.resolve(config), run.model, run.tokenizer, run.mesh, run.build.objective.scorers
    )
    out = {}
    for ev in evaluators:
        out.update(ev.run(run.params))
    return out


def pretrained_metrics(workdir: str) -> dict[str, float]:
    """The row (see ``summary_row``) of the finished pre-training run in ``workdir``."""
    with open(os.path.join(workdir, "pretrained.json")) as f:
        return json.load(f)


def summary_row(summary: dict[str, Any]) -> dict[str, float]:
    """The figures the experiments report from ``train_and_evaluate``'s summary.

    zero-shot acc1 on the held-out split (mean over the attribute tasks, and shape), image
    and text retrieval recall@1, and the modality gap ‖mean zimg − mean ztxt‖.
    """
    zs = [v for k, v in summary.items() if k.startswith("zeroshot/") and k.endswith("/acc1")]

    def pick(suffix: str) -> float:
        vals = [float(v) for k, v in summary.items() if k.endswith(suffix)]
        return float(statistics.mean(vals)) if vals else float("nan")

    return {
        "zeroshot_acc1_mean": float(statistics.mean(zs)) if zs else float("nan"),
        "zeroshot_acc1_shape": pick("_shape/acc1"),
        "image_retrieval_r1": pick("image_retrieval_recall@1"),
        "text_retrieval_r1": pick("text_retrieval_recall@1"),
        "modality_gap": pick("/modality_gap"),
        "alignment": pick("/alignment"),
    }


def mean_std(values) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def method_rows(names: dict[str, str], agg, metrics) -> list[str]:
    """One Markdown row per method: its name, then ``mean ± std`` of each metric."""
    return [
        f"| {label} | "
        + " | ".join(f"{agg[m][k][0]:.3f} ± {agg[m][k][1]:.3f}" for k in metrics)
        + " |"
        for m, label in names.items()
    ]


def write_result(out: str, result: dict[str, Any], table: str) -> None:
    """Writes the experiment's JSON to ``out``, then prints its table, verdict and wall time."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(table)
    print(json.dumps(result["verdict"], indent=1))
    print(f"wall {result['wall_s']:.0f} s; wrote {out}")
