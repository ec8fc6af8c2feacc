"""grain input pipelines: an infinite, checkpointable train iterator and padded eval batches.

Train stream (``make_train_iterator``)::

    range(N) -> shuffle(seed) -> repeat (reshuffled each epoch)     # the global index stream
             -> [process_index::process_count]                      # this process's share
             -> load example, tokenize, normalise, keep arrays      # (in the grain workers)
             -> batch(global_batch_size // process_count)
             -> [next_batch:] -> prefetch (threads, and worker processes if num_workers > 0)

Global batch ``k`` is elements ``[k*B, (k+1)*B)`` of the global index stream, whatever the
number of processes: process ``p`` holds its elements ``p, p+P, p+2P, ...``. Processes never
read each other's examples, and together they hold each global batch exactly once.

Checkpointing: everything before the prefetch is a pure function of the batch number, so the
iterator's whole state is the number of batches it has returned. ``get_state()`` is a small
JSON-able dict (the same on every process), ``set_state()`` restarts the pipeline at that
batch. The state does not depend on grain's internal state format (which grain only promises
to restore with the same code version), on ``num_workers`` / prefetching, or on the number
of processes, so a run may resume with different worker or host counts and still see
exactly the batches an uninterrupted run would have seen.

absl flags: grain reads its own absl flags when it starts worker processes, which raises
``UnparsedFlagAccessError`` unless flags were parsed (``absl.app.run``); notebooks and pytest
never parse them. With ``num_workers > 0`` the pipeline therefore marks flags as parsed in
this process if nobody has parsed them (keeping their defaults), and in each spawned worker
(so code that reads ``FLAGS.x`` there does not raise either). Workers never see the parent's
command-line values, only flag *defaults*: pass values to transforms explicitly instead of
reading flags inside them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterator

import grain
import numpy as np

from alignjax.data import transforms as T

__all__ = [
    "make_train_iterator",
    "make_eval_batches",
    "TrainIterator",
    "EvalBatches",
    "LoadExample",
]

_STATE_VERSION = 1


# --- worker set-up -----------------------------------------------------------------------
def _ensure_absl_flags_parsed() -> None:
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _init_worker(worker_index: int, worker_count: int) -> None:
    """grain ``worker_init_fn``: runs in each spawned worker before the pipeline unpickles."""
    del worker_index, worker_count
    _ensure_absl_flags_parsed()


def _process_defaults(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # pylint: disable=g-import-not-at-top

        if process_index is None:
            process_index = jax.process_index()
        if process_count is None:
            process_count = jax.process_count()
    process_index, process_count = int(process_index), int(process_count)
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"Need 0 <= process_index < process_count, got process_index={process_index}, "
            f"process_count={process_count}."
        )
    return process_index, process_count


# --- transforms --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LoadExample(grain.transforms.Map):
    """Index -> ``source[index]`` plus ``'index'`` (np.int32): makes the stream index-based."""

    source: Any

    def map(self, index: int) -> dict[str, Any]:
        example = dict(self.source[int(index)])
        example["index"] = np.asarray(index, np.int32)
        return example


def _preprocess(ds: grain.MapDataset, tokenizer, normalize: str, keys) -> grain.MapDataset:
    ds = ds.map(T.TokenizeText(tokenizer))
    ds = ds.map(T.NormalizeImage(normalize))
    ds = ds.map(T.FlattenLabels())
    return ds.map(T.KeepArrays(keys))


def _source_id(source) -> str:
    return f"{source!r} len={len(source)}"


# --- train -------------------------------------------------------------------------------
class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Infinite iterator over this process's slice of each global batch.

    ``next(it)`` -> ``{'image': float32 [b, H, W, 3], 'tokens': int32 [b, L]}`` (plus
    ``label_<attr>`` and ``index`` int32 [b] with ``with_metadata=True``), where
    ``b = global_batch_size // process_count``.

    Checkpointing: ``get_state()`` -> JSON-able dict, ``set_state(state)``;
    ``get_state_json()`` / ``set_state_json(str)`` for the serialized form (store it with
    e.g. ``orbax.checkpoint.args.JsonSave(it.get_state())``). The state is identical on
    all processes. Call ``close()`` (or use ``with``) to stop worker processes.
    """

    def __init__(
        self,
        batches: grain.MapDataset,
        *,
        num_workers: int,
        num_threads: int,
        prefetch_buffer: int,
        fingerprint: dict[str, Any],
    ):
        self._batches = batches
        self._num_workers = int(num_workers)
        self._num_threads = int(num_threads)
        self._prefetch_buffer = int(prefetch_buffer)
        self._fingerprint = dict(fingerprint)
        self._next_batch = 0
        self._it = None
        self.global_batch_size = fingerprint["global_batch_size"]
        self.local_batch_size = fingerprint["global_batch_size"] // fingerprint["process_count"]

    # -- iteration ------------------------------------------------------------------------
    def _start(self):
        ds = self._batches[self._next_batch :]
        threads = self._num_threads if self._prefetch_buffer > 0 else 0
        ds = ds.to_iter_dataset(
            grain.ReadOptions(
                num_threads=threads, prefetch_buffer_size=max(self._prefetch_buffer, 1)
            )
        )
        if self._num_workers > 0:
            # grain reads its absl flags when it starts workers: without absl.app.run
            # (notebooks, pytest) that raises UnparsedFlagAccessError in this process too.
            _ensure_absl_flags_parsed()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self._num_workers,
                    per_worker_buffer_size=max(self._prefetch_buffer, 1),
                ),
                worker_init_fn=_init_worker,
            )
        self._it = iter(ds)

    def start_prefetch(self) -> None:
        """Starts the workers now (e.g. right after restoring, before the model loads)."""
        if self._it is None:
            self._start()
        self._it.start_prefetch()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._start()
        batch = next(self._it)
        self._next_batch += 1
        return batch

    def close(self) -> None:
        if self._it is not None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
            self._it = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass

    # -- checkpointing --------------------------------------------------------------------
    @property
    def next_batch(self) -> int:
        """Number of batches returned so far (= index of the next global batch)."""
        return self._next_batch

    def get_state(self) -> dict[str, Any]:
        """JSON-able state: ``{'version', 'next_batch', 'seed', 'global_batch_size', 'source'}``."""
        return {
            "version": _STATE_VERSION,
            "next_batch": self._next_batch,
            "seed": self._fingerprint["seed"],
            "global_batch_size": self._fingerprint["global_batch_size"],
            "source": self._fingerprint["source"],
        }

    def set_state(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restores ``get_state()``'s output: the next batch is batch ``state['next_batch']``.

        With ``strict`` (default) a state saved by a pipeline with another seed, global batch
        size or source is refused (ValueError naming the differences), since its batch
        numbers would mean different data.
        """
        if not isinstance(state, dict) or "next_batch" not in state:
            raise ValueError(f"Not a TrainIterator state: {state!r}")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"State version {state.get('version')} != {_STATE_VERSION}.")
        if strict:
            diffs = {
                k: (state.get(k), self._fingerprint[k])
                for k in ("seed", "global_batch_size", "source")
                if state.get(k) != self._fingerprint[k]
            }
            if diffs:
                raise ValueError(
                    "Data iterator state does not match this pipeline (saved, current): "
                    f"{diffs}. Restore with the same seed, global batch size and source, or "
                    "pass strict=False to take only the batch number."
                )
        next_batch = int(state["next_batch"])
        if next_batch < 0:
            raise ValueError(f"next_batch must be >= 0, got {next_batch}.")
        self.close()
        self._next_batch = next_batch

    def get_state_json(self) -> str:
        return json.dumps(self.get_state(), sort_keys=True)

    def set_state_json(self, state: str | bytes, strict: bool = True) -> None:
        self.set_state(json.loads(state), strict=strict)


def make_train_iterator(
    source,
    *,
    tokenizer,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    prefetch_buffer: int = 2,
    normalize: str = "minus_one_one",
    num_threads: int = 1,
    with_metadata: bool = False,
) -> TrainIterator:
    """Infinite, shuffled, checkpointable iterator over this process's batch slices.

    Args:
      source: random-access source (``__len__``, ``__getitem__`` -> dict with ``'image'``
        uint8 [H, W, 3] and ``'caption'`` str), e.g. ``get_source('synthetic:shapes', 'train')``.
      tokenizer: callable ``texts -> int32 [N, L]`` (runs in the workers; must pickle).
      global_batch_size: examples per step over all processes.
      seed: shuffle seed in [0, 2**32); each epoch is shuffled differently.
      process_index, process_count: this process and the number of processes; default
        ``jax.process_index()`` / ``jax.process_count()``.
      num_workers: grain worker processes (0: load in this process, with threads).
      prefetch_buffer: batches prefetched (per worker when num_workers > 0).
      normalize: image normalisation, one of ``transforms.NORMALIZATIONS``.
      num_threads: loader threads per process (0 disables threaded prefetch).
      with_metadata: also yield ``label_<attr>`` and ``index`` (source index) int32 [b].

    Returns:
      A ``TrainIterator`` yielding ``{'image': float32 [b, H, W, 3], 'tokens': int32 [b, L]}``
      with ``b = global_batch_size // process_count``.
    """
    process_index, process_count = _process_defaults(process_index, process_count)
    global_batch_size = int(global_batch_size)
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count} (each process loads "
            f"global_batch_size / process_count examples per step)."
        )
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}.")
    if num_workers < 0 or prefetch_buffer < 0 or num_threads < 0:
        raise ValueError(
            f"num_workers={num_workers}, prefetch_buffer={prefetch_buffer} and "
            f"num_threads={num_threads} must be >= 0."
        )
    T.normalize_image(np.zeros((1, 1, 3), np.uint8), normalize)  # validates `normalize`
    if len(source) == 0:
        raise ValueError(f"Source {source!r} is empty.")
    local_batch_size = global_batch_size // process_count
    keys = None if with_metadata else ("image", "tokens")

    ds = grain.MapDataset.range(len(source)).shuffle(seed=int(seed)).repeat(None)
    ds = ds[process_index::process_count]
    ds = ds.map(LoadExample(source))
    ds = _preprocess(ds, tokenizer, normalize, keys)
    ds = ds.batch(local_batch_size, drop_remainder=True)
    fingerprint = dict(
        seed=int(seed),
        global_batch_size=global_batch_size,
        source=_source_id(source),
        process_count=process_count,
    )
    return TrainIterator(
        ds,
        num_workers=num_workers,
        num_threads=num_threads,
        prefetch_buffer=prefetch_buffer,
        fingerprint=fingerprint,
    )


# --- eval --------------------------------------------------------------------------------
class EvalBatches:
    """Finite, re-iterable sequence of padded eval batches (see ``make_eval_batches``)."""

    def __init__(
        self,
        source,
        *,
        tokenizer,
        batch_size,
        num_examples,
        normalize,
        process_index,
        process_count,
        num_threads,
    ):
        self.source = source
        self.batch_size = int(batch_size)
        self.num_examples = int(num_examples)
        self.process_index = process_index
        self.process_count = process_count
        self._num_threads = int(num_threads)
        self._tokenizer = tokenizer
        self._normalize = normalize
        ds = grain.MapDataset.range(self.num_examples)[process_index::process_count]
        self.num_local_examples = len(ds)
        self._examples = _preprocess(ds.map(LoadExample(source)), tokenizer, normalize, None)
        per_process = math.ceil(self.num_examples / process_count)
        self.num_batches = math.ceil(per_process / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def _pad(self, batch: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        out = {}
        for k, v in batch.items():
            v = np.asarray(v)
            pad = np.zeros((self.batch_size - n, *v.shape[1:]), v.dtype)
            out[k] = np.concatenate([v[:n], pad], 0)
        mask = np.zeros((self.batch_size,), bool)
        mask[:n] = True
        out["mask"] = mask
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        template = None
        emitted = 0
        if self.num_local_examples:
            ds = self._examples.batch(self.batch_size, drop_remainder=False)
            ds = ds.to_iter_dataset(
                grain.ReadOptions(num_threads=self._num_threads, prefetch_buffer_size=2)
            )
            for batch in ds:
                n = len(batch["image"])
                template = batch
                emitted += 1
                yield self._pad(batch, n)
        if emitted < self.num_batches:
            if template is None:  # this process has no examples: shapes from example 0
                ds = grain.MapDataset.range(1).map(LoadExample(self.source))
                example = _preprocess(ds, self._tokenizer, self._normalize, None)[0]
                template = {k: np.asarray(v)[None] for k, v in example.items()}
            for _ in range(self.num_batches - emitted):
                yield self._pad(template, 0)


def make_eval_batches(
    source,
    *,
    tokenizer,
    batch_size: int,
    num_examples: int | None = None,
    normalize: str = "minus_one_one",
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 1,
) -> EvalBatches:
    """Finite eval batches over the first ``num_examples`` examples (default: all), in order.

    Each batch: ``image`` float32 [B, H, W, 3], ``tokens`` int32 [B, L], ``label_<attr>``
    int32 [B] (when the source has labels), ``index`` int32 [B] (source index) and ``mask``
    bool [B]. The last batch is padded with zeros to ``batch_size``; ``mask`` is False on
    padding. With several processes, process ``p`` gets examples ``p::process_count`` and
    every process yields the same number of batches (``len(batches)``), padding as needed,
    so the batches can be assembled into global arrays.

    The returned ``EvalBatches`` is re-iterable and has ``len()`` (batches per process).
    """
    process_index, process_count = _process_defaults(process_index, process_count)
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    T.normalize_image(np.zeros((1, 1, 3), np.uint8), normalize)
    n = len(source) if num_examples is None else min(int(num_examples), len(source))
    if n <= 0:
        raise ValueError(
            f"No examples to evaluate (num_examples={num_examples}, len={len(source)})."
        )
    return EvalBatches(
        source,
        tokenizer=tokenizer,
        batch_size=batch_size,
        num_examples=n,
        normalize=normalize,
        process_index=process_index,
        process_count=process_count,
        num_threads=num_threads,
    )
