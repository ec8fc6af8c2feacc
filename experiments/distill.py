"""Distillation from a larger trained teacher vs the same student trained alone, 3 seeds.

  nice python experiments/distill.py --workdir /tmp/distill

1. Trains the teacher once (experiments/_pretrained.py, size ``--teacher_size``, CLIP on
   the demo data for ``--teacher_steps`` steps at batch 64; cached under ``--workdir``).
2. For each seed, trains the small student (``'small'``: the demo model at half width,
   one layer less per tower) from scratch for ``--steps`` steps twice, with the same data,
   batch, optimizer and steps: alone with CLIP's loss (configs/demo.py:clip), and with
   open_clip's distillation (configs/distill.py: CLIP + soft cross-entropy to the frozen
   teacher's image-text logits, both directions).
3. Reports held-out zero-shot acc1 (mean over the attribute tasks, and shape) and retrieval
   R@1 on the held-out (shape, colour) test pairs (500 images), mean ± std over seeds, and
   the teacher's own figures.

The paper direction (open_clip's distillation, as in e.g. TinyCLIP): the distilled student
is higher on zero-shot and retrieval. Writes experiments/results/distill.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "experiments")):
    if path not in sys.path:  # Run as a script from a checkout.
        sys.path.insert(0, path)

import _pretrained

METHODS = ("alone", "distill")
METRICS = ("zeroshot_acc1_mean", "zeroshot_acc1_shape", "image_retrieval_r1",
           "text_retrieval_r1", "modality_gap")  # fmt: skip


def run_config(method: str, teacher: str, steps: int, seed: int):
    """The student's config: CLIP alone, or configs/distill.py's loss with ``teacher``."""
    c = _pretrained.config("small", steps, seed)
    if method == "distill":
        c.loss = _pretrained._config_module("distill").get_config(teacher).loss
    return c


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/alignjax_distill")
    p.add_argument("--teacher_size", default="demo", choices=_pretrained.SIZES)
    p.add_argument("--teacher_steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "distill.json"))
    a = p.parse_args(argv)
    from alignjax import train

    t0 = time.time()
    teacher = _pretrained.pretrained(a.workdir, a.teacher_steps, a.teacher_size, 0)
    teacher_row = _pretrained.pretrained_metrics(teacher)
    runs = {m: [] for m in METHODS}
    for seed in a.seeds:
        for method in METHODS:
            wd = os.path.join(a.workdir, f"student_{method}_s{seed}_{a.steps}")
            print(f"== {method} seed {seed} -> {wd}", flush=True)
            summary = train.train_and_evaluate(run_config(method, teacher, a.steps, seed), wd)
            runs[method].append({"seed": seed, **_pretrained.summary_row(summary)})
            print(json.dumps(runs[method][-1]), flush=True)

    agg = {m: {k: _pretrained.mean_std(r[k] for r in runs[m]) for k in METRICS} for m in METHODS}
    verdict = {
        k: {
            "distill_minus_alone": agg["distill"][k][0] - agg["alone"][k][0],
            "distill_higher": agg["distill"][k][0] > agg["alone"][k][0],
            "beyond_seed_spread": (agg["distill"][k][0] - agg["alone"][k][0])
            > max(agg["distill"][k][1], agg["alone"][k][1]),
        }
        for k in METRICS[:4]
    }
    result = {
        "command": "python experiments/distill.py " + " ".join(argv or sys.argv[1:]),
        "teacher": {"size": a.teacher_size, "steps": a.teacher_steps, **teacher_row},
        "student": "small", "steps": a.steps, "batch": _pretrained.BATCH, "seeds": a.seeds,
        "runs": runs, "mean_std": {m: {k: list(v) for k, v in agg[m].items()} for m in METHODS},
        "verdict": verdict, "wall_s": time.time() - t0,
    }  # fmt: skip
    _pretrained.write_result(a.out, result, table(teacher_row, agg, a))


def table(teacher_row, agg, a) -> str:
    head = "| model | zero-shot acc1 mean | shape | R@1 img | R@1 txt | modality gap |"
    lines = [
        (f"Student 'small' trained {a.steps} steps at batch {_pretrained.BATCH} from scratch; "
        f"teacher '{a.teacher_size}' trained {a.teacher_steps} steps; held-out test pairs "
        f"(500 images); mean ± std over seeds {a.seeds}.\n"),
        head,
        "|---|---:|---:|---:|---:|---:|",
        (f"| teacher ({a.teacher_size}) | "
         + " | ".join(f"{teacher_row[k]:.3f}" for k in METRICS) + " |"),
    ]
    names = {"alone": "student, CLIP alone", "distill": "student, distilled"}
    return "\n".join(lines + _pretrained.method_rows(names, agg, METRICS))


if __name__ == "__main__":
    main()
