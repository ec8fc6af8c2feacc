"""What every evaluator shares: config fields, the period, the shared splits/encoders, and
the mapping of a split's labels to the evaluator's classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from alignjax import scoring
from alignjax.data import csv_source
from alignjax.evaluate import embed as embed_lib
from alignjax.validation import parse_as

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


def column_name(key: str) -> str:
    """A `label_key` ('label', 'shape' or 'label_shape') -> its column ('label_label', ...)."""
    return key if key.startswith('label_') else f'label_{key}'


def label_column(key: str, labels: dict[str, Any], where: str) -> str:
    """'label' or 'label_label' -> 'label_label' if the split has it; else a clear error."""
    column = column_name(key)
    if column not in labels:
        names = sorted(k[len('label_') :] for k in labels)
        raise ValueError(
            f'{where}.label_key={key!r}: the split has no label column {column!r}; its labels '
            f'are {names or "none (the source yields no labels)"}.'
        )
    return column


def coerce(value: Any, default: Any, where: str) -> Any:
    """A field's value as the type of its default, when it came as a string.

    The command line gives new evaluator fields as strings (`--config.evals.NAME.cache=false`,
    `...weight_decays=1e-4,1e-2`; `validation.parse_as`); fields whose default is None keep
    strings (class names, templates, data specs) except 'None' and integers
    (`num_examples=500`).
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if default is None:
        if text == 'None':
            return None
        return int(text) if text.lstrip('-').isdigit() else value
    if isinstance(default, (tuple, list)):
        text = text.strip('()[]')  # Items stay strings unless the default's items are not.
        default = tuple(default)
    return parse_as(text, default, where)


def coerce_fields(ev: dict[str, Any], fields: dict[str, Any], where: str) -> dict[str, Any]:
    """`ev` with each string value given as the type of its field's default (`coerce`)."""
    return {k: coerce(v, fields[k], f'{where}.{k}') for k, v in ev.items()}


def normalize_name(name: str) -> str:
    """How class names are compared after an exact match fails: case, runs of spaces and
    underscores (folder names such as 'golden_retriever') do not matter."""
    return ' '.join(str(name).replace('_', ' ').split()).casefold()


def match_names(names: Sequence[str], classnames: Sequence[str]) -> list[int | None]:
    """For each of `names`, the index of the class it names (exact match first, then
    `normalize_name`; the first of equal class names), or None."""
    exact, loose = {}, {}
    for i, c in enumerate(classnames):
        exact.setdefault(c, i)
        loose.setdefault(normalize_name(c), i)
    return [exact.get(n, loose.get(normalize_name(n))) for n in names]


def _shown(values: Sequence[Any], n: int = 5) -> str:
    more = f' and {len(values) - n} more' if len(values) > n else ''
    return f'{list(values[:n])}{more}'


def class_ids(
    labels: np.ndarray,
    source: Any,
    classnames: Sequence[str],
    classnames_from: str,
    where: str,
    column: str,
    data: str,
) -> np.ndarray:
    """The class index (into `classnames`) of each label of `column`.

    A source whose label column holds class *names* says so with a `classnames` list (a
    CSV/JSONL table: its names sorted, the label being the index; a TFDS ClassLabel: the
    dataset's names). Labels are then matched by name, never by position: a table's labels
    must all name a class; a TFDS dataset's are matched when every name matches and are
    taken as class ids when none does (e.g. ImageNet's WordNet ids). Integer labels are
    class ids and must lie in [0, len(classnames)). Anything else is a ValueError naming the
    labels that match no class and where the class names came from (`classnames_from`,
    e.g. "classnames='cifar10'").
    """
    n_cls = len(classnames)
    names = getattr(source, 'classnames', None) if column == 'label_label' else None
    if names is not None:
        index = match_names(names, classnames)
        unmatched = [n for n, i in zip(names, index) if i is None]
        if not unmatched:
            return np.asarray(index, np.int64)[labels]
        # A table's numbers mean nothing without its names; a dataset's ids may still fit.
        if isinstance(source, csv_source.TableSource) or len(unmatched) < len(names):
            raise ValueError(
                f'{where}: the labels {_shown(unmatched)} of {data} (column {column!r}) match '
                f'none of the {n_cls} class names of {classnames_from}'
                f' (e.g. {_shown(list(classnames), 3)}); use the same names (compared '
                f'exactly, then ignoring case, spaces and underscores) or integer labels in '
                f'class-name order.'
            )
    if labels.size and (labels.min() < 0 or labels.max() >= n_cls):
        raise ValueError(
            f'{where}: labels in {column!r} span [{labels.min()}, {labels.max()}] but there '
            f'are {n_cls} class names ({classnames_from}); the list '
            f'must cover every label, in order.'
        )
    return labels


def shown_value(value: Any) -> str:
    """A config value for a message: strings quoted, long lists cut."""
    return repr(value) if isinstance(value, str) else _shown(list(value), 3)


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

    def pictures(self, params, out_dir: str) -> list[str]:
        """PNG files of what this evaluator sees for `params`, written under `out_dir` by
        process 0 (every process calls it: embedding is collective). Call right after
        `run(params)` with the same `params` object: the split's embeddings are reused."""
        return []


def example_images(source: Any, rows: Sequence[int]) -> list[np.ndarray] | None:
    """The images of examples `rows` of `source` as arrays, for pictures; None when the
    source cannot hand them out by index (a stream) or an image does not decode."""
    try:
        return [np.asarray(source[int(r)]['image']) for r in rows]
    except Exception:  # noqa: BLE001 - a picture is never worth failing an evaluation.
        return None


def example_captions(source: Any, rows: Sequence[int]) -> list[str]:
    """The first caption of examples `rows` of `source`."""
    out = []
    for r in rows:
        ex = source[int(r)]
        caps = ex.get('captions')
        out.append(str(caps[0] if caps is not None and len(caps) else ex.get('caption', '')))
    return out


def is_writer() -> bool:
    """Whether this process writes pictures (process 0; the others only embed)."""
    return jax.process_index() == 0
