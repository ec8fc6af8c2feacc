"""CTP vs sequential fine-tuning (CLIP loss) on a colour-split of the shapes data.

  PYTHONPATH=$PWD python experiments/ctp.py            # ~10 min on 2 CPU cores

Claim (Zhu et al., ICCV 2023): continual pre-training with CTP (compatible momentum
contrast + topology preservation to the previous task's model) forgets less than plain
sequential fine-tuning, at similar final average accuracy.

Setup: three tasks, each bringing new colours (red+orange+yellow, green+cyan+blue,
purple+white; every shape in each), trained one after another by `alignjax.continual`
(each task starts from the previous one, fresh optimizer). Colours, not shapes: at this
budget the small model learns colour within a task and shape barely (a first try with
shape tasks, 120 steps each at 32 px, ended task 1 at 0.26 shape accuracy, near the 1/8
chance, so there was nothing to forget). Matched budget: the same small model
(configs/ctp.py's demo model, shrunk: 16 px, narrow one-layer towers), batch, optimizer,
steps per task and data order for both methods; only `config.loss` differs (CTP: ITA +
MoCo against a 256-feature queue + topology KL, fixed tau 0.07; baseline: CLIP's loss with
its learned logit scale). After every task each task is scored by zero-shot colour
accuracy over all 8 colours on its held-out 'val' images (class-incremental: the classes
of later tasks are candidates too). 3 seeds (model init and data order); mean +- std of final average
accuracy and average forgetting. Table printed, JSON at experiments/results/ctp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax

from alignjax import continual
from alignjax.config import load_config_file

TASK_COLORS = (('red', 'orange', 'yellow'), ('green', 'cyan', 'blue'), ('purple', 'white'))
METHODS = ('clip', 'ctp')


def make_config(method: str, seed: int, steps: int):
    """configs/ctp.py (or its :clip variant), shrunk to fit the CPU budget."""
    c = load_config_file(os.path.join(REPO, 'configs', 'ctp.py'), 'clip' if method == 'clip' else None)
    c.seed = seed
    c.batch_size = 32
    c.total_steps = steps
    c.log_every_steps = steps
    c.eval_every_steps = 0
    c.checkpoint_every_steps = steps
    c.keep_checkpoints = 1
    c.data.image_size = 16
    m = c.model
    m.embed_dim = 32
    m.image.patch_size = 4  # 4 x 4 tokens.
    m.image.width = m.text.width = 32
    m.image.mlp_dim = m.text.mlp_dim = 128
    m.image.depth = m.text.depth = 1
    m.image.num_heads = m.text.num_heads = 2
    c.optim.warmup_steps = 10
    if method == 'ctp':
        c.loss.queue_size = 256  # 8 batches.
    return c


def make_tasks(steps: int, num_eval: int):
    tasks = []
    for colors in TASK_COLORS:
        spec = 'synthetic:shapes?colors=' + ','.join(colors)
        ev = dict(type='zeroshot', data=spec, split='val', num_examples=num_eval,
                  batch_size=num_eval, tasks=('color',))
        tasks.append(
            continual.Task(train=spec, eval=ev, metric='zeroshot/{name}_color/acc1', steps=steps)
        )
    return tasks


def mean_std(xs):
    return float(np.mean(xs)), float(np.std(xs))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--steps', type=int, default=80, help='steps per task')
    p.add_argument('--num_eval', type=int, default=128, help='held-out images per task')
    p.add_argument('--out', default=os.path.join(REPO, 'experiments', 'results', 'ctp.json'))
    p.add_argument('--workdir', default=None, help='keep the runs here (default: a temp dir)')
    args = p.parse_args()
    # Every task of a method has the same shapes: compile each step once, not per task.
    jax.config.update('jax_compilation_cache_dir', os.path.join(tempfile.gettempdir(), 'alignjax_ctp_jit'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)

    began = time.time()
    root = args.workdir or tempfile.mkdtemp(prefix='ctp_experiment_')
    tasks = make_tasks(args.steps, args.num_eval)
    runs = {m: [] for m in METHODS}
    for seed in range(args.seeds):
        for method in METHODS:
            t0 = time.time()
            out = continual.run_sequence(
                make_config(method, seed, args.steps), tasks, os.path.join(root, f'{method}_{seed}'),
                verbose=False,
            )
            out['seed'], out['seconds'] = seed, round(time.time() - t0, 1)
            runs[method].append(out)
            print(f'{method} seed {seed}: avg acc {out["average_accuracy"]:.3f}, avg forgetting '
                  f'{out["average_forgetting"]:.3f} ({out["seconds"]:.0f} s)', flush=True)
            print(continual.format_table(out['accuracy_matrix'], None), flush=True)

    summary = {}
    for method in METHODS:
        acc = mean_std([r['average_accuracy'] for r in runs[method]])
        fgt = mean_std([r['average_forgetting'] for r in runs[method]])
        matrix = np.mean([r['accuracy_matrix'] for r in runs[method]], axis=0)
        summary[method] = {
            'average_accuracy_mean': acc[0], 'average_accuracy_std': acc[1],
            'average_forgetting_mean': fgt[0], 'average_forgetting_std': fgt[1],
            'mean_accuracy_matrix': matrix.round(4).tolist(),
        }
    s_ctp, s_clip = summary['ctp'], summary['clip']
    less_forgetting = s_ctp['average_forgetting_mean'] < s_clip['average_forgetting_mean']
    spread = max(s_ctp['average_accuracy_std'], s_clip['average_accuracy_std'])
    similar_acc = s_ctp['average_accuracy_mean'] >= s_clip['average_accuracy_mean'] - max(spread, 0.01)
    wall = time.time() - began

    print(f'\nCTP vs sequential fine-tuning, {len(tasks)} tasks x {args.steps} steps, '
          f'{args.seeds} seeds (mean +- std)')
    print(f'{"method":<28}{"final avg accuracy":>22}{"avg forgetting":>20}')
    for method, label in (('clip', 'sequential FT (CLIP loss)'), ('ctp', 'CTP')):
        s = summary[method]
        print(f'{label:<28}{s["average_accuracy_mean"]:>13.3f} +- {s["average_accuracy_std"]:.3f}'
              f'{s["average_forgetting_mean"]:>11.3f} +- {s["average_forgetting_std"]:.3f}')
    verdict = ('shows' if less_forgetting and similar_acc else 'does not show')
    print(f"Paper's direction (lower forgetting at similar accuracy) {verdict}: "
          f'less forgetting {less_forgetting}, accuracy within the seed spread or higher '
          f'{similar_acc}. Wall time {wall / 60:.1f} min.')

    result = {
        'command': 'PYTHONPATH=$PWD python experiments/ctp.py',
        'tasks': [t.train for t in tasks], 'steps_per_task': args.steps, 'seeds': args.seeds,
        'batch_size': 32, 'num_eval_per_task': args.num_eval,
        'summary': summary, 'runs': runs,
        'direction_shows': bool(less_forgetting and similar_acc),
        'less_forgetting': bool(less_forgetting), 'similar_accuracy': bool(similar_acc),
        'wall_seconds': round(wall, 1),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'-> {args.out}')


if __name__ == '__main__':
    main()
