"""Training configuration: the fields every config has, and strict validation.

A config file (`configs/*.py`) defines `get_config(arg=None) -> ml_collections.ConfigDict`.
It starts from `base_config()` and changes what it needs, so every field below exists in
every training config and `--config.a.b=v` overrides are checked against them
(`alignjax.cli`). `resolve(config)` then checks the whole tree against the defaults of each
part (trainer, model, loss, optimizer, tokenizer, data): a misspelled or unknown field is an
error that names the closest valid one, instead of a silently ignored setting.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import ml_collections

from alignjax import data, lora, models, objectives, optim
from alignjax.validation import check_choice, check_fields

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
    """All trainer-level fields with their defaults (a tiny CPU-sized CLIP)."""
    c = ConfigDict()
    # Modules (names or .py paths) imported before anything else is read: a method defined
    # outside alignjax registers itself there (`@objectives.register`), so `loss.name` can
    # name it. See docs/OBJECTIVES.md, "Writing a method".
    c.imports = ()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256  # Global batch, over all processes and devices.
    # Micro-batches per step. The gradient equals the full-batch one *exactly*, negatives
    # included (embeddings of all micro-batches are gathered before the loss; see
    # `alignjax.train.accumulated_grads`).
    c.grad_accum_steps = 1
    c.log_every_steps = 50
    # Metric sinks besides metrics.jsonl and TensorBoard. W&B: a non-empty `project` logs
    # every metrics.jsonl record to a W&B run under <workdir>/wandb (resumed runs continue
    # it); mode 'offline' needs no network (`wandb sync` uploads later), 'online' logs live.
    # Needs `pip install 'alignjax[wandb]'`.
    # `pictures`: at every evaluation the evaluators draw what they see (zero-shot
    # predictions and confusion matrices, retrieval similarity matrices) into
    # <workdir>/pictures/step_<N>/, and the curves (loss, lr, evaluation) go to
    # <workdir>/pictures/curves.png; `python -m alignjax.report WORKDIR` gathers them.
    c.log = ConfigDict(
        {
            'wandb': ConfigDict(
                {'project': '', 'mode': 'offline', 'entity': '', 'name': '', 'group': '', 'tags': ()}
            ),
            'pictures': True,
        }
    )
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
    # An exponential moving average of the parameters, kept in the train state as weight set
    # 'ema' (`python -m alignjax.evaluate --weights ema` evaluates it). decay 0: off.
    # After each update: ema <- d_t ema + (1 - d_t) params, d_t = decay ('constant') or
    # min(decay, (1 + t) / (10 + t)) ('warmup'), t the number of updates before this one.
    # `evaluate`: the evaluators also score the EMA whenever they run during training, as
    # `<metric>/ema` next to `<metric>` of the trained parameters.
    c.ema = ConfigDict({'decay': 0.0, 'schedule': 'constant', 'evaluate': True})
    # LoRA adapters (alignjax/lora.py): rank-r factors on the kernels `targets` selects, the
    # model run with W + (alpha / r) A B; `python -m alignjax.export` merges them. rank 0: off.
    # Train only them with optim.freeze = lora.FREEZE_ALL_BUT_LORA (configs/lora.py).
    c.lora = lora.default_config()

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
    # `name` picks a registered method (alignjax.objectives); the other fields are that
    # method's only: build one with `objectives.loss_config(name, **fields)`.
    c.loss = objectives.default_loss_config()
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


# Sub-trees whose fields are checked against `base_config()` recursively. `evals` is a
# free-form map of evaluator configs, each checked by its evaluator; `loss` is checked
# against the chosen method's fields (`objectives.validate_loss_config`).
_FREE_FORM = ('evals', 'loss')
EMA_SCHEDULES = ('constant', 'warmup')


def _check_tree(given: ConfigDict, defaults: ConfigDict, where: str) -> None:
    check_fields(given, defaults, where)
    for key, value in given.items():
        if key in _FREE_FORM and where == 'config':
            continue
        default = defaults[key]
        if isinstance(default, ConfigDict) and isinstance(value, (ConfigDict, dict)):
            _check_tree(ConfigDict(value), default, f'{where}.{key}')


def _migrate_loss_layout(loss: dict) -> dict:
    """A `config.loss` written before the objectives registry, as today's layout.

    Old runs' config.json hold every method's settings as sub-dicts (`loss.filip.chunk_size`)
    plus `impl` / `batch_axes` / `needs_tokens` for all; today `loss` holds only the chosen
    method's fields.
    """
    name = loss.get('name', 'clip')
    nested = {k for k, v in loss.items() if isinstance(v, dict) and k in objectives.names()}
    if not nested:
        return loss
    out = {'name': name, **dict(loss.get(name) or {})}
    if name == 'siglip':
        out.update({k: loss[k] for k in ('impl', 'batch_axes') if k in loss})
    return out


def _fill_missing(tree: dict, defaults: dict) -> None:
    """Adds every field of `defaults` absent from `tree`, recursively (not into free-form
    sections such as `evals`, whose entries are the user's)."""
    for key, default in defaults.items():
        if key not in tree:
            tree[key] = copy.deepcopy(default)
        elif isinstance(default, dict) and isinstance(tree[key], dict) and key not in _FREE_FORM:
            _fill_missing(tree[key], default)


def resolve(config: ConfigDict) -> ConfigDict:
    """Validates a training config once, completely; returns a locked copy.

    Imports `config.imports` (methods defined outside alignjax), fills `config.loss` with
    the chosen method's defaults, and checks every part against its defaults and choices.
    Raises ValueError naming the first unknown field and its closest valid spelling, or the
    first inconsistent value (e.g. a batch not divisible by micro-batches).
    """
    tree = config.to_dict() if isinstance(config, ConfigDict) else dict(config)
    # A config saved by an older alignjax (a run's config.json) lacks fields added since:
    # they take their defaults, so it still runs as it did.
    _fill_missing(tree, base_config().to_dict())
    objectives.import_modules(tree.get('imports', ()))
    tree['loss'] = objectives.validate_loss_config(_migrate_loss_layout(dict(tree.get('loss', {}))))
    config = ConfigDict(tree)
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
    check_choice(config.ema.schedule, EMA_SCHEDULES, 'ema.schedule')
    if not 0.0 <= config.ema.decay < 1.0:
        raise ValueError(f'config.ema.decay must be in [0, 1) (0: off), got {config.ema.decay}.')
    if config.keep_checkpoints < 1 or config.keep_checkpoints_every < 0:
        raise ValueError(
            f'config.keep_checkpoints={config.keep_checkpoints} must be >= 1 and '
            f'config.keep_checkpoints_every={config.keep_checkpoints_every} >= 0.'
        )
    optim.check_config(config.optim, config.total_steps)
    lora.check_config(config.lora)
    objectives.get(config.loss.name).check(config)
    for name, ev in config.evals.items():
        if 'type' not in ev:
            raise ValueError(
                f"config.evals.{name} has no 'type': add --config.evals.{name}.type=TYPE "
                f"(zeroshot, retrieval, geometry or linear_probe)."
            )
    config.lock()
    return config
