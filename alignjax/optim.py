"""Optimizer: AdamW with schedules, clipping, a decay mask and frozen sub-trees.

Weight-decay convention (read this before copying a paper's number)
-------------------------------------------------------------------
`optim.weight_decay` follows optax/PyTorch AdamW: the decoupled decay is multiplied by the
*learning rate*, so each step does `p -= lr_t * (adam_update + weight_decay * p)`. This is the
convention of open_clip (`--wd 0.2`) and the CLIP paper; their values are used unchanged.

big_vision's `config.wd` is multiplied by the schedule's *multiplier* only (the lr curve
divided by its peak), not by the learning rate: `p -= sched_t * wd * p`. To reproduce a
big_vision recipe set `weight_decay = bv_wd / lr` (e.g. bv lr=1e-3, wd=1e-4 -> 0.1).

Which parameters decay: every parameter with two or more dimensions (kernels and
embeddings), except those matched by `optim.no_decay` (regexes on '/'-joined paths).
One-dimensional parameters (biases, LayerNorm scales) and scalars (the logit scale and
bias) never decay.

Freezing: parameters matched by `optim.freeze` (regexes, e.g. 'img/.*' for LiT) get no
update and have no optimizer state (`optax.multi_transform` + `optax.set_to_zero`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from alignjax import validation

ConfigDict = ml_collections.ConfigDict
SCHEDULES = ('warmup_cosine', 'warmup_rsqrt', 'warmup_constant', 'constant')
OPTIMIZERS = ('adamw',)


def default_optim_config() -> ConfigDict:
    c = ConfigDict()
    c.name = 'adamw'
    c.lr = 1e-3  # Peak learning rate.
    c.b1 = 0.9
    c.b2 = 0.98  # CLIP's value; better behaved than 0.999 at large batch.
    c.eps = 1e-6
    c.weight_decay = 0.2  # optax convention, see module docstring.
    c.schedule = 'warmup_cosine'
    c.warmup_steps = 100
    c.end_lr_ratio = 0.0  # warmup_cosine: final lr = lr * end_lr_ratio.
    c.rsqrt_timescale = 10_000  # warmup_rsqrt: lr * 1/sqrt(1 + (step - warmup)/timescale).
    c.grad_clip_norm = 1.0  # Global-norm clipping; 0 or None disables.
    c.no_decay = ()  # Extra regexes excluded from weight decay (beyond ndim < 2).
    c.freeze = ()  # Regexes of frozen parameters, e.g. ('img/.*',) for LiT.
    # CLIP clamps the stored log logit scale to [0, ln 100] after every update.
    c.clamp_logit_scale = True
    return c


def path_str(path: Sequence[Any]) -> str:
    """'img/encoder/block_0/mlp/kernel' for a jax key path."""
    parts = []
    for k in path:
        for attr in ('key', 'name', 'idx'):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return '/'.join(parts)


def tree_paths(tree) -> Any:
    """A tree of the same structure whose leaves are their '/'-joined paths."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def match_any(patterns: Sequence[str], path: str) -> bool:
    return any(re.fullmatch(p, path) for p in patterns)


def check_config(c: ConfigDict, total_steps: int) -> None:
    """Validates `config.optim` (called once, by `alignjax.config.resolve`)."""
    validation.check_fields(c, default_optim_config(), 'optim')
    validation.check_choice(c.name, OPTIMIZERS, 'optim.name')
    validation.check_choice(c.schedule, SCHEDULES, 'optim.schedule')
    if c.warmup_steps >= total_steps and c.schedule not in ('constant', 'warmup_constant'):
        raise ValueError(
            f'optim.warmup_steps={c.warmup_steps} must be smaller than '
            f'total_steps={total_steps} for schedule {c.schedule!r}: also pass '
            f'--config.optim.warmup_steps={max(total_steps // 10, 0)} (or fewer).'
        )
    for pattern in tuple(c.freeze) + tuple(c.no_decay):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f'Invalid regex {pattern!r} in optim: {e}') from e


def make_schedule(c: ConfigDict) -> Callable[[jax.Array], jax.Array]:
    """Learning-rate schedule from a checked config (`check_config`); see SCHEDULES."""
    total, warmup, lr = c.total_steps, c.warmup_steps, c.lr
    if c.schedule == 'constant':
        return optax.constant_schedule(lr)
    if c.schedule == 'warmup_cosine':
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=total,
            end_value=lr * c.end_lr_ratio,
        )

    def warmup_then(after: Callable[[jax.Array], jax.Array]):
        def schedule(step):
            step = jnp.asarray(step, jnp.float32)
            ramp = lr * jnp.minimum(1.0, (step + 1) / max(warmup, 1))
            return jnp.where(step < warmup, ramp, after(step))

        return schedule

    if c.schedule == 'warmup_constant':
        return warmup_then(lambda step: jnp.full_like(step, lr))
    # warmup_rsqrt (big_vision's "rsqrt" decay, without cooldown).
    return warmup_then(lambda step: lr / jnp.sqrt(1.0 + (step - warmup) / c.rsqrt_timescale))


def decay_mask(params, no_decay: Sequence[str] = ()):
    """True where weight decay applies: ndim >= 2 and not matched by `no_decay`."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x.ndim >= 2 and not match_any(no_decay, path_str(p)), params
    )


def frozen_mask(params, freeze: Sequence[str]):
    """True for frozen parameters (matched by any regex in `freeze`)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: match_any(freeze, path_str(p)), params)


def trainable_count(params, freeze: Sequence[str]) -> int:
    """How many parameter values `optim.freeze` leaves trainable (shapes suffice)."""
    mask = jax.tree_util.tree_leaves(frozen_mask(params, freeze))
    return sum(math.prod(x.shape) for f, x in zip(mask, jax.tree_util.tree_leaves(params)) if not f)


def make_optimizer(c: ConfigDict, params) -> tuple[optax.GradientTransformation, Callable]:
    """Builds (tx, schedule) from `config.optim` (with `total_steps` filled in).

    `params` may be abstract (ShapeDtypeStructs): only paths and ranks are read. `c` is
    checked by `check_config` (once per config, in `alignjax.config.resolve`).
    """
    schedule = make_schedule(c)
    chain = []
    if c.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(c.grad_clip_norm))
    chain.append(
        optax.adamw(
            schedule,
            b1=c.b1,
            b2=c.b2,
            eps=c.eps,
            weight_decay=c.weight_decay,
            mask=decay_mask(params, c.no_decay),
        )
    )
    tx = optax.chain(*chain)

    frozen = frozen_mask(params, c.freeze)
    n_frozen = sum(jax.tree_util.tree_leaves(frozen))
    if c.freeze and not n_frozen:
        raise ValueError(
            f'optim.freeze={tuple(c.freeze)} matches no parameter. Parameter '
            f'paths look like: {jax.tree_util.tree_leaves(tree_paths(params))[:5]}'
        )
    if n_frozen:
        labels = jax.tree_util.tree_map(lambda f: 'frozen' if f else 'trained', frozen)
        # Clipping sees only the trained parameters' gradients: frozen ones are dropped
        # before the chain, as if they were constants.
        tx = optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)
    return tx, schedule


def clamp_logit_scale(params, max_scale: float = 100.0):
    """CLIP: clip the stored log logit scale to [0, ln max_scale] (after each update)."""
    if 'log_scale' not in params:
        return params
    params = dict(params)
    params['log_scale'] = jnp.clip(params['log_scale'], 0.0, jnp.log(max_scale))
    return params
