"""Dataset writer: a folder or CSV/JSONL of images + captions -> WebDataset shards or TFDS.

Usage::

    # WebDataset shards (img2dataset's layout: KEY.jpg, KEY.txt, KEY.json, NNNNN_stats.json)
    python -m alignjax.data.write wds --input data.csv --output shards/ --shard_size 1000
    # -> read with  wds:shards/{00000..000NN}.tar   (the command prints the exact spec)

    # an ArrayRecord TFDS dataset (no TensorFlow needed)
    python -m alignjax.data.write tfds --input photos/ --output ~/tensorflow_datasets \\
        --name my_photos --test_fraction 0.05
    # -> read with  tfds:my_photos?data_dir=~/tensorflow_datasets

``--input`` is a CSV/TSV/JSONL table (columns as for ``csv:``; ``--image_key``,
``--caption_key``, ``--label_key``) or a folder of images with same-named ``.txt`` captions
(class subfolders become labels). ``--max_side N`` re-encodes images whose shorter side
exceeds N (JPEG quality 95) to keep shards small; otherwise the original bytes are copied.
Unreadable images and images without a caption are left out (each named on stderr, then
counted). A progress bar shows examples written.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from typing import Any

from alignjax import errors
from alignjax.data import csv_source, tfds_source
from alignjax.data import decode as D

__all__ = ["add_tar_member", "drop_uncaptioned", "load_rows", "main", "write_tfds", "write_wds"]


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm  # pylint: disable=g-import-not-at-top

        return tqdm(total=total, desc=desc, unit="ex", file=sys.stderr)
    except ImportError:  # a minimal stand-in

        class _Bar:
            n = 0

            def update(self, k=1):
                self.n += k
                if self.n % 1000 == 0 or self.n == total:
                    print(f"{desc}: {self.n}/{total}", file=sys.stderr)

            def close(self):
                pass

        return _Bar()


def load_rows(
    path: str, image_key="filepath", caption_key="title", label_key=None
) -> tuple[list[dict[str, Any]], list[str] | None]:
    """Rows ``{'filepath': abs path, 'title': caption(s), ['label': int]}`` and class names."""
    if os.path.isdir(path):
        rows = tfds_source.list_image_text_folder(path)
        label_key = "label" if rows and "label" in rows[0] else None
        image_key, caption_key = "filepath", "title"
    else:
        fmt = "jsonl" if path.endswith((".jsonl", ".json")) else "csv"
        rows = csv_source.read_table(path, fmt)
        root = os.path.dirname(os.path.abspath(path))
        for r in rows:
            p = str(r.get(image_key) or "")
            if p and "://" not in p and not os.path.isabs(p):
                r[image_key] = os.path.join(root, p)
    out, names = [], None
    if label_key:
        raw = [r.get(label_key) for r in rows]
        try:
            labels = [int(v) for v in raw]
        except (TypeError, ValueError):
            names = sorted({str(v) for v in raw})
            labels = [names.index(str(v)) for v in raw]
        if names is None:
            names = [str(i) for i in range(max(labels) + 1)]
    for i, r in enumerate(rows):
        row = {"filepath": str(r.get(image_key) or ""), "title": r.get(caption_key) or ""}
        if label_key:
            row["label"] = labels[i]
        out.append(row)
    return out, names


MAX_REPORTED = 20  # per run: one line each for the first images left out, then a count


def _has_caption(caption) -> bool:
    if isinstance(caption, (list, tuple)):
        return any(str(c).strip() for c in caption if c is not None)
    return caption is not None and bool(str(caption).strip())


def drop_uncaptioned(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` without those with no caption, each left out said on stderr (one line
    naming the image, the first ``MAX_REPORTED``; then a count): an empty caption would
    only be skipped at training time, silently."""
    kept, dropped = [], 0
    for row in rows:
        if _has_caption(row.get("title")):
            kept.append(row)
            continue
        dropped += 1
        if dropped <= MAX_REPORTED:
            print(
                f"write: {row['filepath']} has no caption (no same-named .txt file, or an "
                f"empty caption column): left out.",
                file=sys.stderr,
            )
    if dropped > MAX_REPORTED:
        print(
            f"write: {dropped - MAX_REPORTED} more images without a caption left out.",
            file=sys.stderr,
        )
    return kept


def _image_payload(path: str, max_side: int | None) -> tuple[bytes, str]:
    data = D.read_bytes(path)
    ext = os.path.splitext(path)[1].lower().lstrip(".") or "jpg"
    ext = {"jpeg": "jpg"}.get(ext, ext)
    if max_side or ext not in ("jpg", "png", "webp"):
        img = D.decode_image(data)  # also rejects undecodable files
        if max_side and min(img.size) > max_side:
            scale = max_side / min(img.size)
            img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), 3)
        if max_side or ext not in ("jpg", "png", "webp"):
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=95)
            return buf.getvalue(), "jpg"
    else:
        D.decode_image(data)  # leave out what no reader could decode
    return data, ext


def add_tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    """Adds `payload` as file `name`, with mtime 0 so that the same data give the same bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(payload))


def write_wds(rows, output: str, shard_size: int = 1000, max_side: int | None = None) -> str:
    """Writes ``output/{00000..}.tar`` (+ ``_stats.json``); returns the ``wds:`` spec."""
    os.makedirs(output, exist_ok=True)
    before = len(rows)
    rows = drop_uncaptioned(rows)
    uncaptioned = before - len(rows)
    bar = _progress(len(rows), "writing shards")
    shard, written, failed, key = 0, 0, 0, 0
    num_shards = max(1, -(-len(rows) // shard_size))
    for shard in range(num_shards):
        ok = bad = 0
        with tarfile.open(os.path.join(output, f"{shard:05d}.tar"), "w") as tar:
            for row in rows[shard * shard_size : (shard + 1) * shard_size]:
                bar.update(1)
                try:
                    payload, ext = _image_payload(row["filepath"], max_side)
                except D.SkipExample:
                    bad += 1
                    continue
                name = f"{shard:05d}{key:06d}"
                key += 1
                caps = row["title"]
                add_tar_member(tar, f"{name}.{ext}", payload)
                meta = {"filepath": row["filepath"]}
                if isinstance(caps, (list, tuple)):
                    meta["captions"] = [str(c) for c in caps]
                else:
                    meta["caption"] = str(caps)
                    add_tar_member(tar, f"{name}.txt", str(caps).encode("utf-8"))
                add_tar_member(tar, f"{name}.json", json.dumps(meta).encode("utf-8"))
                if "label" in row:
                    add_tar_member(tar, f"{name}.cls", str(row["label"]).encode())
                ok += 1
        stats = {"count": ok + bad, "successes": ok, "failed_to_download": bad}
        with open(os.path.join(output, f"{shard:05d}_stats.json"), "w") as f:
            json.dump(stats, f)
        written, failed = written + ok, failed + bad
    bar.close()
    spec = f"wds:{os.path.abspath(output)}/{{00000..{num_shards - 1:05d}}}.tar"
    no_caption = f", {uncaptioned} without a caption" if uncaptioned else ""
    print(
        f"wrote {written} samples in {num_shards} shards ({failed} unreadable{no_caption} "
        f"left out): {spec}"
    )
    return spec


def write_tfds(rows, data_dir: str, name: str, classnames=None, test_fraction: float = 0.0) -> str:
    """Writes an ArrayRecord TFDS dataset ``name`` (splits train[/test]); returns the spec."""
    rows = drop_uncaptioned(rows)
    n_test = round(len(rows) * test_fraction)
    splits = {"train": rows[n_test:]}
    if n_test:
        splits["test"] = rows[:n_test]
    builder = tfds_source.ImageTextFolder(
        name=name, rows_by_split=splits, classnames=classnames, data_dir=data_dir
    )
    builder.download_and_prepare()
    spec = f"tfds:{name}?data_dir={os.path.abspath(data_dir)}"
    print(f"wrote {', '.join(f'{k}: {len(v)}' for k, v in splits.items())} examples: {spec}")
    return spec


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(
        prog="python -m alignjax.data.write",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("format", choices=("wds", "tfds"))
    ap.add_argument("--input", required=True, help="CSV/TSV/JSONL table or image folder")
    ap.add_argument("--output", required=True, help="shard folder (wds) or TFDS data_dir")
    ap.add_argument("--image_key", default="filepath")
    ap.add_argument("--caption_key", default="title")
    ap.add_argument("--label_key", default=None)
    ap.add_argument("--shard_size", type=int, default=1000)
    ap.add_argument("--max_side", type=int, default=None)
    ap.add_argument("--name", default=None, help="TFDS dataset name (tfds)")
    ap.add_argument("--test_fraction", type=float, default=0.0, help="tfds: held-out split")
    args = ap.parse_args(argv)
    rows, names = load_rows(args.input, args.image_key, args.caption_key, args.label_key)
    if not rows:
        ap.error(f"{args.input} has no images.")
    if args.format == "wds":
        return write_wds(rows, args.output, args.shard_size, args.max_side)
    if not args.name:
        ap.error("tfds needs --name (a snake_case dataset name).")
    return write_tfds(rows, args.output, args.name, names, args.test_fraction)


if __name__ == "__main__":
    errors.run_main(main)
