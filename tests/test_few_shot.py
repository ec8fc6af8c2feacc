"""k-shot sampling (seeded, nested, per class), base/new splits and the few-shot source."""

import numpy as np
import pytest

from alignjax import data as data_lib
from alignjax.data import few_shot


def test_k_shot_indices_are_k_per_class_seeded_and_nested():
    labels = np.repeat(np.arange(5), 10)[np.random.default_rng(0).permutation(50)]
    for k in (1, 2, 4, 8):
        idx = few_shot.k_shot_indices(labels, k, seed=3)
        assert np.bincount(labels[idx], minlength=5).tolist() == [k] * 5
        assert np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(idx, few_shot.k_shot_indices(labels, k, seed=3))
    small, big = (set(few_shot.k_shot_indices(labels, k, 3).tolist()) for k in (2, 8))
    assert small <= big
    other_seed = few_shot.k_shot_indices(labels, 2, 4)
    assert not np.array_equal(few_shot.k_shot_indices(labels, 2, 3), other_seed)


def test_a_class_is_drawn_independently_of_the_others():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    only_01 = np.where(labels == 2, -1, labels)
    a = few_shot.k_shot_indices(labels, 2, seed=1)
    b = few_shot.k_shot_indices(only_01, 2, seed=1)
    assert set(b.tolist()) <= set(a.tolist()) and len(b) == 4  # -1: never picked
    assert len(few_shot.k_shot_indices(np.array([0, 1, 1, 1]), 3)) == 4  # class 0 keeps its one


def test_k_shot_errors():
    with pytest.raises(ValueError, match='shots must be >= 1'):
        few_shot.k_shot_indices(np.array([0, 1]), 0)
    with pytest.raises(ValueError, match='1-D integer array'):
        few_shot.k_shot_indices(np.array([0.5, 1.0]), 1)


def test_base_new_split_and_harmonic_mean():
    assert few_shot.base_new_split(8) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert few_shot.base_new_split(5) == ([0, 1, 2], [3, 4])
    assert few_shot.harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.32 / 1.2)
    assert few_shot.harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match='>= 2 classes'):
        few_shot.base_new_split(1)


def test_few_shot_source_is_a_balanced_subset_of_the_source():
    source = data_lib.get_source('synthetic:shapes', 'val', image_size=16, seed=0)
    sub = few_shot.FewShotSource(source, 'shape', shots=3, seed=0, pool=200)
    assert len(sub) == 3 * 8
    got = [few_shot.example_label(sub[i], 'shape') for i in range(len(sub))]
    assert np.bincount(got, minlength=8).tolist() == [3] * 8
    j = int(sub.indices[5])
    np.testing.assert_array_equal(sub[5]['image'], source[j]['image'])
    base, _ = few_shot.base_new_split(8)
    only_base = few_shot.FewShotSource(source, 'label_shape', 2, 0, pool=200, classes=base)
    assert sorted(set(only_base.labels.tolist())) == base and len(only_base) == 8
    with pytest.raises(KeyError, match="no label 'weight'; its labels are"):
        few_shot.FewShotSource(source, 'weight', 1, pool=10)
