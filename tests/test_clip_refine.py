"""CLIP-Refine: RaFA and HyCD invariants (docs/OBJECTIVES.md), the frozen teacher, GradCache.

Pure-function tests on small random arrays; trainer-level tests use tests/tiny_config.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import config as config_lib
from alignjax import models, objectives, optim, train
from alignjax.losses import refine
from alignjax.losses.contrastive import info_nce
from alignjax.losses.targets import hard_targets
from alignjax.models.two_tower import l2_normalize


def _features(b=6, d=8, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(scale * rng.normal(size=(b, d)), jnp.float32) for _ in range(2))


# ----------------------------------------------------------------------------- HyCD
@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_hycd_with_alpha_one_is_the_diagonal_cross_entropy(temperature):
    f, g = _features()
    logits = f @ g.T
    teacher = jnp.asarray(np.random.default_rng(1).normal(size=(6, 6)), jnp.float32)
    eye = hard_targets(6)
    l = logits / temperature
    want = 0.5 * (info_nce(l, eye) + info_nce(l.T, eye)) * temperature**2
    got = refine.hycd_loss(logits, teacher, alpha=1.0, temperature=temperature)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_hycd_is_zero_for_a_student_equal_to_its_teacher_with_alpha_zero():
    f, g = _features()
    logits = f @ g.T
    assert abs(float(refine.hycd_loss(logits, logits, alpha=0.0))) < 1e-5
    # The hybrid target pulls even a perfect copy of the teacher towards the pairing.
    assert float(refine.hycd_loss(logits, logits, alpha=0.5)) > 1e-3


def test_hycd_is_both_directions_of_the_batchmean_kl():
    f, g = _features()
    s, t = f @ g.T, (f @ g.T)[::-1]

    def kl(student, teacher, alpha=0.3):
        q = alpha * np.eye(6) + (1 - alpha) * np.asarray(jax.nn.softmax(teacher, -1))
        logp = np.asarray(jax.nn.log_softmax(student, -1))
        return float(np.sum(np.where(q > 0, q * (np.log(np.where(q > 0, q, 1)) - logp), 0)) / 6)

    want = 0.5 * (kl(s, t) + kl(s.T, t.T))
    np.testing.assert_allclose(refine.hycd_loss(s, t, alpha=0.3), want, rtol=1e-5)


# ----------------------------------------------------------------------------- RaFA
def test_rafa_is_zero_when_both_features_equal_the_reference():
    z = refine.sample_reference(jax.random.key(0), (6, 8))
    assert float(refine.rafa_loss(z, z, z)) == 0.0
    f, _ = _features()
    assert float(refine.rafa_loss(f, z, z)) > 0


@pytest.mark.parametrize('prior', ['normal', 'uniform'])
def test_references_are_a_pure_function_of_the_key(prior):
    a = refine.sample_reference(jax.random.key(3), (4, 5), prior)
    b = refine.sample_reference(jax.random.key(3), (4, 5), prior)
    c = refine.sample_reference(jax.random.key(4), (4, 5), prior)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize('prior, sigma', [('normal', 1.0), ('normal', 0.5), ('uniform', 0.7)])
def test_rafa_monte_carlo_expectation_is_mean_square_plus_variance(prior, sigma):
    """For fixed f and z ~ prior(0, sigma²): E_z mse(f, z) = mean(f²) + sigma²."""
    f, _ = _features(b=4, d=8, scale=1.5)
    keys = jax.random.split(jax.random.key(0), 20_000)
    mse = jax.vmap(lambda k: jnp.mean((f - refine.sample_reference(k, f.shape, prior, 0.0, sigma)) ** 2))
    estimate = float(jnp.mean(mse(keys)))
    want = float(jnp.mean(f**2)) + sigma**2
    np.testing.assert_allclose(estimate, want, rtol=5e-3)
    np.testing.assert_allclose(refine.prior_variance(prior, sigma), sigma**2, rtol=1e-6)
    # rafa_loss is that mse for the image plus the text features.
    z = refine.sample_reference(keys[0], f.shape, prior, 0.0, sigma)
    np.testing.assert_allclose(refine.rafa_loss(f, f, z), 2 * jnp.mean((f - z) ** 2), rtol=1e-6)


def test_per_dimension_and_fixed_priors():
    mean, std = jnp.arange(8.0), jnp.full((8,), 0.0)
    z = refine.sample_reference(jax.random.key(0), (5, 8), 'normal', mean, std)
    np.testing.assert_allclose(z, jnp.broadcast_to(mean, (5, 8)))
    fixed = refine.sample_reference(jax.random.key(0), (5, 8), 'fixed', mean, 2.0)
    np.testing.assert_allclose(fixed, jnp.broadcast_to(mean, (5, 8)))
    assert float(refine.prior_variance('fixed', 2.0)) == 0.0
    with pytest.raises(ValueError, match='RaFA prior'):
        refine.sample_reference(jax.random.key(0), (5, 8), 'gauss')


# ----------------------------------------------------------------------------- the model
def test_model_returns_raw_features_only_when_asked():
    c = tiny_config.get_config()
    model = models.build(c.model)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
    tokens = jnp.asarray([[1, 5, 6, 255, 0, 0, 0, 0], [1, 7, 255, 0, 0, 0, 0, 0]], jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), images, tokens)
    plain = jax.jit(model.apply)(params, images, tokens)
    assert plain.img_raw is None and plain.txt_raw is None
    out = jax.jit(lambda p, i, t: model.apply(p, i, t, return_raw=True))(params, images, tokens)
    assert out.img_raw.shape == out.txt_raw.shape == (2, 16)
    np.testing.assert_allclose(l2_normalize(out.img_raw), out.zimg, rtol=1e-6)
    np.testing.assert_allclose(l2_normalize(out.txt_raw), out.ztxt, rtol=1e-6)
    np.testing.assert_array_equal(plain.zimg, out.zimg)
    assert not np.allclose(jnp.linalg.norm(out.img_raw, axis=-1), 1.0)


# ----------------------------------------------------------------------------- the objective
def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, 8), np.int32)
    for i, k in enumerate(rng.integers(1, 6, size=n)):
        tokens[i, 0], tokens[i, 1 : 1 + k], tokens[i, 1 + k] = 1, rng.integers(3, 250, size=k), 255
    return {'image': rng.normal(size=(n, 16, 16, 3)).astype(np.float32), 'tokens': tokens}


def _config(accum=1, **fields):
    c = tiny_config.get_config()
    c.batch_size, c.grad_accum_steps = 16, accum
    c.mesh = {'data': 2, 'fsdp': 1, 'tensor': 1}
    c.loss = objectives.loss_config('clip_refine', **fields)
    c.optim.eps, c.optim.weight_decay, c.optim.grad_clip_norm = 1e3, 0.0, 0.0
    c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 10.0, 0, 'constant'
    return c


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def test_teacher_gets_no_gradient():
    """d loss / d teacher = 0: forward stops the gradient at the teacher's features."""
    c = config_lib.resolve(_config())
    objective = objectives.build(c.loss)
    model = objective.wrap_model(models.build(c.model))
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    params = jax.jit(model.init)(jax.random.key(0), batch['image'], batch['tokens'])['params']
    teacher = jax.tree_util.tree_map(lambda p: p * 1.5, params)  # Differs from the student.

    def loss_of(student, teacher):
        apply_teacher = lambda *a, **k: model.apply({'params': teacher}, *a, **k)
        ctx = objectives.StepContext(step=jnp.int32(0), apply_with={'teacher': apply_teacher})
        prepared = objective.prepare(batch, jax.random.key(1), ctx)
        out = objective.forward(lambda *a, **k: model.apply({'params': student}, *a, **k),
                                prepared, ctx)
        return objective.loss(out, prepared, ctx)[0]

    g_student, g_teacher = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(params, teacher)
    assert all(not np.any(g) for g in _leaves(g_teacher))
    assert any(np.any(g) for g in _leaves(g_student))


def test_gradient_accumulation_is_exact_and_the_teacher_never_moves():
    """grad_accum_steps=2 gives the full batch's loss, gradient and update (the same z);
    the teacher starts as the initial parameters and stays there while they move."""
    # One initial state for both steps (grad_accum_steps does not enter it): the init
    # compiles once. Each step donates its state, so each starts from a copy put back.
    trainers = [train.build_trainer(_config(m, clip_weight=0.5), jax.devices()[:2]) for m in (1, 2)]
    start_state = jax.device_get(trainers[0].init_fn())
    runs = []
    for t in trainers:
        state = jax.device_put(start_state, t.state_shardings)
        new, metrics = t.step_fn(state, t.global_batch(_batch()))
        runs.append((start_state.params, jax.device_get(new.params), jax.device_get(metrics)))
    (before, full, m_full), (_, acc, m_acc) = runs
    for key in ('train/loss', 'train/grad_norm', 'train/loss_rafa', 'train/loss_hycd'):
        np.testing.assert_allclose(m_acc[key], m_full[key], rtol=1e-5, err_msg=key)
    paths = jax.tree_util.tree_leaves(optim.tree_paths(before))
    for path, b, f, a in zip(paths, _leaves(before), _leaves(full), _leaves(acc)):
        scale = 4 * float(np.spacing(np.float32(np.abs(b).max())))
        np.testing.assert_allclose(a - b, f - b, rtol=1e-4, atol=max(scale, 1e-7), err_msg=path)

    assert {'train/loss_rafa', 'train/loss_hycd', 'train/feature_gap_mse'} <= set(m_full)
    start = _leaves(before)
    for x, y in zip(_leaves(new.weights['teacher']), start):  # A copy of the start...
        np.testing.assert_array_equal(x, y)
    for step in range(2):
        new, metrics = t.step_fn(new, t.global_batch(_batch(seed=1 + step)))
    assert np.isfinite(float(metrics['train/loss']))
    for x, y in zip(_leaves(new.weights['teacher']), start):  # ...that never moves,
        np.testing.assert_array_equal(x, y)
    assert not any(np.array_equal(x, y) for x, y in zip(_leaves(new.params), start))  # unlike these.


def test_rafa_weight_decays_linearly_when_asked():
    o = objectives.build(objectives.loss_config('clip_refine', rafa_weight=2.0, rafa_decay_steps=10))
    np.testing.assert_allclose([o.rafa_weight_at(s) for s in (0, 5, 10, 20)], [2.0, 1.0, 0.0, 0.0])
    o = objectives.build(objectives.loss_config('clip_refine', rafa_weight=2.0))
    assert float(o.rafa_weight_at(1000)) == 2.0


def test_only_the_terms_that_are_on_are_built():
    o = objectives.build(objectives.loss_config('clip_refine', hycd_weight=0.0))
    assert o.weight_sets() == {}  # No teacher copy without HyCD.
    assert set(objectives.build(objectives.loss_config('clip_refine')).weight_sets()) == {'teacher'}


@pytest.mark.parametrize('fields, message', [
    ({'alpha': 1.5}, r'config.loss.alpha must be in \[0, 1\], got 1.5'),
    ({'temperature': 0.0}, r'config.loss.temperature must be > 0'),
    ({'prior': 'gauss'}, r"config.loss.prior.*'normal', 'uniform', 'fixed'"),
    ({'prior_std': -1.0}, r'config.loss.prior_std must be >= 0'),
    ({'rafa_weight': 0.0, 'hycd_weight': 0.0}, r'are all 0; set one > 0'),
    ({'rafa_decay_steps': -1}, r'rafa_decay_steps must be >= 0'),
    ({'prior_mean': (0.0, 1.0)}, r'prior_mean must be a float or 16 floats.*got shape \(2,\)'),
    ({'alhpa': 0.5}, r"did you mean 'alpha'"),
])  # fmt: skip
def test_config_errors_are_one_line(fields, message):
    c = tiny_config.get_config()
    with pytest.raises(ValueError, match=message) as e:
        c.loss = objectives.loss_config('clip_refine', **fields)
        config_lib.resolve(c)
    assert '\n' not in str(e.value)
