"""FLIP patch dropout vs the plain demo model at equal training wall-clock (3 seeds).

  python experiments/patch_dropout.py --workdir /tmp/pdrop      # ~9 min on 2 CPU cores

FLIP's claim (Li et al., CVPR 2023): dropping 50-75% of the image patches makes a step so
much cheaper that, at the same training time, the model sees more pairs and ends better
(or equal) on zero-shot and retrieval. Here: `configs/demo.py:clip` (the shared experiment
config of `experiments/_pretrained.py`: batch 64, the held-out shapes evaluators), trained
from scratch with `model.image.patch_dropout` = 0 and 0.5.

Budget: equal wall-clock. The steps each setting gets are `budget_s` times its measured
train-step rate (the real step, compiled, on a random batch; measured first, in this run);
the table also shows the training time each run really took (data loading included,
which patch dropout does not make cheaper), so the match can be checked. Evaluation is
unmasked (as every evaluator is) and there is no unmasked tuning phase. Writes
`experiments/results/patch_dropout.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pretrained  # noqa: E402

from alignjax import parallel, train  # noqa: E402

RATES = (0.0, 0.5)
METRICS = ("zeroshot_acc1_mean", "image_retrieval_r1", "text_retrieval_r1")


def run_config(rate: float, steps: int, seed: int):
    c = _pretrained.config("demo", steps, seed)
    c.model.image.patch_dropout = rate
    return c


def steps_per_s(rate: float, n: int = 15) -> float:
    """Median rate of the compiled train step on a random batch (no data loading)."""
    c = run_config(rate, 1000, 0)
    t = train.build_trainer(c)
    state = t.init_fn()
    rng = np.random.default_rng(0)
    s, length = c.data.image_size, c.tokenizer.context_length
    host = {
        "image": rng.standard_normal((c.batch_size, s, s, 3), dtype=np.float32),
        "tokens": rng.integers(1, 255, size=(c.batch_size, length), dtype=np.int32),
    }
    batch = parallel.make_global_batch(host, t.mesh)
    times = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        state, m = t.step_fn(state, batch)
        jax.block_until_ready(m)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1.0 / float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--budget_s", type=float, default=80.0, help="training seconds per run")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=os.path.join(_pretrained.ROOT, "experiments", "results",
                                                 "patch_dropout.json"))  # fmt: skip
    a = p.parse_args(argv)
    t_start = time.time()
    seeds = [int(s) for s in a.seeds.split(",")]
    rates = {r: steps_per_s(r) for r in RATES}
    steps = {r: max(10, int(a.budget_s * v)) for r, v in rates.items()}
    print("step rate (steps/s):", rates, "-> steps:", steps, flush=True)
    runs = {r: [] for r in RATES}
    for seed in seeds:
        for r in RATES:
            wd = os.path.join(a.workdir, f"pdrop{int(100 * r)}_s{seed}")
            t0 = time.time()
            summary = train.train_and_evaluate(run_config(r, steps[r], seed), wd)
            row = _pretrained.summary_row(summary)
            row["run_s"] = time.time() - t0  # training + final evaluation
            runs[r].append(row)
            print(f"rate {r} seed {seed}: {row}", flush=True)
    agg = {
        r: {k: _pretrained.mean_std([x[k] for x in runs[r]]) for k in METRICS + ("run_s",)}
        for r in RATES
    }
    names = {r: f"patch_dropout={r} ({steps[r]} steps)" for r in RATES}
    header = "| model | " + " | ".join(METRICS + ("run s",)) + " |"
    table = "\n".join(
        [header, "|" + "---|" * (len(METRICS) + 2)]
        + _pretrained.method_rows(names, agg, METRICS + ("run_s",))
    )
    base, flip = agg[0.0], agg[0.5]
    diff = flip["zeroshot_acc1_mean"][0] - base["zeroshot_acc1_mean"][0]
    spread = max(base["zeroshot_acc1_mean"][1], flip["zeroshot_acc1_mean"][1])
    verdict = {
        "claim": "at equal training time, patch dropout 0.5 scores >= the plain model",
        "zeroshot_mean_difference": diff,
        "seed_spread": spread,
        "shows": "supports" if diff > spread else ("contradicts" if diff < -spread else "neutral"),
    }
    result = dict(
        budget_s=a.budget_s,
        seeds=seeds,
        step_rates=rates,
        steps=steps,
        runs={str(r): v for r, v in runs.items()},
        aggregate={str(r): v for r, v in agg.items()},
        verdict=verdict,
        wall_s=time.time() - t_start,
    )
    _pretrained.write_result(a.out, result, table)
    return result


if __name__ == "__main__":
    main()
