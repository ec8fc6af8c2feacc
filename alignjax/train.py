"""The one trainer: `python -m alignjax.train --config configs/X.py --workdir DIR`.

Every method is an objective (a registered plug-in, `alignjax.objectives`), a model and a
config run by this loop, which knows no method by name. In order:

  mesh      <- config.mesh                              (alignjax.parallel)
  tokenizer <- config.tokenizer, batches <- grain       (alignjax.data)
  objective <- config.loss                              (alignjax.objectives)
  model     <- config.model + the objective's heads     (alignjax.models)
  tx        <- config.optim                             (alignjax.optim)
  state     <- created already sharded (alignjax.state), or restored from the newest
               checkpoint; extra weight sets (teacher, EMA) filled after init_from
  loop: train_step (jitted, donated state) -> log -> evaluate -> checkpoint

The train step (`make_train_step`) is a pure function of (state, global batch): the
objective's prepare -> forward -> loss, the optimizer update, the weight sets' update.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags

from alignjax import checkpoint as checkpoint_lib
from alignjax import cli, objectives, optim, parallel, preemption
from alignjax import config as config_lib
from alignjax import data as data_lib
from alignjax import evaluate as evaluate_lib
from alignjax import init_from as init_from_lib
from alignjax import state as state_lib
from alignjax import workdir as workdir_lib
from alignjax.state import TrainState

ConfigDict = ml_collections.ConfigDict


# --------------------------------------------------------------------------------------
# The train step.


# Batch key added by the step when the image tower drops patches: each row's index in the
# global batch (the patch-dropout masks are drawn from it).
EXAMPLE_INDEX = '_example_index'


def _split_micro(x: jax.Array, num_micro: int) -> jax.Array:
    """[B, ...] -> [M, B/M, ...] with micro-batch k = rows k, k+M, k+2M, ...

    Strided (not contiguous) micro-batches keep every micro-batch spread over all devices
    of the batch axes, so no device idles while another computes its micro-batch.
    """
    b = x.shape[0]
    x = x.reshape((b // num_micro, num_micro) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)


def _merge_micro(x: jax.Array) -> jax.Array:
    """Inverse of `_split_micro`: [M, B/M, ...] -> [B, ...] in the original row order."""
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _is_diff(x) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)


def accumulated_grads(
    forward: Callable, params, batch: dict[str, jax.Array], loss_fn: Callable, num_micro: int
):
    """Full-batch loss and gradient of a contrastive loss, M micro-batches at a time.

    Plain accumulation is wrong for contrastive losses: every sample's negatives are the
    whole batch. Instead (GradCache, Gao et al. 2021):
      1. embed each micro-batch without keeping activations;
      2. evaluate the loss on the *global* embeddings and take its gradient g w.r.t. them
         (and w.r.t. the logit scale/bias, which enter once);
      3. re-run each micro-batch's forward pass and pull g_k back through it (a VJP),
         summing the parameter gradients.
    The result equals the one-batch gradient up to float summation order; activation
    memory is that of one micro-batch, plus the [B, D] embeddings.

    Returns (loss, metrics, grads, merged outputs of the whole batch).
    """
    micro = jax.tree_util.tree_map(lambda x: _split_micro(x, num_micro), batch)

    # 1. Embeddings of every micro-batch (lax.map: no residuals kept for a backward pass).
    outs = jax.lax.map(lambda mb: forward(params, mb), micro)
    # Scalars (logit scale and bias) come from micro-batch 0: they are the same in every
    # micro-batch, and the loss must depend on them once.
    full = jax.tree_util.tree_map(lambda x: x[0] if x.ndim == 1 else _merge_micro(x), outs)

    # 2. Loss on the global batch and its gradient w.r.t. the (float) model outputs.
    leaves, treedef = jax.tree_util.tree_flatten(full)
    diff_idx = [i for i, x in enumerate(leaves) if _is_diff(x)]

    def loss_of_leaves(diff_leaves):
        all_leaves = list(leaves)
        for i, x in zip(diff_idx, diff_leaves):
            all_leaves[i] = x
        return loss_fn(jax.tree_util.tree_unflatten(treedef, all_leaves))

    (loss, metrics), g_diff = jax.value_and_grad(loss_of_leaves, has_aux=True)(
        [leaves[i] for i in diff_idx]
    )

    # Cotangents per micro-batch, in the output's own structure.
    cot_leaves = []
    g_iter = iter(g_diff)
    for i, x in enumerate(leaves):
        if i in diff_idx:
            g = next(g_iter)
            if x.ndim == 0:  # Scalar: all of its gradient flows through micro-batch 0.
                g = jnp.zeros((num_micro,), g.dtype).at[0].set(g)
            else:
                g = _split_micro(g, num_micro)
            cot_leaves.append(g)
        else:
            cot_leaves.append(None)

    # 3. Re-run each micro-batch with a VJP and sum the parameter gradients.
    def body(grads, k):
        mb = jax.tree_util.tree_map(lambda x: x[k], micro)
        out_k, pullback = jax.vjp(lambda p: forward(p, mb), params)
        out_leaves = jax.tree_util.tree_leaves(out_k)
        cot = [
            c[k] if c is not None else np.zeros(o.shape, jax.dtypes.float0)
            for c, o in zip(cot_leaves, out_leaves)
        ]
        (g_params,) = pullback(jax.tree_util.tree_unflatten(treedef, cot))
        return jax.tree_util.tree_map(jnp.add, grads, g_params), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(body, zeros, jnp.arange(num_micro))
    return loss, metrics, grads, full


def make_train_step(
    build: state_lib.StateBuild, config: ConfigDict
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure train step: (state, batch) -> (new_state, metrics).

    The objective's hooks, in order: `prepare` (once, on the global batch), `forward` (per
    micro-batch under gradient accumulation), `loss` (on the whole batch's outputs); then
    the optimizer update, the extra weight sets' update (EMA copies) and the objective's
    `update_buffers` (a feature queue) on the whole batch's outputs.

    Non-finite loss or gradients: the update is not applied and `metrics['finite']` is
    False. nan_policy='halt': the returned state equals the input state (step included) and
    the loop stops; 'skip': parameters and optimizer state are kept, the step and rng
    advance and `nonfinite_steps` counts it. Either way a NaN never reaches the parameters
    or a checkpoint.
    """
    objective, model, tx, schedule = build.objective, build.model, build.tx, build.schedule
    frozen = tuple(config.optim.freeze)
    if config.grad_accum_steps > 1 and not objective.supports_accumulation:
        raise ValueError(
            f'config.loss.name={config.loss.name!r} cannot use grad_accum_steps='
            f'{config.grad_accum_steps}: its forward pass mixes examples of the batch, so '
            f'micro-batches would not reproduce the full-batch gradient. Set '
            f'grad_accum_steps=1 (and lower batch_size or use remat to save memory).'
        )

    def bind(m: nn.Module, params) -> Callable:
        params = build.model_params(params)  # LoRA factors merged (differentiably)

        def apply(*args, **kwargs):
            return m.apply({'params': params}, *args, **kwargs)

        return apply

    patch_dropout = float(dict(model.image or {}).get('patch_dropout') or 0.0)

    def bind_training(params, mb, rng) -> Callable:
        """`bind` for the objective's forward: calls with `train=True` get the patch-dropout
        rng and, for images of the batch's size, each row's index in the global batch
        (`mb[EXAMPLE_INDEX]`), so a row's mask does not depend on the micro-batch split."""
        plain = bind(model, params)
        if not patch_dropout:
            return plain
        rows = mb[EXAMPLE_INDEX]

        def apply(*args, **kwargs):
            if kwargs.get('train'):
                kwargs.setdefault('rngs', {'patch_dropout': rng})
                images = args[0] if args else kwargs.get('images')
                if images is not None and images.shape[0] == rows.shape[0]:
                    kwargs.setdefault('example_ids', rows)
            return plain(*args, **kwargs)

        return apply

    def context(state: TrainState) -> objectives.StepContext:
        weights = jax.lax.stop_gradient(state.weights)
        apply_with = {n: bind(e.model, weights[n]) for n, e in build.extra.items()}
        return objectives.StepContext(
            step=state.step, weights=weights, apply_with=apply_with, buffers=state.buffers
        )

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        ctx = context(state)
        # Batch-level randomness (e.g. MLM masks) is drawn once, before any micro-batch
        # split, so gradient accumulation sees the same batch as one big step.
        prep_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1)
        batch = objective.prepare(batch, prep_rng, ctx)
        patch_rng = None
        if patch_dropout:  # Row indices travel with the rows through a micro-batch split.
            patch_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2)
            rows = jax.tree_util.tree_leaves(batch)[0].shape[0]
            batch = {**batch, EXAMPLE_INDEX: jnp.arange(rows, dtype=jnp.int32)}

        def forward(params, mb):
            if frozen:  # No backward pass through frozen towers (LiT): they are constants.
                mask = optim.frozen_mask(params, frozen)
                params = jax.tree_util.tree_map(
                    lambda f, p: jax.lax.stop_gradient(p) if f else p, mask, params
                )
            return objective.forward(bind_training(params, mb, patch_rng), mb, ctx)

        def loss_of_out(out):
            return objective.loss(out, batch, ctx)

        if config.grad_accum_steps > 1:
            loss, metrics, grads, out = accumulated_grads(
                forward, state.params, batch, loss_of_out, config.grad_accum_steps
            )
        else:

            def loss_of(params):
                out = forward(params, batch)
                loss, metrics = loss_of_out(out)
                return loss, (metrics, out)

            (loss, (metrics, out)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        buffers = state.buffers
        if build.buffers:
            buffers = dict(
                objective.update_buffers(state.buffers, jax.lax.stop_gradient(out), batch, ctx)
            )
            _check_buffers(buffers, state.buffers, type(objective).__name__)

        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if config.optim.clamp_logit_scale:
            params = optim.clamp_logit_scale(params)
        weights = state_lib.update_weight_sets(build.extra, state.weights, params, state.step)
        grad_norm = optax.tree.norm(grads)
        # The new parameters too: a finite gradient can still overflow them (huge lr).
        finite = (
            jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(params))
        )

        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            rng=rng,
            nonfinite_steps=state.nonfinite_steps,
            weights=weights,
            buffers=buffers,
        )
        if config.nan_policy == 'skip':
            # Drop the update but count the step: the data iterator has consumed the batch,
            # and the step must keep matching the iterator position for exact resume.
            kept = state.replace(
                step=state.step + 1, rng=rng, nonfinite_steps=state.nonfinite_steps + 1
            )
        else:  # 'halt': the state is left as it was; the loop stops at this step.
            kept = state
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), new_state, kept
        )

        metrics = {f'train/{k}': v for k, v in metrics.items()}
        metrics.update(
            {
                'train/loss': loss,
                'train/lr': schedule(state.step),
                'train/grad_norm': grad_norm,
                'train/param_norm': optax.tree.norm(state.params),
                'train/nonfinite_steps': new_state.nonfinite_steps,
                'finite': finite,
            }
        )
        return new_state, metrics

    return train_step


def _check_buffers(new: dict, old: dict, owner: str) -> None:
    """`update_buffers` must return every buffer with its shape and dtype (at trace time)."""
    if set(new) != set(old):
        raise ValueError(
            f'{owner}.update_buffers returned buffers {sorted(new)}, expected {sorted(old)}.'
        )
    for name, b in old.items():
        a = jnp.asarray(new[name])
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f'{owner}.update_buffers changed buffer {name!r} from {b.shape} {b.dtype} to '
                f'{a.shape} {a.dtype}; keep its shape and dtype.'
            )


def jit_train_step(train_step: Callable, state_shardings, mesh):
    """jit with explicit shardings and a donated state; traced in `parallel.mesh_context`."""
    batch_sh = parallel.batch_sharding(mesh)
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sh),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=(0,),
    )
    return parallel.MeshJit(jitted, mesh)


# --------------------------------------------------------------------------------------
# The loop.


def _check_consistency(config: ConfigDict, tokenizer, mesh) -> None:
    parallel.check_batch_size(config.batch_size, mesh)
    micro = config.batch_size // config.grad_accum_steps
    parallel.check_batch_size(micro, mesh, what='micro-batch (batch_size / grad_accum_steps)')
    if tokenizer.vocab_size > config.model.text.vocab_size:
        raise ValueError(
            f'Tokenizer vocab_size {tokenizer.vocab_size} exceeds the text tower\'s '
            f'config.model.text.vocab_size={config.model.text.vocab_size}.'
        )
    if tokenizer.context_length != config.model.text.context_length:
        raise ValueError(
            f'config.tokenizer.context_length={tokenizer.context_length} differs from '
            f'config.model.text.context_length={config.model.text.context_length}; set both.'
        )


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or Inf; raised after the last good checkpoint is safe."""


def _raise_non_finite(step: int, metrics: dict[str, Any]) -> None:
    values = {k: float(v) for k, v in jax.device_get(metrics).items() if k != 'finite'}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    raise NonFiniteError(
        f'Non-finite values at step {step}: {bad} (all metrics: {values}). The update was not '
        f'applied and no checkpoint was written with it. Lower optim.lr, enable '
        f'optim.grad_clip_norm, or check the data at this step.'
    )


@dataclasses.dataclass
class Trainer:
    """The pieces of a run, built from a config; `train_and_evaluate` drives them.

    Useful on its own in notebooks and tests: `t = build_trainer(config)`,
    `state = t.init_fn()`, `state, metrics = t.step_fn(state, batch)`.
    """

    config: ConfigDict
    mesh: jax.sharding.Mesh
    tokenizer: Any
    objective: objectives.Objective
    model: nn.Module  # The trained model: config.model plus the objective's heads.
    tx: optax.GradientTransformation
    schedule: Callable
    abstract_state: TrainState  # ShapeDtypeStructs with the target shardings.
    state_shardings: TrainState
    init_fn: Callable[[], TrainState]
    step_fn: Callable  # jitted (state, global batch) -> (state, metrics); donates state.
    build: state_lib.StateBuild

    def global_batch(self, local_batch):
        return parallel.make_global_batch(local_batch, self.mesh)

    def train_iterator(self):
        """This process's grain iterator over `config.data.train` (checkpointable)."""
        return make_train_iterator(self.config, self.tokenizer, self.objective)


def build_trainer(config: ConfigDict, devices=None, tokenizer=None) -> Trainer:
    """Validates `config` and builds mesh, tokenizer, model, objective, optimizer and step.

    `tokenizer` replaces the config's (whose vocabulary file would be read): `dry_run`
    passes a stand-in of the same vocabulary size and context length.
    """
    config = config_lib.resolve(config)
    mesh = parallel.make_mesh(config.mesh, devices)
    if tokenizer is None:
        tokenizer = data_lib.build_tokenizer(config.tokenizer)
    _check_consistency(config, tokenizer, mesh)
    build = state_lib.build_state(config, mesh)
    build.objective.bind_tokenizer(tokenizer)
    step_fn = jit_train_step(make_train_step(build, config), build.state_shardings, mesh)
    return Trainer(
        config=config,
        mesh=mesh,
        tokenizer=tokenizer,
        objective=build.objective,
        model=build.model,
        tx=build.tx,
        schedule=build.schedule,
        abstract_state=build.abstract_state,
        state_shardings=build.state_shardings,
        init_fn=build.init_fn,
        step_fn=step_fn,
        build=build,
    )


def make_train_iterator(config: ConfigDict, tokenizer, objective: objectives.Objective):
    """This process's grain iterator over `config.data.train`, with the objective's
    per-example transforms (two views, sub-captions, ...)."""
    source = data_lib.get_source(
        config.data.train, 'train', image_size=config.data.image_size, seed=config.seed
    )
    return data_lib.make_train_iterator(
        source,
        tokenizer=tokenizer,
        global_batch_size=config.batch_size,
        seed=config.seed,
        num_workers=config.data.num_workers,
        prefetch_buffer=config.data.prefetch_buffer,
        normalize=config.data.normalize,
        extra_transforms=tuple(objective.data_transforms(tokenizer, config.seed)),
    )


# The dry run's batch: the embedded shapes with every optional text field, so that any
# objective's transforms find what they read (the config's own data is never opened).
DRY_RUN_DATA = 'synthetic:shapes?extra_captions=true&hard_negatives=true'


def dry_run(config: ConfigDict, workdir: str | None = None, devices=None, compile: bool = True):
    """Builds the trainer and lowers (and compiles) its step, reading and writing nothing.

    What `python -m alignjax.train ... --dry_run` prints: the parameter count of each weight
    set, the train state's bytes per device, XLA's memory estimate of the compiled step per
    device (`compile=True`), and where the resolved config would go. The tokenizer is a
    stand-in of the config's vocabulary size and context length (no vocabulary file is
    read); the batch is abstract, its structure taken from `DRY_RUN_DATA` (so a data spec's
    own fields are not checked: that needs reading it). A workdir with checkpoints is
    checked for resuming (its stored config only).

    Returns a dict of the figures (`params`, `state_bytes_per_device`,
    `step_bytes_per_device` or None, `resume_step`, `config_path`).
    """
    config = config_lib.resolve(config)
    stand_in = data_lib.build_tokenizer(
        {
            'name': 'word_hash',
            'vocab_size': config.model.text.vocab_size,
            'context_length': config.model.text.context_length,
        }
    )
    t = build_trainer(config, devices, tokenizer=stand_in)
    resume_step = check_can_resume(t.config, workdir) if workdir else None

    # One real example batch of the stand-in data gives the structure; the shapes are the
    # global batch's, sharded like the trainer's batches.
    spec = config.data.train if config.data.train.startswith('synthetic:') else DRY_RUN_DATA
    source = data_lib.get_source(spec, 'train', image_size=config.data.image_size, seed=0)
    example = next(
        data_lib.make_train_iterator(
            source,
            tokenizer=stand_in,
            global_batch_size=1,
            seed=0,
            process_index=0,
            process_count=1,
            normalize=config.data.normalize,
            extra_transforms=tuple(t.objective.data_transforms(stand_in, config.seed)),
        )
    )
    sharding = parallel.batch_sharding(t.mesh)
    batch = {
        k: jax.ShapeDtypeStruct(
            (config.batch_size,) + np.shape(v)[1:], np.asarray(v).dtype, sharding=sharding
        )
        for k, v in example.items()
    }
    _log(f'Lowering the train step for a global batch of {config.batch_size} ...')
    lowered = t.step_fn.lower(t.abstract_state, batch)

    def count(tree) -> int:
        return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))

    def per_device(tree) -> int:
        total = 0
        for x in jax.tree_util.tree_leaves(tree):
            shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
            total += math.prod(shard) * np.dtype(x.dtype).itemsize
        return total

    params = {'params': count(t.abstract_state.params)}
    trainable = optim.trainable_count(t.abstract_state.params, config.optim.freeze)
    params.update({name: count(w) for name, w in t.abstract_state.weights.items()})
    state_bytes = per_device(t.abstract_state)
    step_bytes = None
    if compile:
        _log('Compiling it for the memory estimate (this can take a minute) ...')
        memory = lowered.compile().memory_analysis()
        if memory is not None:
            step_bytes = int(
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                - memory.alias_size_in_bytes
                + memory.temp_size_in_bytes
            )
    config_path = os.path.join(workdir, 'config.json') if workdir else None

    gib = 2.0**30
    lines = ['Dry run: nothing was read from data or vocabulary files, nothing was written.']
    lines += [f'  parameters ({name}): {n:,} ({n / 1e6:.1f}M)' for name, n in params.items()]
    lines.append(f'  trained (not in optim.freeze): {trainable:,} ({trainable / 1e6:.3g}M)')
    lines.append(
        f'  mesh {dict(t.mesh.shape)} over {t.mesh.size} {jax.devices()[0].platform} devices'
    )
    lines.append(f'  train state per device: {state_bytes / gib:.3f} GiB')
    if compile:
        shown = f'{step_bytes / gib:.3f} GiB' if step_bytes is not None else 'not reported'
        lines.append(
            f'  train step per device (XLA estimate on this backend, state included): {shown}'
        )
    if workdir:
        lines.append(
            f'  would resume from step {resume_step}'
            if resume_step is not None
            else '  would start a new run'
        )
        lines.append(f'  resolved config would be written to {config_path}')
    _log('\n'.join(lines))
    return {
        'params': params,
        'trainable_params': trainable,
        'state_bytes_per_device': state_bytes,
        'step_bytes_per_device': step_bytes,
        'resume_step': resume_step,
        'config_path': config_path,
    }


def train_and_evaluate(config: ConfigDict, workdir: str, devices=None) -> dict[str, Any]:
    """Trains (resuming from `workdir` if it has checkpoints) and returns the final metrics.

    Resuming restores the newest *good* checkpoint (one that fails its checksums or file
    checks is moved to `checkpoints.corrupt/` with a warning naming the bad file) and every
    process's data-iterator position, so the run continues bit-identically. A workdir whose
    run had another model, loss, batch or data is refused before anything is read or
    written (`check_can_resume`). SIGTERM/SIGINT finish the current step, save, and return
    `{'step': s, 'preempted': True, ...}` (the CLI then exits 0). `devices` defaults to all
    devices; tests pass a subset to compare meshes.
    """
    workdir_lib.check_writable(workdir)
    t = build_trainer(config, devices)
    config, mesh, model, tokenizer = t.config, t.mesh, t.model, t.tokenizer
    check_can_resume(config, workdir)
    train_iter = t.train_iterator()

    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, 'checkpoints'),
        keep=config.keep_checkpoints,
        keep_every=config.keep_checkpoints_every,
    )
    latest, state = ckpt.restore_latest(t.abstract_state, train_iter)
    if latest is not None:
        _log(f'Resumed from step {latest} in {ckpt.directory}')
    else:
        state = t.init_fn()
        n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
        trained = optim.trainable_count(state.params, config.optim.freeze)
        _log(
            f'Initialised {n_params / 1e6:.2f}M parameters ({trained / 1e6:.3g}M trained) on '
            f'mesh {dict(mesh.shape)}'
        )
        if config.init_from.path:
            state, report = init_from_lib.init_params_from(
                config.init_from, state, t.abstract_state.params, config.optim.freeze
            )
            _log(report['text'])
            if jax.process_index() == 0:
                workdir_lib.write_json(os.path.join(workdir, 'init_from.json'), report)
        if t.build.extra:
            state, lines = state_lib.init_weight_sets(state, t.build)
            for line in lines:
                _log(line)

    step_fn = t.step_fn
    evaluators = evaluate_lib.build_evaluators(config, model, tokenizer, mesh, t.objective.scorers)
    start = int(jax.device_get(state.step))
    # Only now is the run known to start: nothing in the workdir was touched before.
    workdir_lib.write_config(workdir, config, step=start)
    writer = workdir_lib.MetricsWriter(
        workdir,
        wandb=config.log.wandb,
        run_config=json.loads(json.dumps(config.to_dict(), default=str)),
    )
    progress = workdir_lib.Progress(config.total_steps, start, config.batch_size)
    halt_on_nan = config.nan_policy == 'halt'

    # Weight sets scored next to the trained parameters (`config.ema.evaluate`, or a
    # method's set with `WeightSet(evaluate=True)`), their metrics suffixed `/<name>`.
    scored_sets = [n for n, e in t.build.extra.items() if e.spec.evaluate]

    def run_evals(step: int, final: bool) -> dict[str, float]:
        results = {}
        due = [ev for ev in evaluators if final or ev.due(step)]
        params = t.build.model_params(state.params)  # One object: the splits' memo holds.
        for i, ev in enumerate(due):
            began = time.perf_counter()
            _log(f'Evaluating {ev.name} ({i + 1}/{len(due)}) at step {step} ...')
            results.update(ev.run(params))
            for name in scored_sets:
                weights = t.build.model_params(state.weights[name])
                results.update({f'{k}/{name}': v for k, v in ev.run(weights).items()})
            _log(f'  {ev.name} done in {time.perf_counter() - began:.1f} s')
        if results:
            writer.write(step, results)
        if config.log.pictures and due:
            evaluate_lib.evaluators.draw_pictures(workdir, step, due, params, _log)
        return results

    def save(step: int, metrics: dict[str, Any]) -> None:
        if halt_on_nan and not bool(metrics['finite']):
            _raise_non_finite(step, metrics)
        # The step never applies a non-finite update; this guards the invariant itself.
        if not checkpoint_lib.is_finite_tree((state.params, state.opt_state)):
            raise NonFiniteError(
                f'The train state at step {step} holds NaN or Inf; it was not saved. The '
                f'last good checkpoint is in {ckpt.directory}.'
            )
        ckpt.save(step, state, train_iter, config)
        timings = {
            'checkpoint/blocking_s': ckpt.last_blocking_s,
            'checkpoint/wait_s': ckpt.last_wait_s,
            # Hashing the previous save's files (in Orbax's background thread); NaN (not
            # written) at the first save, which has no previous one.
            'checkpoint/checksum_s': ckpt.last_checksum_s,
        }
        writer.write(step, {k: v for k, v in timings.items() if math.isfinite(v)})

    watcher = preemption.PreemptionWatcher()
    pending = None  # (step, metrics) of the previous step, checked one step late.
    preempted = None
    eval_results: dict[str, float] = {}
    try:
        for step in range(start + 1, config.total_steps + 1):
            watcher.current_step = step
            with jax.profiler.StepTraceAnnotation('train', step_num=step):
                batch = parallel.make_global_batch(next(train_iter), mesh)
                if step == start + 1:
                    _log('Compiling the train step (the first step waits for it) ...')
                    compile_start = time.perf_counter()
                state, metrics = step_fn(state, batch)
                if step == start + 1:
                    jax.block_until_ready(metrics)
                    _log(f'First step done in {time.perf_counter() - compile_start:.1f} s.')
                    progress.restart(step)
            # Checking the previous step lets this one run while the host waits.
            if halt_on_nan and pending is not None and not bool(pending[1]['finite']):
                _raise_non_finite(*pending)
            pending = (step, metrics)

            if step % config.log_every_steps == 0 or step == config.total_steps:
                if halt_on_nan and not bool(metrics['finite']):
                    _raise_non_finite(step, metrics)
                host = {k: v for k, v in jax.device_get(metrics).items() if k != 'finite'}
                host.update({f'train/{k}': v for k, v in progress.measure(step).items()})
                host.update(_data_skipped(train_iter))
                writer.write(step, host)
                progress.report(step, host)
            last = step == config.total_steps
            # Each evaluator at its own period (evals.<name>.every_steps, else eval_every_steps).
            if not last and any(ev.due(step) for ev in evaluators):
                eval_results = run_evals(step, final=False)
                workdir_lib.print_table(f'Evaluation at step {step}', eval_results)
            stop = watcher.reached(step)
            if last or stop or step % config.checkpoint_every_steps == 0:
                save(step, metrics)
            if stop:
                preempted = step
                break
        if preempted is None:
            final_step = int(jax.device_get(state.step))
            eval_results = run_evals(final_step, final=True)
            skipped = _data_skipped(train_iter)
            if skipped['data/skipped']:  # Shown with the final metrics, not only logged.
                eval_results.update(skipped)
    finally:
        watcher.close()
        ckpt.close()
        writer.close()

    if preempted is not None:
        where = os.path.join(ckpt.directory, str(preempted))
        print(
            f'{watcher.signal_name or "Preemption"}: saved step {preempted} to {where}; '
            f'run the same command to resume.',
            flush=True,
        )
        return {'step': preempted, 'preempted': True, 'checkpoint': where}

    summary = {'step': final_step, **{k: workdir_lib.to_python(v) for k, v in eval_results.items()}}
    if jax.process_index() == 0:
        workdir_lib.write_json(os.path.join(workdir, 'summary.json'), summary)
    workdir_lib.print_table(
        f'Final evaluation (step {final_step}) -> {os.path.join(workdir, "summary.json")}',
        eval_results,
    )
    return summary


def check_can_resume(config: ConfigDict, workdir: str) -> int | None:
    """The newest checkpoint step in `workdir` if `config` may resume it, else None.

    Raises ValueError naming the changed fields when the workdir's run was trained with
    another model, loss, tokenizer, batch, seed or training data (`workdir.RESUME_FIXED`):
    before anything is read into the state or written to the workdir.
    """
    directory = os.path.join(workdir, 'checkpoints')
    latest = checkpoint_lib.newest_committed_step(directory) if os.path.isdir(directory) else None
    if latest is None:
        return None
    try:  # The config saved with the step, else the run's config.json (older checkpoints).
        saved = checkpoint_lib.stored_config(directory, latest)
    except ValueError:
        saved = None  # A damaged step: restore_latest names it and falls back.
    if saved is None and os.path.isfile(os.path.join(workdir, 'config.json')):
        with open(os.path.join(workdir, 'config.json')) as f:
            saved = json.load(f)
    if saved is not None:
        workdir_lib.check_resume_config(saved, config, workdir)
    return latest


def _data_skipped(train_iter) -> dict[str, int]:
    """`data/skipped` (summed over processes) and `data/skipped/<reason>`."""
    total: dict[str, int] = {}
    for counts in checkpoint_lib.gather_json(dict(train_iter.skipped_counts())):
        for reason, n in counts.items():
            total[reason] = total.get(reason, 0) + int(n)
    out = {f'data/skipped/{reason}': n for reason, n in sorted(total.items())}
    out['data/skipped'] = sum(total.values())
    return out


def _log(msg: str) -> None:
    logging.info(msg)
    if jax.process_index() == 0:
        print(msg, flush=True)


# --------------------------------------------------------------------------------------
# Command line.


def main(argv=None) -> None:
    """`python -m alignjax.train --config FILE[:ARG] --workdir DIR [--config.a.b=v ...]`.

    Overrides, their errors and `--debug`: `alignjax.cli`. Every user error is one
    `error:` line; SIGTERM / Ctrl-C save and exit 0 (a second Ctrl-C stops at once).
    """
    flags.DEFINE_string(
        'config',
        None,
        'Config file, e.g. configs/demo.py or configs/demo.py:arg; override '
        'fields with --config.a.b=value.',
    )
    flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, summary).')
    flags.DEFINE_bool(
        'dry_run',
        False,
        'Build the trainer, lower and compile the step, print the parameter '
        'count and memory per device; read no data, write nothing.',
    )
    flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
    flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
    flags.DEFINE_integer('process_id', None, 'This process\'s index (multi-process).')
    flags.mark_flags_as_required(['config', 'workdir'])

    def run(_, overrides):
        logging.getLogger().setLevel(logging.WARNING)
        f = flags.FLAGS
        config = cli.apply_overrides(cli.load_config(f.config), overrides)
        if f.dry_run:
            dry_run(config, f.workdir)
            return
        parallel.maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
        train_and_evaluate(config, f.workdir)

    cli.run(run, argv)


if __name__ == '__main__':
    main()
