"""Few-shot classification on frozen features: the baselines a prompt learner is judged by.

For each zero-shot task (class names x templates, as `zero_shot`), each number of shots k
and each seed, k labelled images per class are drawn (`alignjax.data.few_shot.
k_shot_indices`) from a pool of the `train_split` and every method is scored on the
evaluated split. With f the normalised image embedding of a test image, W [C, D] the
normalised class embeddings of the prompts, F [kC, D] the normalised embeddings of the
few-shot images and L [kC, C] their one-hot labels:

  zero-shot     argmax_c  f W^T                                 (no shots; hand-crafted prompts)
  class_mean    argmax_c  f m_c^T,  m_c = normalise(mean of F over class c)   (nearest class mean)
  tip_adapter   argmax_c  s f W^T + alpha exp(-beta (1 - f F^T)) L
                (Tip-Adapter, Zhang et al., ECCV 2022, training-free: a key-value cache of
                the shots added to the zero-shot logits at scale s)
  linear_probe  logistic regression on F (`linear_probe`: L-BFGS, the weight decay chosen
                on a held-out quarter of the shots, then refitted on all of them)

Config (`config.evals.<name>`, type='fewshot'): the zero-shot fields (`data`, `split`,
`tasks` or `classnames` + `label_key`, `templates`), `train_split` and `pool_size` (the
examples the shots are drawn from), `shots`, `seeds`, `tip_alpha`, `tip_beta`,
`tip_scale` (s; Tip-Adapter's 100, CLIP's trained temperature, so that alpha and beta
keep their published meaning; None: the model's own exp(log_scale)), `methods`,
`weight_decays`, `max_iters`.

Metrics, per task (`<g>` = `fewshot/<name>_<task>`, or `fewshot/<name>` with classnames):
`<g>/zeroshot_acc1` and, for each k and method, `<g>/<k>shot/<method>_acc1` (the mean over
seeds) and `<g>/<k>shot/<method>_acc1_std` (their standard deviation, with >= 2 seeds).
A class with fewer than k examples in the pool uses what it has; one with none is an error
asking for a larger pool.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from alignjax.data import few_shot as few_shot_data
from alignjax.evaluate import linear_probe
from alignjax.evaluate.zero_shot import ZeroShotEvaluator

METHODS = ('class_mean', 'tip_adapter', 'linear_probe')


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_mean_logits(query: np.ndarray, shots: np.ndarray, labels: np.ndarray, n_cls: int):
    """[N, C] cosine of each query to each class's renormalised mean shot embedding."""
    means = np.zeros((n_cls, shots.shape[1]), np.float32)
    np.add.at(means, labels, shots)
    return query @ _normalise(means).T


def tip_adapter_logits(
    query: np.ndarray,
    class_embeddings: np.ndarray,
    shots: np.ndarray,
    labels: np.ndarray,
    alpha: float,
    beta: float,
    scale: float,
) -> np.ndarray:
    """[N, C] Tip-Adapter's training-free logits: `scale f W^T + alpha A L`, with the
    affinities `A = exp(-beta (1 - f F^T))` [N, kC] and the one-hot shot labels L."""
    n_cls = class_embeddings.shape[0]
    one_hot = np.eye(n_cls, dtype=np.float32)[labels]
    affinity = np.exp(-beta * (1.0 - query @ shots.T))
    return scale * (query @ class_embeddings.T) + alpha * affinity @ one_hot


def linear_probe_predictions(
    query: np.ndarray, shots: np.ndarray, labels: np.ndarray, n_cls: int, weight_decays,
    max_iters: int,
) -> np.ndarray:  # fmt: skip
    """[N] the class a logistic regression fitted on the shots predicts for each query (the
    weight decay chosen on a held-out quarter of the shots)."""
    wd, _ = linear_probe.select_weight_decay(
        shots, labels, n_cls, list(weight_decays), 0.25, max_iters=max_iters
    )
    p = linear_probe.fit_logistic_regression(shots, labels, [wd], n_cls, max_iters)
    logits = query @ np.asarray(p['w'][0]) + np.asarray(p['b'][0])
    return np.argmax(logits, axis=-1)


class FewShotEvaluator(ZeroShotEvaluator):
    kind = 'fewshot'
    FIELDS: ClassVar[dict] = dict(
        ZeroShotEvaluator.FIELDS,
        train_split='train',
        pool_size=2000,  # the first pool_size examples of train_split; None: the whole split
        shots=(1, 2, 4, 8, 16),
        seeds=(0, 1, 2),
        methods=METHODS,
        tip_alpha=1.0,  # Tip-Adapter's training-free defaults (its ImageNet setting)
        tip_beta=5.5,
        tip_scale=100.0,
        weight_decays=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),
        max_iters=200,
    )

    def __init__(self, *args):
        super().__init__(*args)
        cfg, where = self.cfg, f'evals.{self.name}'
        self.shots = [int(k) for k in _as_list(cfg.shots)]
        self.seeds = [int(s) for s in _as_list(cfg.seeds)]
        self.methods = [str(m) for m in _as_list(cfg.methods)]
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f'{where}.shots must be integers >= 1, got {cfg.shots!r}.')
        if not self.seeds:
            raise ValueError(f'{where}.seeds is empty: give at least one seed.')
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f'{where}.methods: unknown {unknown}; valid: {list(METHODS)}.')
        self.pool = self.ctx.split(
            cfg.data, cfg.train_split, cfg.pool_size, cfg.batch_size, cache=cfg.cache
        )

    def _scale(self, params) -> float:
        if self.cfg.tip_scale is not None:
            return float(self.cfg.tip_scale)
        return float(np.exp(np.asarray(params['log_scale'])))

    def run(self, params) -> dict[str, float]:
        test = self.split.embed(params, with_text=False)
        pool = self.pool.embed(params, with_text=False)
        query, keys = _normalise(test.image), _normalise(pool.image)
        out: dict[str, float] = {}
        for task in self.tasks:
            group = f'fewshot/{self.name}' + (f'_{task}' if task else '')
            y_test = self.class_ids(task, test.labels)
            # `classes`: only the images of the kept classes (-1: another class).
            q = query[y_test >= 0]
            y_test = y_test[y_test >= 0]
            y_pool = self.class_ids(task, pool.labels, self.pool.source)
            n_cls = len(self.tasks[task]['classnames'])
            missing = sorted(set(range(n_cls)) - set(y_pool.tolist()))
            if missing:
                names = [self.tasks[task]['classnames'][c] for c in missing]
                raise ValueError(
                    f'evals.{self.name}: the pool ({self.pool.num_examples} examples of split '
                    f'{self.cfg.train_split!r}) has no example of {names}; raise pool_size.'
                )
            w = _normalise(self.class_embeddings(params, task)[0])
            out[f'{group}/zeroshot_acc1'] = float(np.mean(np.argmax(q @ w.T, -1) == y_test))
            for k in self.shots:
                accs: dict[str, list[float]] = {m: [] for m in self.methods}
                for seed in self.seeds:
                    idx = few_shot_data.k_shot_indices(y_pool, k, seed)
                    f, y = keys[idx], y_pool[idx].astype(np.int32)
                    for m in self.methods:
                        pred = self._predict(m, params, q, w, f, y, n_cls)
                        accs[m].append(float(np.mean(pred == y_test)))
                for m, values in accs.items():
                    out[f'{group}/{k}shot/{m}_acc1'] = float(np.mean(values))
                    if len(values) > 1:
                        out[f'{group}/{k}shot/{m}_acc1_std'] = float(np.std(values, ddof=1))
        return out

    def _predict(self, method, params, query, w, f, y, n_cls) -> np.ndarray:
        cfg = self.cfg
        if method == 'class_mean':
            return np.argmax(class_mean_logits(query, f, y, n_cls), -1)
        if method == 'tip_adapter':
            alpha, beta = float(cfg.tip_alpha), float(cfg.tip_beta)
            logits = tip_adapter_logits(query, w, f, y, alpha, beta, self._scale(params))
            return np.argmax(logits, -1)
        return linear_probe_predictions(query, f, y, n_cls, cfg.weight_decays, int(cfg.max_iters))


def _as_list(value) -> list:
    if isinstance(value, str):
        return [v for v in value.replace(' ', '').split(',') if v]
    if isinstance(value, (int, float)):
        return [value]
    return list(value)
