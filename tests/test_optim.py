"""Optimizer: schedules, decay mask, freezing, logit-scale clamp, weight-decay convention."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignjax import optim


def _config(**kw):
    c = optim.default_optim_config()
    c.total_steps = 100
    c.warmup_steps = 10
    c.update(kw)
    return c


def _params():
    return {
        'img': {
            'dense': {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones((4,))},
            'norm': {'scale': jnp.ones((4,))},
        },
        'txt': {'embedding': jnp.ones((10, 4))},
        'log_scale': jnp.array(np.log(1 / 0.07), jnp.float32),
    }


def test_decay_mask_ndim_rule_and_regex():
    mask = optim.decay_mask(_params())
    assert mask['img']['dense']['kernel'] and mask['txt']['embedding']
    assert not mask['img']['dense']['bias'] and not mask['img']['norm']['scale']
    assert not mask['log_scale']
    mask = optim.decay_mask(_params(), no_decay=('txt/.*',))
    assert not mask['txt']['embedding'] and mask['img']['dense']['kernel']


@pytest.mark.parametrize('name', ['warmup_cosine', 'warmup_rsqrt', 'warmup_constant', 'constant'])
def test_schedules_peak_and_warmup(name):
    sched = optim.make_schedule(_config(schedule=name, lr=1.0, warmup_steps=10))
    values = np.array([sched(s) for s in range(100)])
    assert values.max() <= 1.0 + 1e-6 and values.min() >= 0
    if name != 'constant':
        assert values[0] < 0.2 and np.all(np.diff(values[:10]) > 0)  # Linear warmup.
    if name == 'warmup_cosine':
        assert values[-1] < 0.01
    if name == 'warmup_rsqrt':
        assert values[99] == pytest.approx(1 / np.sqrt(1 + 89 / 10_000), rel=1e-5)


def _checked(**kw):
    """`optim.check_config` (what `config.resolve` runs once) on the optimizer fields."""
    c = optim.default_optim_config()
    c.update(kw)
    optim.check_config(c, total_steps=1000)


def test_unknown_schedule_names_choices():
    with pytest.raises(ValueError, match='warmup_cosine'):
        _checked(schedule='cosine_warmup')


def test_unknown_field_names_closest():
    with pytest.raises(ValueError, match="did you mean 'weight_decay'"):
        _checked(weight_decy=0.1)
    with pytest.raises(ValueError, match="warmup_steps=1000 must be smaller"):
        _checked(warmup_steps=1000)
    with pytest.raises(ValueError, match='Invalid regex'):
        _checked(freeze=('img/(',))


def test_weight_decay_is_multiplied_by_lr():
    """optax/PyTorch convention: one step with zero gradient shrinks p by lr * wd."""
    c = _config(schedule='constant', lr=0.1, weight_decay=0.5, grad_clip_norm=0)
    params = _params()
    tx, _ = optim.make_optimizer(c, params)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new['img']['dense']['kernel'], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(new['img']['dense']['bias'], 1.0)  # Not decayed.


def test_frozen_params_get_no_update_and_no_state():
    c = _config(schedule='constant', freeze=('img/.*',))
    params = _params()
    tx, _ = optim.make_optimizer(c, params)
    state = tx.init(params)
    # No Adam moment exists for frozen leaves (MaskedNode), only for trained ones.
    n_state = sum(x.size for x in jax.tree_util.tree_leaves(state))
    n_trained = 10 * 4 + 1
    assert n_state < 2 * (n_trained + 16 + 4 + 4)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    assert all(np.all(u == 0) for u in jax.tree_util.tree_leaves(updates['img']))
    assert np.any(updates['txt']['embedding'] != 0)


def test_freeze_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match='matches no parameter'):
        optim.make_optimizer(_config(freeze=('image/.*',)), _params())


def test_clamp_logit_scale():
    params = _params()
    params['log_scale'] = jnp.array(5.0)
    assert float(optim.clamp_logit_scale(params)['log_scale']) == pytest.approx(np.log(100))
    params['log_scale'] = jnp.array(-1.0)
    assert float(optim.clamp_logit_scale(params)['log_scale']) == 0.0
