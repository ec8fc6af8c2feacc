"""Metric definitions, with LAION CLIP_benchmark's names and semantics.

Zero-shot classification (`acc1`, `acc5`, `mean_per_class_recall`):
  acc@k = fraction of images whose true class is among the k highest logits; with fewer
  than k classes, k is capped at the number of classes (as CLIP_benchmark does).
  mean_per_class_recall = mean over classes present in the labels of the per-class acc@1.
Retrieval, with `img_of_text[j]` the image that caption j describes (several captions
per image allowed):
  image_retrieval_recall@k = text -> image: fraction of captions whose image is in the
    caption's top k images.
  text_retrieval_recall@k = image -> text: fraction of images with *any* of their
    captions in the image's top k captions.
Ties count in the query's favour only if the true item is ranked within k by a stable
sort of the scores (descending), which matches top-k selection on ties by lower index.

The dense functions (`zero_shot_metrics`, `retrieval_metrics`) take a full score matrix on
the host and are the reference; the evaluators compute the same numbers from the ranks of
`alignjax.evaluate.ranks.positive_ranks` (`*_from_ranks`), which never form that matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def topk_hits(scores: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """[N] bool: is targets[i] among the top-k columns of scores[i] (stable ranking)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    return (order == targets[:, None]).any(axis=1)


def zero_shot_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`logits` [N, C], `labels` [N] int -> acc1, acc5, mean_per_class_recall."""
    top1 = topk_hits(logits, labels, 1)
    recalls = [top1[labels == c].mean() for c in np.unique(labels)]
    return {
        'acc1': float(top1.mean()),
        'acc5': float(topk_hits(logits, labels, 5).mean()),
        'mean_per_class_recall': float(np.mean(recalls)),
    }


def retrieval_metrics(
    sim: np.ndarray, img_of_text: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """`sim` [N_img, N_txt] similarities, `img_of_text` [N_txt] int -> recall@k both ways."""
    n_img, n_txt = sim.shape
    out = {}
    # text -> image
    for k in ks:
        out[f'image_retrieval_recall@{k}'] = float(topk_hits(sim.T, img_of_text, k).mean())
    # image -> text: hit if any of the image's captions is ranked in the top k.
    order = np.argsort(-sim, axis=1, kind='stable')  # [N_img, N_txt]
    rank_of_positive = np.full(n_img, n_txt)
    ranks = np.empty_like(order)
    ranks[np.arange(n_img)[:, None], order] = np.arange(n_txt)[None, :]
    for j in range(n_txt):
        i = img_of_text[j]
        rank_of_positive[i] = min(rank_of_positive[i], ranks[i, j])
    for k in ks:
        out[f'text_retrieval_recall@{k}'] = float((rank_of_positive < k).mean())
    return out


def zero_shot_metrics_from_ranks(
    ranks: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Same as `zero_shot_metrics` from `ranks[i]` = rank of the true class of image i.

    A rank is always < the number of classes C, so acc@k with k > C is 1: k is capped at C.
    """
    ranks, labels = np.asarray(ranks), np.asarray(labels)
    top1 = ranks < 1
    out = {f'acc{k}': float((ranks < k).mean()) for k in ks}
    out['mean_per_class_recall'] = float(
        np.mean([top1[labels == c].mean() for c in np.unique(labels)])
    )
    return out


def retrieval_metrics_from_ranks(
    text_to_image_ranks: np.ndarray, image_to_text_ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Same as `retrieval_metrics` from the ranks of each query's best positive.

    `text_to_image_ranks` [N_txt]: rank of the caption's image among all images;
    `image_to_text_ranks` [N_img]: rank of the image's best-ranked caption among all captions.
    """
    out = {}
    for k in ks:
        out[f'image_retrieval_recall@{k}'] = float((np.asarray(text_to_image_ranks) < k).mean())
    for k in ks:
        out[f'text_retrieval_recall@{k}'] = float((np.asarray(image_to_text_ranks) < k).mean())
    return out
