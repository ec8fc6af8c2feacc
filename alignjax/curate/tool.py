"""`python -m alignjax.curate`: select a subset of any source and write it as WebDataset shards.

    python -m alignjax.curate --source wds:raw/{00000..00099}.tar --model runs/clip \\
        --output curated/ --clip_keep_fraction 0.5 --dedup exact --subset_fraction 0.25

Three stages, each resumable, all state under ``--output``:

1. **scan** (every process, its own chunks): reads the source in chunks of
   ``--chunk_size`` examples (chunk ``c`` holds indices ``[c * chunk_size, (c + 1) *
   chunk_size)``, process ``p`` of ``P`` scans the chunks ``c % P == p``), applies the
   caption and image rules, and embeds the images and captions that pass with the model
   (``--model``: a training workdir, an alignjax export or converted weights), sharded over
   the process's devices. Each chunk is written atomically to ``scan/chunk_<c>.npz``; a
   rerun skips the chunks already there.
2. **select** (process 0, once every chunk is there): CLIP-score filter (the cosine of an
   image's and its caption's embeddings, ``--clip_threshold`` or ``--clip_keep_fraction``),
   near-duplicate removal on the image embeddings (``--dedup exact|lsh``, one kept per group:
   the highest CLIP score), then a cluster-balanced subset (``--subset_fraction``,
   ``--subset_clusters``; ``--subset_prefer_score`` favours high CLIP scores in each
   cluster). The stages apply in that order, each to what the previous kept. It writes
   ``manifest.jsonl`` (one line per example: ``index``, ``key``, ``kept``, the ``reason`` it
   was dropped, its CLIP ``score``, its duplicate ``group`` and ``cluster``) and
   ``summary.json``, and prints the table of reasons. An example the source cannot read
   (``unreadable_<why>``) is named by its index, its key being unknown.
3. **write** (shard ``s`` by process ``s % P``): the kept examples in source order, in shards
   of ``--shard_size``, written as ``shards/<s>.tar`` (img2dataset's layout: ``KEY.jpg``,
   ``KEY.txt``, ``KEY.json``), each atomically; existing shards are kept. Captions can be
   replaced or added from a file keyed by sample key (``--recaption``, below).

Everything is deterministic: the same flags give the same shards, whatever the number of
processes, and after a kill at any point.

**Recaption hook.** ``--recaption FILE`` (JSONL lines ``{"key": ..., "caption": ...}``, or
a CSV/TSV with ``key`` and ``caption`` columns) merges captions at write time, for the
examples whose key it lists: ``--recaption_mode replace`` writes the new caption as the
sample's caption (``KEY.txt``; the old one stays in ``KEY.json`` as ``original_caption``);
``add`` keeps the original as the caption (``KEY.json``'s ``caption``) and adds the new one
as ``recaption``, and both, in that order, as ``captions``; those samples have no
``KEY.txt``, so ``wds:...`` reads the original and ``wds:...?caption_key=recaption`` the new
one. This is how long
captions (DreamLIP) or an MLLM's captions enter a data set.

Memory: a chunk's images and the embeddings ([N, D] float32 per side, kept for selection)
are on the host; no [N, N] array is ever formed (duplicate search runs in chunks on the
device, `alignjax.curate.dedup`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
import tarfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from alignjax import parallel, pretrained, workdir
from alignjax.curate import clusters, dedup, filters, rules
from alignjax.data import decode as data_decode
from alignjax.data import sources
from alignjax.data import write as write_lib
from alignjax.evaluate import embed

__all__ = ['Curation', 'main', 'read_recaptions', 'scan', 'select', 'write_shards']

SCAN_DIR = 'scan'
SHARD_DIR = 'shards'
MANIFEST_FILE = 'manifest.jsonl'
SUMMARY_FILE = 'summary.json'
KEPT = ''  # The `reason` of a kept example.


@dataclasses.dataclass
class Curation:
    """What to select and how (the command line's flags)."""

    source: str
    output: str
    split: str = 'train'
    model: str | None = None
    max_examples: int | None = None
    rules: rules.Rules = dataclasses.field(default_factory=rules.Rules)
    clip_threshold: float | None = None
    clip_keep_fraction: float | None = None
    dedup: str = 'none'  # 'none' | 'exact' | 'lsh'
    dedup_threshold: float = 0.95
    subset_fraction: float | None = None
    subset_clusters: int = 16
    subset_prefer_score: bool = False
    seed: int = 0
    recaption: str | None = None
    recaption_mode: str = 'replace'
    shard_size: int = 1000
    chunk_size: int = 4096
    batch_size: int = 256
    process_id: int = 0
    num_processes: int = 1

    def __post_init__(self):
        if self.dedup not in ('none', 'exact', 'lsh'):
            raise ValueError(f"--dedup must be none, exact or lsh; got {self.dedup!r}.")
        if self.recaption_mode not in ('replace', 'add'):
            raise ValueError(
                f"--recaption_mode must be replace or add; got {self.recaption_mode!r}."
            )
        if self.clip_threshold is not None and self.clip_keep_fraction is not None:
            raise ValueError('Give --clip_threshold or --clip_keep_fraction, not both.')
        for name in ('shard_size', 'chunk_size', 'batch_size', 'num_processes'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'--{name} must be >= 1, got {getattr(self, name)}.')
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f'--process_id {self.process_id} is not in [0, --num_processes='
                f'{self.num_processes}).'
            )
        if self.needs_model and not self.model:
            raise ValueError(
                'CLIP-score filtering, deduplication and subsets need embeddings: pass '
                '--model (a training workdir, an alignjax export or converted weights).'
            )

    @property
    def needs_model(self) -> bool:
        return (
            self.clip_threshold is not None
            or self.clip_keep_fraction is not None
            or self.dedup != 'none'
            or self.subset_fraction is not None
        )


class _Progress:
    """One stderr line every few seconds: done / total, examples/s, ETA."""

    def __init__(self, what: str, total: int, every_s: float = 5.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float('inf')
            print(
                f'[{self.what}] {self.done}/{self.total} examples, {rate:.1f} ex/s, '
                f'ETA {eta:.0f} s',
                file=sys.stderr,
                flush=True,
            )


# -- scan ---------------------------------------------------------------------------------
def _chunk_path(output: str, c: int) -> str:
    return os.path.join(output, SCAN_DIR, f'chunk_{c:06d}.npz')


def _atomic_write(path: str, write) -> None:
    """Writes through `write(file)` to `path + '.tmp'`, then renames: a kill leaves no half
    file under the final name."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
        write(f)
    os.replace(tmp, path)


def _key(example: dict[str, Any], index: int) -> str:
    return str(example.get('key') or f'{index:09d}')


def _caption(example: dict[str, Any]) -> str:
    if 'caption' in example:
        return str(example['caption'])
    return str((example.get('captions') or [''])[0])


class _Encoder:
    """The model's image and text embeddings, sharded over this process's devices."""

    def __init__(self, model_path: str, batch_size: int):
        self.clip = pretrained.load_pretrained(model_path)
        # Each process embeds its own chunks on its local devices: no collective between
        # processes, so they need no coordinator and may run at different speeds.
        self.mesh = parallel.make_mesh(dict(data=-1, fsdp=1, tensor=1), jax.local_devices())
        self.params = jax.device_put(self.clip.params, parallel.replicated(self.mesh))
        self.embedder = embed.Embedder(self.clip.model, self.mesh, batch_size)
        self.dim = int(self.clip.config['embed_dim'])

    def __call__(self, images: list[np.ndarray], captions: list[str]):
        x = self.clip.preprocess(images)
        tokens = np.asarray(self.clip.tokenizer(captions))
        zimg = np.asarray(self.embedder.images(self.params, x), np.float32)
        ztxt = np.asarray(self.embedder.texts(self.params, tokens), np.float32)
        return zimg, ztxt


def _scan_chunk(source, lo: int, hi: int, cur: Curation, encoder) -> dict[str, np.ndarray]:
    keys, reasons, images, captions, rows = [], [], [], [], []
    for i in range(lo, hi):
        try:
            ex = source[i]
        except data_decode.SkipExample as e:
            keys.append(f'{i:09d}')
            reasons.append(f'unreadable_{e.reason}')
            continue
        keys.append(_key(ex, i))
        image = np.asarray(ex['image'])
        caption = _caption(ex)
        reason = cur.rules.reason(caption, (image.shape[1], image.shape[0]))
        reasons.append(reason or KEPT)
        if reason is None:
            rows.append(i - lo)
            images.append(image)
            captions.append(caption)
    n = hi - lo
    out = dict(
        index=np.arange(lo, hi, dtype=np.int64),
        key=np.asarray(keys, dtype=object).astype(str),
        reason=np.asarray(reasons, dtype=object).astype(str),
    )
    if encoder is not None:
        out['image_emb'] = np.zeros((n, encoder.dim), np.float32)
        out['text_emb'] = np.zeros((n, encoder.dim), np.float32)
        if images:  # Rows that failed a rule keep zero embeddings; selection skips them.
            out['image_emb'][rows], out['text_emb'][rows] = encoder(images, captions)
    return out


def scan(cur: Curation, source=None) -> int:
    """Stage 1 for this process's chunks; returns the number of chunks (all processes')."""
    source = source if source is not None else sources.get_source(cur.source, cur.split)
    n = len(source) if cur.max_examples is None else min(len(source), int(cur.max_examples))
    chunks = max(1, -(-n // cur.chunk_size))
    done = {c for c in range(chunks) if os.path.exists(_chunk_path(cur.output, c))}
    mine = [c for c in range(chunks) if c % cur.num_processes == cur.process_id and c not in done]
    if not mine:
        return chunks
    encoder = _Encoder(cur.model, cur.batch_size) if cur.needs_model else None
    todo = sum(min(n, (c + 1) * cur.chunk_size) - c * cur.chunk_size for c in mine)
    progress = _Progress('scan', todo)
    for c in mine:
        lo, hi = c * cur.chunk_size, min(n, (c + 1) * cur.chunk_size)
        arrays = _scan_chunk(source, lo, hi, cur, encoder)
        _atomic_write(_chunk_path(cur.output, c), lambda f, a=arrays: np.savez(f, **a))
        progress.update(hi - lo)
    return chunks


def _wait_for(paths: Sequence[str], what: str, timeout_s: float) -> None:
    """Polls until every path exists (another process writes them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [p for p in paths if not os.path.exists(p)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f'{len(missing)} {what} still missing after {timeout_s:.0f} s (first: '
                f'{missing[0]}); is every process running? Rerun the same command to go on.'
            )
        time.sleep(1.0)


def _load_scan(output: str, chunks: int) -> dict[str, np.ndarray]:
    parts = []
    for c in range(chunks):
        with np.load(_chunk_path(output, c)) as z:
            parts.append({k: z[k] for k in z.files})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- select -------------------------------------------------------------------------------
def select(cur: Curation, scanned: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stage 2: `reason` ('' when kept), `score`, `group` and `cluster` per example.

    Each step applies to the examples the previous ones kept: rules (from the scan), CLIP
    score, near-duplicates (one kept per group: the highest CLIP score, then the lowest
    index), cluster-balanced subset.
    """
    reason = scanned['reason'].astype(object)
    n = len(reason)
    score = np.full(n, np.nan, np.float32)
    group = np.arange(n, dtype=np.int64)
    cluster = np.full(n, -1, np.int64)
    alive = np.flatnonzero(reason == KEPT)
    if 'image_emb' in scanned and alive.size:
        zimg, ztxt = scanned['image_emb'], scanned['text_emb']
        score[alive] = filters.rowwise_cosine(zimg[alive], ztxt[alive])
    if cur.clip_threshold is not None or cur.clip_keep_fraction is not None:
        keep = filters.select_by_score(
            score[alive], threshold=cur.clip_threshold, keep_fraction=cur.clip_keep_fraction
        )
        reason[alive[~keep]] = 'clip_score'
        alive = alive[keep]
    if cur.dedup != 'none' and alive.size:
        if cur.dedup == 'exact':
            found = dedup.exact_duplicates(zimg[alive], cur.dedup_threshold, scores=score[alive])
        else:
            found = dedup.lsh_duplicates(
                zimg[alive], cur.dedup_threshold, scores=score[alive], seed=cur.seed
            )
        group[alive] = alive[found.group]
        reason[alive[~found.keep]] = 'duplicate'
        alive = alive[found.keep]
    if cur.subset_fraction is not None and alive.size:
        k = min(int(cur.subset_clusters), alive.size)
        fit = clusters.kmeans(zimg[alive], k, seed=cur.seed)
        cluster[alive] = fit.assignments
        prefer = score[alive] if cur.subset_prefer_score else None
        keep = clusters.balanced_subset(
            fit.assignments, cur.subset_fraction, seed=cur.seed, scores=prefer
        )
        reason[alive[~keep]] = 'subset'
    return dict(reason=reason.astype(str), score=score, group=group, cluster=cluster)


def _manifest_rows(scanned, selected) -> list[dict[str, Any]]:
    rows = []
    for i in range(len(scanned['index'])):
        s = float(selected['score'][i])
        rows.append(
            dict(
                index=int(scanned['index'][i]),
                key=str(scanned['key'][i]),
                kept=selected['reason'][i] == KEPT,
                reason=str(selected['reason'][i]) or None,
                score=None if np.isnan(s) else round(s, 6),
                group=int(selected['group'][i]),
                cluster=int(selected['cluster'][i]),
            )
        )
    return rows


def _write_manifest(output: str, rows: list[dict[str, Any]]) -> None:
    def write(f):
        for row in rows:
            f.write((json.dumps(row) + '\n').encode())

    _atomic_write(os.path.join(output, MANIFEST_FILE), write)


def read_manifest(output: str) -> list[dict[str, Any]]:
    """The rows of `<output>/manifest.jsonl`, in source order."""
    with open(os.path.join(output, MANIFEST_FILE)) as f:
        return [json.loads(line) for line in f]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts per reason, kept count and CLIP-score quantiles of kept / dropped."""
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r['reason'] or 'kept'] = reasons.get(r['reason'] or 'kept', 0) + 1
    out: dict[str, Any] = dict(examples=len(rows), kept=reasons.get('kept', 0), reasons=reasons)
    for what, sel in (('kept', True), ('dropped', False)):
        s = [r['score'] for r in rows if r['kept'] == sel and r['score'] is not None]
        if s:
            q = np.quantile(np.asarray(s), [0.1, 0.5, 0.9])
            out[f'score_{what}'] = dict(p10=float(q[0]), median=float(q[1]), p90=float(q[2]))
    return out


def format_summary(summary: dict[str, Any]) -> str:
    n = max(1, summary['examples'])
    lines = [f"{'reason':30s} {'examples':>9s} {'share':>7s}", '-' * 48]
    for reason, count in sorted(summary['reasons'].items(), key=lambda kv: -kv[1]):
        lines.append(f'{reason:30s} {count:9d} {count / n:7.1%}')
    lines.append('-' * 48)
    lines.append(f"{'total':30s} {summary['examples']:9d}")
    for what in ('kept', 'dropped'):
        if f'score_{what}' in summary:
            q = summary[f'score_{what}']
            lines.append(
                f"CLIP score of {what}: p10 {q['p10']:.3f}  median {q['median']:.3f}  "
                f"p90 {q['p90']:.3f}"
            )
    return '\n'.join(lines)


# -- write --------------------------------------------------------------------------------
def read_recaptions(path: str) -> dict[str, str]:
    """`{key: caption}` from a JSONL file (`{"key": ..., "caption": ...}` per line) or a
    CSV/TSV file with `key` and `caption` columns. Empty captions and repeated keys are
    errors naming the line."""
    out: dict[str, str] = {}
    with open(path, newline='') as f:
        if path.endswith(('.jsonl', '.json')):
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except ValueError as e:
                        raise ValueError(f'{path}:{n}: not a JSON object ({e}).') from None
        else:
            delimiter = '\t' if path.endswith('.tsv') else ','
            rows = list(enumerate(csv.DictReader(f, delimiter=delimiter), 2))
    for n, row in rows:
        if not isinstance(row, dict) or 'key' not in row or 'caption' not in row:
            raise ValueError(f'{path}:{n}: needs the fields "key" and "caption".')
        key, caption = str(row['key']), str(row['caption'] or '').strip()
        if not caption:
            raise ValueError(f'{path}:{n}: empty caption for key {key!r}; drop the line.')
        if key in out:
            raise ValueError(f'{path}:{n}: key {key!r} appears twice; keep one caption.')
        out[key] = caption
    return out


def _shard_path(output: str, s: int) -> str:
    return os.path.join(output, SHARD_DIR, f'{s:05d}.tar')


def _sample(cur: Curation, ex: dict[str, Any], row: dict[str, Any], recaptions) -> dict:
    caption = _caption(ex)
    meta: dict[str, Any] = dict(key=row['key'], index=row['index'], score=row['score'])
    new = recaptions.get(row['key'])
    if new is not None and cur.recaption_mode == 'replace':
        meta['original_caption'], caption = caption, new
    elif new is not None:
        meta['recaption'], meta['captions'] = new, [caption, new]
    if 'labels' in ex:
        meta['labels'] = {k: int(v) for k, v in ex['labels'].items()}
    buf = io.BytesIO()
    Image.fromarray(np.asarray(ex['image'], np.uint8)).save(buf, format='JPEG', quality=95)
    meta['caption'] = caption
    sample = dict(jpg=buf.getvalue(), json=json.dumps(meta).encode())
    if new is None or cur.recaption_mode == 'replace':
        # With a caption added, there is no KEY.txt: the reader then takes the caption from
        # KEY.json, `caption` by default, `recaption` with ?caption_key=recaption.
        sample['txt'] = caption.encode()
    return sample


def write_shards(cur: Curation, rows: Sequence[dict[str, Any]], source=None) -> list[str]:
    """Stage 3 for this process's shards; returns every shard's path (all processes')."""
    source = source if source is not None else sources.get_source(cur.source, cur.split)
    recaptions = read_recaptions(cur.recaption) if cur.recaption else {}
    kept = [r for r in rows if r['kept']]
    shards = [kept[i : i + cur.shard_size] for i in range(0, len(kept), cur.shard_size)]
    paths = [_shard_path(cur.output, s) for s in range(len(shards))]
    mine = [
        s
        for s in range(len(shards))
        if s % cur.num_processes == cur.process_id and not os.path.exists(paths[s])
    ]
    progress = _Progress('write', sum(len(shards[s]) for s in mine))
    for s in mine:

        def write(f, members=shards[s]):
            with tarfile.open(fileobj=f, mode='w', format=tarfile.USTAR_FORMAT) as tar:
                for row in members:
                    sample = _sample(cur, source[row['index']], row, recaptions)
                    for ext, payload in sample.items():
                        write_lib.add_tar_member(tar, f"{row['key']}.{ext}", payload)

        _atomic_write(paths[s], write)
        progress.update(len(shards[s]))
    return paths


# -- the command --------------------------------------------------------------------------
# Fields whose change would change the result: a rerun on the same --output must keep them.
_RESULT_FIELDS = (
    'source', 'split', 'model', 'max_examples', 'rules', 'clip_threshold',
    'clip_keep_fraction', 'dedup', 'dedup_threshold', 'subset_fraction', 'subset_clusters',
    'subset_prefer_score', 'seed', 'recaption', 'recaption_mode', 'shard_size', 'chunk_size',
)  # fmt: skip
SETTINGS_FILE = 'curation.json'


def _settings(cur: Curation) -> dict[str, Any]:
    d = dataclasses.asdict(cur)
    return {k: d[k] for k in _RESULT_FIELDS}


def _check_settings(cur: Curation) -> None:
    """Records the settings on the first run; a rerun with other settings is refused."""
    path = os.path.join(cur.output, SETTINGS_FILE)
    now = json.loads(json.dumps(_settings(cur)))
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(k for k in now if before.get(k) != now[k])
        if changed:
            raise ValueError(
                f'{cur.output} holds a curation with other settings ({", ".join(changed)}); '
                'rerun with the same flags to resume, or pick a new --output.'
            )
        return
    if cur.process_id == 0:
        workdir.write_json(path, now)


def run(cur: Curation, timeout_s: float = 24 * 3600) -> dict[str, Any]:
    """The three stages for this process; returns the summary (every process)."""
    os.makedirs(cur.output, exist_ok=True)
    _check_settings(cur)
    source = sources.get_source(cur.source, cur.split)
    chunks = scan(cur, source)
    _wait_for([_chunk_path(cur.output, c) for c in range(chunks)], 'scan chunks', timeout_s)
    manifest = os.path.join(cur.output, MANIFEST_FILE)
    if cur.process_id == 0 and not os.path.exists(manifest):
        scanned = _load_scan(cur.output, chunks)
        _write_manifest(cur.output, _manifest_rows(scanned, select(cur, scanned)))
    _wait_for([manifest], 'manifest', timeout_s)
    rows = read_manifest(cur.output)
    paths = write_shards(cur, rows, source)
    summary = summarize(rows)
    summary['shards'] = len(paths)
    if paths:
        last = len(paths) - 1
        summary['spec'] = f'wds:{os.path.join(cur.output, SHARD_DIR)}/{{00000..{last:05d}}}.tar'
    if cur.process_id == 0:
        workdir.write_json(os.path.join(cur.output, SUMMARY_FILE), summary)
    return summary


def parse_args(argv: Sequence[str] | None) -> Curation:
    p = argparse.ArgumentParser(
        prog='python -m alignjax.curate', description=__doc__.split('\n\n')[0]
    )
    p.add_argument('--source', required=True, help='any data source spec (docs/DATA.md)')
    p.add_argument('--output', required=True, help='folder for scan/, manifest, shards/')
    p.add_argument('--split', default='train')
    p.add_argument('--model', help='workdir, export or converted weights to embed with')
    p.add_argument('--max_examples', type=int, help='only the first N examples')
    g = p.add_argument_group('caption and image rules (alignjax.curate.rules.Rules)')
    g.add_argument('--drop_empty', action='store_true', help='drop captions without a word')
    g.add_argument('--min_words', type=int)
    g.add_argument('--max_words', type=int)
    g.add_argument('--max_top_fraction', type=float, help='most frequent word share above')
    g.add_argument('--repeat_min_words', type=int, default=4)
    g.add_argument('--max_run', type=int, help='one word this many times in a row')
    g.add_argument('--min_side', type=int, help='pixels')
    g.add_argument('--max_aspect', type=float)
    p.add_argument('--clip_threshold', type=float, help='keep CLIP score >= this')
    p.add_argument('--clip_keep_fraction', type=float, help='keep the top fraction by score')
    p.add_argument('--dedup', default='none', choices=('none', 'exact', 'lsh'))
    p.add_argument('--dedup_threshold', type=float, default=0.95, help='cosine of duplicates')
    p.add_argument('--subset_fraction', type=float, help='cluster-balanced subset fraction')
    p.add_argument('--subset_clusters', type=int, default=16)
    p.add_argument('--subset_prefer_score', action='store_true')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--recaption', help='JSONL / CSV / TSV of key, caption')
    p.add_argument('--recaption_mode', default='replace', choices=('replace', 'add'))
    p.add_argument('--shard_size', type=int, default=1000)
    p.add_argument('--chunk_size', type=int, default=4096)
    p.add_argument('--batch_size', type=int, default=256)
    p.add_argument('--process_id', type=int, default=0)
    p.add_argument('--num_processes', type=int, default=1)
    a = vars(p.parse_args(argv))
    chosen = {f.name: a.pop(f.name) for f in dataclasses.fields(rules.Rules)}
    return Curation(rules=rules.Rules(**chosen), **a)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line (run under `errors.run_main` by `python -m alignjax.curate`)."""
    cur = parse_args(argv)
    summary = run(cur)
    if cur.process_id == 0:
        print(format_summary(summary))
        if 'spec' in summary:
            print(f"{summary['shards']} shards; read them with  {summary['spec']}")
    return summary
