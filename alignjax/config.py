"""Training configuration: the fields every config has, and strict validation.

A config file (`configs/*.py`) defines `get_config(arg=None) -> ml_collections.ConfigDict`.
It starts from `base_config()` and changes what it needs, so every field below exists in
every training config and `--config.a.b=v` overrides are checked against them by
ml_collections. `resolve(config)` then checks the whole tree against the defaults of each
part (trainer, model, loss, optimizer, tokenizer, data): a misspelled or unknown field is an
error that names the closest valid one, instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
    """All trainer-level fields with their defaults (a tiny CPU-sized CLIP)."""
    # Imported here: models/losses/data import heavy deps; config files call this once.
    from alignjax import data, losses, models, optim

    c = ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256  # Global batch, over all processes and devices.
    # Micro-batches per step. The gradient equals the full-batch one *exactly*, negatives
    # included (embeddings of all micro-batches are gathered before the loss; see
    # `alignjax.train.accumulated_grads`).
    c.grad_accum_steps = 1
    c.log_every_steps = 50
    c.eval_every_steps = 500  # 0: evaluate only at the end.
    c.checkpoint_every_steps = 500  # Also always at the end, and on SIGTERM/SIGINT.
    c.keep_checkpoints = 3  # The newest K are kept...
    c.keep_checkpoints_every = 0  # ...and every checkpoint whose step is a multiple of M (0: none).
    # NaN or Inf in the loss or the gradients. 'halt': stop with an error naming the step
    # and its metrics (the update is not applied, nothing non-finite is saved). 'skip': drop
    # that update (parameters and optimizer state unchanged, step counter advances) and
    # count it in `train/nonfinite_steps`.
    c.nan_policy = 'halt'
    # Start a new run from another run's parameters (ignored when the workdir has its own
    # checkpoints: then the run resumes). `path`: an alignjax workdir, its `checkpoints`
    # directory, one step directory (`.../checkpoints/500`), or an export written by
    # `alignjax.export` (`.safetensors` / `.msgpack`, or the directory holding it).
    # `mapping`: which parameters to load, as 'dst=src' prefixes of '/'-joined parameter
    # paths, e.g. ('img=img',) loads only the image tower (LiT); 'img' is short for
    # 'img=img'; empty loads every parameter present in both. Parameters not loaded keep
    # their fresh initialisation; shapes must match. See docs/CHECKPOINTS.md.
    c.init_from = ConfigDict({'path': '', 'mapping': (), 'step': -1})  # step -1: newest.

    # Device mesh: axis sizes; -1 takes the remaining devices. Batches are sharded over
    # (data, fsdp); large weights over fsdp ('embed' axis) and tensor ('mlp', 'heads').
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.data = ConfigDict()
    # Source spec (docs/DATA.md): 'synthetic:shapes', 'csv:PATH', 'jsonl:PATH',
    # 'tfds:NAME[/CONFIG][:VERSION]', 'wds:/shards/{00000..00999}.tar', 'mix:0.7*A;0.3*B';
    # per-source crop/caption options go in the spec's query ('?crop=center&min_scale=0.5').
    c.data.train = 'synthetic:shapes'  # Source spec, see `alignjax.data.get_source`.
    c.data.image_size = 32
    c.data.normalize = 'minus_one_one'  # or 'clip' (OpenAI mean/std).
    c.data.num_workers = 0  # grain worker processes; 0 = in the main process.
    c.data.prefetch_buffer = 2

    c.tokenizer = data.default_tokenizer_config()
    c.model = models.default_model_config()
    c.loss = losses.default_loss_config()
    c.optim = optim.default_optim_config()

    # Evaluators, by name. Each: dict(type=..., data=..., every_steps=...).
    # `every_steps` 0 or None falls back to `eval_every_steps`.
    c.evals = ConfigDict()
    return c


NAN_POLICIES = ('halt', 'skip')


def load_config_file(path: str, arg: str | None = None) -> ConfigDict:
    """`get_config(arg)` of the config file at `path`, as `--config path[:arg]` loads it.

    Configs that build on another (e.g. every objective on `configs/demo.py`) use it instead
    of importing a sibling file, which would depend on the working directory.
    """
    path = os.path.abspath(path)
    name = 'alignjax_config_' + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or not os.path.exists(path):
        raise FileNotFoundError(f'No config file at {path}.')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def closest(name: str, valid: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or ''."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ''


def check_fields(
    given: Mapping[str, Any], valid: Mapping[str, Any] | Iterable[str], where: str
) -> None:
    """Raises ValueError if `given` has a key that `valid` lacks, naming the closest."""
    valid_names = sorted(valid.keys() if isinstance(valid, Mapping) else valid)
    for key in given.keys():
        if key not in valid_names:
            raise ValueError(
                f"Unknown config field '{where}.{key}'{closest(key, valid_names)}. "
                f"Valid fields of '{where}': {', '.join(valid_names)}."
            )


def check_choice(value: Any, valid: Iterable[Any], field: str) -> None:
    """Raises ValueError if `value` is not one of `valid`, listing them."""
    valid = list(valid)
    if value not in valid:
        hint = closest(str(value), [str(v) for v in valid])
        raise ValueError(
            f"Invalid {field}={value!r}{hint}. Valid choices: {', '.join(repr(v) for v in valid)}."
        )


# Sub-trees whose fields are checked against `base_config()` recursively. `evals` is a
# free-form map of evaluator configs, each checked by its evaluator.
_FREE_FORM = ('evals',)


def _check_tree(given: ConfigDict, defaults: ConfigDict, where: str) -> None:
    check_fields(given, defaults, where)
    for key, value in given.items():
        if key in _FREE_FORM and where == 'config':
            continue
        default = defaults[key]
        if isinstance(default, ConfigDict) and isinstance(value, (ConfigDict, dict)):
            _check_tree(ConfigDict(value), default, f'{where}.{key}')


def resolve(config: ConfigDict) -> ConfigDict:
    """Validates a training config against `base_config()`; returns a locked copy.

    Raises ValueError naming the first unknown field and its closest valid spelling,
    or the first inconsistent value (e.g. a batch not divisible by micro-batches).
    """
    config = ConfigDict(config.to_dict() if isinstance(config, ConfigDict) else config)
    _check_tree(config, base_config(), 'config')
    if config.total_steps <= 0:
        raise ValueError(f'config.total_steps must be positive, got {config.total_steps}.')
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(
            f'config.batch_size={config.batch_size} is not divisible by '
            f'config.grad_accum_steps={config.grad_accum_steps}; choose a batch size that '
            f'is a multiple of the number of micro-batches.'
        )
    check_choice(config.nan_policy, NAN_POLICIES, 'nan_policy')
    if config.keep_checkpoints < 1 or config.keep_checkpoints_every < 0:
        raise ValueError(
            f'config.keep_checkpoints={config.keep_checkpoints} must be >= 1 and '
            f'config.keep_checkpoints_every={config.keep_checkpoints_every} >= 0.'
        )
    for name, ev in config.evals.items():
        if 'type' not in ev:
            raise ValueError(f"config.evals.{name} has no 'type'.")
    config.lock()
    return config
