"""``wds:PATTERN``: WebDataset tar shards (img2dataset's output), read as deterministic streams.

A sample is the run of consecutive tar members sharing a key (the path up to the first dot
of the file name): ``000012.jpg`` + ``000012.txt`` (+ ``000012.json``, ``000012.cls``).
Images: jpg/jpeg/png/webp (first found); caption: ``.txt``, else the ``caption`` (or
``captions``) field of ``.json``; optional integer label: ``.cls``.

Spec: ``wds:/data/laion/{00000..01023}.tar?buffer=2000&resample=true`` -- brace ranges and
lists (``{a,b}``), ``::`` between several patterns, ``{split}`` replaced by the split,
local paths or fsspec URLs (``gs://bucket/shards/{000..099}.tar``; gcsfs/s3fs must be
installed for those). Parameters: ``buffer`` (shuffle window, samples; default 2000),
``cycle`` (shards read interleaved by a stream; default 4), ``resample`` (draw shards with
replacement each epoch), ``caption_key`` (json field), plus the ``transforms.Preprocess``
fields as for ``csv:``.

How the stream is split, shuffled and checkpointed
---------------------------------------------------
Each process runs ``W = max(1, num_workers)`` streams; stream ``g = process * W + worker``
of ``S = processes * W``. Epoch ``e`` permutes the shards with ``rng(seed, e)`` and stream
``g`` reads shards ``perm[g::S]`` in order (``resample``: ``len(perm[g::S])`` shards drawn
with replacement by ``rng(seed, e, g)``), so in every epoch each shard is read by exactly one
stream: nothing lost, nothing duplicated, across processes and workers. Streams run through
their epochs independently.

A stream reads its shard list in groups of ``cycle`` shards, interleaved round-robin (one
sample of each shard with samples left per round), so a window mixes ``cycle`` shards.
Within a stream, sample positions ``n = 0, 1, 2, ...`` are cut into windows of ``buffer``
consecutive samples; window ``w`` is emitted in the order ``rng(seed, g, w).permutation``.
(A sliding shuffle buffer would make the output depend on the whole history; a window only on
its own samples.) An unusable sample (undecodable, no caption, ...) is replaced by the next
usable one of the same window, so every position is filled.

The position of stream ``g`` after ``k`` global batches is a pure function of ``k`` (see
``pipeline``), and position ``n`` maps to (epoch, shard, offset) through the shards' sample
counts: from img2dataset's ``<shard>_stats.json`` (``successes``) when present, else from
one pass over the tar headers (cached; cheap for local files, a full read for remote ones).
The round-robin order inside a group depends only on these counts, so where each shard of
the group stands is arithmetic. Resuming re-reads the current window's shards from their
start, skipping the data of earlier samples without decoding. Hence the iterator state stays "number of batches", identical
on all processes; a resumed run must use the same ``num_workers`` and process count (the
state's ``source`` fingerprint records ``streams=S`` and a mismatch is refused).

For evaluation and ``stats`` a ``WdsSource`` is also random access (``len``, ``[i]``)
through an index of member offsets built on first use.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from alignjax.data import csv_source
from alignjax.data import decode as D
from alignjax.data import transforms as T

__all__ = ["IMAGE_EXTS", "WdsSource", "expand_pattern", "iter_tar_samples", "shard_count"]

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{([^{}]*)\}")
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def expand_pattern(pattern: str) -> list[str]:
    """``'a/{000..002}.tar::b/{x,y}.tar'`` -> the 5 URLs (zero padding kept), in order."""
    out = []
    for part in pattern.split("::"):
        m = _BRACE.search(part)
        if not m:
            out.append(part)
            continue
        body = m.group(1)
        rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if rng:
            lo, hi = rng.group(1), rng.group(2)
            width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
            choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
        else:
            choices = body.split(",")
        for c in choices:
            out.extend(expand_pattern(part[: m.start()] + c + part[m.end() :]))
    return out


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _open(url: str):
    if _is_url(url):
        import fsspec  # pylint: disable=g-import-not-at-top

        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


def _split_key(name: str) -> tuple[str, str] | None:
    m = _KEY.match(name)
    if not m:
        return None
    base = os.path.basename(m.group(1))
    if base.startswith(("__", ".")):
        return None
    return m.group(1), m.group(2).lower()


def iter_tar_samples(
    url: str, skip: int = 0, with_data: bool = True
) -> Iterator[tuple[str, dict[str, bytes] | None]]:
    """Yields ``(key, {ext: bytes})`` per sample of one tar shard (``None`` data for the first
    ``skip`` samples, and for all with ``with_data=False``). Raises on a broken tar."""
    with _open(url) as f:
        # Stream mode for URLs (one sequential read); seekable mode for local files, where
        # skipped members are seeked over.
        mode = "r|*" if _is_url(url) else "r:*"
        with tarfile.open(fileobj=f, mode=mode) as tar:
            key, sample, index = None, None, -1
            for info in tar:
                if not info.isfile():
                    continue
                parts = _split_key(info.name)
                if parts is None:
                    continue
                k, ext = parts
                if k != key:
                    if key is not None:
                        yield key, sample
                    key, index = k, index + 1
                    sample = {} if with_data and index >= skip else None
                if sample is not None:
                    sample[ext] = tar.extractfile(info).read()
            if key is not None:
                yield key, sample


def shard_count(url: str) -> int:
    """Samples in a shard: img2dataset's ``<stem>_stats.json`` 'successes', else a scan."""
    stem = re.sub(r"\.tar(\.\w+)?$", "", url)
    stats = stem + "_stats.json"
    try:
        with _open(stats) as f:
            return int(json.load(f)["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    n = 0
    try:
        for _ in iter_tar_samples(url, with_data=False):
            n += 1
    except (OSError, tarfile.TarError, EOFError) as e:
        log.warning("wds: shard %s unreadable after %d samples: %s", url, n, e)
    return n


def _round_robin(counts: list[int]):
    """Indices ``i`` in round-robin order, each ``counts[i]`` times."""
    taken = [0] * len(counts)
    while True:
        emitted = False
        for i, c in enumerate(counts):
            if taken[i] < c:
                taken[i] += 1
                emitted = True
                yield i
        if not emitted:
            return


class WdsSource:
    """WebDataset shards as a deterministic, splittable, checkpointable stream."""

    is_stream = True

    def __init__(
        self,
        pattern: str,
        split: str = "train",
        *,
        buffer: int = 2000,
        cycle: int = 4,
        resample: bool = False,
        caption_key: str = "caption",
        seed: int | None = None,
        **kwargs,
    ):
        del seed  # the pipeline's seed drives shuffling
        self.preprocess = T.Preprocess.from_kwargs(kwargs)
        if kwargs:
            raise TypeError(
                f"Unknown wds: source parameters {sorted(kwargs)}; valid: buffer, cycle, resample, "
                f"caption_key and the Preprocess fields {list(T.Preprocess.__dataclass_fields__)}."
            )
        self.pattern = pattern.replace("{split}", split)
        self.urls = expand_pattern(self.pattern)
        if not self.urls:
            raise ValueError(f"wds:{pattern} matches no shard.")
        missing = [u for u in self.urls if not _is_url(u) and not os.path.exists(u)]
        if len(missing) == len(self.urls):
            raise FileNotFoundError(
                f"wds:{self.pattern}: none of the {len(self.urls)} shards exists "
                f"(first: {self.urls[0]!r})."
            )
        if missing:
            log.warning(
                "wds: %d of %d shards missing, e.g. %s", len(missing), len(self.urls), missing[0]
            )
        if int(buffer) < 1:
            raise ValueError(f"wds buffer must be >= 1, got {buffer}.")
        self.buffer = int(buffer)
        if int(cycle) < 1:
            raise ValueError(f"wds cycle must be >= 1, got {cycle}.")
        self.cycle = int(cycle)
        self.resample = bool(resample)
        self.caption_key = caption_key
        self._counts: dict[str, int] = {}
        self._index = None

    def __repr__(self) -> str:
        return (
            f"WdsSource('wds:{self.pattern}', buffer={self.buffer}, cycle={self.cycle}, "
            f"resample={self.resample})"
        )

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_index"] = None  # rebuilt on demand; workers need only the counts
        return state

    # -- decoding -------------------------------------------------------------------------
    def decode(
        self, key: str, sample: dict[str, bytes] | None, pil: bool = False
    ) -> dict[str, Any]:
        """Raw sample -> example (image: uint8 array, or PIL with ``pil``); SkipExample for
        unusable ones."""
        if sample is None:
            raise D.SkipExample("error", f"{key}: unreadable tar data")
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            raise D.SkipExample("missing_image", f"{key} has {sorted(sample)}")
        ex: dict[str, Any] = {"key": key}
        if "txt" in sample:
            ex["caption"] = sample["txt"].decode("utf-8", errors="replace")
        elif "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except ValueError:
                meta = {}
            if isinstance(meta.get(self.caption_key), str):
                ex["caption"] = meta[self.caption_key]
            elif isinstance(meta.get("captions"), list):
                ex["captions"] = [str(c) for c in meta["captions"]]
        if "caption" not in ex and "captions" not in ex:
            raise D.SkipExample("missing_caption", f"{key} has {sorted(sample)}")
        if "cls" in sample:
            try:
                ex["labels"] = {"label": int(sample["cls"].decode().strip())}
            except ValueError:
                pass
        ex["image"] = csv_source.load_image(sample[ext], self.preprocess, pil=pil)
        return ex

    # -- counts and positions -------------------------------------------------------------
    def count(self, shard: int) -> int:
        url = self.urls[shard]
        if url not in self._counts:
            self._counts[url] = shard_count(url)
        return self._counts[url]

    def check_streams(self, streams: int) -> None:
        if not self.resample and len(self.urls) < streams:
            raise ValueError(
                f"wds:{self.pattern} has {len(self.urls)} shards for {streams} streams "
                f"(processes x max(1, num_workers)); every stream needs a shard. Use fewer "
                f"workers, more shards, or ?resample=true."
            )

    def epoch_shards(self, epoch: int, stream: int, streams: int, seed: int) -> list[int]:
        n = len(self.urls)
        k = len(range(stream, n, streams))
        if self.resample:
            rng = np.random.default_rng([seed, 1, epoch, stream])
            return [int(i) for i in rng.integers(0, n, size=max(k, 1))]
        perm = np.random.default_rng([seed, 0, epoch]).permutation(n)
        return [int(i) for i in perm[stream::streams]]

    def epoch_groups(self, epoch: int, stream: int, streams: int, seed: int) -> list[list[int]]:
        """The epoch's shards of this stream, in groups of ``cycle`` read interleaved."""
        shards = self.epoch_shards(epoch, stream, streams, seed)
        return [shards[k : k + self.cycle] for k in range(0, len(shards), self.cycle)]

    def locate(self, stream: int, streams: int, pos: int, seed: int) -> tuple[int, int, int]:
        """Stream position -> (epoch, shard group in the epoch, sample offset in the group)."""
        epoch = 0
        while True:
            totals = [
                sum(self.count(s) for s in group)
                for group in self.epoch_groups(epoch, stream, streams, seed)
            ]
            if sum(totals) == 0:
                raise RuntimeError(
                    f"wds:{self.pattern}: stream {stream}/{streams} read no sample from its "
                    f"shards in epoch {epoch}; the shards are empty or unreadable."
                )
            for g, total in enumerate(totals):
                if pos < total:
                    return epoch, g, pos
                pos -= total
            epoch += 1

    def _read_shard(self, shard: int, skip: int):
        """Exactly ``count(shard) - skip`` slots ``(key, sample | None)``."""
        url, count, n = self.urls[shard], self.count(shard), 0
        try:
            for key, sample in iter_tar_samples(url, skip=skip):
                if n >= count:
                    break
                if n >= skip:
                    yield key, sample
                n += 1
        except (OSError, tarfile.TarError, EOFError) as e:
            log.warning("wds: shard %s broken after %d samples: %s", url, n, e)
        for m in range(max(n, skip), count):  # fewer samples than counted: unusable slots
            yield f"{url}#{m}", None

    def _read_group(self, group: list[int], offset: int):
        """Slots of a shard group, round-robin over its shards (one sample of each shard
        that has samples left, in group order, per round), from ``offset`` on. The order
        depends only on the counts, so where each shard stands at ``offset`` is arithmetic."""
        counts = [self.count(s) for s in group]
        order = _round_robin(counts)
        consumed = [0] * len(group)
        for _ in range(offset):
            consumed[next(order)] += 1
        readers = [self._read_shard(s, c) for s, c in zip(group, consumed)]
        for k in order:
            yield next(readers[k])

    def _slots(self, stream: int, streams: int, seed: int, epoch: int, g: int, offset: int):
        while True:
            for group in self.epoch_groups(epoch, stream, streams, seed)[g:]:
                yield from self._read_group(group, offset)
                offset = 0
            epoch, g = epoch + 1, 0

    def iter_stream(self, stream: int, streams: int, *, start: int, processor, max_attempts: int):
        """Yields ``((stream, n), example, skip_counts)`` for positions ``n >= start``."""
        seed, size = processor.seed, self.buffer
        window = start // size
        slots = self._slots(
            stream, streams, seed, *self.locate(stream, streams, window * size, seed)
        )
        while True:
            raw = list(itertools.islice(slots, size))
            perm = np.random.default_rng([seed, 2, stream, window]).permutation(size)
            first = start - window * size if window * size < start else 0
            for i in range(first, size):
                n = window * size + i
                counts = np.zeros(len(D.SKIP_REASONS), np.int32)
                last = None
                for attempt in range(min(size, max_attempts)):
                    key, sample = raw[perm[(i + attempt) % size]]
                    try:
                        pil = not processor.extra_transforms
                        ex = processor.prepare(self.decode(key, sample, pil=pil), (stream, n))
                        break
                    except D.SkipExample as e:
                        counts[D.reason_index(e.reason)] += 1
                        last = e
                    except Exception as e:  # noqa: BLE001  (bad data must never stop a run)
                        counts[D.reason_index("error")] += 1
                        last = e
                else:
                    raise D.skip_error(self, min(size, max_attempts), counts, last)
                yield (stream, n), ex, counts
            window += 1

    # -- random access (eval, stats) ------------------------------------------------------
    def _build_index(self):
        """[(shard, key, {ext: (offset, size)})] from one pass over the tar headers."""
        index = []
        for shard, url in enumerate(self.urls):
            try:
                with _open(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                    key = None
                    for info in tar:
                        parts = _split_key(info.name) if info.isfile() else None
                        if parts is None:
                            continue
                        if parts[0] != key:
                            key = parts[0]
                            index.append((shard, key, {}))
                        index[-1][2][parts[1]] = (info.offset_data, info.size)
            except (OSError, tarfile.TarError, EOFError) as e:
                log.warning("wds: shard %s unreadable: %s", url, e)
        self._index = index

    def __len__(self) -> int:
        if self._index is None:
            self._build_index()
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._index is None:
            self._build_index()
        shard, key, members = self._index[int(i)]
        sample = {}
        try:
            with _open(self.urls[shard]) as f:
                for ext, (offset, size) in members.items():
                    f.seek(offset)
                    sample[ext] = f.read(size)
        except OSError as e:
            raise D.SkipExample("missing_file", f"{self.urls[shard]}: {e}") from None
        return self.decode(key, sample)
