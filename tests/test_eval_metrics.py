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


# --------------------------------------------------------------------------------------
# On-device ranks (alignjax.evaluate.ranks) give exactly the dense metrics.

from alignjax import parallel
from alignjax.evaluate import (
    positive_ranks,
    retrieval_metrics_from_ranks,
    zero_shot_metrics_from_ranks,
)


@pytest.fixture(scope='module')
def mesh():
    return parallel.make_mesh(dict(data=4, fsdp=2, tensor=1))


def _chunked_retrieval(zimg, ztxt, img_of_text, mesh, ks, chunk=5):
    images = np.arange(zimg.shape[0])
    t2i = positive_ranks(ztxt, img_of_text, zimg, images, mesh, chunk_size=chunk)
    i2t = positive_ranks(zimg, images, ztxt, img_of_text, mesh, chunk_size=chunk)
    return retrieval_metrics_from_ranks(t2i, i2t, ks)


def test_hand_computed_retrieval_on_device(mesh):
    # The hand-computed case above, as embeddings: sim = zimg @ ztxt.T with exact floats.
    zimg = np.eye(2, dtype=np.float32)
    ztxt = np.array([[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.0, 0.3]], np.float32)
    img_of_text = np.array([0, 0, 1, 1])
    m = _chunked_retrieval(zimg, ztxt, img_of_text, mesh, ks=(1, 2))
    assert m == retrieval_metrics(zimg @ ztxt.T, img_of_text, ks=(1, 2))
    assert m['text_retrieval_recall@1'] == 0.5 and m['image_retrieval_recall@1'] == 0.5


@pytest.mark.parametrize('quantised', [True, False])
def test_chunked_ranks_equal_dense_metrics(mesh, quantised):
    """Random data with several captions per image; quantised embeddings force many ties."""
    rng = np.random.default_rng(0)
    zimg, ztxt = rng.normal(size=(13, 6)), rng.normal(size=(37, 6))
    if quantised:  # Multiples of 1/4: every dot product is exact in float32, ties abound.
        zimg, ztxt = np.round(zimg * 2) / 4, np.round(ztxt * 2) / 4
        ztxt[5], zimg[3] = ztxt[4], zimg[2]
    zimg, ztxt = zimg.astype(np.float32), ztxt.astype(np.float32)
    img_of_text = rng.integers(0, 13, size=37)
    img_of_text[:13] = np.arange(13)
    ks = (1, 2, 5, 10)
    dense = retrieval_metrics(zimg.astype(np.float64) @ ztxt.T.astype(np.float64), img_of_text, ks)
    assert _chunked_retrieval(zimg, ztxt, img_of_text, mesh, ks) == dense


def test_ties_on_device_go_to_the_lower_index(mesh):
    q = np.ones((1, 2), np.float32)
    g = np.ones((3, 2), np.float32)  # Three identical gallery items.
    for target, rank in [(0, 0), (1, 1), (2, 2)]:
        assert positive_ranks(q, np.array([target]), g, np.arange(3), mesh).tolist() == [rank]


def test_zero_shot_from_ranks_equals_dense_with_fewer_than_5_classes(mesh):
    rng = np.random.default_rng(1)
    zimg = np.round(rng.normal(size=(40, 4)) * 2).astype(np.float32) / 4
    classes = np.round(rng.normal(size=(3, 4)) * 2).astype(np.float32) / 4
    labels = rng.integers(0, 3, size=40)
    r = positive_ranks(zimg, labels, classes, np.arange(3), mesh, chunk_size=16)
    m = zero_shot_metrics_from_ranks(r, labels)
    assert m == zero_shot_metrics(zimg @ classes.T, labels)
    assert m['acc5'] == 1.0  # k capped at the 3 classes


def test_query_without_positive_never_hits(mesh):
    r = positive_ranks(
        np.ones((1, 2), np.float32), np.array([7]), np.eye(2, dtype=np.float32), np.arange(2), mesh
    )
    assert r.tolist() == [2]
