"""Evaluate a checkpoint: `python -m alignjax.evaluate --workdir DIR [--step S]`.

  python -m alignjax.evaluate --workdir /tmp/demo                 # newest checkpoint
  python -m alignjax.evaluate --workdir /tmp/demo --step 1000
  python -m alignjax.evaluate --checkpoint /tmp/demo/checkpoints/1000
  python -m alignjax.evaluate --workdir /tmp/demo --config configs/demo.py --evals shapes
  python -m alignjax.evaluate --workdir /tmp/demo \\
      --config.evals.cifar.type=zeroshot --config.evals.cifar.data=tfds:cifar10 \\
      --config.evals.cifar.classnames=cifar10 --evals cifar     # an evaluator of your own

The config is the one the checkpoint stores (a run's `config.json` for checkpoints without
one) unless `--config FILE` is given (then its `config.evals` are the evaluators and
`--config.a.b=v` overrides work). `--config.evals.NAME.FIELD=VALUE` adds evaluator NAME or
sets any field of its type, on either config; values are Python literals where they parse
as one, else strings (`classnames=cat,dog,bird`, `classnames=/path/names.txt`,
`templates='a photo of a {}.|a {}.'`; see docs/EVALUATION.md). `--evals a,b` runs only
those. `--pictures` also draws what the evaluators see (docs/EVALUATION.md, "Pictures and
the report"). `--weights ema` evaluates the run's EMA copy (`config.ema`), or any other extra weight
set of the train state.

Results are printed as a table, then written to `<output_dir>/eval_<step>.json`
(`eval_<step>_<weights>.json` for an extra weight set; default directory: the workdir, or
the directory holding `checkpoints/` with `--checkpoint`). An existing result is kept: the
new one goes to `eval_<step>.2.json`, `.3.json`, ... unless `--overwrite`. An output
directory that cannot be written fails before anything is computed. Multi-process: the
same flags as `alignjax.train` (`--coordinator_address`, `--num_processes`, `--process_id`).
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile

import jax
import ml_collections
from absl import flags

from alignjax import checkpoint as checkpoint_lib
from alignjax import cli, parallel, restore
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
        raise ValueError('Pass --workdir DIR (a training run) or --checkpoint PATH.')
    return os.path.join(workdir, 'checkpoints'), step


# --------------------------------------------------------------------------------------
# Which config: the checkpoint's own, a run's config.json, or --config; evaluator overrides.


def choose_config(
    given: ConfigDict | None, workdir: str | None, checkpoint_dir: str, step: int | None
) -> ConfigDict:
    """`--config` if given, else the config stored with the checkpoint, else the run's
    `config.json` (`restore.checkpoint_config`)."""
    del workdir  # The run's config.json is the one beside checkpoints/.
    if given is not None:
        return given
    return restore.checkpoint_config(checkpoint_dir, step)


# --------------------------------------------------------------------------------------
# Evaluating and writing the results.


def eval_file_name(step: int, weights: str = restore.PARAMS, n: int = 1) -> str:
    """`eval_<step>.json` (`eval_<step>_<weights>.json` for an extra weight set); the n-th
    result for the same step and weights is `eval_<step>[_<weights>].<n>.json`."""
    stem = f'eval_{step}' if weights == restore.PARAMS else f'eval_{step}_{weights}'
    return f'{stem}.json' if n == 1 else f'{stem}.{n}.json'


def check_writable(output_dir: str) -> None:
    """Fails now, before anything is computed, if results cannot be written to `output_dir`
    (process 0 writes; every process fails with it); creates the directory."""
    problem = None
    if jax.process_index() == 0:
        try:
            os.makedirs(output_dir, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=output_dir, prefix='.eval_write_test'):
                pass
        except OSError as e:
            problem = e
    if not checkpoint_lib.all_processes_agree(problem is None):
        reason = (problem.strerror or str(problem)) if problem else 'on process 0'
        raise ValueError(
            f'Cannot write the results to {output_dir} ({reason}); pass --output_dir DIR '
            f'with a writable directory.'
        ) from problem


def run_evaluators(
    config: ConfigDict,
    checkpoint_dir: str,
    step: int | None = None,
    only: list[str] | None = None,
    weights: str = restore.PARAMS,
    pictures_dir: str | None = None,
) -> tuple[int, dict[str, float]]:
    """Restores `step` (None: newest) and runs the evaluators of `config.evals` (or those
    named in `only`) on the weight set `weights`; returns (step, metrics). `pictures_dir`:
    also draw the evaluators' pictures into `<pictures_dir>/pictures/step_<step>/`
    (`evaluators.draw_pictures`)."""
    config = evaluators_lib.keep_only(config, only)
    if not config.evals:
        raise ValueError(
            'config.evals is empty: nothing to evaluate. Add an evaluator, e.g. '
            '--config.evals.shapes.type=zeroshot --config.evals.shapes.data=synthetic:shapes, '
            'or pass --config with evaluators (e.g. configs/demo.py).'
        )
    run = restore.load_run(config, checkpoint_dir, step, weights)
    evaluators = evaluators_lib.build_evaluators(
        run.config, run.model, run.tokenizer, run.mesh, run.build.objective.scorers
    )
    results: dict[str, float] = {}
    for ev in evaluators:
        results.update(ev.run(run.params))
    if pictures_dir:
        evaluators_lib.draw_pictures(pictures_dir, run.step, evaluators, run.params)
    return run.step, results


def write_results(
    output_dir: str,
    step: int,
    checkpoint_dir: str,
    weights: str,
    results: dict[str, float],
    overwrite: bool = False,
) -> str | None:
    """Writes the results (process 0) and returns the path; never replaces an earlier
    result unless `overwrite` (the next free `eval_<step>.<n>.json` instead)."""
    if jax.process_index() != 0:
        return None
    record = {'step': step, 'checkpoint': os.path.join(checkpoint_dir, str(step))}
    record['weights'] = weights
    record.update({k: workdir_lib.to_python(v) for k, v in results.items()})
    os.makedirs(output_dir, exist_ok=True)
    if overwrite:
        path = os.path.join(output_dir, eval_file_name(step, weights))
        workdir_lib.write_json(path, record)
        return path
    tmp = os.path.join(output_dir, f'.{eval_file_name(step, weights)}.tmp')
    workdir_lib.write_json(tmp, record)
    try:
        n = 1
        while True:
            path = os.path.join(output_dir, eval_file_name(step, weights, n))
            try:
                os.link(tmp, path)  # Atomic, and fails rather than replace an existing file.
                return path
            except FileExistsError:
                n += 1
            except OSError as e:  # A file system without hard links.
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if not os.path.exists(path):
                    os.replace(tmp, path)
                    return path
                n += 1
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def evaluate_checkpoint(
    config: ConfigDict,
    checkpoint_dir: str,
    step: int | None = None,
    only: list[str] | None = None,
    output_dir: str | None = None,
    weights: str = restore.PARAMS,
    overwrite: bool = False,
) -> tuple[int, dict[str, float]]:
    """`run_evaluators`, then `write_results` to `output_dir` (if given; checked first)."""
    if output_dir:
        check_writable(output_dir)
    step, results = run_evaluators(config, checkpoint_dir, step, only, weights)
    if output_dir:
        write_results(output_dir, step, checkpoint_dir, weights, results, overwrite)
    return step, results


def main(argv=None) -> None:
    """The command line (module docstring); overrides and errors: `alignjax.cli`."""
    flags.DEFINE_string(
        'config', None, "Config file or a run's config.json (default: the checkpoint's own "
        'config); --config.a.b=v overrides any of its fields, --config.evals.NAME.FIELD=v '
        'adds or configures an evaluator.'
    )
    flags.DEFINE_string('workdir', None, 'Training run directory (config.json, checkpoints/).')
    flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
    flags.DEFINE_string('checkpoint', None, 'A checkpoints/ directory or one checkpoints/<step>.')
    flags.DEFINE_string('output_dir', None, 'Where eval_<step>.json goes (default: the workdir).')
    flags.DEFINE_bool('overwrite', False, 'Replace eval_<step>.json instead of keeping it.')
    flags.DEFINE_bool(
        'pictures', False, "Also draw the evaluators' pictures into "
        '<output_dir>/pictures/step_<S>/ (then python -m alignjax.report shows them).'
    )
    flags.DEFINE_list('evals', None, 'Run only these evaluators of config.evals.')
    flags.DEFINE_string(
        'weights', restore.PARAMS, "Weight set: 'params' (trained), or an extra set such as 'ema'."
    )
    flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
    flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
    flags.DEFINE_integer('process_id', None, "This process's index (multi-process).")

    def run(_, overrides):
        logging.getLogger().setLevel(logging.WARNING)
        f = flags.FLAGS
        parallel.maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
        ckpt_dir, step = locate_checkpoint(f.checkpoint, f.workdir, f.step)
        given = cli.load_config(f.config) if f.config else None
        config = cli.apply_overrides(choose_config(given, f.workdir, ckpt_dir, step), overrides)
        out_dir = f.output_dir or f.workdir or os.path.dirname(ckpt_dir)
        check_writable(out_dir)
        pictures = out_dir if f.pictures else None
        step, results = run_evaluators(config, ckpt_dir, step, f.evals, f.weights, pictures)
        # The table first: a failed write loses nothing that was computed.
        workdir_lib.print_table(f'Evaluation of step {step} ({f.weights})', results)
        try:
            path = write_results(out_dir, step, ckpt_dir, f.weights, results, f.overwrite)
        except OSError as e:
            raise ValueError(
                f'Could not write the results to {out_dir} ({e.strerror or e}); they are '
                f'printed above.'
            ) from e
        if path:
            print(f'Wrote {path}')

    cli.run(run, argv)


if __name__ == '__main__':
    main()
