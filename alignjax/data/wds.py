"""``wds:PATTERN``: WebDataset tar shards (img2dataset's output), read as deterministic streams.

A sample is the run of consecutive tar members sharing a key (the path up to the first dot
of the file name): ``000012.jpg`` + ``000012.txt`` (+ ``000012.json``, ``000012.cls``).
Images: jpg/jpeg/png/webp (first found); caption: ``.txt``, else the ``caption`` (or
``captions``) field of ``.json``; optional integer label: ``.cls``.

Spec: ``wds:/data/laion/{00000..01023}.tar?buffer=500&resample=true`` -- brace ranges and
lists (``{a,b}``), globs (``*``, ``[...]``; sorted, an error when one matches nothing),
``::`` between several patterns, ``{split}`` replaced by the split, local paths or fsspec
URLs (``gs://bucket/shards/{000..099}.tar``; gcsfs/s3fs must be installed for those).
Parameters: ``streams`` (the number of streams the data is cut into; default
``min(16, shards)``), ``buffer`` (shuffle window of a stream, samples; default 500),
``cycle`` (shards read interleaved by a stream; default 4), ``resample`` (draw shards with
replacement each epoch), ``caption_key`` (json field), plus the ``transforms.Preprocess``
fields as for ``csv:``.

How the data is ordered, split and checkpointed
-----------------------------------------------
The order of the samples is a function of the seed, the shards and the parameters alone:
not of the number of processes or workers, so a run can resume on another number of hosts
(an elastic resume) and continue exactly where it stopped.

*Streams.* The data is cut into ``V = streams`` streams. Epoch ``e`` permutes the shards
with ``rng(seed, e)`` and stream ``v`` reads shards ``perm[v::V]`` in order (``resample``:
``len(perm[v::V])`` shards drawn with replacement by ``rng(seed, e, v)``), so in every epoch
each shard is read by exactly one stream. Streams run through their epochs independently.
A stream reads its shard list in groups of ``cycle`` shards, interleaved round-robin (one
sample of each shard with samples left per round), so a window mixes ``cycle`` shards.
Within a stream, sample positions ``m = 0, 1, 2, ...`` are cut into windows of ``buffer``
consecutive samples; window ``w`` is emitted in the order ``rng(seed, v, w).permutation``.
(A sliding shuffle buffer would make the output depend on the whole history; a window only on
its own samples.) An unusable sample (undecodable, no caption, ...) is replaced by the next
usable one of the same window, so every position is filled.

*The global stream* interleaves the streams: global position ``n`` is position ``n // V``
of stream ``n % V``. Global batch ``k`` is positions ``[k*B, (k+1)*B)``, and the checkpointed
state is just ``k``. Process ``p`` of ``P`` takes positions ``n = p (mod P)`` (as for
random-access sources), and its grain worker ``w`` of ``W`` every ``W``-th of those: the
``R = P * W`` readers each take every ``R``-th position. A reader opens only the streams its
positions fall in; when ``R`` divides ``V`` every stream has exactly one reader. Otherwise
several readers read the same stream (each decoding only its own positions): correct, but
more reading (a warning says how much); choose ``streams`` as a multiple of the process x
worker counts a run may use (e.g. 16 or 64).

Stream position ``m`` maps to (epoch, shard group, offset) through the shards' sample
counts: from img2dataset's ``<shard>_stats.json`` (``successes``) when present, else from
one pass over the tar headers (cached; cheap for local files, a full read for remote ones).
The round-robin order inside a group depends only on these counts, so where each shard of
the group stands is arithmetic. Resuming re-reads the current window's shards from their
start, skipping the data of earlier samples without decoding.

Memory: a reader holds one window (``buffer`` raw samples) per stream it reads, i.e. about
``V / P * buffer`` encoded samples per process.

For evaluation and ``stats`` a ``WdsSource`` is also random access (``len``, ``[i]``)
through an index of member offsets built on first use.
"""

from __future__ import annotations

import functools
import glob
import itertools
import json
import logging
import math
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

DEFAULT_STREAMS = 16
_TAR_ERRORS = (OSError, tarfile.TarError, EOFError)
_GLOB = re.compile(r"[*\[]")
_warned_shards: set[str] = set()  # shards already reported broken by this process

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{([^{}]*)\}")
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def expand_pattern(pattern: str) -> list[str]:
    """``'a/{000..002}.tar::b/{x,y}.tar'`` -> the 5 URLs (zero padding kept), in order.

    Globs (``*``, ``[...]``) expand to the matching files, sorted; a glob that matches
    nothing raises ValueError. (``?`` cannot be a glob: it starts the spec's parameters.)
    """
    out = []
    for part in pattern.split("::"):
        m = _BRACE.search(part)
        if not m:
            out.extend(_expand_glob(part) if _GLOB.search(part) else [part])
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


def _expand_glob(pattern: str) -> list[str]:
    if _is_url(pattern):
        import fsspec  # pylint: disable=g-import-not-at-top

        fs, _, _ = fsspec.get_fs_token_paths(pattern)
        protocol = pattern.split("://", 1)[0]
        found = sorted(
            f"{protocol}://{p.split('://', 1)[-1].lstrip('/')}" for p in fs.glob(pattern)
        )
    else:
        found = sorted(glob.glob(pattern.removeprefix("file://")))
    if not found:
        raise ValueError(
            f"wds: the glob {pattern!r} matches no file; check the path (or list the shards "
            f"with a brace range, e.g. {{00000..00099}}.tar)."
        )
    return found


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
    except _TAR_ERRORS as e:
        _warn_broken(url, n, f"{type(e).__name__}: {e}")
    return n


def _warn_broken(url: str, n: int, why: str) -> None:
    """Warns once per process about a truncated or unreadable shard (it is met again in
    every epoch and by every resume)."""
    if url in _warned_shards:
        return
    _warned_shards.add(url)
    log.warning(
        "wds: shard %s is broken after %d samples (%s); its remaining samples are "
        "skipped (counted in data/skipped/error). Re-download or rewrite the shard.",
        url,
        n,
        why,
    )


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
        streams: int | None = None,
        buffer: int = 500,
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
                f"Unknown wds: source parameters {sorted(kwargs)}; valid: streams, buffer, cycle, "
                f"resample, caption_key and the Preprocess fields {list(T.Preprocess.__dataclass_fields__)}."
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
        if streams is None:
            streams = DEFAULT_STREAMS if self.resample else min(DEFAULT_STREAMS, len(self.urls))
        if int(streams) < 1:
            raise ValueError(f"wds streams must be >= 1, got {streams}.")
        if not self.resample and int(streams) > len(self.urls):
            raise ValueError(
                f"wds:{self.pattern}: streams={streams} needs at least as many shards, and "
                f"it has {len(self.urls)}; set ?streams={len(self.urls)} or fewer (or "
                f"?resample=true)."
            )
        self.num_streams = int(streams)
        self.caption_key = caption_key
        self._counts: dict[str, int] = {}
        self._index = None

    def __repr__(self) -> str:
        return (
            f"WdsSource('wds:{self.pattern}', streams={self.num_streams}, "
            f"buffer={self.buffer}, cycle={self.cycle}, resample={self.resample})"
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

    def readers_per_stream(self, readers: int) -> int:
        """How many of ``readers`` (processes x workers) read each stream (1: no stream is
        read twice; see the module docstring)."""
        return readers // math.gcd(readers, self.num_streams)

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
            if sum(totals) == 0 and not any(self.count(s) for s in range(len(self.urls))):
                raise ValueError(
                    f"wds:{self.pattern}: all {len(self.urls)} shards are empty or unreadable "
                    f"(see the warnings above); check or rewrite them."
                )
            # An epoch whose shards (for this stream) are all empty or unreadable adds no
            # position: the stream goes on with its next epoch's shards.
            for g, total in enumerate(totals):
                if pos < total:
                    return epoch, g, pos
                pos -= total
            epoch += 1

    def _read_shard(self, shard: int, skip: int):
        """Exactly ``count(shard) - skip`` slots ``(name, sample | None)``; ``name`` is
        ``<shard url>/<sample key>``."""
        url, count, n = self.urls[shard], self.count(shard), 0
        samples = iter_tar_samples(url, skip=skip)
        while n < count:
            # The yield stays outside the try: a generator closed at interpreter exit gets
            # GeneratorExit there, and an except clause would then look up module globals
            # already torn down (printing a TypeError/AttributeError at exit).
            try:
                key, sample = next(samples)
            except StopIteration:
                _warn_broken(url, n, f"it ends there, but its count is {count}")
                break
            except _TAR_ERRORS as e:
                _warn_broken(url, n, f"{type(e).__name__}: {e}")
                break
            if n >= skip:
                yield f"{url}/{key}", sample
            n += 1
        samples.close()
        for m in range(max(n, skip), count):  # fewer samples than counted: unusable slots
            yield f"{url} sample {m} (past the readable end)", None

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
        """Positions ``m = start, start + 1, ...`` of stream ``stream`` of ``streams``, as
        ``(m, take)``: ``take()`` -> ``(example, skip_counts)`` decodes the sample at ``m``.
        A reader that does not take position ``m`` does not call it: the sample is read
        (the tar is sequential) but never decoded."""
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
                m = window * size + i
                yield (
                    m,
                    functools.partial(
                        self._take, raw, perm, i, (stream, m), processor, max_attempts
                    ),
                )
            window += 1

    def _take(self, raw, perm, i, key, processor, max_attempts):
        """The example at window slot ``i`` (or the next usable one of the window)."""
        size = len(raw)
        counts = np.zeros(len(D.SKIP_REASONS), np.int32)
        last = None
        for attempt in range(min(size, max_attempts)):
            name, sample = raw[perm[(i + attempt) % size]]
            try:
                pil = not processor.extra_transforms
                return processor.prepare(self.decode(name, sample, pil=pil), key), counts
            except D.SkipExample as e:
                counts[D.reason_index(e.reason)] += 1
                last = e
            except Exception as e:  # noqa: BLE001  (bad data must never stop a run)
                counts[D.reason_index("error")] += 1
                last = e
            if sample is not None:  # None: a broken shard's slot, reported once per shard
                D.log_skip(name, last)
        raise D.skip_error(self, min(size, max_attempts), counts, last)

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
            except _TAR_ERRORS as e:
                n = sum(1 for x in index if x[0] == shard)
                _warn_broken(url, n, f"{type(e).__name__}: {e}")
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
