"""Input-pipeline throughput: WebDataset shards of 256-512 px JPEGs -> 224 px train batches.

    python experiments/bench_data.py                       # ~1 min on 2 CPU cores
    python experiments/bench_data.py --images 4000 --workers 1,2,4 --out bench_data.json

Writes ``--images`` random-texture JPEGs (sides 256-512 px, quality 90; like img2dataset
output) into WebDataset shards in a temporary folder, then measures images/s, side by side
in the same run, for:

- ``alignjax``: ``get_source('wds:...')`` -> ``make_train_iterator`` (decode, random-resized
  crop 224 px with scale 0.9-1.0 bicubic, caption cleanup, tokenisation, normalisation,
  batching) with ``num_workers`` grain worker processes (0 = the main process);
- ``open_clip``: open_clip's ``get_wds_dataset`` train pipeline with as many torch
  DataLoader workers, when open_clip is installed (``open_clip_torch`` with its pinned
  ``webdataset<=0.2.86``, pandas, torch and torchvision); both sides then tokenise with
  CLIP's BPE;
- ``pil_loop``: otherwise a plain PIL loop doing open_clip's per-sample work (read the tar
  sequentially, ``Image.open(...).convert('RGB')``, RandomResizedCrop(224, (0.9, 1.0),
  bicubic) + ToTensor/Normalize in numpy, tokenise), one process per worker, each reading
  its share of the shards -- an upper bound for a torch DataLoader of that code.

Each measurement skips ``--warmup`` batches (worker start-up) and times the next batches;
the two pipelines alternate ``--repeats`` times and the best rate of each counts (the
machine may be shared). The table gives images/s and images/s per worker. Note that the
``pil_loop`` workers return nothing to the main process, while alignjax's grain workers
ship every float32 batch to it, and that workers=0 runs alignjax in the main process
(compared with one PIL process).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
from alignjax import data
from alignjax.data import transforms as T
from alignjax.data import wds

SIZE = 224
MEAN = np.asarray(T.OPENAI_CLIP_MEAN, np.float32)
STD = np.asarray(T.OPENAI_CLIP_STD, np.float32)


def make_shards(folder: str, n: int, shard_size: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    for s in range(-(-n // shard_size)):
        with tarfile.open(os.path.join(folder, f"{s:05d}.tar"), "w") as tar:
            for i in range(s * shard_size, min(n, (s + 1) * shard_size)):
                w, h = (int(v) for v in rng.integers(256, 513, size=2))
                # smooth colour field + noise: JPEG sizes like photos (~20-60 KB)
                base = rng.integers(0, 256, size=(h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
                img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
                arr = np.asarray(img, np.int16) + rng.integers(-20, 21, size=(h, w, 3))
                buf = io.BytesIO()
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
                for name, payload in (
                    (f"{i:08d}.jpg", buf.getvalue()),
                    (f"{i:08d}.txt", f"a photo of texture number {i}".encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return f"{folder}/{{00000..{-(-n // shard_size) - 1:05d}}}.tar"


def bench_alignjax(pattern, workers, batch, warmup, steps, tok) -> float:
    src = data.get_source(f"wds:{pattern}?buffer=256", "train", image_size=SIZE)
    it = data.make_train_iterator(
        src,
        tokenizer=tok,
        global_batch_size=batch,
        seed=0,
        process_index=0,
        process_count=1,
        num_workers=workers,
        prefetch_buffer=2,
        normalize="clip",
    )
    with it:
        for _ in range(warmup):
            next(it)
        t = time.perf_counter()
        for _ in range(steps):
            b = next(it)
        dt = time.perf_counter() - t
    assert b["image"].shape == (batch, SIZE, SIZE, 3)
    return steps * batch / dt


# --- plain PIL loop (open_clip's per-sample work) -------------------------------------------
def _pil_worker(args):
    urls, limit, tok, seed = args
    rng = np.random.default_rng(seed)
    n, t0 = 0, None
    while True:
        for url in urls:
            for _, sample in wds.iter_tar_samples(url):
                img = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
                box = T.random_resized_crop_box(*img.size, rng, (0.9, 1.0), (3 / 4, 4 / 3))
                img = img.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box)
                x = (np.asarray(img, np.float32) / 255.0 - MEAN) / STD
                x = np.ascontiguousarray(x.transpose(2, 0, 1))  # ToTensor: CHW
                tok([sample["txt"].decode()])
                n += 1
                if n == limit[0]:
                    t0 = time.perf_counter()
                if n == limit[0] + limit[1]:
                    return limit[1] / (time.perf_counter() - t0)


def bench_pil(pattern, workers, batch, warmup, steps, tok) -> float:
    urls = wds.expand_pattern(pattern)
    w = max(1, workers)
    per = (warmup * batch // w, steps * batch // w)
    jobs = [(urls[i::w], per, tok, i) for i in range(w)]
    if w == 1:
        return _pil_worker(jobs[0])
    with mp.get_context("spawn").Pool(w) as pool:
        return sum(pool.map(_pil_worker, jobs))  # concurrent workers: rates add up


def bench_open_clip(pattern, workers, batch, warmup, steps, tok) -> float:  # pragma: no cover
    """open_clip's own webdataset train pipeline (``open_clip_train.data.get_wds_dataset``
    with ViT-B-32's preprocessing: RandomResizedCrop(224, (0.9, 1.0), bicubic), ToTensor,
    Normalize, CLIP BPE)."""
    import argparse as _argparse

    import open_clip
    from open_clip_train.data import get_wds_dataset

    _, preprocess, _ = open_clip.create_model_and_transforms("ViT-B-32")
    args = _argparse.Namespace(
        train_data=pattern,
        train_data_upsampling_factors=None,
        dataset_resampled=False,
        train_num_samples=(warmup + steps) * batch * 4,
        seed=0,
        batch_size=batch,
        workers=workers,
        world_size=1,
    )
    info = get_wds_dataset(
        args, preprocess, is_train=True, tokenizer=open_clip.get_tokenizer("ViT-B-32")
    )
    it = iter(info.dataloader)
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--shard_size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--workers", default="0,1,2", help="0: alignjax in the main process")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        import open_clip  # noqa: F401

        baseline, base_fn = "open_clip", bench_open_clip
        # The same CLIP BPE (open_clip's vocabulary file) on both sides: equal work.
        tok = data.build_tokenizer({"name": "clip_bpe", "context_length": 77})
    except ImportError:
        baseline, base_fn = "pil_loop", bench_pil
        tok = data.WordHashTokenizer(vocab_size=32000, context_length=77)
    print(f"tokenizer: {type(tok).__name__}; baseline: {baseline}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        pattern = make_shards(tmp, args.images, args.shard_size)
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        print(
            f"wrote {args.images} JPEGs ({size / args.images / 1e3:.0f} KB each) in "
            f"{time.perf_counter() - t:.0f} s"
        )
        for w in (int(v) for v in args.workers.split(",")):
            row = {"workers": w}
            for _ in range(args.repeats):  # interleaved; the best of the repeats counts
                for name, fn in (("alignjax", bench_alignjax), (baseline, base_fn)):
                    rate = fn(pattern, w, args.batch, args.warmup, args.steps, tok)
                    row[name] = max(row.get(name, 0.0), rate)
            rows.append(row)
            print(row, flush=True)
    print(
        f"\n| workers | alignjax img/s | {baseline} img/s | alignjax / worker | "
        f"{baseline} / worker | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        w = max(1, r["workers"])
        print(
            f"| {r['workers']} | {r['alignjax']:.0f} | {r[baseline]:.0f} | "
            f"{r['alignjax'] / w:.0f} | {r[baseline] / w:.0f} | "
            f"{r['alignjax'] / r[baseline]:.2f} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "baseline": baseline, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
