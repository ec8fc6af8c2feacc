"""FLIP patch dropout (`model.image.patch_dropout`): a per-example random subset of the patch
tokens in training, the plain ViT at rate 0 and at evaluation.

The ViT here has no encoder layers (depth 0), so each output token is the final LayerNorm of
one input token: a kept token can be matched to the patch it came from. Exactness under
gradient accumulation (a row's mask follows its global index) is a case of
tests/test_grad_accum.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import train
from alignjax.models.vit import ViT

N_PATCHES = 16  # 16 px images, 4 px patches


def _vit(rate, pool='tok'):
    return ViT(
        width=8, depth=0, mlp_dim=16, num_heads=2, patch_size=4, pool=pool, patch_dropout=rate
    )


def _images(n=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 16, 16, 3)), jnp.float32)


def _source_rows(kept, full):
    """Index of the full-token row each kept row equals (every kept row must match one)."""
    d = np.abs(np.asarray(kept)[:, None, :] - np.asarray(full)[None, :, :]).max(-1)
    rows = d.argmin(1)
    assert np.all(d[np.arange(len(rows)), rows] < 1e-6), 'a kept token is no input token'
    return rows


@pytest.mark.parametrize('pool', ['tok', 'gap', 'map'])
def test_kept_tokens_are_a_per_example_random_subset(pool):
    x = _images()
    vit = _vit(0.5, pool)
    variables = vit.init(jax.random.PRNGKey(0), x)
    _, full = vit.apply(variables, x)  # evaluation: every patch
    assert full.shape == (4, N_PATCHES, 8)

    def train_tokens(images, key, ids=None):
        rngs = {'patch_dropout': jax.random.PRNGKey(key)}
        return vit.apply(variables, images, train=True, example_ids=ids, rngs=rngs)[1]

    kept = train_tokens(x, 1)
    assert kept.shape == (4, N_PATCHES // 2, 8)
    subsets = [tuple(_source_rows(kept[i], full[i])) for i in range(4)]
    for s in subsets:  # distinct patches, in their spatial order
        assert list(s) == sorted(set(s)) and len(s) == N_PATCHES // 2
    assert len(set(subsets)) > 1, 'every example dropped the same patches'
    np.testing.assert_array_equal(train_tokens(x, 1), kept)  # deterministic for a key
    assert not np.array_equal(train_tokens(x, 2), kept)  # another key, other masks
    # A row's mask follows its index in the global batch, not its place in this call.
    part = train_tokens(x[2:], 1, ids=jnp.array([2, 3]))
    np.testing.assert_allclose(part, kept[2:], atol=1e-6)


def test_rate_zero_and_evaluation_are_the_plain_vit():
    x = _images()
    plain = _vit(0.0)
    variables = plain.init(jax.random.PRNGKey(0), x)
    ref = plain.apply(variables, x)
    # rate 0 in training: identity (and no rng needed).
    for a, b in zip(plain.apply(variables, x, train=True), ref):
        np.testing.assert_array_equal(a, b)
    # evaluation (train=False) of a model that drops patches in training: unmasked.
    for a, b in zip(_vit(0.75).apply(variables, x), ref):
        np.testing.assert_array_equal(a, b)
    # At least one token is kept whatever the rate.
    tiny = _vit(0.99).apply(
        variables, x, train=True, rngs={'patch_dropout': jax.random.PRNGKey(0)}
    )[1]
    assert tiny.shape[1] == 1


def test_rate_outside_zero_one_is_one_clear_error():
    x = _images(1)
    with pytest.raises(ValueError, match=r'patch_dropout must be in \[0, 1\)'):
        _vit(1.0).init(jax.random.PRNGKey(0), x)


def test_the_train_step_drops_patches_and_evaluation_does_not():
    """Same initial state and batch: the training loss changes with patch dropout on (the
    masks are drawn from the step rng, a new draw each step); the encoder the evaluators
    call is unchanged."""

    def trainer(rate):
        c = tiny_config.get_config()
        c.model.image.patch_dropout = rate
        return train.build_trainer(c, jax.devices()[:2])

    batch = tiny_config.random_batch(0)
    trainers = {rate: trainer(rate) for rate in (0.0, 0.5)}
    # One init for both (the rate adds no parameter): the init compiles once.
    start = jax.device_get(trainers[0.0].init_fn())
    params = start.params
    results = {}
    for rate, t in trainers.items():
        state = jax.device_put(start, t.state_shardings)  # the step donates the state
        gb = t.global_batch(batch)
        new, m1 = t.step_fn(state, gb)
        _, m2 = t.step_fn(new, gb)
        z = t.model.apply(
            {'params': params}, jnp.asarray(batch['image']), method=t.model.encode_image
        )
        results[rate] = (float(m1['train/loss']), float(m2['train/loss']), np.asarray(z))
    assert results[0.5][0] != pytest.approx(results[0.0][0], rel=1e-4)  # masking is on
    assert np.isfinite(results[0.5][:2]).all()
    np.testing.assert_array_equal(results[0.5][2], results[0.0][2])  # evaluation: unmasked
