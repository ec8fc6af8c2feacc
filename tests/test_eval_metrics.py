"""Evaluation metrics pinned on hand-computed cases (CLIP_benchmark names and semantics)."""

import numpy as np
import pytest

from alignjax.evaluate import retrieval_metrics, topk_hits, zero_shot_metrics


def test_zero_shot_hand_computed():
    logits = np.array(
        [
            [0.9, 0.1, 0.0],  # label 0: top1 hit
            [0.5, 0.4, 0.1],  # label 1: rank 2
            [0.1, 0.2, 0.7],  # label 2: hit
            [0.3, 0.6, 0.1],
        ]
    )  # label 2: rank 3
    labels = np.array([0, 1, 2, 2])
    m = zero_shot_metrics(logits, labels)
    assert m['acc1'] == pytest.approx(0.5)
    # Fewer than 5 classes: acc5 is capped at all 3 classes -> every sample hits.
    assert m['acc5'] == pytest.approx(1.0)
    # Per-class recall: class0 1/1, class1 0/1, class2 1/2 -> mean 0.5.
    assert m['mean_per_class_recall'] == pytest.approx(0.5)


def test_mean_per_class_recall_differs_from_accuracy_when_imbalanced():
    logits = np.array([[1.0, 0.0]] * 9 + [[1.0, 0.0]])
    labels = np.array([0] * 9 + [1])
    m = zero_shot_metrics(logits, labels)
    assert m['acc1'] == pytest.approx(0.9)
    assert m['mean_per_class_recall'] == pytest.approx(0.5)


def test_topk_ties_resolved_by_lower_index():
    scores = np.array([[1.0, 1.0, 1.0]])
    assert topk_hits(scores, np.array([0]), 1).tolist() == [True]
    assert topk_hits(scores, np.array([2]), 1).tolist() == [False]
    assert topk_hits(scores, np.array([2]), 3).tolist() == [True]


def test_retrieval_several_captions_per_image():
    # 2 images, 4 captions: captions 0,1 describe image 0; captions 2,3 image 1.
    img_of_text = np.array([0, 0, 1, 1])
    sim = np.array(
        [
            [0.1, 0.9, 0.8, 0.0],  # image 0: best caption 1 (its own) -> hit@1
            [0.9, 0.1, 0.2, 0.3],
        ]
    )  # image 1: own captions ranked 3rd/2nd -> miss@1, hit@2
    m = retrieval_metrics(sim, img_of_text, ks=(1, 2))
    assert m['text_retrieval_recall@1'] == pytest.approx(0.5)
    assert m['text_retrieval_recall@2'] == pytest.approx(1.0)
    # Text queries: caption0 -> image1 (0.9>0.1) miss; caption1 -> image0 hit;
    # caption2 -> image0 (0.8>0.2) miss; caption3 -> image1 hit.
    assert m['image_retrieval_recall@1'] == pytest.approx(0.5)
    assert m['image_retrieval_recall@2'] == pytest.approx(1.0)


def test_retrieval_perfect_and_reversed():
    sim = np.eye(4)
    m = retrieval_metrics(sim, np.arange(4), ks=(1,))
    assert m['image_retrieval_recall@1'] == 1.0 and m['text_retrieval_recall@1'] == 1.0
    m = retrieval_metrics(-np.eye(4), np.arange(4), ks=(1, 3, 4))
    assert m['text_retrieval_recall@3'] == 0.0 and m['text_retrieval_recall@4'] == 1.0
