"""Emergent retrieval between the run's modality and another model's: never-trained pairs.

A tower bound to a frozen text tower (LanguageBind; Zhu et al., ICLR 2024) shares that
tower's embedding space with every other tower bound to it, e.g. the image tower the text
tower was trained with. Pairs of the two bound modalities were never seen in training, so
their retrieval is *emergent*: it measures how well the binding put both into one space.

Given `data` (the run's own modality, embedded by the run's image tower `f`) and
`anchor_data` (the same scenes in the anchor's modality, embedded by the anchor's image
tower `g` from `anchor`: a workdir, checkpoint or export), with example i of one the same
scene as example i of the other:

  q_i = f(x_i),  a_i = g(y_i)                                        [N, D] each
  to_anchor_recall@k   = mean_i [ rank of a_i among {a_j} by <q_i, a_j> < k ]
  from_anchor_recall@k = mean_i [ rank of q_i among {q_j} by <a_i, q_j> < k ]
  match@1/<attr>       = mean_i [ attr(argmax_j <q_i, a_j>) == attr(i) ]   (to the anchor)
  chance/recall@k = k / N;  chance/match@1/<attr> = sum_c p_c^2 (p_c: the attribute's
                                                  class frequencies in the split)

Ranks come from `alignjax.evaluate.ranks.positive_ranks` (on device, the gallery sharded,
ties to the lower index), so match@1 is the recall@1 of "same attribute value" groups: no
[N, N] matrix on the host. Scenes that share every attribute look alike, so recall@1 is
bounded by near-duplicates (as the shapes data's text retrieval is); match@1 says which
attributes the two spaces agree on.

The anchor is read once (`alignjax.export.read` / `read_run`, LoRA factors merged), its
parameters replicated on the run's mesh only while its images are embedded (at the first
evaluation), then dropped: the anchor's embeddings [N, D] stay on the host. Its images are
preprocessed as the anchor was trained (its recorded size and normalisation). Example i of
both sources must be the same scene: the evaluator checks that their lengths and every
shared label column agree.

Config (`config.evals.<name>`, type='cross_modal'): `data`, `split`, `num_examples`,
`batch_size` as every evaluator (for the run's modality); `anchor` (required) and
`anchor_data` (required, read with the same split and number of examples); `ks`;
`attributes`: label keys for match@1 (None: every label column the two share).
Metrics: `cross_modal/<name>/{to_anchor_recall@k, from_anchor_recall@k, match@1/<attr>,
chance/...}`.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import numpy as np

from alignjax import export, models, parallel
from alignjax.evaluate import base, embed, ranks


def normalize_name(preprocess: dict, where: str) -> str:
    """The `data.normalize` name of an export's recorded mean/std (one clear error if none)."""
    mean, std = tuple(preprocess['mean']), tuple(preprocess['std'])
    for name, (m, s) in export.NORMALIZE_STATS.items():
        if np.allclose(m, mean) and np.allclose(s, std):
            return name
    raise ValueError(
        f'{where}: its normalisation mean={list(mean)} std={list(std)} is none of the '
        f"pipeline's {sorted(export.NORMALIZE_STATS)}; re-export it with one of them."
    )


def read_anchor(path: str, where: str) -> export.Exported:
    """The anchor's weights, model config and preprocessing, from a run or an export."""
    if export.is_export(path):
        anchor = export.read(path)
    elif export.is_run(path):
        anchor = export.read_run(path)
    else:
        raise ValueError(
            f'{where}.anchor={path!r} is neither a training run (workdir or checkpoint) nor an '
            'export (python -m alignjax.export).'
        )
    if anchor.preprocess is None:
        raise ValueError(
            f'{where}.anchor: {anchor.path} records no preprocessing, so its images cannot be '
            'prepared as it was trained; re-export it with python -m alignjax.export.'
        )
    return anchor


class CrossModalEvaluator(base.Evaluator):
    """Metrics: `cross_modal/<name>/...` (module docstring)."""

    kind = 'cross_modal'
    FIELDS: ClassVar[dict] = dict(
        base.COMMON_FIELDS,
        anchor=None,  # run / checkpoint / export whose image tower embeds `anchor_data`
        anchor_data=None,  # the same scenes in the anchor's modality
        ks=(1, 5, 10),
        attributes=None,  # label keys for match@1; None: every shared label column
        chunk_size=1024,
    )

    def __init__(self, *args):
        super().__init__(*args)
        cfg, where = self.cfg, f'evals.{self.name}'
        for field in ('anchor', 'anchor_data'):
            if not cfg[field]:
                raise ValueError(
                    f'{where}.{field} is not set: a cross_modal evaluator needs the anchor model '
                    "(anchor=PATH of a run or export) and the anchor's view of the same scenes "
                    "(anchor_data=SPEC, e.g. 'synthetic:shapes' for a depth run's photos)."
                )
        self.split = self.ctx.split(cfg.data, cfg.split, cfg.num_examples, cfg.batch_size, 1)
        self.anchor = read_anchor(cfg.anchor, where)  # Read now: a bad path fails at build.
        self._anchor_emb: embed.Embeddings | None = None

    def anchor_embeddings(self) -> embed.Embeddings:
        """The anchor's embeddings of `anchor_data` (computed once, then the weights dropped)."""
        if self._anchor_emb is None:
            cfg, ctx, anchor = self.cfg, self.ctx, self.anchor
            model = models.build(anchor.model_config)
            split = embed.EvalSplit(
                cfg.anchor_data,
                cfg.split,
                model=model,
                mesh=ctx.mesh,
                tokenizer=ctx.tokenizer,  # Unused (images only) but the reader tokenises.
                image_size=int(anchor.preprocess['size']),
                normalize=normalize_name(anchor.preprocess, f'evals.{self.name}.anchor'),
                seed=ctx.config.seed,
                batch_size=cfg.batch_size,
                num_examples=cfg.num_examples,
                max_captions=1,
                cache=False,
            )
            # Every process holds the whole host copy: each device takes it replicated.
            rep = parallel.replicated(ctx.mesh)
            params = jax.tree.map(lambda x: embed.global_array(np.asarray(x), rep), anchor.params)
            self._anchor_emb = split.embed(params, with_text=False)
            self.anchor = None  # The host copy of the weights is no longer needed.
        return self._anchor_emb

    def _check_pairs(self, emb: embed.Embeddings, anc: embed.Embeddings) -> list[str]:
        """The shared label columns, after checking that row i is the same scene in both."""
        where = f'evals.{self.name}'
        n, m = emb.image.shape[0], anc.image.shape[0]
        if n != m:
            raise ValueError(
                f'{where}: data gives {n} examples but anchor_data gives {m}; example i of both '
                'must be the same scene (same source, seed and split, another rendering).'
            )
        shared = sorted(set(emb.labels) & set(anc.labels))
        for col in shared:
            bad = np.flatnonzero(emb.labels[col] != anc.labels[col])
            if bad.size:
                raise ValueError(
                    f'{where}: {col} differs between data and anchor_data at {bad.size} of {n} '
                    f'examples (first: {bad[0]}); they are not the same scenes in the same order.'
                )
        if self.cfg.attributes is None:
            return shared
        cols = [base.column_name(a) for a in self.cfg.attributes]
        missing = [c for c in cols if c not in shared]
        if missing:
            raise ValueError(
                f'{where}.attributes: {missing} are not label columns of both sources '
                f'(shared: {shared}).'
            )
        return cols

    def run(self, params) -> dict[str, float]:
        anc = self.anchor_embeddings()
        emb = self.split.embed(params, with_text=False)
        columns = self._check_pairs(emb, anc)
        q, a = emb.image, anc.image
        n, ids = q.shape[0], np.arange(q.shape[0])
        mesh, chunk = self.ctx.mesh, self.cfg.chunk_size
        to_anchor = ranks.positive_ranks(q, ids, a, ids, mesh, chunk)
        from_anchor = ranks.positive_ranks(a, ids, q, ids, mesh, chunk)
        group = f'cross_modal/{self.name}'
        out = {}
        for k in self.cfg.ks:
            out[f'{group}/to_anchor_recall@{k}'] = float((to_anchor < k).mean())
            out[f'{group}/from_anchor_recall@{k}'] = float((from_anchor < k).mean())
            out[f'{group}/chance/recall@{k}'] = min(k, n) / n
        for col in columns:
            labels = emb.labels[col]
            attr = col[len('label_') :]
            same = ranks.positive_ranks(q, labels, a, labels, mesh, chunk)
            out[f'{group}/match@1/{attr}'] = float((same == 0).mean())
            freq = np.bincount(labels) / n
            out[f'{group}/chance/match@1/{attr}'] = float((freq**2).sum())
        return out
