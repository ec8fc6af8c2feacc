"""A trained run, loaded back for evaluation or benchmarking: config, model and weights.

`load_run(config, checkpoint_dir, step, weights)` resolves the config, builds the objective,
model and state exactly as the trainer did (`alignjax.state.build_state`), restores one
checkpoint and picks a weight set: the trained parameters (`'params'`) or an extra set such
as `'ema'` or a teacher (`TrainState.weights`).
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
    params: Any  # The selected weight set.


def load_config(workdir: str) -> ConfigDict:
    """The resolved config a run wrote to `<workdir>/config.json`."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise ValueError(
            f'{path} does not exist: --workdir must be a training run directory, or pass '
            '--config (and --checkpoint).'
        )
    with open(path) as f:
        return ConfigDict(json.load(f))


def load_run(
    config: ConfigDict,
    checkpoint_dir: str,
    step: int | None = None,
    weights: str = PARAMS,
    devices=None,
) -> LoadedRun:
    """Restores `step` (None: the newest) from `checkpoint_dir` and selects `weights`."""
    config = config_lib.resolve(config)
    mesh = parallel.make_mesh(config.mesh, devices)
    tokenizer = data_lib.build_tokenizer(config.tokenizer)
    build = state_lib.build_state(config, mesh)
    if weights != PARAMS and weights not in build.extra:
        valid = [PARAMS, *build.extra]
        raise ValueError(
            f'--weights={weights!r}: this run has no such weight set; valid: {valid} '
            f"(an EMA copy exists when config.ema.decay > 0 or the method keeps one)."
        )
    ckpt = checkpoint_lib.Checkpointer(checkpoint_dir)
    try:
        steps = ckpt.all_steps()
        if step is None:
            step = max(steps) if steps else None
            if step is None:
                raise ValueError(f'No checkpoint in {checkpoint_dir}.')
        elif step not in steps:
            raise ValueError(f'No checkpoint for step {step} in {checkpoint_dir}; steps: {steps}.')
        state = ckpt.restore(step, build.abstract_state, None)
    finally:
        ckpt.close()
    if weights == PARAMS:
        model, params = build.model, state.params
    else:
        model, params = build.extra[weights].model, state.weights[weights]
    return LoadedRun(config, mesh, tokenizer, build, int(step), model, params)
