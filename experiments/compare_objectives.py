"""Trains CLIP and each alignment objective on the demo data for the same steps; one table.

  nice python experiments/compare_objectives.py --steps 150 --out runs/compare_objectives

Each method runs in its own process (so its peak memory is its own) through the real
trainer (``alignjax.train.train_and_evaluate``) with its config: ``configs/demo.py:clip`` for
CLIP, ``configs/<method>.py`` for the others (the demo model, data, optimizer and
evaluators with the loss swapped), overridden to ``--steps`` steps, batch ``--batch``, no
intermediate evaluation and one checkpoint at the end. Reported per method:

* zero-shot acc1 on the held-out (shape, colour) test split: mean over the five attribute
  tasks, and shape alone (the hardest);
* retrieval recall@1 (image retrieval from captions, and caption retrieval from images);
* modality gap ‖mean(zimg) − mean(ztxt)‖ of the test embeddings (Liang et al. 2022), from
  the retrieval evaluator's geometry metrics;
* steps/s of training (median over the logged intervals after the first, which includes
  compilation) and the process's peak resident memory (``ru_maxrss``).

Writes ``results.json`` and ``results.md`` under ``--out``; ``--methods`` picks a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # Run as a script from a checkout: import alignjax from it.
    sys.path.insert(0, ROOT)
METHODS = ("clip", "filip", "pyramid", "lightclip", "dreamlip", "uniter", "wukong", "clim")


def load_config(method: str):
    import importlib.util

    name = "demo" if method == "clip" else method
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"cmp_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The demo's default objective is multi-caption; 'clip' is its plain one-caption variant.
    return module.get_config("clip") if method == "clip" else module.get_config()


def run_one(method: str, workdir: str, steps: int, batch: int) -> dict:
    """Trains one method in this process; returns its row of the table."""
    from alignjax import train
    from alignjax import workdir as workdir_lib

    c = load_config(method)
    c.total_steps = steps
    c.batch_size = batch
    c.log_every_steps = max(1, steps // 10)
    c.eval_every_steps = 0
    c.checkpoint_every_steps = steps
    c.optim.warmup_steps = min(c.optim.warmup_steps, max(1, steps // 10))
    if method == "lightclip":
        c.loss.ramp_steps = steps
    start = time.time()
    summary = train.train_and_evaluate(c, workdir)
    wall = time.time() - start
    records = workdir_lib.read_metrics(workdir)
    rates = [r["train/steps_per_s"] for r in records if "train/steps_per_s" in r][1:]

    def pick(suffix: str) -> float:
        vals = [v for k, v in summary.items() if k.endswith(suffix)]
        return float(statistics.mean(vals)) if vals else float("nan")

    zs = {k: v for k, v in summary.items() if k.startswith("zeroshot/") and k.endswith("/acc1")}
    return {
        "method": method,
        "steps": steps,
        "batch": batch,
        "zeroshot_acc1_mean": float(statistics.mean(zs.values())) if zs else float("nan"),
        "zeroshot_acc1_shape": pick("_shape/acc1"),
        "image_retrieval_r1": pick("image_retrieval_recall@1"),
        "text_retrieval_r1": pick("text_retrieval_recall@1"),
        "modality_gap": pick("modality_gap"),
        "steps_per_s": float(statistics.median(rates)) if rates else float("nan"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "wall_s": wall,
        "final_loss": float(next(r["train/loss"] for r in reversed(records) if "train/loss" in r)),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| method | zero-shot acc1 (mean / shape) | R@1 img / txt | modality gap | steps/s "
        "| peak RSS MiB | final loss |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error'][:60]} | | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['zeroshot_acc1_mean']:.3f} / {r['zeroshot_acc1_shape']:.3f} "
            f"| {r['image_retrieval_r1']:.3f} / {r['text_retrieval_r1']:.3f} "
            f"| {r['modality_gap']:.3f} | {r['steps_per_s']:.2f} | {r['peak_rss_mib']:.0f} "
            f"| {r['final_loss']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--out", default="runs/compare_objectives")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # Child process mode.
    a = p.parse_args(argv)
    if a.one:
        row = run_one(a.one, os.path.join(a.out, a.one), a.steps, a.batch)
        with open(os.path.join(a.out, a.one, "row.json"), "w") as f:
            json.dump(row, f, indent=1)
        return
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for method in a.methods:
        wd = os.path.join(a.out, method)
        if os.path.exists(wd):
            raise SystemExit(f"{wd} exists: choose a new --out (runs resume from their workdir).")
        cmd = [sys.executable, os.path.abspath(__file__), "--one", method, "--steps", str(a.steps)]
        cmd += ["--batch", str(a.batch), "--out", a.out]
        print(f"== {method}: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            rows.append({"method": method, "error": proc.stderr.strip().splitlines()[-1]})
            print(proc.stderr[-3000:], flush=True)
        else:
            with open(os.path.join(wd, "row.json")) as f:
                rows.append(json.load(f))
            print(json.dumps(rows[-1]), flush=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(rows, f, indent=1)
    md = (
        f"{a.steps} steps at batch {a.batch} on the demo data (configs/demo.py model), "
        f"held-out test split (1000 images):\n\n{table(rows)}\n"
    )
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
