"""LoRA against full fine-tuning and the frozen model on 16 shots of shape, 3 seeds.

  nice python experiments/lora.py --workdir /tmp/alignjax_lora [--start RUN]

1. The start: ``--start`` (a trained run of the demo architecture), else configs/demo.py
   for 550 steps (its full schedule; about 4 minutes on 2 cores), trained once under
   ``--workdir`` and cached (the same start as experiments/coop.py).
2. For each seed (the seed of the 16 shots per shape class and of the run), configs/lora.py
   from that start, the same data, loss, steps and batch for every arm: cross-entropy of
   the zero-shot logits against "a photo of a <shape>." (``classify``) on
   ``fewshot:synthetic:shapes?label=shape&shots=16&shot_seed=seed``, ``--steps`` steps at
   batch 32 (50 epochs of the 128 shots):
   - full fine-tuning: every parameter, AdamW 1e-4, the demo's weight decay;
   - LoRA rank 4 on every attention projection and both MLP layers of both towers, the rest
     frozen, AdamW 1e-3 without weight decay;
   - LoRA rank 4 on the attention projections only, same settings.
   The learning rates are the usual ones (full fine-tuning 10x below the demo's
   pre-training rate, LoRA 10x above that): not tuned on the evaluation.
3. Scored by the runs' evaluators (the frozen start by the same evaluators): zero-shot shape
   accuracy on 1000 val images with the training prompt (the task adapted to), and on the
   held-out (shape, colour) pairs of the test split the shape and colour accuracy and
   image->text recall@1 (what the adaptation costs beyond the task).

The paper's direction (Hu et al. 2022; for CLIP, CLIP-LoRA, Zanella & Ben Ayed 2024): LoRA
matches full fine-tuning's accuracy on the task while training a small fraction of the
parameters. Writes experiments/results/lora.json (``--out``), prints the table (mean +- std
over seeds) and the verdict.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "experiments")):
    if path not in sys.path:  # Run as a script from a checkout.
        sys.path.insert(0, path)

import _pretrained  # noqa: E402

from alignjax import optim, train  # noqa: E402

ARMS = {  # name -> (label, configs/lora.py argument after the path)
    "frozen": ("frozen start (hand-crafted prompt)", None),
    "full": ("full fine-tuning", "full"),
    "lora": ("LoRA r=4, attention + MLP", "r=4"),
    "lora_attn": ("LoRA r=4, attention only", "r=4,attn"),
}
METRICS = {
    "shape_val": ("zeroshot/shapes/acc1", "shape acc1 (val, the task)"),
    "shape_heldout": ("zeroshot/heldout_shape/acc1", "shape acc1 (held-out pairs)"),
    "color_heldout": ("zeroshot/heldout_color/acc1", "colour acc1 (held-out pairs)"),
    "i2t_r1_heldout": (
        "retrieval/heldout_retrieval/text_retrieval_recall@1",
        "image->text R@1 (held-out pairs)",
    ),
}


def lora_config(start: str, arg: str, seed: int, steps: int):
    c = _pretrained._config_module("lora").get_config(f"{start},{arg}")
    c.seed = seed
    c.total_steps = c.eval_every_steps = c.checkpoint_every_steps = c.log_every_steps = steps
    c.data.train = c.data.train + f"&shot_seed={seed}"
    return c


def trained_values(config) -> int:
    t = train.build_trainer(config)
    return optim.trainable_count(t.abstract_state.params, t.config.optim.freeze)


def main(argv=None):
    p = _pretrained.start_parser(__doc__, "lora", steps=200)
    a = p.parse_args(argv)
    t0 = time.time()
    start = _pretrained.demo_start(a.workdir, a.start)
    t_start = time.time() - t0
    tag = "from_" + os.path.basename(os.path.normpath(start))  # runs cached per start
    frozen = _pretrained.evaluate_run(start, lora_config(start, "full", 0, 200))  # the start
    frozen_row = {m: frozen[key] for m, (key, _) in METRICS.items()}
    runs, counts = [], {"frozen": 0}
    for name, (_, arg) in ARMS.items():
        if arg is None:
            continue
        counts[name] = trained_values(lora_config(start, arg, 0, a.steps))
        for seed in range(a.seeds):
            wd = os.path.join(a.workdir, tag, f"{name}_s{seed}_{a.steps}")
            t = time.time()
            summary = train.train_and_evaluate(lora_config(start, arg, seed, a.steps), wd)
            row = {"arm": name, "seed": seed, "wall_s": time.time() - t}
            row.update({m: summary[key] for m, (key, _) in METRICS.items()})
            runs.append(row)
            print(f"{name} seed {seed}: " + ", ".join(f"{m} {row[m]:.3f}" for m in METRICS))
    agg = {"frozen": {m: (v, 0.0) for m, v in frozen_row.items()}}
    for name in ARMS:
        if name != "frozen":
            agg[name] = {
                m: _pretrained.mean_std([r[m] for r in runs if r["arm"] == name]) for m in METRICS
            }
    total = trained_values(lora_config(start, "full", 0, a.steps))
    header = "| arm | trained values | " + " | ".join(label for _, label in METRICS.values()) + " |"
    lines = [header, "|---" * (len(METRICS) + 2) + "|"]
    for name, (label, _) in ARMS.items():
        share = f"{counts[name]:,} ({100 * counts[name] / total:.1f}%)"
        cells = [f"{agg[name][m][0]:.3f} ± {agg[name][m][1]:.3f}" for m in METRICS]
        lines.append(f"| {label} | {share} | " + " | ".join(cells) + " |")

    def per_seed(a_arm, b_arm, metric):
        a_rows = sorted((r for r in runs if r["arm"] == a_arm), key=lambda r: r["seed"])
        b_rows = sorted((r for r in runs if r["arm"] == b_arm), key=lambda r: r["seed"])
        return [round(x[metric] - y[metric], 4) for x, y in zip(a_rows, b_rows)]

    full, lora = agg["full"]["shape_val"], agg["lora"]["shape_val"]
    verdict = {
        # "Matches": LoRA's mean within one (larger) std of full fine-tuning's, or above it.
        "lora_matches_full_on_the_task": lora[0] >= full[0] - max(full[1], lora[1]),
        "lora_beats_frozen_on_the_task": lora[0] > frozen_row["shape_val"],
        "per_seed_lora_minus_full_shape_val": per_seed("lora", "full", "shape_val"),
        "per_seed_lora_minus_full_color_heldout": per_seed("lora", "full", "color_heldout"),
        "lora_trains_percent": 100 * counts["lora"] / total,
    }
    result = {
        "experiment": "lora",
        "command": "nice python experiments/lora.py --workdir /tmp/alignjax_lora",
        "start": start,
        "budget": f"{a.steps} steps at batch 32 on the same 16 shots per shape for every "
        "trained arm (classify loss, prompt 'a photo of a {}.'); full FT AdamW 1e-4 wd 0.05, "
        "LoRA AdamW 1e-3 wd 0",
        "eval": "zero-shot acc1: shape on 1000 val images (8 classes, chance 0.125); shape, "
        "colour and image->text R@1 on 1000 held-out-pair test images",
        "seeds": a.seeds,
        "trained_values": counts,
        "total_values": total,
        "frozen": frozen_row,
        "mean_std": agg,
        "runs": runs,
        "verdict": verdict,
        "start_s": t_start,
        "wall_s": time.time() - t0,
    }
    _pretrained.write_result(a.out, result, "\n".join(lines))


if __name__ == "__main__":
    main()
