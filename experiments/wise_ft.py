"""WiSE-FT: interpolating a zero-shot demo model with its narrow fine-tune, 3 seeds.

  nice python experiments/wise_ft.py --workdir /tmp/alignjax_wise_ft

1. Pre-trains the demo model (configs/demo.py:clip, batch 64) for ``--pretrain_steps``
   steps once (cached, experiments/_pretrained.py): the "zero-shot" model theta_0, trained
   on every seen (shape, colour) pair.
2. For each seed: fine-tunes it for ``--steps`` steps (configs/clip_refine.py:finetune:
   CLIP loss, constant lr ``--lr``, weight decay 0.1, batch 64) on a narrower target
   distribution, the shapes of ``--colors`` only (``synthetic:shapes?colors=...``, train
   split): theta_1. The seed sets the data order.
3. WiSE-FT with alignjax.soup (the API of ``python -m alignjax.soup wise_ft``):
   theta(alpha) = (1 - alpha) theta_0 + alpha theta_1 for each alpha of ``--alphas``,
   scored on
   - in-distribution: zero-shot acc1 (mean over the attribute tasks) on 500 'val' images
     of the target colours (seen pairs, never trained on);
   - shifted: zero-shot acc1 on 500 'test' images, the held-out (shape, colour) pairs of
     every colour (compositions and, for most colours, colours the fine-tune never saw).

The paper's direction (Wortsman et al., CVPR 2022): some alpha in (0, 1) beats both
endpoints on the shifted distribution (and usually in-distribution too). Reports the curve
(mean ± std over seeds), the best interior alpha and whether it beats both endpoints (on
the mean curve and per seed); draws the mean curve to experiments/results/wise_ft.png.
Writes experiments/results/wise_ft.json (``--out``) and prints the table.
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

import _pretrained  # noqa: E402
import ml_collections  # noqa: E402

from alignjax import restore, soup, train  # noqa: E402

N_EVAL = 500
ID_METRIC = "zeroshot/id_*/acc1"
SHIFT_METRIC = "zeroshot/shift_*/acc1"


def evals(colors: str) -> dict:
    return {
        "id": {"type": "zeroshot", "data": f"synthetic:shapes?colors={colors}", "split": "val",
               "num_examples": N_EVAL, "batch_size": 250},
        "shift": {"type": "zeroshot", "data": "synthetic:shapes", "split": "test",
                  "num_examples": N_EVAL, "batch_size": 250},
    }  # fmt: skip


def finetune_config(start: str, steps: int, lr: float, seed: int, colors: str):
    """configs/clip_refine.py:finetune from ``start`` on the target colours only."""
    c = _pretrained._config_module("clip_refine").get_config(f"finetune,{start}")
    c.model = _pretrained.config("demo", steps, seed).model
    c.seed = seed
    c.data.train = f"synthetic:shapes?colors={colors}"
    c.total_steps, c.batch_size = steps, _pretrained.BATCH
    c.log_every_steps = max(1, steps // 4)
    c.checkpoint_every_steps = steps
    c.optim.lr = lr
    c.evals = {}  # Scored below, once per alpha.
    return c


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/alignjax_wise_ft")
    p.add_argument("--pretrain_steps", type=int, default=400)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--colors", default="red,green,blue,yellow")
    p.add_argument("--alphas", type=float, nargs="+",
                   default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "wise_ft.json"))
    a = p.parse_args(argv)
    if a.alphas[0] != 0.0 or a.alphas[-1] != 1.0:
        p.error("--alphas must start at 0 and end at 1 (the two endpoints).")

    t0 = time.time()
    start = _pretrained.pretrained(a.workdir, a.pretrain_steps, "demo", 0)
    config = restore.checkpoint_config(os.path.join(start, "checkpoints"))
    config.evals = ml_collections.ConfigDict(evals(a.colors))
    ref = soup.load_reference(start, config)
    scorer = soup.Scorer(ref)
    curves = []
    for seed in a.seeds:
        wd = os.path.join(a.workdir, f"ft_s{seed}_{a.steps}_lr{a.lr:g}")
        print(f"== fine-tuning seed {seed} on colours {a.colors} -> {wd}", flush=True)
        train.train_and_evaluate(finetune_config(start, a.steps, a.lr, seed, a.colors), wd)
        r = soup.wise_ft(ref, wd, a.alphas, scorer, ID_METRIC, SHIFT_METRIC)
        curves.append([{k: row[k] for k in ("alpha", "id", "shift")} for row in r.record["curve"]])
        print(json.dumps(curves[-1]), flush=True)

    mean = []
    for j, alpha in enumerate(a.alphas):
        row = {"alpha": alpha}
        for k in ("id", "shift"):
            row[k], row[f"{k}_std"] = _pretrained.mean_std(c[j][k] for c in curves)
        mean.append(row)
    interior = mean[1:-1]
    best = max(interior, key=lambda r: r["shift"])
    ends = max(mean[0]["shift"], mean[-1]["shift"])

    def seed_wins(c):
        return max(r["shift"] for r in c[1:-1]) > max(c[0]["shift"], c[-1]["shift"])

    verdict = {
        "interior_alpha_beats_both_endpoints_on_shift_mean": best["shift"] > ends,
        "best_interior_alpha_shift": best["alpha"],
        "shift_gain_over_best_endpoint": best["shift"] - ends,
        "seed_spread_shift": max(r["shift_std"] for r in mean),
        "seeds_where_an_interior_alpha_wins": [seed_wins(c) for c in curves],
        "finetune_improves_id": mean[-1]["id"] > mean[0]["id"],
        "finetune_lowers_shift": mean[-1]["shift"] < mean[0]["shift"],
        "best_interior_alpha_id": max(interior, key=lambda r: r["id"])["alpha"],
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    picture = os.path.splitext(a.out)[0] + ".png"
    soup.plot_wise_ft(mean, picture, f"WiSE-FT, demo model (mean of {len(a.seeds)} seeds)")
    result = {
        "command": "python experiments/wise_ft.py " + " ".join(argv or sys.argv[1:]),
        "pretrain_steps": a.pretrain_steps, "steps": a.steps, "lr": a.lr,
        "batch": _pretrained.BATCH,
        "colors": a.colors, "seeds": a.seeds, "id_metric": ID_METRIC, "shift_metric": SHIFT_METRIC,
        "curves": curves, "mean_curve": mean, "picture": os.path.relpath(picture, ROOT),
        "verdict": verdict, "wall_s": time.time() - t0,
    }  # fmt: skip
    _pretrained.write_result(a.out, result, table(mean, a))


def table(mean, a) -> str:
    lines = [
        (f"theta_0: demo model pre-trained {a.pretrain_steps} steps on every seen pair; theta_1: "
         f"{a.steps} steps at lr {a.lr:g} on colours {a.colors} only; zero-shot acc1 mean over "
         f"tasks ({N_EVAL} images each); mean ± std over seeds {a.seeds}.\n"),
        "| alpha | in-distribution (val, target colours) | shifted (test, held-out pairs) |",
        "|---:|---:|---:|",
    ]  # fmt: skip
    for r in mean:
        lines.append(f"| {r['alpha']:g} | {r['id']:.4f} ± {r['id_std']:.4f} | "
                     f"{r['shift']:.4f} ± {r['shift_std']:.4f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
