"""What every evaluator shares: config fields, the period, and the shared splits/encoders."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import ml_collections

from alignjax import scoring
from alignjax.evaluate import embed as embed_lib

ConfigDict = ml_collections.ConfigDict

# Fields every evaluator accepts (`config.evals.<name>.<field>`).
COMMON_FIELDS = {
    'type': None,
    'data': 'synthetic:shapes',  # source spec (alignjax.data.get_source)
    'split': 'test',
    'num_examples': None,  # None: the whole split
    'batch_size': 256,  # global; rounded up to a multiple of the data-parallel size
    'every_steps': 0,  # 0 or None: config.eval_every_steps
    'cache': True,  # keep this process's decoded shard in memory between evaluations
}


class Context:
    """Builds and shares `EvalSplit`s and `Embedder`s between the evaluators of a run.

    Evaluators reading the same split share its decoded shard and, within one evaluation
    round (the same `params` object), its embeddings. `scorers` are the similarities the
    zero-shot and retrieval evaluators rank with (`alignjax.scoring`).
    """

    def __init__(
        self,
        config: ConfigDict,
        model: nn.Module,
        tokenizer,
        mesh: jax.sharding.Mesh,
        scorers=(scoring.GLOBAL,),
    ):
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.scorers = scoring.check_scorers(scorers)
        self._splits: dict[tuple, embed_lib.EvalSplit] = {}
        self._embedders: dict[int, embed_lib.Embedder] = {}

    def split(
        self,
        data: str,
        split: str,
        num_examples: int | None,
        batch_size: int,
        max_captions: int = 5,
        cache: bool = True,
    ) -> embed_lib.EvalSplit:
        key = (data, split, num_examples, batch_size, max_captions, cache)
        if key not in self._splits:
            self._splits[key] = embed_lib.EvalSplit(
                data,
                split,
                model=self.model,
                mesh=self.mesh,
                tokenizer=self.tokenizer,
                image_size=self.config.data.image_size,
                normalize=self.config.data.normalize,
                seed=self.config.seed,
                batch_size=batch_size,
                num_examples=num_examples,
                max_captions=max_captions,
                cache=cache,
            )
        return self._splits[key]

    def embedder(self, batch_size: int) -> embed_lib.Embedder:
        if batch_size not in self._embedders:
            self._embedders[batch_size] = embed_lib.Embedder(self.model, self.mesh, batch_size)
        return self._embedders[batch_size]


def query_chunk(chunk_size: int, scorer: scoring.Scorer) -> int:
    """Queries per device call: the evaluator's `chunk_size`, capped by the scorer's."""
    return min(chunk_size, scorer.query_chunk or chunk_size)


def label_column(key: str, labels: dict[str, Any], where: str) -> str:
    """'label' or 'label_label' -> 'label_label' if the split has it; else a clear error."""
    column = key if key.startswith('label_') else f'label_{key}'
    if column not in labels:
        names = sorted(k[len('label_') :] for k in labels)
        raise ValueError(
            f'{where}.label_key={key!r}: the split has no label column {column!r}; its labels '
            f'are {names or "none (the source yields no labels)"}.'
        )
    return column


class Evaluator:
    """Base: `due(step)` says whether to run at `step`; `run(params)` returns metrics."""

    kind = ''
    FIELDS: ClassVar[dict[str, Any]] = COMMON_FIELDS

    def __init__(self, name: str, cfg: ConfigDict, config: ConfigDict, ctx: Context):
        self.name = name
        self.cfg = cfg
        self.ctx = ctx
        self.every_steps = cfg.every_steps or config.eval_every_steps

    def due(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def run(self, params) -> dict[str, float]:
        raise NotImplementedError
