"""Evaluate a checkpoint: `python -m alignjax.evaluate --workdir DIR [--step S]`.

  python -m alignjax.evaluate --workdir /tmp/demo                 # newest checkpoint
  python -m alignjax.evaluate --workdir /tmp/demo --step 1000
  python -m alignjax.evaluate --checkpoint /tmp/demo/checkpoints/1000 --config configs/demo.py
  python -m alignjax.evaluate --workdir /tmp/demo --config configs/demo.py \\
      --config.evals.inet.type=zeroshot ...        # other evaluators than the run's

`--weights ema` evaluates the run's EMA copy (`config.ema`), or any other extra weight set
of the train state; results then go to `eval_<step>_<weights>.json`.

The config is the run's `<workdir>/config.json` unless `--config` is given (then its
`config.evals` are the evaluators; `--config.a.b=v` overrides work). `--evals a,b` runs only
those. Results go to `<output_dir>/eval_<step>.json` (default: the workdir, or the directory
holding `checkpoints/` with `--checkpoint`) and are printed as a table. Multi-process: the
same flags as `alignjax.train` (`--coordinator_address`, `--num_processes`, `--process_id`).
"""

from __future__ import annotations

import logging
import os
import sys

import jax
import ml_collections

from alignjax import parallel, restore
from alignjax import workdir as workdir_lib
from alignjax.evaluate import evaluators as evaluators_lib

ConfigDict = ml_collections.ConfigDict


def locate_checkpoint(checkpoint: str | None, workdir: str | None, step: int | None):
    """(checkpoints directory, step or None = newest) from the flags."""
    if checkpoint:
        path = os.path.abspath(checkpoint.rstrip('/'))
        base = os.path.basename(path)
        if base.isdigit():  # .../checkpoints/<step>
            if step is not None and step != int(base):
                raise ValueError(f'--step={step} contradicts --checkpoint={checkpoint}.')
            return os.path.dirname(path), int(base)
        return path, step
    if not workdir:
        raise ValueError('Pass --workdir DIR (a training run) or --checkpoint PATH --config FILE.')
    return os.path.join(workdir, 'checkpoints'), step


def evaluate_checkpoint(
    config: ConfigDict,
    checkpoint_dir: str,
    step: int | None = None,
    only: list[str] | None = None,
    output_dir: str | None = None,
    weights: str = restore.PARAMS,
) -> tuple[int, dict[str, float]]:
    """Restores `step` (None: newest) from `checkpoint_dir`, runs the evaluators of
    `config.evals` (or those named in `only`) on the weight set `weights` ('params', or an
    extra set such as 'ema'), writes `eval_<step>.json` (`eval_<step>_<weights>.json` for an
    extra set) to `output_dir` (process 0) and returns (step, metrics)."""
    if only:
        missing = [n for n in only if n not in config.evals]
        if missing:
            raise ValueError(f'--evals {missing} not in config.evals {sorted(config.evals)}.')
        config = ConfigDict(config.to_dict())
        for name in list(config.evals):
            if name not in only:
                del config.evals[name]
    if not config.evals:
        raise ValueError(
            'config.evals is empty: nothing to evaluate. Pass --config with evaluators, e.g. '
            "configs/demo.py, or --config.evals.NAME.type=zeroshot ..."
        )
    run = restore.load_run(config, checkpoint_dir, step, weights)
    evaluators = evaluators_lib.build_evaluators(
        run.config, run.model, run.tokenizer, run.mesh, run.build.objective.scorers
    )
    results: dict[str, float] = {}
    for ev in evaluators:
        results.update(ev.run(run.params))
    step = run.step
    if output_dir and jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        record = {'step': step, 'checkpoint': os.path.join(checkpoint_dir, str(step))}
        record['weights'] = weights
        record.update({k: workdir_lib.to_python(v) for k, v in results.items()})
        workdir_lib.write_json(os.path.join(output_dir, eval_file_name(step, weights)), record)
    return step, results


def eval_file_name(step: int, weights: str = restore.PARAMS) -> str:
    """`eval_<step>.json`, or `eval_<step>_<weights>.json` for an extra weight set."""
    return f'eval_{step}.json' if weights == restore.PARAMS else f'eval_{step}_{weights}.json'


def main(argv=None) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        'config', None, 'Config file (default: <workdir>/config.json).', lock_config=False
    )
    flags.DEFINE_string('workdir', None, 'Training run directory (config.json, checkpoints/).')
    flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
    flags.DEFINE_string('checkpoint', None, 'A checkpoints/ directory or one checkpoints/<step>.')
    flags.DEFINE_string('output_dir', None, 'Where eval_<step>.json goes (default: the workdir).')
    flags.DEFINE_list('evals', None, 'Run only these evaluators of config.evals.')
    flags.DEFINE_string(
        'weights', restore.PARAMS, "Weight set: 'params' (trained), or an extra set such as 'ema'."
    )
    flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
    flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
    flags.DEFINE_integer('process_id', None, "This process's index (multi-process).")

    def run(_):
        logging.getLogger().setLevel(logging.WARNING)
        f = flags.FLAGS
        parallel.maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
        try:
            ckpt_dir, step = locate_checkpoint(f.checkpoint, f.workdir, f.step)
            if f.config is not None:
                config = f.config
            elif f.workdir:
                config = restore.load_config(f.workdir)
            else:
                raise ValueError('--checkpoint needs --config (or a --workdir with config.json).')
            run_dir = f.workdir or os.path.dirname(ckpt_dir)
            out_dir = f.output_dir or run_dir
            step, results = evaluate_checkpoint(
                config, ckpt_dir, step, f.evals, out_dir, f.weights
            )
        except ValueError as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(1)
        workdir_lib.print_table(
            f'Evaluation of step {step} ({f.weights}) -> '
            f'{os.path.join(out_dir, eval_file_name(step, f.weights))}',
            results,
        )

    app.run(run, argv=argv)


if __name__ == '__main__':
    main()
