"""Embedding geometry: modality gap (Liang et al. 2022), alignment and uniformity (Wang &
Isola 2020) on hand-computed cases, for numpy and jax inputs."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.evaluate import geometry


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize('xp', [np, jnp])
def test_modality_gap_hand_computed(xp):
    zimg = xp.asarray([[1.0, 0.0], [0.0, 1.0]])  # centroid (0.5, 0.5)
    ztxt = xp.asarray([[-1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])  # centroid (-2/3, -1/3)
    expected = math.hypot(0.5 + 2 / 3, 0.5 + 1 / 3)
    assert float(geometry.modality_gap(zimg, ztxt)) == pytest.approx(expected, rel=1e-6)
    assert float(geometry.modality_gap(zimg, zimg)) == 0.0


@pytest.mark.parametrize('xp', [np, jnp])
def test_alignment_hand_computed(xp):
    x = xp.asarray([[1.0, 0.0], [0.0, 1.0]])
    y = xp.asarray([[0.0, 1.0], [0.0, 1.0]])  # distances sqrt(2) and 0
    assert float(geometry.alignment(x, y)) == pytest.approx(1.0)  # (2 + 0) / 2
    assert float(geometry.alignment(x, y, alpha=1)) == pytest.approx(math.sqrt(2) / 2)
    with pytest.raises(ValueError, match='paired rows'):
        geometry.alignment(x, y[:1])


@pytest.mark.parametrize('xp', [np, jnp])
def test_uniformity_hand_computed(xp):
    # Two antipodal points: ||z0 - z1||^2 = 4 -> log mean exp(-2 * 4) = -8.
    z = xp.asarray([[1.0, 0.0], [-1.0, 0.0]])
    assert float(geometry.uniformity(z)) == pytest.approx(-8.0, rel=1e-6)
    # Identical points: distance 0 -> log 1 = 0 (the worst value).
    assert float(geometry.uniformity(xp.asarray([[0.6, 0.8]] * 3))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match='at least 2'):
        geometry.uniformity(z[:1])


def test_uniformity_matches_the_pairwise_definition():
    z = _unit(np.random.default_rng(0).normal(size=(20, 5)))
    pairs = [
        np.exp(-2 * np.sum((z[i] - z[j]) ** 2)) for i, j in itertools.permutations(range(20), 2)
    ]
    assert geometry.uniformity(z) == pytest.approx(np.log(np.mean(pairs)), rel=1e-9)
    assert float(geometry.uniformity(jnp.asarray(z, jnp.float32))) == pytest.approx(
        np.log(np.mean(pairs)), rel=1e-5
    )


def test_geometry_metrics_keys_and_unit_sphere_bounds():
    rng = np.random.default_rng(1)
    zimg, ztxt = _unit(rng.normal(size=(30, 8))), _unit(rng.normal(size=(30, 8)))
    m = geometry.geometry_metrics(zimg, ztxt)
    assert set(m) == {'modality_gap', 'alignment', 'uniformity_image', 'uniformity_text'}
    assert 0 <= m['modality_gap'] <= 2 and 0 <= m['alignment'] <= 4
    assert -4 <= m['uniformity_image'] <= 0  # exp(-2 * d^2) with d^2 <= 4
    # alpha=2 alignment of unit vectors = 2 - 2 mean cosine.
    cos = np.sum(zimg * ztxt, axis=1).mean()
    assert m['alignment'] == pytest.approx(2 - 2 * cos)
