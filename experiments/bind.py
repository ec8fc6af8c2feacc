"""Binding depth maps to the demo's frozen text tower: zero-shot depth and emergent depth <-> photo.

  nice python experiments/bind.py --workdir /tmp/alignjax_bind [--start RUN]

1. The start: ``--start`` (a trained run of the demo architecture), else configs/demo.py
   for 550 steps (its full schedule; about 4 minutes on 2 cores), trained once under
   ``--workdir`` and cached (the same start as experiments/coop.py and lora.py). Its photo
   tower and text tower were trained together on photo-caption pairs.
2. Arms, all scored by configs/bind.py's evaluators on the same 1000 test scenes:
   - the photo tower on depth maps (nothing trained): what the start makes of the new
     modality as it is;
   - a depth tower bound to the frozen text tower (configs/bind.py), initialised from the
     photo tower (LanguageBind's choice);
   - the same from scratch (``scratch``).
   Both bound arms train on depth-caption pairs only, ``--steps`` steps at batch 64, AdamW
   1e-3 (configs/bind.py as written), 3 seeds (the run's seed: data order and, from
   scratch, the initialisation). No arm ever sees a depth map paired with a photo.
3. Metrics: zero-shot acc1 of the depth maps through the frozen text tower's prompts
   (shape, size, position, count; colour is not in a depth map, so its chance 0.125 is the
   expected score); depth -> caption R@1; and the emergent retrieval between depth maps
   (the bound tower) and the same scenes' photos (the start's photo tower):
   depth -> photo R@1 / R@10 and the share of depth queries whose top photo has the same
   shape, each against its chance level (R@k: k / 1000; same shape: sum of squared class
   frequencies).

The paper's direction (LanguageBind, Zhu et al. ICLR 2024; ImageBind, Girdhar et al. CVPR
2023): a modality bound to the language tower alone classifies zero-shot through text
prompts, and retrieves the images bound to the same tower well above chance without any
pairs of the two. Writes experiments/results/bind.json (``--out``), prints the table (mean +-
std over seeds) and the verdict.
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

from alignjax import train  # noqa: E402

ARMS = {  # name -> (label, configs/bind.py arguments after the path; None: not trained)
    "photo_tower": ("photo tower on depth (not trained)", None),
    "bound": ("depth tower bound, from the photo tower", ""),
    "bound_scratch": ("depth tower bound, from scratch", "scratch"),
}
#: The attributes a depth map shows, with their chance accuracy (uniform classes).
ZS_CHANCE = {"shape": 1 / 8, "size": 1 / 2, "position": 1 / 3, "count": 1 / 2}
ZS = tuple(ZS_CHANCE)
CM = "cross_modal/depth_photo"
METRICS = {
    **{f"zs_{a}": (f"zeroshot/depth_{a}/acc1", f"zero-shot {a}") for a in ZS},
    "zs_color": ("zeroshot/depth_color/acc1", "zero-shot colour (absent: chance 0.125)"),
    "depth_text_r1": ("retrieval/depth_text/text_retrieval_recall@1", "depth -> caption R@1"),
    "depth_photo_r1": (f"{CM}/to_anchor_recall@1", "depth -> photo R@1"),
    "depth_photo_r10": (f"{CM}/to_anchor_recall@10", "depth -> photo R@10"),
    "photo_depth_r1": (f"{CM}/from_anchor_recall@1", "photo -> depth R@1"),
    "depth_photo_shape": (f"{CM}/match@1/shape", "top photo has the shape"),
}
CHANCE = {
    "depth_photo_r1": f"{CM}/chance/recall@1",
    "depth_photo_r10": f"{CM}/chance/recall@10",
    "photo_depth_r1": f"{CM}/chance/recall@1",
    "depth_photo_shape": f"{CM}/chance/match@1/shape",
}


def bind_config(start: str, arg: str, seed: int, steps: int):
    c = _pretrained._config_module("bind").get_config(f"{start},{arg},steps={steps}")
    c.seed = seed
    return c


def main(argv=None):
    p = _pretrained.start_parser(__doc__, "bind", steps=200)
    a = p.parse_args(argv)
    t0 = time.time()
    start = _pretrained.demo_start(a.workdir, a.start)
    t_start = time.time() - t0
    tag = "from_" + os.path.basename(os.path.normpath(start))  # runs cached per start
    # The photo tower reads the depth maps: the start scored by a bound arm's evaluators.
    frozen = _pretrained.evaluate_run(start, bind_config(start, "", 0, a.steps))
    chance = {m: frozen[key] for m, key in CHANCE.items()}
    runs = [{"arm": "photo_tower", "seed": None, **{m: frozen[k] for m, (k, _) in METRICS.items()}}]
    for name, (_, arg) in ARMS.items():
        if arg is None:
            continue
        for seed in range(a.seeds):
            wd = os.path.join(a.workdir, tag, f"{name}_s{seed}_{a.steps}")
            t = time.time()
            summary = train.train_and_evaluate(bind_config(start, arg, seed, a.steps), wd)
            row = {"arm": name, "seed": seed, "wall_s": time.time() - t}
            row.update({m: summary[key] for m, (key, _) in METRICS.items()})
            runs.append(row)
            print(f"{name} seed {seed}: " + ", ".join(f"{m} {row[m]:.3f}" for m in METRICS))
    agg = {
        name: {m: _pretrained.mean_std([r[m] for r in runs if r["arm"] == name]) for m in METRICS}
        for name in ARMS
    }
    shown = [m for m in METRICS if m != "photo_depth_r1"]  # in the JSON; the table stays narrow
    header = "| arm | " + " | ".join(METRICS[m][1] for m in shown) + " |"
    lines = [header, "|---" * (len(shown) + 1) + "|"]
    for name, (label, arg) in ARMS.items():
        cells = [
            f"{agg[name][m][0]:.3f}" + ("" if arg is None else f" ± {agg[name][m][1]:.3f}")
            for m in shown
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    levels = [ZS_CHANCE[x] for x in ZS] + [1 / 8, chance["depth_photo_r1"]]  # captions: 1 / N
    cells = [f"{v:.3f}" for v in levels] + [f"{chance[m]:.3f}" for m in shown[len(levels) :]]
    lines.append("| chance | " + " | ".join(cells) + " |")

    def above(arm, metric, level):  # The seeds' mean minus 2 std above `level`.
        mean, std = agg[arm][metric]
        return mean - 2 * std > level

    bound = "bound"
    zs_mean = {n: sum(agg[n][f"zs_{x}"][0] for x in ZS) / len(ZS) for n in ARMS}
    verdict = {
        "zero_shot_above_chance": {x: above(bound, f"zs_{x}", c) for x, c in ZS_CHANCE.items()},
        "zero_shot_mean_depth_attributes": zs_mean,
        "bound_beats_the_photo_tower_on_depth": zs_mean[bound] > zs_mean["photo_tower"],
        "emergent_retrieval_above_chance": above(bound, "depth_photo_r1", chance["depth_photo_r1"])
        and above(bound, "depth_photo_shape", chance["depth_photo_shape"]),
        "emergent_r1_over_chance": agg[bound]["depth_photo_r1"][0] / chance["depth_photo_r1"],
        "colour_not_read_from_depth": agg[bound]["zs_color"][0] <= 0.125 + 0.05,
        "photo_init_beats_scratch": zs_mean[bound] > zs_mean["bound_scratch"],
    }
    result = {
        "experiment": "bind",
        "command": "nice python experiments/bind.py --workdir /tmp/alignjax_bind",
        "start": start,
        "budget": f"{a.steps} steps at batch 64 on depth-caption pairs "
        "(synthetic:shapes?render=depth) for each bound arm, AdamW 1e-3, the text tower and "
        "temperature frozen; never a depth-photo pair",
        "eval": "1000 test scenes: zero-shot acc1 of depth maps with the frozen text prompts; "
        "depth -> caption R@1; depth <-> photo retrieval, photos embedded by the start's "
        "photo tower",
        "seeds": a.seeds,
        "chance": chance,
        "mean_std": agg,
        "runs": runs,
        "verdict": verdict,
        "start_s": t_start,
        "wall_s": time.time() - t0,
    }
    _pretrained.write_result(a.out, result, "\n".join(lines))


if __name__ == "__main__":
    main()
