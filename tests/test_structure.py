"""STRUCTURE (alignjax/losses/structure.py, alignjax/evaluate/similarity.py): the paper's
invariants (R = 0 for the same geometry, 0 <= JS <= log 2, λ(0) = 0, mutual-kNN(X, X) = 1,
about k/n for unrelated rows, CKA(X, cXQ) = 1) and plain-numpy references of every formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alignjax.evaluate import similarity
from alignjax.evaluate.similarity import (
    knn_indices,
    knn_k,
    linear_cka,
    mutual_knn,
    select_layer_pair,
    unbiased_cka,
)
from alignjax.losses import contrastive
from alignjax.losses.structure import (
    center,
    js_divergence,
    lambda_schedule,
    neighbourhood_probs,
    structure_loss,
    structure_regularizer,
)

LOG2 = float(np.log(2.0))


def _rng(seed=0):
    return np.random.default_rng(seed)


def _orthogonal(rng, d_in, d_out=None):
    """[d_in, d_out] with orthonormal rows (d_out >= d_in): x @ Q keeps inner products."""
    d_out = d_in if d_out is None else d_out
    q, _ = np.linalg.qr(rng.normal(size=(d_out, d_in)))
    return q.T.astype(np.float32)


def _pair(rng, b=12, d_o=10, d_a=6, noise=0.5):
    """Frozen features and an aligned view that shares part of their geometry."""
    orig = rng.normal(size=(b, d_o)).astype(np.float32)
    w = rng.normal(size=(d_o, d_a)).astype(np.float32)
    aligned = orig @ w + noise * rng.normal(size=(b, d_a)).astype(np.float32)
    return orig, aligned


# ----------------------------------------------------------------------------------------
# Plain-numpy references (float64), written from the formulas.
# ----------------------------------------------------------------------------------------
def _np_probs(e, tau, centering):
    e = np.asarray(e, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    if centering in ("mean", "standard"):
        e = e - e.mean(0)
    if centering == "standard":
        e = e / e.std(0, ddof=1)
    s = e @ e.T / tau
    s = np.exp(s - s.max(1, keepdims=True))
    return s / s.sum(1, keepdims=True)


def _np_js(p, q):
    m = 0.5 * (p + q)

    def kl(a):
        return np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / m), 0.0), axis=1)

    return float(np.mean(0.5 * kl(p) + 0.5 * kl(q)))


def _np_regularizer(orig, aligned, tau=0.05, levels=1, weighting="none", margin=0.0,
                    centering="mean"):  # fmt: skip
    p, q = _np_probs(orig, tau, centering), _np_probs(aligned, tau, centering)
    total = 0.0
    for level in range(1, levels + 1):
        pl, ql = np.linalg.matrix_power(p, level), np.linalg.matrix_power(q, level)
        js = max(_np_js(pl, ql) - margin, 0.0)
        total += js / level if weighting == "inverse" else js
    return total / levels


def _np_knn(x, k):
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _np_mutual_knn(x, y, k):
    a, b = _np_knn(x, k), _np_knn(y, k)
    return float(np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(a))]))


def _np_hsic_biased(gx, gy):
    n = len(gx)
    h = np.eye(n) - 1.0 / n
    return np.trace(gx @ h @ gy @ h)


def _np_hsic_unbiased(gx, gy):
    """Song et al. (2012), Eq. 5, on the [n, n] Gram matrices."""
    n = len(gx)
    gx, gy = gx.copy(), gy.copy()
    np.fill_diagonal(gx, 0.0)
    np.fill_diagonal(gy, 0.0)
    value = (np.sum(gx * gy.T) + gx.sum() * gy.sum() / ((n - 1) * (n - 2))
             - 2 * np.sum(gx @ gy) / (n - 2))  # fmt: skip
    return value / (n * (n - 3))


def _np_cka(x, y, hsic):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    gx, gy = x @ x.T, y @ y.T
    return hsic(gx, gy) / np.sqrt(hsic(gx, gx) * hsic(gy, gy))


# ----------------------------------------------------------------------------------------
# The regulariser.
# ----------------------------------------------------------------------------------------
def test_center_modes():
    e = _rng().normal(size=(6, 4)).astype(np.float32) * np.array([1, 2, 3, 4], np.float32) + 5
    e[:, 3] = 7.0  # a constant dimension
    np.testing.assert_array_equal(center(e, "none"), e)
    np.testing.assert_allclose(np.asarray(center(e, "mean")).mean(0), 0, atol=1e-5)
    z = np.asarray(center(e, "standard"))
    np.testing.assert_allclose(z[:, :3].std(0, ddof=1), 1, rtol=1e-5)
    assert np.all(z[:, 3] == 0)  # 0, not NaN
    assert center(e.astype(jnp.bfloat16), "mean").dtype == jnp.float32


def test_neighbourhood_probs_rows_are_distributions():
    e = _rng(1).normal(size=(5, 3))
    p = np.asarray(neighbourhood_probs(e, 0.5))
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    s = e @ e.T / 0.5
    ref = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    np.testing.assert_allclose(p, ref, rtol=1e-5)


def test_js_divergence_bounds_and_extremes():
    rng = _rng(2)
    p = rng.dirichlet(np.ones(7), size=9)
    q = rng.dirichlet(np.ones(7) * 0.3, size=9)
    js = float(js_divergence(p, q))
    assert 0 < js <= LOG2 + 1e-6
    np.testing.assert_allclose(js, _np_js(p, q), rtol=1e-5)
    np.testing.assert_allclose(js, float(js_divergence(q, p)), rtol=1e-6)  # symmetric
    assert abs(float(js_divergence(p, p))) < 1e-7
    eye = np.eye(4)
    np.testing.assert_allclose(float(js_divergence(eye, np.roll(eye, 1, axis=1))), LOG2, rtol=1e-6)


@pytest.mark.parametrize("centering", ["none", "mean", "standard"])
def test_regularizer_is_zero_for_the_same_embeddings(centering):
    orig, _ = _pair(_rng(3))
    r = structure_regularizer(orig, orig, levels=2, weighting="inverse", centering=centering)
    assert abs(float(r)) < 1e-6


@pytest.mark.parametrize("centering", ["none", "mean"])
def test_regularizer_is_zero_under_rotation_and_positive_scale(centering):
    rng = _rng(4)
    orig, _ = _pair(rng)
    for d_out, c in ((10, 3.7), (13, 0.2)):  # also into a wider aligned space
        aligned = c * orig @ _orthogonal(rng, 10, d_out)
        r = structure_regularizer(orig, aligned, levels=2, weighting="inverse", centering=centering)
        assert abs(float(r)) < 1e-6, (d_out, c)


def test_regularizer_sees_a_changed_geometry():
    rng = _rng(5)
    orig, aligned = _pair(rng)
    assert 1e-3 < float(structure_regularizer(orig, aligned)) <= LOG2
    # Rows are normalised before centering: rescaling each sample alone changes nothing...
    scaled = orig * rng.uniform(0.1, 10.0, size=(len(orig), 1)).astype(np.float32)
    for centering in ("none", "mean", "standard"):
        assert abs(float(structure_regularizer(orig, scaled, centering=centering))) < 1e-6
    # ...while a common offset does (centering the normalised rows does not undo it).
    assert float(structure_regularizer(orig, orig + 3.0)) > 0.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"levels": 3, "weighting": "inverse"},
        {"levels": 2, "margin": 0.01, "centering": "standard"},
        {"temperature": 0.5, "centering": "none", "levels": 2},
    ],
)
def test_regularizer_matches_numpy_reference(kwargs):
    orig, aligned = _pair(_rng(6))
    got = float(structure_regularizer(orig, aligned, **kwargs))
    ref_kwargs = dict(kwargs)
    tau = ref_kwargs.pop("temperature", 0.05)
    want = _np_regularizer(orig, aligned, tau=tau, **ref_kwargs)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-7)


def test_levels_use_matrix_powers_and_weighting():
    orig, aligned = _pair(_rng(7))
    tau = 0.5
    p = neighbourhood_probs(center(orig / np.linalg.norm(orig, axis=1, keepdims=True)), tau)
    q = neighbourhood_probs(center(aligned / np.linalg.norm(aligned, axis=1, keepdims=True)), tau)
    js1 = float(js_divergence(p, q))
    js2 = float(js_divergence(p @ p, q @ q))
    js3 = float(js_divergence(p @ p @ p, q @ q @ q))
    assert js2 != pytest.approx(js1)  # two hops is a different quantity
    reg = lambda **kw: float(structure_regularizer(orig, aligned, temperature=tau, **kw))  # noqa: E731
    np.testing.assert_allclose(reg(), js1, rtol=1e-5)
    np.testing.assert_allclose(reg(levels=2), (js1 + js2) / 2, rtol=1e-5)
    np.testing.assert_allclose(reg(levels=3, weighting="inverse"), (js1 + js2 / 2 + js3 / 3) / 3,
                               rtol=1e-5)  # fmt: skip


def test_margin_is_a_per_level_hinge():
    orig, aligned = _pair(_rng(8))
    r = float(structure_regularizer(orig, aligned))
    np.testing.assert_allclose(float(structure_regularizer(orig, aligned, margin=r / 4)),
                               r - r / 4, rtol=1e-5)  # fmt: skip
    assert float(structure_regularizer(orig, aligned, margin=r * 2)) == 0.0
    g = jax.jit(jax.grad(lambda a: structure_regularizer(orig, a, margin=r * 2)))(aligned)
    assert not np.any(np.asarray(g))  # below the margin: no pull at all


def test_gradient_reaches_aligned_but_not_original():
    orig, aligned = _pair(_rng(9))
    grad_fn = jax.grad(lambda o, a: structure_regularizer(o, a, levels=2), argnums=(0, 1))
    g_orig, g_alig = jax.jit(grad_fn)(jnp.asarray(orig), jnp.asarray(aligned))
    assert not np.any(np.asarray(g_orig))
    assert np.all(np.isfinite(g_alig)) and np.abs(np.asarray(g_alig)).max() > 1e-4


def test_bf16_inputs_give_float32():
    orig, aligned = _pair(_rng(10))
    r32 = structure_regularizer(orig, aligned)
    r16 = structure_regularizer(orig.astype(jnp.bfloat16), aligned.astype(jnp.bfloat16))
    assert r16.dtype == jnp.float32 and np.isfinite(float(r16))
    np.testing.assert_allclose(float(r16), float(r32), rtol=0.1)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((np.ones((4, 3)), np.ones((5, 3))), {}, "same B samples"),
        ((np.ones((4, 2, 3)), np.ones((4, 3))), {}, "pool tokens"),
        ((np.ones((4, 3)), np.ones((4, 3))), {"levels": 0}, "levels must be an int >= 1"),
        ((np.ones((4, 3)), np.ones((4, 3))), {"levels": 1.5}, "levels must be an int >= 1"),
        ((np.ones((4, 3)), np.ones((4, 3))), {"weighting": "log"}, "unknown weighting 'log'"),
        ((np.ones((4, 3)), np.ones((4, 3))), {"centering": "max"}, "unknown centering 'max'"),
        ((np.ones((4, 3)), np.ones((4, 3))), {"temperature": 0.0}, "temperature must be > 0"),
    ],
)
def test_regularizer_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        structure_regularizer(*args, **kwargs)


def test_js_divergence_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        js_divergence(np.eye(3), np.eye(4))


# ----------------------------------------------------------------------------------------
# λ schedule and the full loss.
# ----------------------------------------------------------------------------------------
def test_lambda_schedule():
    assert float(lambda_schedule(0, 10.0, 1000)) == 0.0
    assert float(lambda_schedule(250, 10.0, 1000)) == pytest.approx(2.5)
    assert float(lambda_schedule(1000, 10.0, 1000)) == 10.0
    assert float(lambda_schedule(10**6, 10.0, 1000)) == 10.0
    assert float(lambda_schedule(-5, 10.0, 1000)) == 0.0
    assert float(lambda_schedule(0, 3.0, 0)) == 3.0
    traced = jax.jit(lambda s: lambda_schedule(s, 10.0, 1000))
    np.testing.assert_allclose(traced(jnp.asarray(500, jnp.int32)), 5.0)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        lambda_schedule(0, 10.0, -1)


def _loss_inputs(rng):
    img_o, img_a = _pair(rng)
    txt_o, txt_a = _pair(rng)
    return img_a, txt_a, img_o, txt_o


def test_structure_loss_combines_clip_and_scheduled_regulariser():
    img_a, txt_a, img_o, txt_o = _loss_inputs(_rng(11))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    clip = float(contrastive.clip_loss(unit(img_a), unit(txt_a), 1 / 0.05))
    r_i = float(structure_regularizer(img_o, img_a, levels=2))
    r_t = float(structure_regularizer(txt_o, txt_a, levels=2))

    loss0, m0 = structure_loss(img_a, txt_a, img_o, txt_o, step=0, levels=2)
    assert set(m0) == {"clip", "reg_image", "reg_text", "lambda"}
    np.testing.assert_allclose(float(loss0), clip, rtol=1e-6)  # λ(0) = 0
    np.testing.assert_allclose([float(m0["reg_image"]), float(m0["reg_text"])], [r_i, r_t],
                               rtol=1e-6)  # fmt: skip

    step_fn = jax.jit(lambda s: structure_loss(img_a, txt_a, img_o, txt_o, step=s, levels=2))
    loss, m = step_fn(jnp.asarray(1000, jnp.int32))
    assert float(m["lambda"]) == 10.0
    np.testing.assert_allclose(float(loss), clip + 10.0 * 0.5 * (r_i + r_t), rtol=1e-5)
    # The CLIP term sees normalised embeddings: rescaling the aligned outputs changes nothing.
    loss_scaled, _ = structure_loss(3 * img_a, 0.5 * txt_a, img_o, txt_o, step=1000, levels=2)
    np.testing.assert_allclose(float(loss_scaled), float(loss), rtol=1e-5)


def test_structure_loss_bf16_and_gradients():
    img_a, txt_a, img_o, txt_o = (x.astype(jnp.bfloat16) for x in _loss_inputs(_rng(12)))
    loss, m = structure_loss(img_a, txt_a, img_o, txt_o, step=500)
    assert loss.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in m.values())
    grad_fn = jax.jit(jax.grad(lambda *a: structure_loss(*a, step=500)[0], argnums=(0, 1, 2, 3)))
    grads = grad_fn(*(jnp.asarray(x, jnp.float32) for x in (img_a, txt_a, img_o, txt_o)))
    assert np.abs(np.asarray(grads[0])).max() > 0 and np.abs(np.asarray(grads[1])).max() > 0
    assert not np.any(np.asarray(grads[2])) and not np.any(np.asarray(grads[3]))


def test_structure_loss_on_a_sharded_batch_is_the_global_loss():
    """Batch sharded over the 8 test devices on an Explicit mesh (jax.make_mesh's default):
    the jitted value and gradient are the dense ones. Without auto_axes, E Eᵀ of a
    batch-sharded E is a sharding type error there."""
    rng = _rng(14)
    args = [rng.normal(size=(16, d)).astype(np.float32) for d in (6, 6, 10, 7)]
    fn = jax.value_and_grad(lambda *a: structure_loss(*a, step=1000, levels=2)[0], argnums=(0, 1))
    want_v, want_g = jax.jit(fn)(*args)
    explicit = (jax.sharding.AxisType.Explicit,)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",), axis_types=explicit)
    sharded = [jax.device_put(a, NamedSharding(mesh, P("data", None))) for a in args]
    val, grads = jax.jit(fn)(*sharded)
    np.testing.assert_allclose(val, want_v, rtol=1e-5)
    for g, w in zip(grads, want_g, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_structure_loss_rejects_unpaired_batches():
    img_a, txt_a, img_o, txt_o = _loss_inputs(_rng(13))
    with pytest.raises(ValueError, match="clip_loss"):
        structure_loss(img_a, txt_a[:-1], img_o, txt_o, step=0)
    with pytest.raises(ValueError, match="same B samples"):
        structure_loss(img_a, txt_a, img_o[:-1], txt_o, step=0)


# ----------------------------------------------------------------------------------------
# Representational similarity and layer selection.
# ----------------------------------------------------------------------------------------
def test_knn_k_rules():
    assert knn_k(5000) == 35  # ceil(2 * 17.0998)
    assert knn_k(1000) == 20 and knn_k(1001) == 21  # exact at a perfect cube
    assert knn_k(100, "sqrt") == 10 and knn_k(101, "sqrt") == 11
    assert knn_k(1024, "sturges") == 11 and knn_k(1025, "sturges") == 12
    assert knn_k(50, 7) == 7
    assert knn_k(3) == 2  # capped at n - 1
    for bad, match in (((1,), "n must be an int >= 2"), ((10, 10), r"in \[1, n - 1"),
                       ((10, "log"), "unknown rule 'log'")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            knn_k(*bad)


def test_knn_indices_match_brute_force_across_blocks(monkeypatch):
    x = _rng(14).normal(size=(23, 5)).astype(np.float32)
    want = _np_knn(x, 4)
    np.testing.assert_array_equal(np.asarray(knn_indices(x, 4)), want)
    monkeypatch.setattr(similarity, "_BLOCK", 5)  # 23 rows: 4 full blocks and a padded one
    np.testing.assert_array_equal(np.asarray(knn_indices(x, 4)), want)


def test_mutual_knn_matches_brute_force():
    rng = _rng(15)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = np.concatenate([x[:, :3], rng.normal(size=(40, 4))], axis=1).astype(np.float32)
    k = knn_k(40)
    got = float(mutual_knn(x, y, k))
    assert 0.1 < got < 0.9  # neither trivial end
    np.testing.assert_allclose(got, _np_mutual_knn(x, y, k), rtol=1e-6)


def test_mutual_knn_identity_and_permutation():
    rng = _rng(16)
    n, k = 300, knn_k(300)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    assert float(mutual_knn(x, x, k)) == 1.0
    assert float(mutual_knn(x, 2.5 * x @ _orthogonal(rng, 16, 20), k)) == 1.0
    shuffled = float(mutual_knn(x, x[rng.permutation(n)], k))
    assert abs(shuffled - k / (n - 1)) < 0.02, (shuffled, k / (n - 1))


def test_mutual_knn_rejects_unpaired():
    with pytest.raises(ValueError, match="same n samples"):
        mutual_knn(np.ones((5, 2)), np.ones((6, 2)), 2)


@pytest.mark.parametrize(
    "cka, hsic", [(linear_cka, _np_hsic_biased), (unbiased_cka, _np_hsic_unbiased)]
)
def test_cka_invariants_and_reference(cka, hsic):
    rng = _rng(17)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    y = (x[:, :5] @ rng.normal(size=(5, 6)) + rng.normal(size=(30, 6))).astype(np.float32)
    np.testing.assert_allclose(float(cka(x, x)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(cka(x, 0.3 * x @ _orthogonal(rng, 8, 11))), 1.0, rtol=1e-5)
    value = float(cka(x, y))
    assert 0.05 < value < 0.95
    np.testing.assert_allclose(value, _np_cka(x, y, hsic), rtol=1e-4)
    np.testing.assert_allclose(float(cka(x + 4.0, 7.0 * y @ _orthogonal(rng, 6))), value, rtol=1e-4)
    assert float(cka(x, np.ones_like(y))) == 0.0  # a constant layer scores 0, not NaN


def test_unbiased_cka_needs_four_samples():
    with pytest.raises(ValueError, match="n >= 4"):
        unbiased_cka(np.ones((3, 2)), np.ones((3, 2)))


@pytest.mark.parametrize("metric", ["mutual_knn", "cka", "unbiased_cka"])
def test_select_layer_pair_finds_the_shared_layer(metric):
    rng = _rng(18)
    n = 60
    shared = rng.normal(size=(n, 8)).astype(np.float32)
    partly = np.concatenate([shared[:, :4], rng.normal(size=(n, 4))], axis=1)
    image = [rng.normal(size=(n, 8)), shared + 0.05 * rng.normal(size=(n, 8)), partly]
    text = [rng.normal(size=(n, 12)), 2.0 * shared @ _orthogonal(rng, 8, 12)]
    (i, j), scores = select_layer_pair(image, text, metric=metric)
    assert (i, j) == (1, 1) and scores.shape == (3, 2) and scores.dtype == np.float32
    assert scores[1, 1] == scores.max()
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    one = {"mutual_knn": lambda a, b: mutual_knn(a, b, knn_k(n)), "cka": linear_cka,
           "unbiased_cka": unbiased_cka}[metric]  # fmt: skip
    np.testing.assert_allclose(scores[2, 0], float(one(unit(image[2]), unit(text[0]))), rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def test_select_layer_pair_rejects_bad_input():
    a = [np.ones((6, 3))]
    with pytest.raises(ValueError, match="unknown metric 'rsa'"):
        select_layer_pair(a, a, metric="rsa")
    with pytest.raises(ValueError, match="same n samples"):
        select_layer_pair(a, [np.ones((7, 3))])
    with pytest.raises(ValueError, match="metric='mutual_knn' only"):
        select_layer_pair(a, a, metric="cka", k=3)
    with pytest.raises(ValueError, match="at least one image layer"):
        select_layer_pair([], a)
