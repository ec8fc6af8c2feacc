"""The train state and how it is built: model, objective, optimizer, extra weight sets.

`build_state(config, mesh)` is what both the trainer and the evaluation CLI need to restore
a checkpoint: the objective of `config.loss` (registered in `alignjax.objectives`), the model
it trains (with the objective's heads), the optimizer, and the state's abstract shapes and
shardings. No host ever holds the full parameters: `init_fn()` creates the state directly in
its sharded layout (jit with `out_shardings`).

Extra weight sets (`TrainState.weights`, name -> parameter tree) are what objectives ask for
with `Objective.weight_sets()` — a frozen teacher, an EMA or momentum copy — plus `'ema'`
when `config.ema.decay > 0`. They are sharded like the parameters of their model, carry no
optimizer state, receive no gradient and are checkpointed with the rest of the state.
Buffers (`TrainState.buffers`, `Objective.buffers()`) are an objective's other state across
steps (a feature queue and its pointer): replicated, checkpointed, changed only by
`Objective.update_buffers`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from alignjax import checkpoint as checkpoint_lib
from alignjax import init_from as init_from_lib
from alignjax import lora, models, objectives, optim, parallel

ConfigDict = ml_collections.ConfigDict

#: The name of the trainer-level EMA copy (`config.ema`).
EMA = 'ema'


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training and is checkpointed."""

    step: jax.Array  # int32 scalar: number of updates applied.
    params: Any
    opt_state: Any
    rng: jax.Array  # Key data (uint32), split once per step.
    # int32 scalar: updates dropped for a NaN/Inf under nan_policy='skip' (cumulative).
    nonfinite_steps: jax.Array
    # Extra weight sets: name -> parameter tree (teacher, EMA, momentum copies).
    weights: Any = dataclasses.field(default_factory=dict)
    # The objective's buffers (`Objective.buffers()`): name -> array, e.g. a feature queue.
    buffers: Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ExtraWeights:
    """One extra weight set at run time: its spec, model, and abstract sharded params."""

    spec: objectives.WeightSet
    model: nn.Module
    abstract: Any  # ShapeDtypeStructs with shardings.
    shardings: Any


@dataclasses.dataclass
class StateBuild:
    """The pieces `build_state` returns (see the module docstring)."""

    objective: objectives.Objective
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: Callable
    abstract_state: TrainState  # ShapeDtypeStructs with the target shardings.
    state_shardings: TrainState
    init_fn: Callable[[], TrainState]
    extra: dict[str, ExtraWeights]
    buffers: dict[str, objectives.Buffer] = dataclasses.field(default_factory=dict)
    lora_config: Any = None  # config.lora when it adds adapters, else None

    def model_params(self, params: Any) -> Any:
        """The parameters the model is applied with: `params` with their LoRA factors
        merged into the kernels (`alignjax.lora.merge`); unchanged without adapters."""
        return lora.merge(params, self.lora_config)


# --------------------------------------------------------------------------------------
# Shapes and shardings.


def init_inputs(config: ConfigDict, batch: int) -> tuple[jax.Array, jax.Array]:
    """Example (images, tokens) that `model.init` traces with."""
    size = config.data.image_size
    return (
        jnp.zeros((batch, size, size, 3), jnp.float32),
        jnp.zeros((batch, config.model.text.context_length), jnp.int32),
    )


def _init_inputs_for(model: nn.Module, config: ConfigDict, batch: int):
    """Example inputs for `model`, which may have another image size / context length."""
    images, tokens = init_inputs(config, batch)
    text = getattr(model, 'text', None)
    if text is not None and int(text.get('context_length', tokens.shape[1])) != tokens.shape[1]:
        tokens = jnp.zeros((batch, int(text['context_length'])), jnp.int32)
    return images, tokens


def abstract_params(model: nn.Module, config: ConfigDict, mesh: jax.sharding.Mesh):
    """(abstract params, their shardings) from one abstract trace of `model.init`."""
    images, tokens = _init_inputs_for(model, config, parallel.batch_size_per_shard(mesh))
    with parallel.mesh_context(mesh):
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), images, tokens)['params'])
    return nn.unbox(boxed), parallel.param_shardings(boxed, mesh)


def _opt_state_shardings(abstract_opt_state, params_by_path, mesh):
    """Shards each optimizer-state leaf like the parameter whose path ends its own path.

    optax states mirror the parameter tree (e.g. `1/0/mu/img/embedding/kernel`), so Adam's
    moments get their parameter's sharding; counters and the like are replicated.
    `params_by_path` maps '/'-joined parameter paths to (shape, sharding).
    """

    def one(path, leaf):
        parts = optim.path_str(path).split('/')
        for i in range(len(parts)):  # Longest suffix first.
            shape, sharding = params_by_path.get('/'.join(parts[i:]), (None, None))
            if shape == tuple(leaf.shape):
                return sharding
        return parallel.replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


# --------------------------------------------------------------------------------------
# Extra weight sets.


def weight_set_specs(config: ConfigDict, objective: objectives.Objective):
    """name -> WeightSet: the objective's, plus `'ema'` when `config.ema.decay > 0`."""
    specs = dict(objective.weight_sets())
    if config.ema.decay:
        if EMA in specs:
            raise ValueError(
                f"config.ema.decay is set but the objective already defines a weight set "
                f"named {EMA!r}; use one of them."
            )
        specs[EMA] = objectives.WeightSet(
            kind='ema',
            decay=float(config.ema.decay),
            decay_schedule=config.ema.schedule,
            evaluate=bool(config.ema.evaluate),
        )
    return specs


def _extra_model(spec: objectives.WeightSet, model: nn.Module) -> nn.Module:
    if spec.model is None:
        return model
    model_config = spec.model
    if model_config == 'source':
        model_config = init_from_model_config(spec.init_from)
    return models.build(model_config)


def init_from_model_config(init_from: Mapping[str, Any]):
    """The model config stored with the run or export at `init_from['path']`."""
    source = init_from_lib.ParamsSource(init_from['path'], init_from.get('step', -1))
    if source.model_config is None:
        raise ValueError(
            f"{init_from['path']} stores no model config: give WeightSet(model=<config>)."
        )
    return source.model_config


def update_weight_sets(
    extra: Mapping[str, ExtraWeights], weights: Mapping[str, Any], params: Any, step: jax.Array
) -> dict[str, Any]:
    """The weight sets after the update that follows `step` updates (jit-traceable).

    EMA: `w <- d_t w + (1 - d_t) params`, in float32, cast back to each leaf's dtype.
    Frozen sets are returned unchanged.
    """
    new = dict(weights)
    for name, e in extra.items():
        if e.spec.kind != 'ema':
            continue
        d = e.spec.decay_at(step)
        if e.spec.update is not None:
            new[name] = e.spec.update(weights[name], params, d, weights)
            continue
        new[name] = jax.tree_util.tree_map(
            lambda w, p: (d * w.astype(jnp.float32) + (1.0 - d) * p.astype(jnp.float32)).astype(
                w.dtype
            ),
            weights[name],
            params,
        )
    return new


# --------------------------------------------------------------------------------------
# The whole state.


def build_state(config: ConfigDict, mesh: jax.sharding.Mesh) -> StateBuild:
    """Objective, model, optimizer and the state's abstract form for a resolved config."""
    objective = objectives.build(config.loss, mesh)
    model = objective.wrap_model(models.build(config.model))
    params, param_sh = abstract_params(model, config, mesh)
    use_lora = lora.enabled(config.lora)
    if use_lora:  # The factors are small: replicated.
        params = {**params, lora.LORA: lora.abstract_factors(params, config.lora)}
        param_sh = {
            **param_sh,
            lora.LORA: jax.tree_util.tree_map(
                lambda _: parallel.replicated(mesh), params[lora.LORA]
            ),
        }
    optim_config = ConfigDict(dict(config.optim.to_dict(), total_steps=config.total_steps))
    tx, schedule = optim.make_optimizer(optim_config, params)

    extra: dict[str, ExtraWeights] = {}
    for name, spec in weight_set_specs(config, objective).items():
        m = _extra_model(spec, model)
        if m is model:
            extra[name] = ExtraWeights(spec, model, params, param_sh)
        else:
            extra[name] = ExtraWeights(spec, m, *abstract_params(m, config, mesh))

    buffers = dict(objective.buffers())
    for name, b in buffers.items():
        if not isinstance(b, objectives.Buffer):
            raise TypeError(f'{type(objective).__name__}.buffers()[{name!r}] is not a Buffer.')

    images, tokens = init_inputs(config, parallel.batch_size_per_shard(mesh))
    paths = jax.tree_util.tree_leaves(optim.tree_paths(params))
    flat = zip(paths, jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(param_sh))
    by_path = {p: (tuple(a.shape), s) for p, a, s in flat}
    abstract_opt = jax.eval_shape(tx.init, params)
    rep = parallel.replicated(mesh)
    shardings = TrainState(
        step=rep,
        params=param_sh,
        opt_state=_opt_state_shardings(abstract_opt, by_path, mesh),
        rng=rep,
        nonfinite_steps=rep,
        weights={n: e.shardings for n, e in extra.items()},
        buffers={n: rep for n in buffers},
    )

    def make_state(seed):
        init_rng, train_rng = jax.random.split(jax.random.key(seed))
        # A key of its own: adding buffers leaves the parameters' initialisation unchanged.
        buffer_rng = jax.random.fold_in(jax.random.key(seed), 7)
        p = nn.unbox(model.init(init_rng, images, tokens)['params'])
        if use_lora:  # A key of its own: the model's initialisation is unchanged.
            lora_rng = jax.random.fold_in(jax.random.key(seed), 11)
            p = {**p, lora.LORA: lora.init_factors(lora_rng, p, config.lora)}
        weights = {}
        for n, e in extra.items():
            if e.model is model:  # A copy of the initial parameters (replaced by init_from).
                weights[n] = jax.tree_util.tree_map(jnp.copy, p)
            else:  # Another architecture: zeros until `init_weight_sets` loads it.
                weights[n] = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), e.abstract)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            opt_state=tx.init(p),
            rng=jax.random.key_data(train_rng),
            nonfinite_steps=jnp.zeros((), jnp.int32),
            weights=weights,
            buffers={
                n: b.initial(jax.random.fold_in(buffer_rng, i))
                for i, (n, b) in enumerate(sorted(buffers.items()))
            },
        )

    def init_fn():
        with parallel.mesh_context(mesh):
            return jax.jit(make_state, static_argnums=0, out_shardings=shardings)(config.seed)

    abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=abstract_opt,
        rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
        nonfinite_steps=jax.ShapeDtypeStruct((), jnp.int32),
        weights={n: e.abstract for n, e in extra.items()},
        buffers={n: jax.ShapeDtypeStruct(tuple(b.shape), b.dtype) for n, b in buffers.items()},
    )
    abstract_state = checkpoint_lib.abstract_with_shardings(abstract_state, shardings)
    return StateBuild(
        objective,
        model,
        tx,
        schedule,
        abstract_state,
        shardings,
        init_fn,
        extra,
        buffers,
        config.lora if use_lora else None,
    )


def init_weight_sets(state: TrainState, build: StateBuild) -> tuple[TrainState, list[str]]:
    """Fills the weight sets of a fresh state (after `config.init_from` was applied).

    `init='params'` sets become copies of the (possibly loaded) parameters; `init='init_from'`
    sets are loaded from their own source. Returns the state and one report line per set.
    """
    weights, lines = dict(state.weights), []
    for name, e in build.extra.items():
        if e.spec.init == 'params':
            shardings = build.state_shardings.weights[name]
            weights[name] = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p), out_shardings=shardings)(
                state.params
            )
            lines.append(f'weights {name!r} ({e.spec.kind}): a copy of the initial parameters')
        else:
            abstract = build.abstract_state.weights[name]
            weights[name], report = init_from_lib.load_params(
                dict(e.spec.init_from), weights[name], abstract
            )
            lines.append(f'weights {name!r} ({e.spec.kind}): ' + report['text'])
    return state.replace(weights=weights), lines
