"""Evaluators run inside training (each at its own period) and at the end.

An evaluator is configured under `config.evals.<name>`:

  config.evals.shapes = dict(
      type='zeroshot',            # or 'retrieval'
      data='synthetic:shapes',    # source spec (alignjax.data.get_source)
      split='test',
      num_examples=1000,          # None: the whole split
      batch_size=250,             # rounded up to a multiple of the data-parallel size
      every_steps=0,              # 0: config.eval_every_steps
  )

Embeddings are computed on the mesh (batch sharded over ('data', 'fsdp'); each process
feeds only its slice) and gathered to every host for the metrics.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from alignjax import config as config_lib
from alignjax import data as data_lib
from alignjax import parallel
from alignjax.evaluate import metrics as metrics_lib

ConfigDict = ml_collections.ConfigDict

_COMMON = dict(
    type=None,
    data='synthetic:shapes',
    split='test',
    num_examples=None,
    batch_size=256,
    every_steps=0,
)
_FIELDS = {
    'zeroshot': dict(_COMMON, tasks=None),  # tasks: names from source.zero_shot_tasks().
    'retrieval': dict(_COMMON, ks=(1, 5, 10)),
}


class Embedder:
    """Jitted, sharded `encode_image` / `encode_text` over host arrays of any length."""

    def __init__(self, model: nn.Module, mesh: jax.sharding.Mesh, batch_size: int):
        self.mesh = mesh
        shards = parallel.batch_size_per_shard(mesh) * jax.process_count()
        self.batch_size = int(math.ceil(batch_size / shards) * shards)
        out_sh = parallel.batch_sharding(mesh)

        def encode(method):
            def fn(params, x):
                return model.apply({'params': params}, x, method=method)

            return jax.jit(fn, out_shardings=out_sh)

        self._image = encode(model.encode_image)
        self._text = encode(model.encode_text)

    def _run(self, fn: Callable, params, x: np.ndarray) -> np.ndarray:
        n, bs, out = x.shape[0], self.batch_size, []
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(parallel.LOGICAL_RULES):
            for start in range(0, n, bs):
                chunk = x[start : start + bs]
                valid = chunk.shape[0]
                if valid < bs:  # Pad the last chunk; padded rows are dropped below.
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - valid, axis=0)])
                local = parallel.process_slice(chunk)
                batch = parallel.make_global_batch({'x': local}, self.mesh)['x']
                z = fn(params, batch)
                z = multihost_utils.process_allgather(z, tiled=True)
                out.append(np.asarray(z)[:valid])
        return np.concatenate(out, axis=0)

    def images(self, params, images: np.ndarray) -> np.ndarray:
        return self._run(self._image, params, images)

    def texts(self, params, tokens: np.ndarray) -> np.ndarray:
        return self._run(self._text, params, tokens)


def _load_split(cfg: ConfigDict, image_size: int, tokenizer, normalize: str, seed: int):
    """All evaluation examples as host arrays: image, tokens and label_* keys."""
    source = data_lib.get_source(cfg.data, cfg.split, image_size=image_size, seed=seed)
    # Every process holds the whole (small) split; `Embedder` feeds each its slice.
    batches = list(
        data_lib.make_eval_batches(
            source,
            tokenizer=tokenizer,
            batch_size=256,
            num_examples=cfg.num_examples,
            normalize=normalize,
            process_index=0,
            process_count=1,
        )
    )
    keep = np.concatenate([b['mask'] for b in batches])
    arrays = {k: np.concatenate([b[k] for b in batches])[keep] for k in batches[0] if k != 'mask'}
    return source, arrays


class _Evaluator:
    kind = ''

    def __init__(self, name: str, cfg: ConfigDict, config: ConfigDict, tokenizer, embedder, split):
        """`embedder` and `split` ((source, arrays) from `_load_split`) may be shared."""
        self.name = name
        self.cfg = cfg
        self.every_steps = cfg.every_steps or config.eval_every_steps
        self.tokenizer = tokenizer
        self.embedder = embedder
        self.source, self.arrays = split

    def due(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0


class ZeroShotEvaluator(_Evaluator):
    """Zero-shot classification: class names x templates -> class embeddings -> argmax.

    A class embedding is the mean of its L2-normalised template embeddings, re-normalised
    (Radford et al. 2021). Metrics: `zeroshot/<name>_<task>/{acc1,acc5,mean_per_class_recall}`.
    """

    kind = 'zeroshot'

    def __init__(self, *args):
        super().__init__(*args)
        tasks = self.source.zero_shot_tasks()
        wanted = self.cfg.tasks or list(tasks)
        for t in wanted:
            config_lib.check_choice(t, list(tasks), f'evals.{self.name}.tasks')
        self.tasks = {t: tasks[t] for t in wanted}
        # Tokenised prompts: [C * T, L] per task.
        self.prompts = {
            t: self.tokenizer(
                [tmpl.format(c) for c in task['classnames'] for tmpl in task['templates']]
            )
            for t, task in self.tasks.items()
        }

    def run(self, params) -> dict[str, float]:
        zimg = self.embedder.images(params, self.arrays['image'])
        out = {}
        for t, task in self.tasks.items():
            n_cls, n_tmpl = len(task['classnames']), len(task['templates'])
            ztxt = self.embedder.texts(params, self.prompts[t]).reshape(n_cls, n_tmpl, -1)
            cls = ztxt.mean(axis=1)
            cls /= np.linalg.norm(cls, axis=-1, keepdims=True)
            labels = self.arrays[task['label_key']]
            for k, v in metrics_lib.zero_shot_metrics(zimg @ cls.T, labels).items():
                out[f'zeroshot/{self.name}_{t}/{k}'] = v
        return out


class RetrievalEvaluator(_Evaluator):
    """Image <-> text retrieval recall@k over held-out (image, caption) pairs.

    Metrics: `retrieval/<name>/{image,text}_retrieval_recall@k` (CLIP_benchmark's names:
    image retrieval = text query -> images; text retrieval = image query -> captions).
    """

    kind = 'retrieval'

    def run(self, params) -> dict[str, float]:
        zimg = self.embedder.images(params, self.arrays['image'])
        ztxt = self.embedder.texts(params, self.arrays['tokens'])
        img_of_text = np.arange(ztxt.shape[0])
        return {
            f'retrieval/{self.name}/{k}': v
            for k, v in metrics_lib.retrieval_metrics(
                zimg @ ztxt.T, img_of_text, self.cfg.ks
            ).items()
        }


EVALUATORS = {cls.kind: cls for cls in (ZeroShotEvaluator, RetrievalEvaluator)}


def build_evaluators(config: ConfigDict, model: nn.Module, tokenizer, mesh) -> list[Any]:
    """One evaluator per entry of `config.evals`, fields validated.

    Evaluators reading the same split share its host arrays (rendered/decoded once), and
    those with the same batch size share one compiled `Embedder`.
    """
    out, splits, embedders = [], {}, {}
    for name, ev in config.evals.items():
        config_lib.check_choice(ev.get('type'), list(EVALUATORS), f'evals.{name}.type')
        fields = _FIELDS[ev['type']]
        config_lib.check_fields(ev, fields, f'evals.{name}')
        cfg = ConfigDict(dict(fields, **ev.to_dict()))
        split_key = (cfg.data, cfg.split, cfg.num_examples)
        if split_key not in splits:
            splits[split_key] = _load_split(
                cfg, config.data.image_size, tokenizer, config.data.normalize, config.seed
            )
        if cfg.batch_size not in embedders:
            embedders[cfg.batch_size] = Embedder(model, mesh, cfg.batch_size)
        out.append(
            EVALUATORS[cfg.type](
                name, cfg, config, tokenizer, embedders[cfg.batch_size], splits[split_key]
            )
        )
    return out
