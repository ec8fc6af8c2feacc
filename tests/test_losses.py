"""Invariants of the contrastive losses (docs/OBJECTIVES.md).

Runs on the 8 forced CPU devices of conftest.py; the ring and sharded-gradient tests build
meshes over subsets of them.
"""

import math

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alignjax import losses
from alignjax import objectives
from alignjax.losses import (
    clip_loss,
    info_nce,
    siglip_loss,
    siglip_loss_ring,
)
from alignjax.losses import ring as ring_lib

AXES = ("data", "fsdp", "tensor")
BATCH = P(("data", "fsdp"), None)


# ---------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------
def _unit(a):
    return a / jnp.linalg.norm(a, axis=-1, keepdims=True)


def _pair(seed, b, d, noise=0.5):
    """Correlated unit-norm image/text embeddings [b, d] (positives are related)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = _unit(jax.random.normal(k1, (b, d)))
    y = _unit(x + noise * jax.random.normal(k2, (b, d)))
    return x, y


def _mesh(shape, explicit=False):
    """A (data, fsdp, tensor) mesh over the first prod(shape) devices.

    ``explicit=True`` gives ``AxisType.Explicit`` axes (``jax.make_mesh``'s default in
    recent jax), where sharding is part of the array type.
    """
    n = int(np.prod(shape))
    devices = np.array(jax.devices()[:n]).reshape(shape)
    if explicit:
        return Mesh(devices, AXES, axis_types=(jax.sharding.AxisType.Explicit,) * 3)
    return Mesh(devices, AXES)


def _param_id(v):
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return "explicit" if v else "auto"


def _np_log_softmax(a, axis):
    a = a - a.max(axis=axis, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=axis, keepdims=True))


def _np_clip(x, y, t):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    logits = t * x @ y.T
    n = len(x)
    i2t = -np.mean([_np_log_softmax(logits, 1)[i, i] for i in range(n)])
    t2i = -np.mean([_np_log_softmax(logits, 0)[i, i] for i in range(n)])
    return 0.5 * (i2t + t2i)


def _np_siglip(x, y, t, b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = t * x[i] @ y[j] + b
            total += -np.log(1.0 / (1.0 + np.exp(-z * logit)))
    return total / n


def _softplus(v):
    return math.log1p(math.exp(v))


@flax.struct.dataclass
class _Out:
    zimg: jax.Array
    ztxt: jax.Array
    logit_scale: jax.Array
    logit_bias: jax.Array | None = None


# ---------------------------------------------------------------------------------------
# info_nce.
# ---------------------------------------------------------------------------------------
def test_info_nce_matches_numpy_with_soft_targets():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    targets = rng.random((5, 7)).astype(np.float32)
    targets /= targets.sum(1, keepdims=True)
    want = -np.mean(np.sum(targets * _np_log_softmax(logits.astype(np.float64), 1), 1))
    np.testing.assert_allclose(info_nce(logits, targets), want, rtol=1e-6)


def test_info_nce_hard_targets_is_cross_entropy():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = jax.nn.one_hot(jnp.array([0, 2]), 3)
    want = -np.mean(
        [
            _np_log_softmax(np.asarray(logits, np.float64), 1)[0, 0],
            _np_log_softmax(np.asarray(logits, np.float64), 1)[1, 2],
        ]
    )
    np.testing.assert_allclose(info_nce(logits, targets), want, rtol=1e-6)


def test_info_nce_masked_logits_stay_finite():
    logits = jnp.array([[1.0, -jnp.inf, 0.0], [0.0, 2.0, -jnp.inf]])
    targets = jnp.array([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0]])
    val, (gl, gt) = jax.value_and_grad(info_nce, argnums=(0, 1))(logits, targets)
    assert np.isfinite(val)
    assert np.all(np.isfinite(gl)) and np.all(np.isfinite(gt))
    want = info_nce(logits[:, jnp.array([0, 2])][:1], targets[:1, jnp.array([0, 2])])
    want2 = info_nce(logits[1:, :2], targets[1:, :2])
    np.testing.assert_allclose(val, 0.5 * (want + want2), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# CLIP.
# ---------------------------------------------------------------------------------------
def test_clip_t0_is_log_b():
    x, y = _pair(0, 12, 6)
    np.testing.assert_allclose(clip_loss(x, y, 0.0), math.log(12), rtol=1e-6)


def test_clip_swap_and_joint_permutation_invariant():
    x, y = _pair(1, 9, 5)
    ref = clip_loss(x, y, 7.0)
    assert abs(float(ref) - float(clip_loss(x[::-1], y, 7.0))) > 1e-3  # the test can fail
    np.testing.assert_allclose(clip_loss(y, x, 7.0), ref, rtol=1e-6)
    perm = jax.random.permutation(jax.random.key(3), 9)
    np.testing.assert_allclose(clip_loss(x[perm], y[perm], 7.0), ref, rtol=1e-6)


def test_clip_identity_two_by_two():
    eye = jnp.eye(2)
    np.testing.assert_allclose(clip_loss(eye, eye, 1.0), math.log1p(math.exp(-1.0)), rtol=1e-6)
    np.testing.assert_allclose(clip_loss(eye, eye, 1.0), 0.3133, atol=1e-4)


def test_clip_batch_of_one_is_zero():
    x, y = _pair(2, 1, 4)
    assert float(clip_loss(x, y, 50.0)) == 0.0


def test_clip_large_scale_orthonormal_goes_to_zero():
    eye = jnp.eye(6)
    assert float(clip_loss(eye, eye, 100.0)) < 1e-6
    assert float(clip_loss(eye, eye, 1.0)) > 0.5


def test_clip_matches_numpy_and_info_nce():
    x, y = _pair(4, 10, 8)
    t = 14.285714
    np.testing.assert_allclose(clip_loss(x, y, t), _np_clip(x, y, t), rtol=1e-5)
    logits = t * x @ y.T
    eye = jnp.eye(10)
    np.testing.assert_allclose(
        clip_loss(x, y, t), 0.5 * (info_nce(logits, eye) + info_nce(logits.T, eye)), rtol=1e-5
    )


def test_clip_computes_in_float32_and_accepts_shape_one_scale():
    x, y = _pair(5, 8, 16)
    xb, yb = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
    val = clip_loss(xb, yb, jnp.array([10.0]))
    assert val.dtype == jnp.float32
    want = _np_clip(np.asarray(xb, np.float32), np.asarray(yb, np.float32), 10.0)
    np.testing.assert_allclose(val, want, rtol=1e-5)


def test_clip_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        clip_loss(jnp.ones((4, 3)), jnp.ones((5, 3)), 1.0)


# ---------------------------------------------------------------------------------------
# SigLIP (dense).
# ---------------------------------------------------------------------------------------
def test_siglip_t0_formula():
    x, y = _pair(6, 7, 5)
    b = -2.7
    want = _softplus(-b) + 6 * _softplus(b)
    np.testing.assert_allclose(siglip_loss(x, y, 0.0, b), want, rtol=1e-6)


def test_siglip_at_init_near_orthogonal():
    k1, k2 = jax.random.split(jax.random.key(7))
    bsz, dim = 16, 8192
    x = _unit(jax.random.normal(k1, (bsz, dim)))
    y = _unit(jax.random.normal(k2, (bsz, dim)))
    want = _softplus(10.0) + (bsz - 1) * _softplus(-10.0)  # ≈ 10.0000454 + 15·4.54e-5
    np.testing.assert_allclose(siglip_loss(x, y, 10.0, -10.0), want, atol=0.05)


def test_siglip_symmetric_under_swap():
    x, y = _pair(8, 11, 6)
    ref = siglip_loss(x, y, 5.0, -3.0)
    np.testing.assert_allclose(siglip_loss(y, x, 5.0, -3.0), ref, rtol=1e-6)
    perm = jax.random.permutation(jax.random.key(1), 11)
    assert abs(float(siglip_loss(x[perm], y, 5.0, -3.0)) - float(ref)) > 1e-3


def test_siglip_matches_numpy():
    x, y = _pair(9, 8, 6)
    np.testing.assert_allclose(
        siglip_loss(x, y, jnp.array([10.0]), jnp.array([-10.0])),
        _np_siglip(x, y, 10.0, -10.0),
        rtol=1e-5,
    )
    np.testing.assert_allclose(siglip_loss(x, y, 3.0, 1.5), _np_siglip(x, y, 3.0, 1.5), rtol=1e-5)


# ---------------------------------------------------------------------------------------
# SigLIP ring == dense, values and gradients, on 1, 2, 4 and 8 devices.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, explicit",
    [
        ((1, 1, 1), False),
        ((1, 2, 1), False),
        ((2, 2, 1), False),
        ((4, 1, 1), False),
        ((2, 4, 1), False),
        ((8, 1, 1), False),
        ((2, 2, 2), False),
        ((1, 4, 2), False),
        ((2, 4, 1), True),
        ((1, 4, 2), True),
    ],
    ids=lambda v: _param_id(v),
)
def test_ring_equals_dense_value_and_grad(shape, explicit):
    mesh = _mesh(shape, explicit)
    x, y = _pair(10, 16, 8)
    t, b = jnp.float32(6.0), jnp.float32(-3.0)
    args = (0, 1, 2, 3)
    want_v, want_g = jax.value_and_grad(siglip_loss, argnums=args)(x, y, t, b)
    sh = NamedSharding(mesh, BATCH)
    ring = jax.jit(jax.value_and_grad(lambda *a: siglip_loss_ring(*a, mesh=mesh), argnums=args))
    val, grads = ring(jax.device_put(x, sh), jax.device_put(y, sh), t, b)
    np.testing.assert_allclose(val, want_v, rtol=1e-6, atol=1e-6)
    for g, w in zip(grads, want_g):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shape, explicit",
    [((1, 1, 1), False), ((2, 4, 1), False), ((1, 4, 2), False), ((2, 4, 1), True)],
    ids=lambda v: _param_id(v),
)
def test_ring_accuracy_equals_dense_accuracy(shape, explicit):
    mesh = _mesh(shape, explicit)
    x, y = _pair(11, 16, 8, noise=0.8)
    # Make retrieval asymmetric and cross-device: some captions match another image.
    y = y.at[3].set(x[12]).at[9].set(x[0])
    dense = build({"name": "siglip"})(_Out(x, y, jnp.float32(10.0), jnp.float32(-10.0)))
    sh = NamedSharding(mesh, BATCH)
    out = _Out(jax.device_put(x, sh), jax.device_put(y, sh), jnp.float32(10.0), jnp.float32(-10.0))
    ring = jax.jit(build({"name": "siglip", "impl": "ring"}, mesh=mesh))(out)
    sharded_dense = jax.jit(build({"name": "siglip"}))(out)
    assert 0.0 < float(dense[1]["i2t_acc"]) < 1.0
    assert float(dense[1]["i2t_acc"]) != float(dense[1]["t2i_acc"])
    for got in (ring, sharded_dense):
        np.testing.assert_allclose(got[0], dense[0], rtol=1e-6)
        for k in ("i2t_acc", "t2i_acc", "logit_scale", "logit_bias"):
            assert float(got[1][k]) == float(dense[1][k]), k


def test_ring_bf16_inputs_and_batch_axes_subset():
    mesh = _mesh((2, 4, 1))
    x, y = _pair(12, 16, 8)
    xb, yb = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
    sh = NamedSharding(mesh, P("fsdp", None))
    ring = jax.jit(lambda a, c: siglip_loss_ring(a, c, 4.0, -1.0, mesh=mesh, batch_axes="fsdp"))
    val = ring(jax.device_put(xb, sh), jax.device_put(yb, sh))
    assert val.dtype == jnp.float32
    np.testing.assert_allclose(val, siglip_loss(xb, yb, 4.0, -1.0), rtol=1e-6)


@pytest.mark.parametrize("explicit", [False, True], ids=["auto", "explicit"])
def test_ring_reshards_inputs_with_another_layout(explicit):
    mesh = _mesh((2, 4, 1), explicit)
    x, y = _pair(18, 16, 8)
    other = NamedSharding(mesh, P("data", None))  # not the ring's ('data', 'fsdp')
    ring = jax.jit(lambda a, c: siglip_loss_ring(a, c, 4.0, -1.0, mesh=mesh))
    val = ring(jax.device_put(x, other), jax.device_put(y, NamedSharding(mesh, P())))
    np.testing.assert_allclose(val, siglip_loss(x, y, 4.0, -1.0), rtol=1e-6)


def test_ring_rejects_indivisible_batch_and_unknown_axis():
    mesh = _mesh((2, 4, 1))
    x, y = _pair(13, 12, 4)
    with pytest.raises(ValueError, match="divisible"):
        siglip_loss_ring(x, y, 1.0, 0.0, mesh=mesh)
    with pytest.raises(ValueError, match="not axes of the mesh"):
        siglip_loss_ring(x[:8], y[:8], 1.0, 0.0, mesh=mesh, batch_axes=("batch",))


# ---------------------------------------------------------------------------------------
# Under jit on a sharded batch the gradient is the global one (open_clip's 1/W trap).
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("explicit", [False, True], ids=["auto", "explicit"])
@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_sharded_parameter_gradient_equals_single_device(name, explicit):
    k = jax.random.split(jax.random.key(14), 4)
    bsz, din, dim = 32, 12, 6
    img = jax.random.normal(k[0], (bsz, din))
    txt = jax.random.normal(k[1], (bsz, din))
    params = {
        "wi": jax.random.normal(k[2], (din, dim)) / 3,
        "wt": jax.random.normal(k[3], (din, dim)) / 3,
        "t": jnp.float32(math.log(10.0)),
        "b": jnp.float32(-2.0),
    }

    def loss(p, img, txt):
        zi, zt = _unit(img @ p["wi"]), _unit(txt @ p["wt"])
        if name == "clip":
            return clip_loss(zi, zt, jnp.exp(p["t"]))
        return siglip_loss(zi, zt, jnp.exp(p["t"]), p["b"])

    grad_fn = jax.jit(jax.value_and_grad(loss))
    dev0 = jax.devices()[0]
    want_v, want_g = grad_fn(
        jax.device_put(params, dev0), jax.device_put(img, dev0), jax.device_put(txt, dev0)
    )
    mesh = _mesh((2, 4, 1), explicit)
    sh = NamedSharding(mesh, BATCH)
    rep = NamedSharding(mesh, P())
    simg, stxt = jax.device_put(img, sh), jax.device_put(txt, sh)
    assert len(simg.sharding.device_set) == 8
    val, grads = grad_fn(jax.device_put(params, rep), simg, stxt)
    np.testing.assert_allclose(val, want_v, rtol=1e-5)
    for key in params:
        np.testing.assert_allclose(grads[key], want_g[key], rtol=1e-5, atol=1e-6, err_msg=key)


# ---------------------------------------------------------------------------------------
# Memory: the ring's per-device temp memory is below the dense one's.
# ---------------------------------------------------------------------------------------
def test_ring_compiled_memory_below_dense():
    mesh = _mesh((2, 4, 1))
    bsz, dim = 2048, 64
    emb = jax.ShapeDtypeStruct((bsz, dim), jnp.float32, sharding=NamedSharding(mesh, BATCH))
    scal = jax.ShapeDtypeStruct((), jnp.float32)
    ring = lambda *a: siglip_loss_ring(*a, mesh=mesh)

    def temp(fn):
        compiled = jax.jit(fn).lower(emb, emb, scal, scal).compile()
        stats = compiled.memory_analysis()
        if stats is None or not hasattr(stats, "temp_size_in_bytes"):
            pytest.skip("compiled.memory_analysis() is unavailable on this backend")
        return stats.temp_size_in_bytes

    grad = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2, 3))
    dense_fwd, ring_fwd = temp(siglip_loss), temp(ring)
    dense_bwd, ring_bwd = temp(grad(siglip_loss)), temp(grad(ring))
    block = (bsz // 8) ** 2 * 4  # one local b×b float32 block
    assert ring_fwd < dense_fwd, (ring_fwd, dense_fwd)
    assert ring_bwd < dense_bwd, (ring_bwd, dense_bwd)
    # Dense holds at least a b×B slab (8 blocks); the ring one block (+ text chunks). The
    # backward must not keep one residual block per hop (that is what jax.checkpoint on
    # each block prevents: without it ~18 blocks here); it keeps the per-hop b×D texts.
    assert dense_fwd >= 8 * block
    assert ring_fwd < 3 * block, ring_fwd / block
    assert ring_bwd < 8 * block, ring_bwd / block


# ---------------------------------------------------------------------------------------
# The clip and siglip objectives (alignjax.objectives) on model outputs.
# ---------------------------------------------------------------------------------------
def build(loss_config, mesh=None):
    """`out -> (loss, metrics)` of the registered objective for `loss_config`."""
    objective = objectives.build(loss_config, mesh)
    return lambda out: objective.loss(out, None, objectives.StepContext(step=jnp.int32(0)))


def default_loss_config():
    return objectives.default_loss_config()


def test_build_dense_losses_and_metrics():
    x, y = _pair(15, 8, 4, noise=0.1)
    out = _Out(x, y, jnp.array([10.0]), jnp.array([-10.0]))
    loss, m = jax.jit(build(default_loss_config()))(out)
    np.testing.assert_allclose(loss, clip_loss(x, y, 10.0), rtol=1e-5)
    assert set(m) == {"loss", "logit_scale", "i2t_acc", "t2i_acc"}
    assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())
    assert float(m["i2t_acc"]) == 1.0 and float(m["t2i_acc"]) == 1.0
    assert float(m["logit_scale"]) == 10.0

    cfg = ml_collections.ConfigDict({"name": "siglip", "impl": "dense"})
    loss, m = build(cfg)(out)
    np.testing.assert_allclose(loss, siglip_loss(x, y, 10.0, -10.0), rtol=1e-5)
    assert float(m["logit_bias"]) == -10.0

    _, m = build({"name": "clip"})(_Out(x, y, jnp.float32(3.0)))
    assert "logit_bias" not in m


def test_build_ring_matches_dense_gradient():
    mesh = _mesh((2, 4, 1))
    x, y = _pair(16, 16, 8)
    sh = NamedSharding(mesh, BATCH)
    out = _Out(jax.device_put(x, sh), jax.device_put(y, sh), jnp.float32(10.0), jnp.float32(-5.0))
    g_ring = jax.jit(
        jax.grad(lambda o: build({"name": "siglip", "impl": "ring"}, mesh=mesh)(o)[0])
    )(out)
    g_dense = jax.grad(lambda o: build({"name": "siglip"})(o)[0])(
        _Out(x, y, jnp.float32(10.0), jnp.float32(-5.0))
    )
    for a, c in zip(jax.tree.leaves(g_ring), jax.tree.leaves(g_dense)):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"name": "softmax"}, r"Invalid config.loss.name='softmax'. Valid choices: .*'clip'"),
        ({"name": "siglip", "impl": "chunked"}, r"Valid choices: 'dense', 'ring'"),
        ({"name": "clip", "temperature": 1.0}, r"loss 'clip' \(besides 'name'\): \(none\)"),
        ({"name": "clip", "impl": "ring"}, r"Unknown config field 'config.loss.impl'"),
        ({"name": "siglip", "impl": "ring"}, "needs the device mesh"),
    ],
)
def test_build_rejects_invalid_configs(cfg, match):
    x, y = _pair(17, 4, 4)
    with pytest.raises(ValueError, match=match):
        build(cfg)(_Out(x, y, jnp.float32(1.0), jnp.float32(0.0)))


def test_build_ring_rejects_unknown_batch_axis_and_siglip_needs_bias():
    with pytest.raises(ValueError, match="mesh has axes"):
        build({"name": "siglip", "impl": "ring", "batch_axes": ("batch",)}, mesh=_mesh((2, 4, 1)))
    x, y = _pair(17, 4, 4)
    with pytest.raises(ValueError, match="logit_bias"):
        build({"name": "siglip"})(_Out(x, y, jnp.float32(1.0)))


def test_public_api():
    for name in (
        "info_nce",
        "clip_loss",
        "siglip_loss",
        "siglip_loss_ring",
        "as_f32_scalar",
        "in_batch_accuracy",
    ):
        assert name in losses.__all__ and callable(getattr(losses, name))
    assert ring_lib.siglip_loss_ring is siglip_loss_ring
