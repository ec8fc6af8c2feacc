"""STRUCTURE against plain alignment layers, with 1%, 5% and 25% of the pairs, 3 seeds.

  nice python experiments/structure.py --workdir /tmp/alignjax_structure

1. Two unimodal towers, trained once by the one trainer and cached under ``--workdir``
   (configs/demo.py:base's model, data, tokenizer and optimizer, at batch 128):
   - the image tower without text: ``loss.name='attributes'`` (one linear head per
     attribute: shape, colour, size, position, count; cross-entropy), ``--image-steps``;
   - the text tower without images: ``loss.name='mlm'`` (15% of the caption tokens masked
     and predicted by a bidirectional tower, ``text.convention='big_vision'``),
     ``--text-steps``.
2. Every layer's features, frozen, once: a pool of ``--pool`` pairs of the shapes 'val'
   split (seen (shape, colour) pairs; scenes not drawn in pre-training) and 1000 images of
   the 'test' split (only held-out pairs) with their captions.
3. For each fraction (1%, 5%, 25% of the pool) and seed (the draw of the pairs and the
   init of the alignment layers): linear alignment layers to 64 dims, AdamW (0.9, 0.95),
   lr 1e-3, wd 1e-4, clip 1.0, ``--steps`` steps at batch min(256, pairs), τ = 0.05:
   - plain: the CLIP loss only (λ = 0);
   - STRUCTURE: + λ(step) · the neighbourhood-preservation term, λ_max = 10, warm-up
     ``--steps // 5`` steps (the paper's 1000, scaled to the short run), one level;
   each on the layer pair selected by mutual k-NN (Rice's k) on the training pairs, and
   on the last layers (both towers' outputs).
4. Scored in the aligned space on the test split: zero-shot top-1 of the five attributes
   (ShapesDataset.zero_shot_tasks prompts through the frozen text tower and its alignment
   layer; the mean and shape's), and image->text / text->image recall@1 among the 1000.

The paper's direction (Gröger et al., NeurIPS 2025): STRUCTURE beats plain alignment, most
in the low-data regime; the most similar layer pair beats the last layers. Writes
experiments/results/structure.json (``--out``), prints the table (mean ± std over seeds)
and the verdict.
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
import numpy as np  # noqa: E402

from alignjax import restore, structure, train  # noqa: E402

FRACTIONS = (0.01, 0.05, 0.25)
METHODS = {  # name -> (label, lambda_max, layers)
    "plain_last": ("plain (λ=0), last layers", 0.0, "last"),
    "structure_last": ("STRUCTURE, last layers", 10.0, "last"),
    "plain_sel": ("plain (λ=0), selected layers", 0.0, "select"),
    "structure_sel": ("STRUCTURE, selected layers", 10.0, "select"),
}
METRICS = {
    "zeroshot/mean": "zero-shot acc1 (mean of 5)",
    "zeroshot/shape": "shape acc1",
    "i2t_r1": "image→text R@1",
    "t2i_r1": "text→image R@1",
}


def unimodal_run(workdir: str, tower: str, steps: int) -> str:
    """The cached unimodal run of ``tower`` (trained here unless finished there)."""
    path = os.path.join(workdir, f"{tower}_{'attributes' if tower == 'image' else 'mlm'}_{steps}")
    if not os.path.exists(os.path.join(path, "summary.json")):  # written when a run ends
        print(f"== pre-training the {tower} tower alone for {steps} steps into {path}", flush=True)
        c = structure.unimodal_config(_pretrained._config_module("demo").base(), tower)
        c.total_steps = c.checkpoint_every_steps = steps
        c.log_every_steps = max(1, steps // 5)
        c.optim.warmup_steps = min(c.optim.warmup_steps, max(1, steps // 10))
        train.train_and_evaluate(c, path)
    return path


def final_train_metrics(workdir: str) -> dict[str, float]:
    """The unimodal run's last logged training metrics (its own objective's accuracy)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "train/loss" in r]
    return {k: round(float(v), 4) for k, v in rows[-1].items() if k.startswith("train/")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/alignjax_structure")
    p.add_argument("--out", default=os.path.join(ROOT, "experiments/results/structure.json"))
    p.add_argument("--image-steps", type=int, default=300)
    p.add_argument("--text-steps", type=int, default=300)
    p.add_argument("--pool", type=int, default=5000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seeds", type=int, default=3)
    a = p.parse_args(argv)
    t0 = time.time()
    load_at_start = os.getloadavg()[0]

    cached = all(
        os.path.exists(os.path.join(a.workdir, d, "summary.json"))
        for d in (f"image_attributes_{a.image_steps}", f"text_mlm_{a.text_steps}")
    )
    runs_dir = {
        t: unimodal_run(a.workdir, t, s)
        for t, s in (("image", a.image_steps), ("text", a.text_steps))
    }
    t_pretrain = time.time() - t0
    image_run = restore.load_run(None, runs_dir["image"])
    text_run = restore.load_run(None, runs_dir["text"])
    t = time.time()
    pool = structure.extract_features(
        image_run, text_run, f"synthetic:shapes?num_examples={a.pool}", "val"
    )
    test = structure.extract_features(image_run, text_run, split="test", num_examples=a.test)
    prompts = structure.task_prompts(text_run)
    t_features = time.time() - t
    print(
        f"features: {len(pool)} pool pairs, {len(test)} test; image layers "
        f"{[x.shape[1] for x in pool.image]}, text layers {[y.shape[1] for y in pool.text]} "
        f"({t_features:.0f} s)",
        flush=True,
    )

    rows = []
    for fraction in FRACTIONS:
        for seed in range(a.seeds):
            for name, (_, lam, layers) in METHODS.items():
                cfg = structure.AlignConfig(
                    steps=a.steps, warmup_steps=max(1, a.steps // 5), lambda_max=lam
                )
                r = structure.run(pool, test, prompts, fraction, seed, cfg, layers)
                r.update(method=name, fraction=fraction, seed=seed)
                rows.append(r)
                print(
                    f"{fraction:.0%} seed {seed} {name:15s} layers {r['layers']}: "
                    + ", ".join(f"{m} {r[m]:.3f}" for m in METRICS),
                    flush=True,
                )

    def cell(name, fraction, metric):
        vals = [r[metric] for r in rows if r["method"] == name and r["fraction"] == fraction]
        return _pretrained.mean_std(vals)

    agg = {
        f"{name}@{fraction}": {m: cell(name, fraction, m) for m in METRICS}
        for fraction in FRACTIONS
        for name in METHODS
    }
    header = "| pairs | method | " + " | ".join(METRICS.values()) + " |"
    lines = [header, "|---" * (len(METRICS) + 2) + "|"]
    for fraction in FRACTIONS:
        n = next(r["pairs"] for r in rows if r["fraction"] == fraction)
        for name, (label, _, _) in METHODS.items():
            cells = [f"{m0:.3f} ± {m1:.3f}" for m0, m1 in agg[f"{name}@{fraction}"].values()]
            lines.append(f"| {fraction:.0%} ({n}) | {label} | " + " | ".join(cells) + " |")

    def gain(a_name, b_name, fraction, metric):
        """Per-seed differences a - b."""
        get = {(r["method"], r["seed"]): r[metric] for r in rows if r["fraction"] == fraction}
        return [round(get[(a_name, s)] - get[(b_name, s)], 4) for s in range(a.seeds)]

    def score(r):  # one number per run: zero-shot mean and mean retrieval R@1, averaged
        return 0.5 * r["zeroshot/mean"] + 0.25 * (r["i2t_r1"] + r["t2i_r1"])

    for r in rows:
        r["score"] = score(r)
    structure_gain = {
        f"{f:.0%}": {
            layers: float(np.mean(gain(f"structure_{layers}", f"plain_{layers}", f, "score")))
            for layers in ("sel", "last")
        }
        for f in FRACTIONS
    }
    selected_gain = {
        f"{f:.0%}": {
            lam: float(np.mean(gain(f"{lam}_sel", f"{lam}_last", f, "score")))
            for lam in ("plain", "structure")
        }
        for f in FRACTIONS
    }
    low, high = f"{FRACTIONS[0]:.0%}", f"{FRACTIONS[-1]:.0%}"
    picked = {
        f"{f:.0%}": sorted(
            {
                tuple(r["layers"])
                for r in rows
                if r["fraction"] == f and r["method"].endswith("_sel")
            }
        )
        for f in FRACTIONS
    }
    last = (len(pool.image) - 1, len(pool.text) - 1)
    mean_gain = {f: float(np.mean(list(g.values()))) for f, g in structure_gain.items()}
    verdict = {
        "score": "0.5 zero-shot mean + 0.25 (i2t R@1 + t2i R@1), per-seed differences averaged",
        "structure_minus_plain": structure_gain,
        "structure_beats_plain_at_1pct": all(v > 0 for v in structure_gain[low].values()),
        "structure_gain_at_1pct_exceeds_25pct": all(
            structure_gain[low][k] > structure_gain[high][k] for k in ("sel", "last")
        ),
        "structure_gain_largest_at": max(mean_gain, key=mean_gain.get),
        "selected_minus_last": selected_gain,
        "selected_beats_last": {
            f: all(v > 0 for v in d.values()) for f, d in selected_gain.items()
        },
        "selected_pairs": {f: [list(p) for p in v] for f, v in picked.items()},
        "last_pair": list(last),
        "per_seed_zeroshot_structure_minus_plain_sel": {
            f"{f:.0%}": gain("structure_sel", "plain_sel", f, "zeroshot/mean") for f in FRACTIONS
        },
    }
    result = {
        "experiment": "structure",
        "command": "nice python experiments/structure.py --workdir /tmp/alignjax_structure",
        "unimodal": {
            "image": {
                "run": runs_dir["image"],
                "steps": a.image_steps,
                "final_train": final_train_metrics(runs_dir["image"]),
            },
            "text": {
                "run": runs_dir["text"],
                "steps": a.text_steps,
                "final_train": final_train_metrics(runs_dir["text"]),
            },
        },  # fmt: skip
        "budget": f"pool {len(pool)} val pairs; alignment: linear to 64, {a.steps} steps at "
        f"batch min(256, pairs), AdamW lr 1e-3 (0.9, 0.95) wd 1e-4 clip 1, τ 0.05, "
        f"λ_max 10 warm-up {max(1, a.steps // 5)}",
        "eval": f"{len(test)} test-split images (held-out (shape, colour) pairs): zero-shot "
        "acc1 of 5 attributes (chance: shape/colour 0.125, size/count 0.5, position 0.33), "
        "retrieval R@1 against each image's caption (chance 0.001)",
        "seeds": a.seeds,
        "mean_std": agg,
        "runs": rows,
        "verdict": verdict,
        "pretrain_s": t_pretrain,
        "pretrained_towers_cached": cached,
        "features_s": t_features,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg()[0],
        "wall_s": time.time() - t0,
    }
    _pretrained.write_result(a.out, result, "\n".join(lines))


if __name__ == "__main__":
    main()
