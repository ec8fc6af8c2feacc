"""grain input pipelines: an infinite, checkpointable train iterator and padded eval batches.

Random-access sources (synthetic, ``csv:``, ``jsonl:``, ``tfds:``, mixtures of them)::

    range(N) -> shuffle(seed) -> repeat (reshuffled each epoch)     # the global index stream
             -> [process_index::process_count]                      # this process's share
             -> load + decode (bad example: replaced, reason counted)   (in the grain workers)
             -> caption choice/cleanup -> extra_transforms -> crop -> tokenize -> normalise
             -> batch(global_batch_size // process_count)
             -> [next_batch:] -> prefetch (threads, and worker processes if num_workers > 0)

Global batch ``k`` is elements ``[k*B, (k+1)*B)`` of the global index stream, whatever the
number of processes: process ``p`` holds its elements ``p, p+P, p+2P, ...``. Processes never
read each other's examples, and together they hold each global batch exactly once.

Streams (``wds:``): see ``alignjax.data.wds``. The global stream interleaves the source's
``V`` streams (position ``n``: stream ``n % V``, its position ``n // V``); process ``p`` takes
positions ``p, p+P, ...`` of each global batch as above, and its grain worker ``w`` of ``W``
every ``W``-th of them (grain interleaves the workers' elements; batching follows in the
main process). Every position is again a pure function of the batch number.

Checkpointing: everything before the prefetch is a pure function of the batch number, so the
iterator's position is the number of batches it has returned. ``get_state()`` is a small
JSON-able dict, ``set_state()`` restarts the pipeline at that batch. The position does not
depend on grain's internal state format (which grain only promises to restore with the same
code version), on ``num_workers`` / prefetching, or on the number of processes: a run can
resume on another number of hosts or workers (an elastic resume; same global batch size)
without repeating or skipping an example. The state also holds this process's skip counts
(``skipped_counts()``), so ``data/skipped`` carries over a resume; ``process_state`` picks a
process's state out of every process's saved one, also for another process count.

Bad data: a source raises ``decode.SkipExample(reason)`` (or any exception) for an unusable
example. Random-access pipelines then load a replacement index drawn from
``(seed, stream position, attempt)``, stream pipelines the next sample of the same shuffle
window, so batches stay full and the replacement is itself a pure function of the position:
resuming stays exact. Each example carries its skip counts, ``TrainIterator`` sums them
(``skipped_counts()``). ``max_skip_attempts`` unusable examples in a row mean the source
yields nothing usable: a NoUsableDataError (a ValueError) names the source and the reasons.

Randomness (random-resized crop, caption choice, ``extra_transforms``) draws from
``np.random.default_rng([seed, position...])``: deterministic given the seed and the global
example position, so the resumed position stays exact with any worker count.

absl flags: grain reads its own absl flags when it starts worker processes, which raises
``UnparsedFlagAccessError`` unless flags were parsed (``absl.app.run``); notebooks and pytest
never parse them. With ``num_workers > 0`` the pipeline therefore marks flags as parsed in
this process if nobody has parsed them (keeping their defaults), and in each spawned worker
(so code that reads ``FLAGS.x`` there does not raise either). Workers never see the parent's
command-line values, only flag *defaults*: pass values to transforms explicitly instead of
reading flags inside them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from alignjax.data import decode as D
from alignjax.data import transforms as T

__all__ = [
    "EvalBatches",
    "ExampleProcessor",
    "LoadExample",
    "TrainIterator",
    "make_eval_batches",
    "make_train_iterator",
    "process_state",
]

log = logging.getLogger(__name__)

_STATE_VERSION = 1
_SKIP_KEY = "_skipped"  # int32 [len(SKIP_REASONS)] per example; summed by TrainIterator
_VALID_KEY = "_valid"  # eval: False for an unusable example (its row is masked out)


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


def _source_id(source) -> str:
    if getattr(source, "is_stream", False):
        return repr(source)
    return f"{source!r} len={len(source)}"


def _where(source, index: int) -> str:
    """What to name for a bad example in the log: its file when the source knows it."""
    path = getattr(source, "image_path", None)
    if path is None:
        return f"{source!r}[{index}]"
    return path(index) or f"{source!r} row {index}"


def _preprocess_of(source) -> T.Preprocess:
    pre = getattr(source, "preprocess", None)
    return pre if isinstance(pre, T.Preprocess) else T.Preprocess()


def _apply(transform, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if hasattr(transform, "random_map"):
        return transform.random_map(example, rng)
    if hasattr(transform, "np_random_map"):
        return transform.np_random_map(example, rng)
    if hasattr(transform, "map"):
        return transform.map(example)
    if callable(transform):
        return transform(example)
    raise TypeError(f"extra transform {transform!r} is not callable and has no map/random_map.")


def _is_image(key: str, value: Any) -> bool:
    return (
        key.startswith("image")
        and isinstance(value, np.ndarray)
        and value.dtype == np.uint8
        and value.ndim == 3
        and value.shape[-1] == 3
    )


# --- per-example processing --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExampleProcessor:
    """Everything after loading: caption choice and cleanup, extra transforms, crop, tokenize,
    normalise, labels, array filtering. Picklable (it travels to the grain workers).

    ``prepare`` (may raise SkipExample) runs inside the skip/replace loop; ``finish`` after.
    """

    preprocess: T.Preprocess
    train: bool
    seed: int
    tokenizer: Any
    normalize: str = "minus_one_one"
    extra_transforms: tuple = ()
    with_metadata: bool = False

    def rng(self, key: Sequence[int], stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, *(int(k) for k in key)])

    def prepare(self, example: dict[str, Any], key: Sequence[int]) -> dict[str, Any]:
        """Chooses and cleans the caption; raises SkipExample for unusable captions.

        ``key``: the example's global position (seeds the caption choice)."""
        pre = self.preprocess
        ex = dict(example)
        clean = D.clean_caption if pre.clean_captions else (lambda c: str(c))
        caps = ex.get("captions")
        if caps is not None and len(caps):
            caps = [c for c in (clean(c) for c in caps) if c]
            if not caps:
                raise D.SkipExample("empty_caption")
            pick = 0
            if self.train and pre.caption_choice == "random" and len(caps) > 1:
                pick = int(self.rng(key).integers(len(caps)))
            ex["captions"], ex["caption"] = caps, caps[pick]
        elif "caption" in ex and ex["caption"] is not None:
            ex["caption"] = clean(ex["caption"])
        else:
            raise D.SkipExample("missing_caption")
        D.check_caption(ex["caption"], pre.max_caption_chars)
        if "image" not in ex or ex["image"] is None:
            raise D.SkipExample("missing_image")
        return ex

    def finish(self, ex: dict[str, Any], key: Sequence[int]) -> dict[str, Any]:
        pre = self.preprocess
        if self.extra_transforms:
            ex["image"] = np.asarray(ex["image"], np.uint8)
            rng = self.rng(key, stream=1)
            for t in self.extra_transforms:
                ex = _apply(t, ex, rng)
        crop = pre.train_crop if self.train else pre.eval_crop
        ex["image"] = T.crop_resize(
            ex["image"],
            crop,
            pre.image_size,
            self.rng(key, stream=2) if crop == "random_resized" else None,
            pre.scale,
            pre.ratio,
            pre.interpolation,
        )
        out = dict(ex)
        out["tokens"] = self.tokenizer([ex["caption"]])[0]
        for k, v in ex.items():
            if k != "image" and _is_image(k, v):
                size = pre.image_size
                if size is not None and v.shape[:2] != (size, size):
                    v = T.crop_resize(v, "center", size, interpolation=pre.interpolation)
                out[k] = v
        for k, v in list(out.items()):
            if _is_image(k, v):
                out[k] = T.normalize_image(v, self.normalize)
        out = T.FlattenLabels().map(out)
        keep = {}
        for k, v in out.items():
            if not self.with_metadata and (k in ("index", "source_id") or k.startswith("label_")):
                continue
            if isinstance(v, (str, bytes, dict, list, tuple)) or v is None:
                continue
            arr = np.asarray(v)
            if arr.dtype.kind in "biuf":
                keep[k] = arr
        return keep


def _mix(*values: int) -> int:
    """A 63-bit hash of integers (splitmix64 steps), for replacement indices."""
    h = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for v in values:
        h = (h ^ (int(v) & mask)) * 0xBF58476D1CE4E5B9 & mask
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & mask
        h ^= h >> 29
    return h >> 1


@dataclasses.dataclass(frozen=True)
class LoadExample(grain.transforms.Map):
    """Index -> ``source[index]`` plus ``'index'`` (np.int32): makes the stream index-based."""

    source: Any

    def map(self, index: int) -> dict[str, Any]:
        example = dict(self.source[int(index)])
        example["index"] = np.asarray(index, np.int32)
        return example


@dataclasses.dataclass(frozen=True)
class _LoadAndProcess(grain.transforms.MapWithIndex):
    """(local position j, source index) -> processed example, replacing unusable ones.

    The global stream position is ``j * stride + offset``; replacements and randomness are
    functions of it. In eval mode (``max_attempts == 0``) an unusable example becomes a
    zero row with ``_valid = False`` instead.
    """

    source: Any
    processor: ExampleProcessor
    stride: int = 1
    offset: int = 0
    max_attempts: int = 32
    template: Any = None  # eval: {key: zeros} used for unusable examples

    def _load(self, index: int, pos: int):
        load = getattr(self.source, "load_example", None)
        if load is not None and not self.processor.extra_transforms:
            ex = dict(load(index, pil=True))  # PIL straight into the crop: no numpy round trip
        else:
            ex = dict(self.source[index])
        ex["index"] = np.asarray(index, np.int32)
        return self.processor.prepare(ex, (pos,))

    def map_with_index(self, j: int, index: int) -> dict[str, Any]:
        pos = int(j) * self.stride + self.offset
        counts = np.zeros(len(D.SKIP_REASONS), np.int32)
        n = len(self.source)
        last = None
        attempts = max(1, self.max_attempts)
        for attempt in range(attempts):
            i = int(index) if attempt == 0 else _mix(self.processor.seed, pos, attempt) % n
            try:
                ex = self._load(i, pos)
                break
            except D.SkipExample as e:
                counts[D.reason_index(e.reason)] += 1
                last = e
            except Exception as e:  # noqa: BLE001  (bad data must never stop a run)
                counts[D.reason_index("error")] += 1
                last = e
            D.log_skip(_where(self.source, i), last)
            if self.max_attempts == 0:  # eval: no replacement, the row is masked out
                out = {k: np.zeros_like(v) for k, v in self.template.items()}
                out[_VALID_KEY], out[_SKIP_KEY] = np.asarray(False), counts
                return out
        else:
            raise D.skip_error(self.source, attempts, counts, last)
        out = self.processor.finish(ex, (pos,))
        out[_SKIP_KEY] = counts
        if self.max_attempts == 0:
            out[_VALID_KEY] = np.asarray(True)
        return out


# --- streams -----------------------------------------------------------------------------
class _StreamIterator(grain.DatasetIterator):
    def __init__(self, it):
        super().__init__()
        self._it = it

    def __next__(self):
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        # The TrainIterator's state is the batch number; this iterator is rebuilt from it.
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        del state


class _StreamDataset(grain.IterDataset):
    """This process's examples of the global stream from global batch ``start_batch``, as
    read by one grain worker (unbatched: the batches are made after the workers).

    grain's ``mp_prefetch`` calls ``set_slice(slice(w, None, W))`` in worker ``w`` and then
    takes elements round-robin from worker 0 on; so worker ``w`` yields the process's local
    elements ``j = start_batch * b + w + i*W``, i.e. global positions ``n = j*P + p``.
    """

    def __init__(
        self,
        source,
        processor,
        *,
        process_index,
        process_count,
        start_batch,
        local_batch_size,
        max_attempts,
    ):
        super().__init__()
        self._source = source
        self._processor = processor
        self._p, self._pc = process_index, process_count
        self._start_batch = start_batch
        self._b = local_batch_size
        self._max_attempts = max_attempts
        self._worker, self._workers = 0, 1

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        del sequential_slice
        self._worker, self._workers = sl.start or 0, sl.step or 1

    def __iter__(self):
        first = (self._start_batch * self._b + self._worker) * self._pc + self._p
        step = self._pc * self._workers
        return _StreamIterator(self._positions(first, step))

    def _positions(self, n: int, step: int):
        """``((stream, position), example, skip_counts)`` for global positions ``n, n+step, ...``."""
        num = self._source.num_streams
        streams = {}
        while True:
            v, pos = n % num, n // num
            it = streams.get(v)
            if it is None:
                it = streams[v] = self._source.iter_stream(
                    v,
                    num,
                    start=pos,
                    processor=self._processor,
                    max_attempts=self._max_attempts,
                )
            m, take = next(it)
            while m < pos:  # positions of this stream that other readers take
                m, take = next(it)
            ex, counts = take()
            yield (v, pos), ex, counts
            n += step


@dataclasses.dataclass(frozen=True)
class _FinishStream(grain.transforms.Map):
    processor: ExampleProcessor

    def map(self, item):
        key, ex, counts = item
        out = self.processor.finish(ex, key)
        out[_SKIP_KEY] = counts
        return out


# --- train -------------------------------------------------------------------------------
class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Infinite iterator over this process's slice of each global batch.

    ``next(it)`` -> ``{'image': float32 [b, H, W, 3], 'tokens': int32 [b, L], ...}`` (plus
    arrays added by ``extra_transforms``, and ``label_<attr>`` and ``index`` int32 [b] with
    ``with_metadata=True``), where ``b = global_batch_size // process_count``.

    Checkpointing: ``get_state()`` -> JSON-able dict, ``set_state(state)``;
    ``get_state_json()`` / ``set_state_json(str)`` for the serialized form (store it with
    e.g. ``orbax.checkpoint.args.JsonSave(it.get_state())``). The position in the state is
    the same on all processes and means the same data for any number of processes or
    workers; ``process_state`` selects a process's state from all saved ones.
    ``skipped_counts()`` -> examples skipped by this process since the run started, by
    reason (carried over ``set_state``).
    Call ``close()`` (or use ``with``) to stop worker processes.
    """

    def __init__(
        self,
        build: Callable[[int], Any],
        *,
        num_workers: int,
        num_threads: int,
        prefetch_buffer: int,
        fingerprint: dict[str, Any],
        batch_after: int = 0,
    ):
        """``build(start_batch)``: the pipeline from that batch on (batched, or, with
        ``batch_after``, single examples batched by that many after the workers)."""
        self._build = build
        self._batch_after = int(batch_after)
        self._num_workers = int(num_workers)
        self._num_threads = int(num_threads)
        self._prefetch_buffer = int(prefetch_buffer)
        self._fingerprint = dict(fingerprint)
        self._next_batch = 0
        self._it = None
        self._skipped = np.zeros(len(D.SKIP_REASONS), np.int64)
        self.global_batch_size = fingerprint["global_batch_size"]
        self.local_batch_size = fingerprint["global_batch_size"] // fingerprint["process_count"]

    # -- iteration ------------------------------------------------------------------------
    def _start(self):
        ds = self._build(self._next_batch)
        if isinstance(ds, grain.MapDataset):
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
            per_batch = max(1, self._batch_after // self._num_workers)
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self._num_workers,
                    per_worker_buffer_size=max(self._prefetch_buffer, 1) * per_batch,
                ),
                worker_init_fn=_init_worker,
            )
        if self._batch_after:
            ds = ds.batch(self._batch_after, drop_remainder=True)
        self._it = iter(ds)

    def start_prefetch(self) -> None:
        """Starts the workers now (e.g. right after restoring, before the model loads)."""
        if self._it is None:
            self._start()
        start = getattr(self._it, "start_prefetch", None)
        if start is not None:
            start()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._start()
        batch = dict(next(self._it))
        skipped = batch.pop(_SKIP_KEY, None)
        if skipped is not None:
            self._skipped += np.asarray(skipped, np.int64).sum(0)
        self._next_batch += 1
        return batch

    def skipped_counts(self) -> dict[str, int]:
        """Examples this process skipped (and replaced) since the run started, by reason
        (``decode.SKIP_REASONS``; zero counts included). Carried over ``set_state``: the
        counts saved with the state are the starting point."""
        return {r: int(c) for r, c in zip(D.SKIP_REASONS, self._skipped)}

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
        with contextlib.suppress(Exception):
            self.close()

    # -- checkpointing --------------------------------------------------------------------
    @property
    def next_batch(self) -> int:
        """Number of batches returned so far (= index of the next global batch)."""
        return self._next_batch

    def get_state(self) -> dict[str, Any]:
        """JSON-able state: ``{'version', 'next_batch', 'seed', 'global_batch_size', 'source',
        'process_count', 'skipped'}``. All but ``skipped`` (this process's counts, by
        reason) are the same on every process."""
        return {
            "version": _STATE_VERSION,
            "next_batch": self._next_batch,
            "seed": self._fingerprint["seed"],
            "global_batch_size": self._fingerprint["global_batch_size"],
            "source": self._fingerprint["source"],
            "process_count": self._fingerprint["process_count"],
            "skipped": self.skipped_counts(),
        }

    def set_state(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restores ``get_state()``'s output: the next batch is batch ``state['next_batch']``,
        and the skip counts continue from ``state['skipped']``. The state may come from
        another number of processes or workers (see ``process_state``).

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
                    f"{diffs}. Resume with the run's own config.json (the same seed, "
                    "batch_size and data.train); in Python, set_state(state, strict=False) "
                    "takes only the batch number."
                )
        next_batch = int(state["next_batch"])
        if next_batch < 0:
            raise ValueError(f"next_batch must be >= 0, got {next_batch}.")
        skipped = state.get("skipped") or {}
        unknown = sorted(set(skipped) - set(D.SKIP_REASONS))
        if unknown:  # counters must never stop a resume
            log.warning("data: skip reasons %s in the saved state are not counted.", unknown)
        self.close()
        self._next_batch = next_batch
        self._skipped = np.asarray([int(skipped.get(r, 0)) for r in D.SKIP_REASONS], np.int64)

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
    extra_transforms: Sequence[Any] = (),
    max_skip_attempts: int = 32,
) -> TrainIterator:
    """Infinite, shuffled, checkpointable iterator over this process's batch slices.

    Args:
      source: a source from ``get_source``: random access (``__len__``, ``__getitem__`` ->
        dict with ``'image'`` uint8 [H, W, 3] and ``'caption'`` str, or ``'captions'``
        list[str]) or a stream (``is_stream``, e.g. ``wds:``). Its ``preprocess``
        (``transforms.Preprocess``) sets crop, image size and caption handling.
      tokenizer: callable ``texts -> int32 [N, L]`` (runs in the workers; must pickle).
      global_batch_size: examples per step over all processes.
      seed: shuffle seed in [0, 2**32); each epoch is shuffled differently.
      process_index, process_count: this process and the number of processes; default
        ``jax.process_index()`` / ``jax.process_count()``.
      num_workers: grain worker processes (0: load in this process, with threads).
      prefetch_buffer: batches prefetched (per worker when num_workers > 0).
      normalize: image normalisation, one of ``transforms.NORMALIZATIONS``; applied to
        every uint8 [H, W, 3] array whose key starts with ``image``.
      num_threads: loader threads per process (0 disables threaded prefetch).
      with_metadata: also yield ``label_<attr>`` and ``index`` (source index) int32 [b].
      extra_transforms: callables or grain ``Map``/``RandomMap`` objects ``example ->
        example``, applied in order after decoding and caption choice (``'image'`` uint8
        [H, W, 3] at the decoded size, ``'caption'`` str, optional ``'captions'``,
        ``'labels'``) and before the crop, tokenisation and normalisation. ``random_map``
        gets an rng seeded by ``(seed, global example position)``. Arrays they add are
        kept in the batch; extra ``image*`` uint8 images are resized/center-cropped to
        the source's ``image_size`` if needed and normalised like ``'image'``. They must
        pickle when ``num_workers > 0`` (module-level classes).
      max_skip_attempts: unusable examples in a row after which the source is declared
        unusable (NoUsableDataError naming it and the reasons).

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
    if max_skip_attempts < 1:
        raise ValueError(f"max_skip_attempts must be >= 1, got {max_skip_attempts}.")
    T.normalize_image(np.zeros((1, 1, 3), np.uint8), normalize)  # validates `normalize`
    local_batch_size = global_batch_size // process_count
    processor = ExampleProcessor(
        preprocess=_preprocess_of(source),
        train=True,
        seed=int(seed),
        tokenizer=tokenizer,
        normalize=normalize,
        extra_transforms=tuple(extra_transforms),
        with_metadata=with_metadata,
    )
    fingerprint = {
        "seed": int(seed),
        "global_batch_size": global_batch_size,
        "source": _source_id(source),
        "process_count": process_count,
    }

    batch_after = 0
    if getattr(source, "is_stream", False):
        readers = process_count * max(1, num_workers)
        shared = source.readers_per_stream(readers)
        if shared > 1 and process_index == 0:
            log.warning(
                "data: %d readers (%d processes x %d workers) over %d streams of %r: each "
                "stream is read by %d readers (%dx the reading). A number of processes x "
                "workers that divides the streams reads each once; ?streams= sets the "
                "streams, and changing it changes the data order (only at the start of a run).",
                readers,
                process_count,
                max(1, num_workers),
                source.num_streams,
                source,
                shared,
                shared,
            )
        batch_after = local_batch_size

        def build(start_batch: int):
            ds = _StreamDataset(
                source,
                processor,
                process_index=process_index,
                process_count=process_count,
                start_batch=start_batch,
                local_batch_size=local_batch_size,
                max_attempts=max_skip_attempts,
            )
            return ds.map(_FinishStream(processor))

    else:
        if len(source) == 0:
            raise ValueError(f"Source {source!r} is empty.")
        ds = grain.MapDataset.range(len(source)).shuffle(seed=int(seed)).repeat(None)
        ds = ds[process_index::process_count]
        ds = ds.map_with_index(
            _LoadAndProcess(
                source,
                processor,
                stride=process_count,
                offset=process_index,
                max_attempts=max_skip_attempts,
            )
        )
        batches = ds.batch(local_batch_size, drop_remainder=True)

        def build(start_batch: int):
            return batches[start_batch:]

    return TrainIterator(
        build,
        num_workers=num_workers,
        num_threads=num_threads,
        prefetch_buffer=prefetch_buffer,
        fingerprint=fingerprint,
        batch_after=batch_after,
    )


def process_state(
    states: Sequence[dict[str, Any]], process_index: int, process_count: int
) -> dict[str, Any]:
    """Process ``process_index`` of ``process_count``'s state from every process's saved
    ``get_state()``.

    ``states``: the saved states in process order (a checkpoint's list), possibly written by
    another number of processes than now (an elastic resume). The same number: the
    process's own state. Another: the position (``next_batch``) is the same in every state
    and serves all processes; the skip counts of all saved processes are summed into
    process 0's state and the others start at 0, so the counts summed over processes (the
    trainer's ``data/skipped``) carry over.
    """
    states = list(states)
    if not states:
        raise ValueError("No data iterator state saved.")
    if len(states) == process_count:
        return dict(states[process_index])
    own = dict(states[0])
    total: dict[str, int] = {}
    for s in states:
        for reason, n in (s.get("skipped") or {}).items():
            total[reason] = total.get(reason, 0) + int(n)
    own["skipped"] = total if process_index == 0 else {}
    return own


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
        extra_transforms=(),
    ):
        self.source = source
        self.batch_size = int(batch_size)
        self.num_examples = int(num_examples)
        self.process_index = process_index
        self.process_count = process_count
        self._num_threads = int(num_threads)
        processor = ExampleProcessor(
            preprocess=_preprocess_of(source),
            train=False,
            seed=0,
            tokenizer=tokenizer,
            normalize=normalize,
            extra_transforms=tuple(extra_transforms),
            with_metadata=True,
        )
        self._template = self._make_template(source, processor)
        load = _LoadAndProcess(source, processor, max_attempts=0, template=self._template)
        ds = grain.MapDataset.range(self.num_examples)[process_index::process_count]
        self.num_local_examples = len(ds)
        self._examples = ds.map_with_index(_EvalIndex(load))
        per_process = math.ceil(self.num_examples / process_count)
        self.num_batches = math.ceil(per_process / self.batch_size)
        self.skipped = {r: 0 for r in D.SKIP_REASONS}

    def _make_template(self, source, processor) -> dict[str, np.ndarray]:
        """Zeros shaped like a processed example (for unusable examples and padding)."""
        load = _LoadAndProcess(source, processor, max_attempts=1)
        last = None
        for i in range(min(len(source), 32)):
            try:
                ex = load.map_with_index(i, i)
            except (RuntimeError, D.NoUsableDataError) as e:
                last = e
                continue
            ex.pop(_SKIP_KEY)
            return {k: np.zeros_like(v) for k, v in ex.items()}
        raise D.NoUsableDataError(f"Eval source {source!r} yields nothing usable: {last}")

    def __len__(self) -> int:
        return self.num_batches

    def _pad(self, batch: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        out = {}
        valid = np.asarray(batch.pop(_VALID_KEY, np.ones(n, bool)))[:n].astype(bool)
        batch.pop(_SKIP_KEY, None)
        for k, v in batch.items():
            v = np.asarray(v)
            pad = np.zeros((self.batch_size - n, *v.shape[1:]), v.dtype)
            out[k] = np.concatenate([v[:n], pad], 0)
        mask = np.zeros((self.batch_size,), bool)
        mask[:n] = valid
        out["mask"] = mask
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        emitted = 0
        skipped = np.zeros(len(D.SKIP_REASONS), np.int64)
        if self.num_local_examples:
            ds = self._examples.batch(self.batch_size, drop_remainder=False)
            ds = ds.to_iter_dataset(
                grain.ReadOptions(num_threads=self._num_threads, prefetch_buffer_size=2)
            )
            for batch in ds:
                n = len(batch["image"])
                skipped += np.asarray(batch[_SKIP_KEY]).sum(0)
                emitted += 1
                yield self._pad(dict(batch), n)
        self.skipped = {r: int(c) for r, c in zip(D.SKIP_REASONS, skipped)}
        template = {k: v[None] for k, v in self._template.items()}
        for _ in range(self.num_batches - emitted):
            yield self._pad(dict(template), 0)


@dataclasses.dataclass(frozen=True)
class _EvalIndex(grain.transforms.MapWithIndex):
    """Eval: the element is the source index itself (no shuffle), also used as position."""

    load: _LoadAndProcess

    def map_with_index(self, j: int, index: int) -> dict[str, Any]:
        return self.load.map_with_index(int(index), int(index))


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
    extra_transforms: Sequence[Any] = (),
) -> EvalBatches:
    """Finite eval batches over the first ``num_examples`` examples (default: all), in order.

    Each batch: ``image`` float32 [B, H, W, 3] (the source's ``eval_crop``: by default
    resize the shortest side to ``image_size``, then center-crop), ``tokens`` int32 [B, L]
    (the first caption), ``label_<attr>`` int32 [B] (when the source has labels), ``index``
    int32 [B] (source index) and ``mask`` bool [B]. The last batch is padded with zeros to
    ``batch_size``; ``mask`` is False on padding and on unusable examples (undecodable image,
    missing file, ...; counted in ``batches.skipped`` after an iteration). With several
    processes, process ``p`` gets examples ``p::process_count`` and every process yields the
    same number of batches (``len(batches)``), padding as needed, so the batches can be
    assembled into global arrays. Streams (``wds:``) are read through their random-access
    index (``WdsSource.__getitem__``).

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
        extra_transforms=extra_transforms,
    )
