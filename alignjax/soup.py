"""Weight-space tools over trained runs and exports: soups, WiSE-FT, task vectors.

  # Greedy soup of fine-tunes of one start, scored by a held-out evaluator (Wortsman et al.
  # 2022): ingredients sorted by held-out score, each kept iff the soup's score rises
  # (--accept ge: iff it does not drop).
  python -m alignjax.soup greedy --ingredients runs/ft_a,runs/ft_b,runs/ft_c \\
      --evals heldout --config.evals.heldout.type=zeroshot \\
      --config.evals.heldout.data=synthetic:shapes --config.evals.heldout.split=val \\
      --metric 'zeroshot/heldout_*/acc1' --out runs/greedy_soup
  python -m alignjax.soup uniform --ingredients runs/ft_a,runs/ft_b --out runs/uniform_soup

  # WiSE-FT: (1 - alpha) theta_zeroshot + alpha theta_finetuned for each alpha, scored on an
  # in-distribution and a shifted evaluator; a table, soup.json and wise_ft.png.
  python -m alignjax.soup wise_ft --base runs/demo --ingredients runs/ft_a \\
      --alphas 0,0.25,0.5,0.75,1 --id_metric 'zeroshot/val_*/acc1' \\
      --shift_metric 'zeroshot/test_*/acc1' --out runs/wise_ft   # + evaluator flags
  # (--out gets the export at --alpha, default the best alpha on the id metric.)

  # Task arithmetic: theta_0 + sum_i lambda_i (theta_i - theta_0); lambda < 0 negates.
  python -m alignjax.soup task_vectors --base runs/demo --ingredients runs/ft_a,runs/ft_b \\
      --lambdas 0.5,-0.5 --out runs/merged
  # aTLAS: one coefficient per task vector and block, learned on k labelled examples per
  # class of a zero-shot evaluator (cross-entropy of its zero-shot logits).
  python -m alignjax.soup learned --base runs/demo --ingredients runs/ft_a,runs/ft_b \\
      --fewshot shots --shots 4 --out runs/atlas                # + evaluator flags

Ingredients, `--base` and the reference: a training workdir (its newest good checkpoint;
`PATH@STEP` for another step), a `checkpoints/<step>` directory, or an export
(`python -m alignjax.export`). The *reference* is `--base` where the mode has one, else the
first ingredient: its config (stored with the checkpoint, or `--config FILE`, required when
the reference is an export) gives the model, mesh, tokenizer and evaluators; every other
ingredient must have the same parameter tree (checked, one line naming the differences).
`--config.evals.NAME.FIELD=v` adds or sets evaluators as in `alignjax.evaluate`;
`--evals a,b` keeps only those for scoring.

Memory: ingredients are restored one at a time straight into the reference's shardings (a
checkpoint through Orbax; an export is read on the host and each device gets its slice), so
the devices hold the float32 soup, the greedy soup's candidate and one ingredient, and the
host at most one export. Task vectors for `learned` are all on device together (the
coefficients' gradient needs them). The result comes to the host only to be written
(`process_allgather`; process 0 writes).

`--out DIR` gets the soup as an export (`alignjax.load_pretrained(DIR)`, or a run's
`config.init_from.path`) and `soup.json`: the ingredients, their
held-out scores, which were kept, the result's scores, per-alpha curves and coefficients.
Progress (each ingredient's score, each candidate kept or dropped) is printed as it goes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags
from absl import logging as absl_logging
from jax.experimental import multihost_utils
from matplotlib.figure import Figure

from alignjax import cli, export, parallel, restore
from alignjax import config as config_lib
from alignjax import data as data_lib
from alignjax import state as state_lib
from alignjax import weight_space as ws
from alignjax import workdir as workdir_lib
from alignjax.data import few_shot as few_shot_data
from alignjax.evaluate import evaluators as evaluators_lib
from alignjax.models import l2_normalize

ConfigDict = ml_collections.ConfigDict
Params = Any

MODES = ('uniform', 'greedy', 'wise_ft', 'task_vectors', 'learned')
ACCEPT = ('gt', 'ge')
SOUP_FILE = 'soup.json'
CURVE_FILE = 'wise_ft.png'
SAME_MODEL_HINT = (
    'Every ingredient must be a run of the reference model (the same architecture and '
    'parameter tree).'
)
# Blocks that `learned` keeps at theta_0 (weight_space.block_of names).
TEMPERATURE_BLOCKS = ('log_scale', 'logit_bias')


# --------------------------------------------------------------------------------------
# Ingredients: runs, checkpoints and exports, restored into the reference's shardings.


def parse_spec(spec: str) -> tuple[str, int | None]:
    """'PATH' or 'PATH@STEP' -> (path, step or None)."""
    path, at, step = spec.rpartition('@')
    if at and step.isdigit():
        return path, int(step)
    return spec, None


def _put_host_params(host: Params, like: Params, what: str) -> Params:
    """Host `host` (nested numpy) as global arrays with `like`'s shardings and dtypes."""
    ws.check_same_structure(like, host, what)
    host_leaves = jax.tree.leaves(host)
    like_leaves, treedef = jax.tree.flatten(like)
    out = []
    for h, ref in zip(host_leaves, like_leaves):
        h = np.asarray(h).astype(ref.dtype)
        out.append(jax.make_array_from_callback(h.shape, ref.sharding, lambda idx, h=h: h[idx]))
    return jax.tree.unflatten(treedef, out)


def load_reference(spec: str, config: ConfigDict | None = None) -> restore.LoadedRun:
    """The run (config, mesh, model, tokenizer, sharded params) every ingredient is
    restored against. `config`: overrides the stored one; required for an export."""
    path, step = parse_spec(spec)
    if export.is_export(path):
        if config is None:
            raise ValueError(
                f'The reference {path} is an export, which stores no data or evaluator '
                'config: pass --config FILE (its model must be the export\'s).'
            )
        resolved = config_lib.resolve(config)
        mesh = parallel.make_mesh(resolved.mesh)
        build = state_lib.build_state(resolved, mesh)
        abstract = build.abstract_state.params
        e = export.read(path)
        params = _put_host_params(e.params, abstract, f'The export {path}')
        tokenizer = data_lib.build_tokenizer(resolved.tokenizer)
        build.objective.bind_tokenizer(tokenizer)
        return restore.LoadedRun(resolved, mesh, tokenizer, build, 0, build.model, params)
    if not export.is_run(path):
        raise ValueError(f'{path} is neither a training run (workdir or checkpoint) nor an export.')
    return restore.load_run(config, path, step)


def load_ingredient(reference: restore.LoadedRun, spec: str) -> Params:
    """One ingredient's parameters, sharded as the reference's (same tree checked)."""
    path, step = parse_spec(spec)
    if export.is_export(path):
        return _put_host_params(export.read(path).params, reference.params, f'The export {path}')
    if not export.is_run(path):
        raise ValueError(f'{path} is neither a training run (workdir or checkpoint) nor an export.')
    try:
        return restore.load_run(reference.config, path, step, mismatch_hint=SAME_MODEL_HINT).params
    except ValueError as e:  # A different architecture: say which ingredient.
        raise ValueError(f'Ingredient {spec}: {e}') from e


# --------------------------------------------------------------------------------------
# Held-out scoring.


def matching_metrics(results: dict[str, float], pattern: str) -> list[str]:
    """The metric names `pattern` selects: itself if present, else those it matches as a
    shell-style glob (`*` / `?`). A glob without '@' skips the per-scorer metrics
    (`.../acc1@tokens`), which would otherwise enter the mean unasked."""
    if pattern in results:
        return [pattern]
    return [
        k for k in results
        if fnmatch.fnmatchcase(k, pattern) and ('@' in pattern or '@' not in k)
    ]  # fmt: skip


def select_metric(results: dict[str, float], pattern: str) -> float:
    """The value of metric `pattern` in `results`, or the mean of the metrics it matches
    (`matching_metrics`); ValueError listing the metrics when none matches."""
    hits = matching_metrics(results, pattern)
    if not hits:
        raise ValueError(
            f'No metric matches {pattern!r}; the evaluators report: {sorted(results)}.'
        )
    return float(statistics.mean(float(results[k]) for k in hits))


class Scorer:
    """The config's evaluators (built once), run on parameter trees of the reference."""

    def __init__(self, reference: restore.LoadedRun, only: Sequence[str] | None = None):
        config = evaluators_lib.keep_only(reference.config, only)
        if not config.evals:
            raise ValueError(
                'No evaluator to score with: add one, e.g. --config.evals.heldout.type=zeroshot '
                '--config.evals.heldout.data=synthetic:shapes --config.evals.heldout.split=val.'
            )
        self.evaluators = evaluators_lib.build_evaluators(
            config, reference.model, reference.tokenizer, reference.mesh,
            reference.build.objective.scorers,
        )  # fmt: skip

    def __call__(self, params: Params) -> dict[str, float]:
        out: dict[str, float] = {}
        for ev in self.evaluators:
            out.update({k: float(v) for k, v in ev.run(params).items()})
        return out


# --------------------------------------------------------------------------------------
# The procedures.


@dataclasses.dataclass
class SoupResult:
    """A soup's parameters (reference dtypes and shardings) and what was measured."""

    params: Params
    record: dict[str, Any]


def _progress(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def uniform(
    reference: restore.LoadedRun,
    ingredients: Sequence[str],
    score: Callable[[Params], dict[str, float]] | None = None,
    metric: str | None = None,
) -> SoupResult:
    """The mean of every ingredient, accumulated as a float32 running average (one
    ingredient on device besides the soup)."""
    soup = None
    for n, spec in enumerate(ingredients):
        theta = load_ingredient(reference, spec)
        soup = ws.to_float32(theta) if soup is None else ws.running_average(soup, n, theta)
        del theta
        _progress(f'uniform soup: {n + 1}/{len(ingredients)} ingredients')
    params = ws.cast_like(soup, reference.params)
    record: dict[str, Any] = {'mode': 'uniform', 'ingredients': list(ingredients)}
    if score is not None:
        record['metrics'] = score(params)
        if metric:
            record['score'] = select_metric(record['metrics'], metric)
    return SoupResult(params, record)


def greedy(
    reference: restore.LoadedRun,
    ingredients: Sequence[str],
    score: Callable[[Params], dict[str, float]],
    metric: str,
    accept: str = 'gt',
) -> SoupResult:
    """Greedy soup: ingredients sorted by held-out score (descending, ties in the given
    order); the soup starts as the best; each next one is kept iff the running average
    with it scores `>` (accept='gt', the authors' code) or `>=` ('ge', the paper's recipe)
    the current soup. The held-out score therefore never decreases and is at least the
    best single ingredient's."""
    if accept not in ACCEPT:
        raise ValueError(f'accept={accept!r}: use one of {ACCEPT}.')
    singles, matched = [], []
    for i, spec in enumerate(ingredients):
        metrics = score(load_ingredient(reference, spec))
        singles.append(select_metric(metrics, metric))
        matched = matching_metrics(metrics, metric)
        _progress(f'greedy soup: ingredient {i + 1}/{len(ingredients)} {spec}: {singles[-1]:.4f}')
    order = sorted(range(len(ingredients)), key=lambda i: -singles[i])
    soup = ws.to_float32(load_ingredient(reference, ingredients[order[0]]))
    kept, best = [order[0]], singles[order[0]]
    history = [{'ingredient': ingredients[order[0]], 'candidate_score': best, 'kept': True}]
    for i in order[1:]:
        candidate = ws.running_average(soup, len(kept), load_ingredient(reference, ingredients[i]))
        s = select_metric(score(ws.cast_like(candidate, reference.params)), metric)
        keep = s > best if accept == 'gt' else s >= best
        history.append({'ingredient': ingredients[i], 'candidate_score': s, 'kept': keep})
        _progress(f'greedy soup: + {ingredients[i]} -> {s:.4f} ({"kept" if keep else "dropped"})')
        if keep:
            soup, best = candidate, s
            kept.append(i)
        del candidate
    params = ws.cast_like(soup, reference.params)
    record = {
        'mode': 'greedy', 'accept': accept, 'metric': metric, 'metric_keys': matched,
        'ingredients': list(ingredients), 'single_scores': singles,
        'order': [ingredients[i] for i in order], 'kept': [ingredients[i] for i in kept],
        'history': history, 'score': best, 'metrics': score(params),
    }  # fmt: skip
    return SoupResult(params, record)


def wise_ft(
    reference: restore.LoadedRun,
    finetuned: str,
    alphas: Sequence[float],
    score: Callable[[Params], dict[str, float]],
    id_metric: str,
    shift_metric: str,
    alpha: float | None = None,
) -> SoupResult:
    """WiSE-FT: `(1 - alpha) theta_reference + alpha theta_finetuned` for each alpha, with
    the in-distribution and shifted scores. The result is the model at `alpha` (None: the
    alpha with the best in-distribution score, as one would choose without shifted data)."""
    theta_ft = load_ingredient(reference, finetuned)
    curve = []
    for a in alphas:
        metrics = score(ws.interpolate(reference.params, theta_ft, a))
        row = {'alpha': float(a), 'id': select_metric(metrics, id_metric)}
        row['shift'] = select_metric(metrics, shift_metric)
        keys = {'id': matching_metrics(metrics, id_metric)}
        keys['shift'] = matching_metrics(metrics, shift_metric)
        row['metrics'] = metrics
        curve.append(row)
        _progress(f'WiSE-FT alpha={a:g}: id {row["id"]:.4f}, shift {row["shift"]:.4f}')
    chosen = float(alpha) if alpha is not None else max(curve, key=lambda r: r['id'])['alpha']
    record = {
        'mode': 'wise_ft', 'base': None, 'finetuned': finetuned, 'alphas': list(map(float, alphas)),
        'id_metric': id_metric, 'shift_metric': shift_metric, 'metric_keys': keys,
        'curve': curve, 'alpha': chosen,
    }  # fmt: skip
    return SoupResult(ws.interpolate(reference.params, theta_ft, chosen), record)


def task_vectors(
    reference: restore.LoadedRun,
    ingredients: Sequence[str],
    lambdas: Sequence[float],
    score: Callable[[Params], dict[str, float]] | None = None,
) -> SoupResult:
    """`theta_0 + sum_i lambda_i (theta_i - theta_0)` with theta_0 the reference; each
    ingredient is loaded, added and dropped in turn."""
    if len(lambdas) != len(ingredients):
        raise ValueError(f'{len(ingredients)} ingredients but {len(lambdas)} --lambdas.')
    out = ws.to_float32(reference.params)
    for spec, lam in zip(ingredients, lambdas):
        theta = load_ingredient(reference, spec)
        tau = ws.task_vector(theta, reference.params)
        out = jax.tree.map(lambda o, t, lam=float(lam): o + lam * t, out, tau)
        del theta, tau
    params = ws.cast_like(out, reference.params)
    record: dict[str, Any] = {
        'mode': 'task_vectors', 'ingredients': list(ingredients),
        'lambdas': [float(x) for x in lambdas],
    }  # fmt: skip
    if score is not None:
        record['metrics'] = score(params)
    return SoupResult(params, record)


# ------------------------------------------------------------------------ learned (aTLAS)


@dataclasses.dataclass
class FewShot:
    """k labelled images per class of one zero-shot task, and the task's prompts."""

    images: np.ndarray  # [N, H, W, 3] float32, preprocessed as the evaluator's
    labels: np.ndarray  # [N] class index
    tokens: np.ndarray  # [C * T, L] class-major prompts
    num_classes: int


def _gather_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's rows of `arrays`, in the same order on each process."""
    if jax.process_count() == 1:
        return arrays
    gathered = multihost_utils.process_allgather(arrays, tiled=True)
    return {k: np.asarray(v) for k, v in gathered.items()}


def few_shot_examples(evaluator, task: str | None, shots: int, seed: int = 0) -> FewShot:
    """`shots` examples per class (`data.few_shot.k_shot_indices`: seeded, nested in
    `shots`, fewer where a class has fewer) from the split of a zero-shot evaluator
    (`config.evals.NAME.type='zeroshot'`); `task` None: its only task (or the first).

    Two passes over the split: the labels of its real rows (not the batches' padding,
    `mask` False), then the images of the picked rows only, so the host never holds the
    split's images. The draw is over the rows sorted by `index`, the same on any number
    of processes."""
    if getattr(evaluator, 'kind', None) != 'zeroshot':
        raise ValueError(f'--fewshot {evaluator.name!r} must be a zeroshot evaluator.')
    tasks = list(evaluator.tasks)
    task = tasks[0] if task is None else task
    if task not in evaluator.tasks:
        raise ValueError(f'--task {task!r}: the evaluator {evaluator.name!r} has tasks {tasks}.')
    skip = ('image', 'tokens', 'caption_tokens')
    cols: dict[str, list[np.ndarray]] = {}
    for batch in evaluator.split.batches:
        meta = _gather_rows({k: np.asarray(v) for k, v in batch.items() if k not in skip})
        for k, v in meta.items():
            cols.setdefault(k, []).append(v)
    meta = {k: np.concatenate(v) for k, v in cols.items()}
    real = meta['mask'].astype(bool)
    meta = {k: v[real] for k, v in meta.items()}
    order = np.argsort(meta['index'], kind='stable')
    meta = {k: v[order] for k, v in meta.items()}
    labels = evaluator.class_ids(task, meta)
    rows = few_shot_data.k_shot_indices(labels, shots, seed)
    if rows.size == 0:
        raise ValueError(f'The split of {evaluator.name!r} has no labelled example for {task!r}.')
    wanted = meta['index'][rows]  # sorted, since `rows` and the indices are
    images, found = None, np.zeros(wanted.shape, bool)
    for batch in evaluator.split.batches:
        index, mask = np.asarray(batch['index']), np.asarray(batch['mask']).astype(bool)
        pos = np.searchsorted(wanted, index)
        hit = mask & (pos < wanted.size) & (wanted[np.minimum(pos, wanted.size - 1)] == index)
        if images is None:
            images = np.zeros((wanted.size,) + batch['image'].shape[1:], np.float32)
        images[pos[hit]] = np.asarray(batch['image'])[hit]
        found[pos[hit]] = True
    if jax.process_count() > 1:  # Each row was read by exactly one process.
        both = multihost_utils.process_allgather({'image': images, 'found': found})
        images, found = np.asarray(both['image']).sum(0), np.asarray(both['found']).any(0)
    if not found.all():
        raise RuntimeError(f'{int((~found).sum())} picked rows were not re-read from the split.')
    return FewShot(
        images=images,
        labels=labels[rows].astype(np.int32),
        tokens=np.asarray(evaluator.prompts[task][0]),
        num_classes=len(evaluator.tasks[task]['classnames']),
    )


def zero_shot_loss(model: nn.Module, params: Params, data: FewShot) -> jax.Array:
    """Cross-entropy of the zero-shot logits `t <zimg, w_c>` of `data`, with `w_c` the
    renormalised mean of class c's prompt embeddings, all from `params`."""
    zimg = model.apply({'params': params}, data.images, method=model.encode_image)
    ztxt = model.apply({'params': params}, data.tokens, method=model.encode_text)
    w = l2_normalize(ztxt.reshape(data.num_classes, -1, ztxt.shape[-1]).mean(axis=1))
    logits = jnp.exp(params['log_scale']) * zimg @ w.T
    return optax.softmax_cross_entropy_with_integer_labels(logits, data.labels).mean()


def learn_coefficients(
    reference: restore.LoadedRun,
    ingredients: Sequence[str],
    data: FewShot,
    steps: int = 100,
    lr: float = 0.05,
    init: float = 0.3,
    score: Callable[[Params], dict[str, float]] | None = None,
) -> SoupResult:
    """aTLAS: `theta_0 + sum_i sum_b c_ib tau_ib` with one coefficient per task vector i
    and block b (`weight_space.block_of`), learned with Adam on `zero_shot_loss` of the
    few-shot `data` (full batch, the towers' weights fixed); starts at `c = init`."""
    theta_0 = reference.params
    vectors = [ws.task_vector(load_ingredient(reference, s), theta_0) for s in ingredients]
    # The temperature (and SigLIP's bias) stay theta_0's: scaling them alone lowers the
    # cross-entropy without changing a single prediction.
    names, leaf_blocks = ws.fix_blocks(*ws.blocks(theta_0), fixed=TEMPERATURE_BLOCKS)
    coeffs = jnp.full((len(vectors), len(names)), float(init), jnp.float32)
    tx = optax.adam(lr)
    opt = tx.init(coeffs)
    replicated = jax.sharding.NamedSharding(reference.mesh, jax.sharding.PartitionSpec())
    # A few hundred examples at most: every device holds them all.
    arrays = tuple(jax.device_put(x, replicated) for x in (data.images, data.labels, data.tokens))

    # theta_0 and the vectors are arguments, not constants folded into the program.
    def loss_of(c, theta_0, vecs, arrays):
        merged = ws.add_block_scaled(theta_0, vecs, c, leaf_blocks)
        return zero_shot_loss(reference.model, merged, FewShot(*arrays, data.num_classes))

    @jax.jit
    def step(c, opt, theta_0, vecs, arrays):
        loss, g = jax.value_and_grad(loss_of)(c, theta_0, vecs, arrays)
        updates, opt = tx.update(g, opt, c)
        return optax.apply_updates(c, updates), opt, loss

    losses = []
    with jax.set_mesh(reference.mesh), nn.logical_axis_rules(parallel.LOGICAL_RULES):
        for i in range(steps):
            coeffs, opt, loss = step(coeffs, opt, theta_0, vectors, arrays)
            losses.append(float(loss))
            if i == 0 or (i + 1) % max(1, steps // 5) == 0:
                _progress(f'aTLAS step {i + 1}/{steps}: few-shot loss {losses[-1]:.4f}')
        final = float(jax.jit(loss_of)(coeffs, theta_0, vectors, arrays))
        params = ws.add_block_scaled(theta_0, vectors, coeffs, leaf_blocks)
    record: dict[str, Any] = {
        'mode': 'learned', 'ingredients': list(ingredients), 'steps': steps, 'lr': lr,
        'init': init, 'shots_total': int(data.labels.shape[0]), 'loss_first': losses[0],
        'loss_final': final, 'losses': losses,
        'coefficients': ws.coefficient_table(names, np.asarray(coeffs)),
    }  # fmt: skip
    if score is not None:
        record['metrics'] = score(params)
    return SoupResult(params, record)


# --------------------------------------------------------------------------------------
# Writing.


def plot_wise_ft(curve: Sequence[dict[str, Any]], path: str, title: str = 'WiSE-FT') -> str:
    """The in-distribution vs shifted score of each alpha (the paper's Figure 1 layout),
    written as a PNG."""
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    x = [r['id'] for r in curve]
    y = [r['shift'] for r in curve]
    ax.plot(x, y, '-o', color='tab:blue', ms=4)
    for r in curve:
        ax.annotate(f"{r['alpha']:g}", (r['id'], r['shift']), fontsize=7,
                    textcoords='offset points', xytext=(4, 3))  # fmt: skip
    # The endpoints as given: the zero-shot and fine-tuned models only when alpha is 0 / 1.
    names = {0.0: ' (zero-shot)', 1.0: ' (fine-tuned)'}
    lo, hi = curve[0]['alpha'], curve[-1]['alpha']
    ax.plot([x[0]], [y[0]], 's', color='tab:green', label=f'alpha={lo:g}{names.get(lo, "")}')
    ax.plot([x[-1]], [y[-1]], 'D', color='tab:red', label=f'alpha={hi:g}{names.get(hi, "")}')
    ax.set_xlabel('in-distribution score')
    ax.set_ylabel('shifted-distribution score')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _export_dtype(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x


def save(result: SoupResult, reference: restore.LoadedRun, out: str) -> str:
    """Writes the soup as an export into directory `out` (the reference run's model config,
    preprocessing and tokenizer) with `soup.json` beside it; process 0 writes."""
    host = multihost_utils.process_allgather(result.params, tiled=True)
    if jax.process_index() != 0:
        return os.path.join(out, export.FILE_NAMES[0])
    os.makedirs(out, exist_ok=True)
    # Exports hold float32 (a bfloat16 model is written as float32, exactly).
    host = jax.tree.map(lambda x: _export_dtype(np.asarray(x)), host)
    cfg = reference.config
    path = export.save(
        out, host, cfg.model,
        preprocess=export.preprocess_from_config(cfg), tokenizer=export.tokenizer_from_config(cfg),
    )  # fmt: skip
    workdir_lib.write_json(os.path.join(out, SOUP_FILE), result.record)
    return path


# --------------------------------------------------------------------------------------
# Command line.


def _floats(values: Sequence[str] | None, flag: str) -> list[float]:
    try:
        return [float(v) for v in values or []]
    except ValueError as e:
        raise ValueError(f'--{flag} takes comma-separated numbers, got {values}.') from e


def _summary(result: SoupResult) -> dict[str, Any]:
    r = result.record
    shown: dict[str, Any] = {}
    for k in ('score', 'alpha', 'loss_first', 'loss_final'):
        if k in r:
            shown[k] = r[k]
    if 'kept' in r:
        shown['kept'] = f"{len(r['kept'])}/{len(r['ingredients'])}"
    shown.update(r.get('metrics', {}))
    return shown


def run_mode(mode: str, f, config: ConfigDict | None, overrides) -> tuple[SoupResult, Any]:
    """One mode of the command line (module docstring); returns (result, reference)."""
    if mode not in MODES:
        raise ValueError(f'Unknown mode {mode!r}; valid: {", ".join(MODES)}.')
    ingredients = list(f.ingredients or [])
    if not ingredients:
        raise ValueError('--ingredients is empty: pass runs or exports, comma-separated.')
    has_base = mode in ('wise_ft', 'task_vectors', 'learned')
    if has_base and not f.base:
        raise ValueError(f'{mode} needs --base (the zero-shot / pre-trained model).')
    if not has_base and f.base:
        raise ValueError(f'{mode} takes no --base; the soup is over --ingredients.')
    ref_spec = f.base if has_base else ingredients[0]
    path, step = parse_spec(ref_spec)
    if not (export.is_export(path) or export.is_run(path)):
        raise ValueError(f'{path} is neither a training run (workdir or checkpoint) nor an export.')
    if config is None and not export.is_export(path):
        config = restore.checkpoint_config(path, step)
    if config is not None:
        config = cli.apply_overrides(config, overrides)
    elif overrides:
        raise ValueError(
            '--config.* overrides need a config: the reference is an export, pass --config FILE.'
        )
    reference = load_reference(ref_spec, config)
    need_score = mode in ('greedy', 'wise_ft') or bool(f.evals) or bool(f.metric)
    score = Scorer(reference, f.evals) if need_score else None
    if mode == 'uniform':
        result = uniform(reference, ingredients, score, f.metric)
    elif mode == 'greedy':
        if not f.metric:
            raise ValueError(
                "greedy needs --metric: the held-out metric or glob to select on (e.g. "
                "'zeroshot/heldout_*/acc1'), from data you do not report on."
            )
        result = greedy(reference, ingredients, score, f.metric, f.accept)
    elif mode == 'wise_ft':
        if len(ingredients) != 1:
            raise ValueError('wise_ft interpolates --base with one fine-tuned --ingredients run.')
        if not (f.id_metric and f.shift_metric):
            raise ValueError(
                'wise_ft needs --id_metric and --shift_metric (metric names or globs).'
            )
        alphas = _floats(f.alphas, 'alphas')
        if not alphas:
            raise ValueError('--alphas is empty: pass mixing weights, e.g. --alphas 0,0.5,1.')
        result = wise_ft(
            reference, ingredients[0], alphas, score, f.id_metric, f.shift_metric, f.alpha
        )
        result.record['base'] = f.base
    elif mode == 'task_vectors':
        lambdas = _floats(f.lambdas, 'lambdas') or [1.0] * len(ingredients)
        result = task_vectors(reference, ingredients, lambdas, score)
        result.record['base'] = f.base
    else:
        if not f.fewshot:
            raise ValueError(
                'learned needs --fewshot NAME: a zeroshot evaluator whose split gives the '
                'labelled examples.'
            )
        if f.fewshot not in reference.config.evals:
            raise ValueError(
                f'--fewshot {f.fewshot!r} is not in config.evals {sorted(reference.config.evals)}; '
                'add it with --config.evals.NAME.type=zeroshot and its data / split.'
            )
        cfg = evaluators_lib.keep_only(reference.config, [f.fewshot])
        (ev,) = evaluators_lib.build_evaluators(
            cfg,
            reference.model,
            reference.tokenizer,
            reference.mesh,
            reference.build.objective.scorers,
        )
        data = few_shot_examples(ev, f.task, f.shots, f.seed)
        result = learn_coefficients(reference, ingredients, data, f.steps, f.lr, f.init, score)
        result.record.update(base=f.base, fewshot=f.fewshot, shots=f.shots, seed=f.seed)
    return result, reference


def main(argv=None) -> None:
    """The command line (module docstring)."""
    flags.DEFINE_list('ingredients', None, 'Runs, checkpoints or exports (PATH or PATH@STEP).')
    flags.DEFINE_string('base', None, 'wise_ft / task_vectors / learned: the zero-shot model.')
    flags.DEFINE_string('config', None, "Config file (default: the reference's stored config).")
    flags.DEFINE_list('evals', None, 'Score with only these evaluators of config.evals.')
    flags.DEFINE_string('metric', None, "Held-out metric or glob (required by greedy).")
    flags.DEFINE_enum('accept', 'gt', ACCEPT, "Greedy: keep if the score is > ('gt') or >= ('ge').")
    flags.DEFINE_list('alphas', ['0', '0.25', '0.5', '0.75', '1'], 'wise_ft: mixing weights.')
    flags.DEFINE_float('alpha', None, 'wise_ft: the alpha to export (default: best id score).')
    flags.DEFINE_string('id_metric', None, 'wise_ft: in-distribution metric or glob.')
    flags.DEFINE_string('shift_metric', None, 'wise_ft: shifted-distribution metric or glob.')
    flags.DEFINE_list('lambdas', None, 'task_vectors: one coefficient per ingredient (default 1).')
    flags.DEFINE_string('fewshot', None, 'learned: the zeroshot evaluator giving the examples.')
    flags.DEFINE_string('task', None, "learned: the evaluator's task (default: its first).")
    flags.DEFINE_integer('shots', 4, 'learned: labelled examples per class.')
    flags.DEFINE_integer('steps', 100, 'learned: Adam steps on the coefficients.')
    flags.DEFINE_float('lr', 0.05, 'learned: Adam learning rate.')
    flags.DEFINE_float('init', 0.3, 'learned: initial coefficient.')
    flags.DEFINE_integer('seed', 0, 'learned: seed of the few-shot draw.')
    flags.DEFINE_string('out', None, 'Directory for the export and soup.json.')

    def run(args, overrides):
        logging.getLogger().setLevel(logging.WARNING)
        absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's per-restore notices.
        f = flags.FLAGS
        if len(args) != 2:
            raise cli.UsageError(
                f'Name one mode: python -m alignjax.soup {{{"|".join(MODES)}}} ...'
            )
        t0 = time.time()
        given = cli.load_config(f.config) if f.config else None
        result, reference = run_mode(args[1], f, given, overrides)
        workdir_lib.print_table(f'{args[1]} soup', _summary(result))
        if args[1] == 'wise_ft' and jax.process_index() == 0:
            print('\n| alpha | in-distribution | shifted |\n|---:|---:|---:|')
            for r in result.record['curve']:
                print(f"| {r['alpha']:g} | {r['id']:.4f} | {r['shift']:.4f} |")
        result.record['wall_s'] = time.time() - t0
        if f.out:
            path = save(result, reference, f.out)
            if args[1] == 'wise_ft' and jax.process_index() == 0:
                plot_wise_ft(result.record['curve'], os.path.join(f.out, CURVE_FILE))
            if jax.process_index() == 0:
                print(f'Wrote {path} and {os.path.join(f.out, SOUP_FILE)}')

    cli.run(run, argv)


if __name__ == '__main__':
    main()
