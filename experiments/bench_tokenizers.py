"""Tokenizer throughput: ``clip_bpe`` (Python) vs ``hf`` (Rust ``tokenizers``), CLIP vocabulary.

    ALIGNJAX_CLIP_BPE=/path/to/bpe_simple_vocab_16e6.txt.gz python experiments/bench_tokenizers.py
    python experiments/bench_tokenizers.py --captions 5000 --seeds 3 --out tokenizers.json

Both backends get the same vocabulary -- OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (found as
``clip_bpe`` finds it: ``--bpe``, ``$ALIGNJAX_CLIP_BPE``, or an installed open_clip), turned
into a ``tokenizer.json`` by transformers' CLIP conversion for ``hf`` -- and the same captions,
and must give the same ids (checked first). Captions per seed: ``--captions`` texts, half
``ShapesDataset`` captions (tiny vocabulary: the word cache of clip_bpe hits nearly always),
half generated: 8-24 words drawn from the vocabulary's 20,000 first ASCII whole-word tokens, with
capitals, digits and punctuation (a word cache that warms over the run, as in a worker).

Modes, each on fresh tokenizer objects (cold caches) per seed:

- ``one``: ``tok([caption])`` per caption, as the data pipeline's workers call it;
- ``batch``: ``tok(captions)`` in batches of ``--batch`` (evaluation prompts; ``hf`` then
  runs ``encode_batch`` on the Rust thread pool, which uses every core).

tokens/s counts the body tokens (BOS/EOS/padding excluded) of the whole caption set, so
both backends are credited the same work; mean +- std over ``--seeds`` caption sets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
from alignjax.data import clip_bpe, synthetic
from alignjax.data.hf_tokenizer import HFTokenizer

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def clip_tokenizer_json(bpe_path: str, out_dir: str) -> str:
    """CLIP's tokenizer.json as transformers writes it (the Hub files' conversion)."""
    import transformers  # only to write the file

    clip_bpe.write_hf_files(bpe_path, out_dir)
    with open(os.path.join(out_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(out_dir, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(m.split()) for m in f.read().strip().split("\n")[1:]]
    path = os.path.join(out_dir, "tokenizer.json")
    transformers.CLIPTokenizer(vocab=vocab, merges=merges).backend_tokenizer.save(path)
    return path


def make_captions(n: int, seed: int, words: list[str]) -> list[str]:
    rng = random.Random(seed)
    shapes = synthetic.ShapesDataset("train", seed=seed)
    out = [shapes[i]["caption"] for i in range(n // 2)]
    for _ in range(n - len(out)):
        parts = []
        for _ in range(rng.randint(8, 24)):
            r = rng.random()
            w = rng.choice(words)
            if r < 0.1:
                w = w.title()
            elif r < 0.15:
                w = str(rng.randint(0, 2024))
            parts.append(w + ("," if rng.random() < 0.08 else ""))
        out.append(" ".join(parts) + rng.choice([".", "", "!"]))
    rng.shuffle(out)
    return out


def seconds(tok, batches: list[list[str]]) -> float:
    """Wall time of tokenizing every batch with `tok`."""
    began = time.perf_counter()
    for batch in batches:
        tok(batch)
    return time.perf_counter() - began


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bpe", default="", help="CLIP BPE vocabulary (default: as clip_bpe finds it)")
    p.add_argument("--captions", type=int, default=20000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--context_length", type=int, default=77)
    p.add_argument("--out", default=os.path.join(RESULTS, "tokenizers.json"))
    args = p.parse_args(argv)

    bpe = clip_bpe.find_clip_bpe(args.bpe or None)
    if bpe is None:
        print(
            f"error: CLIP BPE vocabulary not found (--bpe={args.bpe!r}): give --bpe or set "
            f"$ALIGNJAX_CLIP_BPE to OpenAI's {clip_bpe.OPENAI_BPE_NAME} (open_clip's wheel "
            f"ships it: pip download --no-deps open_clip_torch, then unzip it).",
            file=sys.stderr,
        )
        return 2
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        tok_json = clip_tokenizer_json(bpe, d)
        with open(tok_json, encoding="utf-8") as f:
            vocab = json.load(f)["model"]["vocab"]
        ids_to_word = sorted((i, w[:-4]) for w, i in vocab.items() if w.endswith("</w>"))
        words = [w for i, w in ids_to_word if i >= 512 and w.isascii() and w.isalpha()][:20000]
        make = {
            "clip_bpe": lambda: clip_bpe.CLIPBPETokenizer(bpe, context_length=args.context_length),
            "hf": lambda: HFTokenizer(tok_json, context_length=args.context_length),
        }
        # Same ids first (clean generated text: no HTML entities or mojibake, see hf_tokenizer).
        check = make_captions(2000, 1234, words)
        a, b = make["clip_bpe"](), make["hf"]()
        same = bool(np.array_equal(a(check), b(check)))
        runs = {(n, m): [] for n in make for m in ("one", "batch")}
        n_tokens = []
        for seed in range(args.seeds):
            caps = make_captions(args.captions, seed, words)
            n_tokens.append(sum(len(a.encode(c)) for c in caps))
            ones = [[c] for c in caps]
            batches = [caps[i : i + args.batch] for i in range(0, len(caps), args.batch)]
            for name, build in make.items():
                runs[name, "one"].append(seconds(build(), ones))
                runs[name, "batch"].append(seconds(build(), batches))

    rows = []
    for (name, mode), secs in runs.items():
        caps_s = np.asarray([args.captions / s for s in secs])
        tok_s = np.asarray([n / s for n, s in zip(n_tokens, secs)])
        rows.append(
            dict(
                backend=name,
                mode=mode,
                captions_per_s_mean=float(caps_s.mean()),
                captions_per_s_std=float(caps_s.std()),
                tokens_per_s_mean=float(tok_s.mean()),
                tokens_per_s_std=float(tok_s.std()),
            )
        )
    base = {r["mode"]: r["tokens_per_s_mean"] for r in rows if r["backend"] == "clip_bpe"}
    for r in rows:
        r["speedup_vs_clip_bpe"] = r["tokens_per_s_mean"] / base[r["mode"]]

    print(
        f"\nCLIP BPE vocabulary, {args.captions} captions x {args.seeds} seeds "
        f"({np.mean(n_tokens) / args.captions:.1f} tokens/caption), context {args.context_length}, "
        f"same ids: {same}, {os.cpu_count()} CPUs, load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f} (other processes share the cores)"
    )
    print(f"{'backend':<9} {'mode':<6} {'captions/s':>20} {'tokens/s':>22} {'speedup':>8}")
    for r in rows:
        print(
            f"{r['backend']:<9} {r['mode']:<6} "
            f"{r['captions_per_s_mean']:>11,.0f} +- {r['captions_per_s_std']:>6,.0f} "
            f"{r['tokens_per_s_mean']:>12,.0f} +- {r['tokens_per_s_std']:>7,.0f} "
            f"{r['speedup_vs_clip_bpe']:>7.1f}x"
        )
    wall = time.perf_counter() - began
    print(f"wall time {wall:.0f} s")
    result = dict(
        command=" ".join(["python experiments/bench_tokenizers.py", *(argv or sys.argv[1:])]),
        vocabulary=os.path.basename(bpe),
        captions=args.captions,
        seeds=args.seeds,
        batch=args.batch,
        context_length=args.context_length,
        tokens_per_caption=float(np.mean(n_tokens) / args.captions),
        same_ids=same,
        cpus=os.cpu_count(),
        load_average_before_after=[load_before, os.getloadavg()[0]],
        python=platform.python_version(),
        tokenizers_version=__import__("tokenizers").__version__,
        wall_s=wall,
        rows=rows,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
