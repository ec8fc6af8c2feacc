"""Linear probe: multinomial logistic regression on frozen image embeddings, in JAX.

For features x_i [D] (the model's normalised image embeddings), labels y_i in [0, C):

  minimise_{W [D, C], b [C]}  (1/N) sum_i CE(softmax(x_i W + b), y_i) + (wd / 2) ||W||_2^2

full-batch with L-BFGS (`optax.lbfgs` with its zoom line search) until the gradient norm
falls below `tolerance` or `max_iters` iterations, as CLIP's linear-probe protocol does with
scikit-learn's L-BFGS (Radford et al. 2021, appendix A.3). The weight decay is chosen on a
validation split: the train split is shuffled once (seed 0) and `val_fraction` of it held
out; every wd of the grid is fitted at once (`jax.vmap` over the grid) and the one with the
best validation acc@1 wins (ties: the larger wd). The probe is then refitted on the whole
train split with that wd and scored on the evaluation split with CLIP_benchmark's metrics.

Config (`config.evals.<name>`, type='linear_probe'): `data`, `split` (scored), `train_split`,
`num_train_examples`, `label_key` (e.g. 'label', or 'shape' for the shapes data),
`val_fraction`, `weight_decays`, `max_iters`, `tolerance`. A label column of class names (a
CSV/JSONL table per split) is numbered by the train split's names in both splits; a scored
label that never occurs in the train split is an error.
Metrics: `linear_probe/<name>/{acc1, acc5, mean_per_class_recall, wd, val_acc1}`.

The fit runs on one local device (features of every process are identical, so every process
computes the same probe); memory is that of the [N, D] features plus [N, C] logits per wd.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alignjax.evaluate import base, ranks
from alignjax.evaluate import metrics as metrics_lib


def _objective(params, x, y, wd, weight=None):
    """Mean (over rows with weight 1; padding has weight 0) cross-entropy + (wd / 2)||W||^2."""
    logits = x @ params['w'] + params['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    if weight is None:
        ce = ce.mean()
    else:
        ce = jnp.sum(ce * weight) / jnp.sum(weight)
    return ce + 0.5 * wd * jnp.sum(params['w'] ** 2)


@functools.partial(jax.jit, static_argnames=('num_classes', 'max_iters'))
def _fit(x, y, weight, wds, num_classes: int, max_iters: int, tolerance):
    solver = optax.lbfgs()

    def fit(wd):
        fun = functools.partial(_objective, x=x, y=y, wd=wd, weight=weight)
        value_and_grad = optax.value_and_grad_from_state(fun)
        params = {
            'w': jnp.zeros((x.shape[1], num_classes), jnp.float32),
            'b': jnp.zeros((num_classes,), jnp.float32),
        }

        def step(carry):
            params, state, i = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = solver.update(
                grad, state, params, value=value, grad=grad, value_fn=fun
            )
            return optax.apply_updates(params, updates), state, i + 1

        def not_done(carry):
            _, state, i = carry
            grad = optax.tree.get(state, 'grad')
            return (i == 0) | ((i < max_iters) & (optax.tree.norm(grad) >= tolerance))

        params, _, _ = jax.lax.while_loop(not_done, step, (params, solver.init(params), 0))
        return params

    return jax.vmap(fit)(wds)


def fit_logistic_regression(
    x, y, wds, num_classes: int, max_iters: int = 500, tolerance: float = 1e-5
) -> dict[str, jax.Array]:
    """One L-BFGS fit per weight decay: x [N, D], y [N] int, wds [W] -> {'w': [W, D, C], 'b': [W, C]}.

    Rows are zero-padded (weight 0) to the next power of two, so fits on similar N (the
    validation fit and the refit) share one compilation.
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    n = x.shape[0]
    n_pad = 1 << max(0, (n - 1).bit_length())
    weight = (np.arange(n_pad) < n).astype(np.float32)
    x = np.concatenate([x, np.zeros((n_pad - n, x.shape[1]), np.float32)])
    y = np.concatenate([y, np.zeros((n_pad - n,), np.int32)])
    device = jax.local_devices()[0]  # Same inputs on every process: same probe everywhere.
    args = (jax.device_put(a, device) for a in (x, y, weight, np.asarray(wds, np.float32)))
    return _fit(*args, num_classes, max_iters, jnp.float32(tolerance))


def _accuracy(params, x, y) -> np.ndarray:
    """[W] acc@1 of each fitted probe (ties to the lower class index, like `ranks`)."""
    logits = jnp.einsum('nd,wdc->wnc', x, params['w']) + params['b'][:, None, :]
    return np.asarray((jnp.argmax(logits, axis=-1) == y[None, :]).mean(axis=-1))


def validation_accuracies(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    weight_decays: Sequence[float],
    val_fraction: float = 0.2,
    max_iters: int = 500,
    tolerance: float = 1e-5,
    seed: int = 0,
) -> np.ndarray:
    """[W] validation acc@1 per wd: fit on (x, y) minus a held-out `val_fraction`, score on it."""
    n = x.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    val, train = perm[:n_val], perm[n_val:]
    wds = np.asarray(weight_decays, np.float32)
    params = fit_logistic_regression(x[train], y[train], wds, num_classes, max_iters, tolerance)
    return _accuracy(params, jnp.asarray(x[val]), jnp.asarray(y[val]))


def pick_weight_decay(weight_decays: Sequence[float], accuracies: Sequence[float]) -> int:
    """Index of the best validation accuracy; ties go to the larger (safer) weight decay."""
    return max(range(len(weight_decays)), key=lambda i: (accuracies[i], weight_decays[i]))


def select_weight_decay(x, y, num_classes, weight_decays, val_fraction=0.2, **kw):
    """(best wd, its validation acc@1); keyword arguments go to `validation_accuracies`."""
    acc = validation_accuracies(x, y, num_classes, weight_decays, val_fraction, **kw)
    best = pick_weight_decay(weight_decays, acc)
    return float(weight_decays[best]), float(acc[best])


class LinearProbeEvaluator(base.Evaluator):
    kind = 'linear_probe'
    FIELDS: ClassVar[dict] = dict(
        base.COMMON_FIELDS,
        train_split='train',
        num_train_examples=10_000,  # None: the whole train split
        label_key='label',
        val_fraction=0.2,
        weight_decays=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
        max_iters=500,
        tolerance=1e-5,
    )

    def __init__(self, *args):
        super().__init__(*args)
        cfg = self.cfg
        if not 0 < cfg.val_fraction < 1:
            raise ValueError(
                f'evals.{self.name}.val_fraction must be in (0, 1), got {cfg.val_fraction}.'
            )
        self.train = self.ctx.split(
            cfg.data, cfg.train_split, cfg.num_train_examples, cfg.batch_size, cache=cfg.cache
        )
        self.test = self.ctx.split(
            cfg.data, cfg.split, cfg.num_examples, cfg.batch_size, cache=cfg.cache
        )

    def run(self, params) -> dict[str, float]:
        cfg, where = self.cfg, f'evals.{self.name}'
        train = self.train.embed(params, with_text=False)
        test = self.test.embed(params, with_text=False)
        column = base.label_column(cfg.label_key, train.labels, where)
        base.label_column(cfg.label_key, test.labels, where)
        y_train, y_test = train.labels[column], test.labels[column]
        names = getattr(self.train.source, 'classnames', None)
        if column == 'label_label' and names is not None:
            # Named labels are numbered per table: number the scored split's by the train
            # split's names, so that a class is the same class in both.
            y_test = base.class_ids(
                y_test,
                self.test.source,
                names,
                f'the train split {cfg.train_split!r}',
                where,
                column,
                f'{cfg.data} (split {cfg.split!r})',
            )
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        wds = [float(w) for w in cfg.weight_decays]
        wd, val_acc = select_weight_decay(
            train.image,
            y_train,
            num_classes,
            wds,
            cfg.val_fraction,
            max_iters=cfg.max_iters,
            tolerance=cfg.tolerance,
        )
        # Refit on the whole train split with the chosen wd (as many copies as the grid has
        # entries: the same shapes as the search, so usually no new compilation).
        p = fit_logistic_regression(
            train.image, y_train, np.full(len(wds), wd), num_classes, cfg.max_iters, cfg.tolerance
        )
        w, b = np.asarray(p['w'][0]), np.asarray(p['b'][0])
        # Logits x W + b as a similarity: queries [x, 1], gallery rows [W_c, b_c].
        queries = np.concatenate([test.image, np.ones((test.image.shape[0], 1), np.float32)], 1)
        gallery = np.concatenate([w.T, b[:, None]], 1)
        r = ranks.positive_ranks(queries, y_test, gallery, np.arange(num_classes), self.ctx.mesh)
        out = {
            f'linear_probe/{self.name}/{k}': v
            for k, v in metrics_lib.zero_shot_metrics_from_ranks(r, y_test).items()
        }
        out[f'linear_probe/{self.name}/wd'] = wd
        out[f'linear_probe/{self.name}/val_acc1'] = val_acc
        return out
