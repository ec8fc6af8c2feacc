"""A trained run, loaded back for evaluation or benchmarking: config, model and weights.

`load_run(config, checkpoint_dir, step, weights)` builds the objective, model and state
shapes exactly as the trainer did (`alignjax.state.build_state`), restores one checkpoint's
weight set -- the trained parameters (`'params'`) or an extra set such as `'ema'` or a
teacher (`TrainState.weights`), never the optimizer state -- and returns them. `config=None`
uses the config stored with the restored step (`checkpoint_config`): the one it was trained
with, whatever happened to `<workdir>/config.json` since. A damaged step is skipped with a
warning for the previous one, unless it was asked for by number (then it is an error naming
the bad file): `alignjax.checkpoint.read_good_step`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from alignjax import checkpoint as checkpoint_lib
from alignjax import config as config_lib
from alignjax import data as data_lib
from alignjax import parallel
from alignjax import state as state_lib

ConfigDict = ml_collections.ConfigDict

#: `weights=` value that selects the trained parameters.
PARAMS = 'params'


@dataclasses.dataclass
class LoadedRun:
    """One restored checkpoint of a run."""

    config: ConfigDict  # Resolved.
    mesh: jax.sharding.Mesh
    tokenizer: Any
    build: state_lib.StateBuild
    step: int
    model: nn.Module  # The model the selected weights belong to.
    params: Any  # The selected weight set, LoRA factors merged: what `model` applies.


def load_config(workdir: str) -> ConfigDict:
    """The resolved config a run wrote to `<workdir>/config.json`."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise ValueError(
            f'{path} does not exist: --workdir must be a training run directory, or pass '
            '--config (and --checkpoint).'
        )
    with open(path) as f:
        try:
            return ConfigDict(json.load(f))
        except ValueError as e:
            raise ValueError(f'{path} is not valid JSON ({e}); pass --config.') from e


def checkpoint_config(checkpoint_dir: str, step: int | None = None) -> ConfigDict:
    """The config stored with checkpoint `step` of `checkpoint_dir` (`<step>/config`).

    `checkpoint_dir`: the `checkpoints` directory, the workdir or one step directory.

    `step=None`: the newest committed step whose config reads. Checkpoints written without
    a config fall back to the run's `config.json` beside `checkpoint_dir`. A stored config
    that does not read is a CheckpointCorruptError for an explicit `step`.
    """
    directory, fixed = checkpoint_lib.locate(checkpoint_dir)
    step = fixed if fixed is not None else step
    steps = [step] if step is not None else checkpoint_lib.step_dirs(directory)[::-1]
    for s in steps:
        if step is None and checkpoint_lib.checkpoint_problem(directory, s):
            continue
        try:
            stored = checkpoint_lib.stored_config(directory, s)
        except checkpoint_lib.CheckpointCorruptError:
            if step is not None:
                raise
            continue  # `load_run` warns when it reaches that step.
        if stored is not None:
            return ConfigDict(stored)
    workdir = os.path.dirname(directory)
    if os.path.isfile(os.path.join(workdir, 'config.json')):
        return load_config(workdir)
    which = f'step {step}' if step is not None else 'any committed step'
    raise ValueError(
        f'No config for {which} in {directory}: none is stored with it (<step>/config) and '
        f'there is no {os.path.join(workdir, "config.json")}; pass --config.'
    )


def load_run(
    config: ConfigDict | None,
    checkpoint_dir: str,
    step: int | None = None,
    weights: str = PARAMS,
    devices=None,
    mismatch_hint: str | None = None,
) -> LoadedRun:
    """Restores the weight set `weights` of `step` (None: the newest good one).

    `checkpoint_dir`: the run's `checkpoints` directory (or the workdir, or one step
    directory). `config`: the run's config, or None for the one stored with the restored
    step. Only the selected weights are read. Call on every process. `mismatch_hint`:
    the fix a CheckpointMismatchError names (default: when `config` is given, leave it out
    to use the stored one).
    """
    directory, fixed = checkpoint_lib.locate(checkpoint_dir)
    if fixed is not None:  # A step directory: its step.
        if step is not None and step != fixed:
            raise ValueError(f'step={step} contradicts the step directory {checkpoint_dir}.')
        step = fixed
    builds: dict[str, tuple[ConfigDict, jax.sharding.Mesh, state_lib.StateBuild]] = {}

    def setup(s: int):
        cfg = config if config is not None else checkpoint_config(directory, s)
        key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        if key not in builds:  # Steps of one run share a config: built once.
            resolved = config_lib.resolve(cfg)
            mesh = parallel.make_mesh(resolved.mesh, devices)
            build = state_lib.build_state(resolved, mesh)
            if weights != PARAMS and weights not in build.extra:
                valid = [PARAMS, *build.extra]
                raise ValueError(
                    f'--weights={weights!r}: this run has no such weight set; valid: {valid} '
                    f'(an EMA copy exists when config.ema.decay > 0 or the method keeps one).'
                )
            builds[key] = (resolved, mesh, build)
        return builds[key]

    def read(s: int):
        resolved, mesh, build = setup(s)
        if weights == PARAMS:
            wanted = {'params': build.abstract_state.params}
        else:
            wanted = {'weights': {weights: build.abstract_state.weights[weights]}}
        try:
            tree = checkpoint_lib.restore_subtree(directory, s, wanted)
        except checkpoint_lib.CheckpointMismatchError as e:
            hint = mismatch_hint
            if hint is None:
                hint = (
                    'Leave --config out to use the config stored with the checkpoint.'
                    if config is not None
                    else ''
                )
            raise checkpoint_lib.CheckpointMismatchError(f'{e} {hint}'.strip()) from e
        params = tree['params'] if weights == PARAMS else tree['weights'][weights]
        return resolved, mesh, build, build.model_params(params)  # LoRA merged

    collective = jax.process_count() > 1
    step, (resolved, mesh, build, params) = checkpoint_lib.read_good_step(
        directory, read, step, collective=collective
    )
    model = build.model if weights == PARAMS else build.extra[weights].model
    tokenizer = data_lib.build_tokenizer(resolved.tokenizer)
    build.objective.bind_tokenizer(tokenizer)
    return LoadedRun(resolved, mesh, tokenizer, build, int(step), model, params)
