"""Dataset statistics: ``python -m alignjax.data.stats SPEC [--split S] [--max_examples N]``.

Prints the sample count, caption length distribution (characters and words), image size
distribution, labels, and the examples that would be skipped (by reason), for any source
spec (``csv:``, ``jsonl:``, ``tfds:``, ``wds:``, ``mix:``, ``synthetic:``). With
``--max_examples`` below the size, an evenly spaced subset is measured. ``--json PATH`` also
writes the numbers.
"""

from __future__ import annotations

import argparse
import collections
import json
from typing import Any

import numpy as np

from alignjax import errors
from alignjax.data import decode as D
from alignjax.data import sources
from alignjax.data import transforms as T

__all__ = ["dataset_stats", "format_stats", "main"]


def _dist(values) -> dict[str, float]:
    if not values:
        return {}
    v = np.asarray(values, np.float64)
    q = np.percentile(v, [0, 10, 50, 90, 100])
    return {"min": q[0], "p10": q[1], "median": q[2], "p90": q[3], "max": q[4], "mean": v.mean()}


def dataset_stats(source, max_examples: int = 2000) -> dict[str, Any]:
    """Measures up to ``max_examples`` evenly spaced examples of a random-access source."""
    n = len(source)
    take = min(n, max_examples) if max_examples else n
    idx = np.unique(np.linspace(0, n - 1, take).round().astype(int)) if take else []
    pre = getattr(source, "preprocess", None) or T.Preprocess()
    chars, words, widths, heights, ncaps = [], [], [], [], []
    skipped, labels = collections.Counter(), collections.Counter()
    for i in idx:
        try:
            ex = dict(source[int(i)])
            caps = ex.get("captions") or [ex.get("caption")]
            caps = [D.clean_caption(c) for c in caps if c is not None]
            if not caps:
                raise D.SkipExample("missing_caption")
            D.check_caption(caps[0], pre.max_caption_chars)
        except D.SkipExample as e:
            skipped[e.reason] += 1
            continue
        except Exception:  # noqa: BLE001  (statistics must cover broken data too)
            skipped["error"] += 1
            continue
        h, w = np.asarray(ex["image"]).shape[:2]
        heights.append(h)
        widths.append(w)
        ncaps.append(len(caps))
        for c in caps:
            chars.append(len(c))
            words.append(len(c.split()))
        for k, v in (ex.get("labels") or {}).items():
            labels[f"{k}={v}"] += 1
    return {
        "source": repr(source),
        "num_examples": n,
        "measured": len(idx),
        "usable": len(widths),
        "skipped": dict(skipped),
        "captions_per_example": _dist(ncaps),
        "caption_chars": _dist(chars),
        "caption_words": _dist(words),
        "image_width": _dist(widths),
        "image_height": _dist(heights),
        "num_labels": len(labels),
        "top_labels": dict(labels.most_common(10)),
    }


def format_stats(s: dict[str, Any]) -> str:
    lines = [
        f"source:     {s['source']}",
        f"examples:   {s['num_examples']} ({s['measured']} measured, {s['usable']} usable)",
        f"skipped:    {s['skipped'] or 'none'}",
    ]
    cols = ("min", "p10", "median", "p90", "max", "mean")
    lines.append(f"{'':22s}" + "".join(f"{c:>9s}" for c in cols))
    for key in (
        "caption_chars",
        "caption_words",
        "captions_per_example",
        "image_width",
        "image_height",
    ):
        d = s[key]
        if d:
            lines.append(f"{key:22s}" + "".join(f"{d[c]:9.1f}" for c in cols))
    if s["num_labels"]:
        lines.append(f"labels:     {s['num_labels']} distinct; top: {s['top_labels']}")
    return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m alignjax.data.stats", description=__doc__)
    ap.add_argument("spec", help="source spec, e.g. 'csv:data.csv' or 'wds:s/{0..9}.tar'")
    ap.add_argument("--split", default="train")
    ap.add_argument("--max_examples", type=int, default=2000, help="0: all")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    src = sources.get_source(args.spec, args.split)
    s = dataset_stats(src, args.max_examples)
    print(format_stats(s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1, default=float)
    return s


if __name__ == "__main__":
    errors.run_main(main)
