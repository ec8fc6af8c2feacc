"""Pictures of a run: training curves, similarity matrices, predictions, confusion matrices.

Pure drawing functions over numpy arrays and lists, each writing one PNG with matplotlib's
`Figure` API (no GUI backend, no global pyplot state: safe on headless hosts and in
threads). The data they draw are prepared by the evaluators (`Evaluator.pictures`) and the
trainer; `alignjax.report` gathers the files into one HTML page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ['confusion_matrix', 'plot_confusion', 'plot_curves', 'plot_predictions',
           'plot_similarity', 'plot_token_maps', 'eval_curve_keys', 'token_maps']  # fmt: skip

RIGHT, WRONG = 'tab:green', 'tab:red'
# Evaluation metrics drawn in the curves: accuracy and recall@1 of every evaluator.
_EVAL_CURVE = re.compile(r'^(zeroshot|retrieval|cross_modal|fewshot)/[^@]*/(acc1|\w*recall@1)$')


def _shown_text(text: str, n: int = 42) -> str:
    text = ' '.join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + '…'


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 or float image [H, W] / [H, W, C] -> something imshow draws as the data shows."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.dtype != np.uint8:  # normalised floats: stretch to [0, 1] for display
        lo, hi = float(image.min()), float(image.max())
        image = (image - lo) / (hi - lo + 1e-8)
    return image


def eval_curve_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """The evaluation metrics the curves show: every acc1 and recall@1 logged (global scorer)."""
    keys = {k for r in records for k in r if _EVAL_CURVE.match(k)}
    return sorted(keys)


def plot_curves(records: Sequence[dict[str, Any]], path: str, title: str = '') -> str:
    """Loss, learning rate and evaluation metrics against the step, from metrics.jsonl
    records (`alignjax.workdir.read_metrics`). Panels whose metric was never logged are
    left out."""
    panels = [('train/loss', 'loss'), ('train/lr', 'learning rate')]
    panels = [(k, label) for k, label in panels if any(k in r for r in records)]
    evals = eval_curve_keys(records)
    n = len(panels) + bool(evals)
    fig = Figure(figsize=(4.2 * max(n, 1), 3.3))
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        pts = [(r['step'], r[key]) for r in records if key in r and math.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), lw=1.2)
        ax.set_xlabel('step')
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if key == 'train/loss' and pts and min(p[1] for p in pts) > 0:
            ax.set_yscale('log')
    if evals:
        ax = fig.add_subplot(1, n, n)
        for key in evals:
            pts = [(r['step'], r[key]) for r in records if key in r]
            ax.plot(*zip(*pts), '-o', ms=3, lw=1, label=key.split('/', 1)[1])
        ax.set_xlabel('step')
        ax.set_ylim(-0.02, 1.02)
        ax.set_title('evaluation', fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc='lower right')
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_similarity(
    sim: np.ndarray, images: Sequence[np.ndarray], captions: Sequence[str], path: str, title=''
) -> str:
    """The [n, n] cosine similarities of n images (columns, thumbnails on top) and their
    captions (rows): a trained model's matrix is brightest on the diagonal."""
    sim = np.asarray(sim, np.float32)
    n = sim.shape[0]
    fig = Figure(figsize=(2.8 + 0.42 * n, 1.2 + 0.42 * n))
    grid = fig.add_gridspec(2, n, height_ratios=(1, n), hspace=0.05, wspace=0.05)
    for j in range(n):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(_as_rgb(images[j]), cmap='gray')
        ax.set_axis_off()
        ax.set_title(str(j), fontsize=6, pad=1)  # the column it is
    ax = fig.add_subplot(grid[1, :])
    im = ax.imshow(sim, cmap='viridis')
    ax.set_yticks(range(n), [_shown_text(c, 38) for c in captions], fontsize=6)
    ax.set_xticks(range(n), [str(j) for j in range(n)], fontsize=6)
    ax.set_xlabel('image', fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches='tight')
    return path


def plot_predictions(
    images: Sequence[np.ndarray],
    top: np.ndarray,
    labels: np.ndarray,
    classnames: Sequence[str],
    path: str,
    title: str = '',
) -> str:
    """A grid of images with their top-k predicted classes (`top` [n, k], best first):
    the first in green when it is the true class (`labels` [n]), red otherwise; the true
    class under a wrong prediction."""
    n = len(images)
    cols = min(n, 8)
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(1.6 * cols, 2.2 * rows), layout='constrained')  # room for titles
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(_as_rgb(images[i]), cmap='gray')
        ax.set_axis_off()
        right = int(top[i][0]) == int(labels[i])
        lines = [_shown_text(classnames[int(c)], 18) for c in top[i]]
        ax.set_title('\n'.join(lines), fontsize=6, color=RIGHT if right else WRONG)
        if not right:  # Inside the image, so that rows never overlap.
            ax.text(0.5, 0.02, f'true: {_shown_text(classnames[int(labels[i])], 16)}',
                    transform=ax.transAxes, ha='center', va='bottom', fontsize=6,
                    bbox=dict(facecolor='white', alpha=0.75, pad=1, lw=0))  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    return path


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """[C, C] int64 counts: row = true class, column = predicted class."""
    out = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(out, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return out


def plot_confusion(counts: np.ndarray, classnames: Sequence[str], path: str, title='') -> str:
    """A confusion matrix, each row normalised to the share of its class (counts printed
    when the matrix is small enough to read them)."""
    counts = np.asarray(counts)
    c = counts.shape[0]
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(3.0 + 0.35 * c, 14.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    im = ax.imshow(rows, cmap='Blues', vmin=0.0, vmax=1.0)
    names = [_shown_text(n, 20) for n in classnames]
    fs = 7 if c <= 20 else 4
    ax.set_xticks(range(c), names, rotation=60, ha='right', fontsize=fs)
    ax.set_yticks(range(c), names, fontsize=fs)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if counts[i, j]:
                    color = 'white' if rows[i, j] > 0.5 else 'black'
                    ax.text(j, i, str(counts[i, j]), ha='center', va='center', fontsize=6,
                            color=color)  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def token_maps(image_tokens: np.ndarray, text_tokens: np.ndarray) -> np.ndarray | None:
    """[n_words, h, w] word-to-patch similarities ``<t_j, v_p>`` of one caption's token
    embeddings [n_words, D] against one image's patch tokens [h * w, D] laid out on the
    square patch grid; None when the patch count is not a square (a class token, or a
    learned token reduction such as Wukong's)."""
    n = image_tokens.shape[0]
    side = int(round(math.sqrt(n)))
    if side * side != n:
        return None
    sim = np.asarray(text_tokens, np.float32) @ np.asarray(image_tokens, np.float32).T
    return sim.reshape(-1, side, side)


def plot_token_maps(
    images: Sequence[np.ndarray],
    words: Sequence[Sequence[str]],
    maps: Sequence[np.ndarray],
    path: str,
    title: str = '',
    max_words: int = 6,
) -> str:
    """Word-to-patch heat maps: a row per image (the image, then one panel per word of its
    caption with that word's patch similarities over the image, brightest where the word
    matches best). ``maps[i]``: [len(words[i]), h, w] (`token_maps`)."""
    cols = 1 + min(max_words, max((len(w) for w in words), default=0))
    rows = len(images)
    fig = Figure(figsize=(1.5 * cols, 1.65 * rows), layout='constrained')
    for i, (image, ws, m) in enumerate(zip(images, words, maps)):
        image = _as_rgb(image)
        h, w = image.shape[:2]
        ax = fig.add_subplot(rows, cols, i * cols + 1)
        ax.imshow(image, cmap='gray')
        ax.set_axis_off()
        for j, word in enumerate(ws[: cols - 1]):
            ax = fig.add_subplot(rows, cols, i * cols + 2 + j)
            ax.imshow(image, cmap='gray', extent=(0, w, h, 0))
            ax.imshow(m[j], cmap='jet', alpha=0.5, extent=(0, w, h, 0), interpolation='bilinear')
            ax.set_title(_shown_text(word, 14), fontsize=7)
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    return path
