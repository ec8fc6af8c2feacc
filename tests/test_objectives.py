"""Invariants of the alignment objectives (docs/OBJECTIVES.md; NegCLIP's from its paper).

Pure-function tests on small random arrays; the trainer-level tests (heads, GradCache,
pipeline transforms) use the tiny config of tests/tiny_config.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alignjax import objectives
from alignjax.losses import (
    clim,
    dreamlip,
    lightclip,
    negclip,
    pyramid,
    targets,
    tokenwise,
    uniter,
)
from alignjax.losses.contrastive import clip_loss
from alignjax.models.two_tower import l2_normalize
from alignjax.objectives.wukong import TokenReduction


def _unit(rng, *shape):
    return l2_normalize(jnp.asarray(rng.normal(size=shape), jnp.float32))


def _pair(b=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return _unit(rng, b, d), _unit(rng, b, d)


# ----------------------------------------------------------------------------- targets
def test_target_builders_rows_sum_to_one():
    s = targets.softened_targets(5, 0.2)
    np.testing.assert_allclose(jnp.sum(s, 1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.diag(s), 0.8, rtol=1e-6)
    np.testing.assert_allclose(s[0, 1], 0.05, rtol=1e-6)
    m = targets.smoothed_targets(4, 0.1)
    np.testing.assert_allclose(jnp.diag(m), 0.9 + 0.025, rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(m, 1), 1.0, rtol=1e-6)
    lab = targets.label_targets(jnp.array([0, 1, 0, 2]))
    np.testing.assert_allclose(lab[0], [0.5, 0, 0.5, 0])
    np.testing.assert_allclose(lab[3], [0, 0, 0, 1])
    assert targets.softened_targets(1, 0.3).tolist() == [[1.0]]


def test_symmetric_contrastive_is_clip_with_hard_targets_and_kl_soft():
    x, y = _pair()
    np.testing.assert_allclose(
        targets.symmetric_contrastive(x, y, 7.0), clip_loss(x, y, 7.0), rtol=1e-6
    )
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)
    p = jax.nn.softmax(logits)
    assert abs(float(targets.kl_soft(logits, p))) < 1e-6
    assert float(targets.kl_soft(logits, targets.hard_targets(4, 5))) > 0


# ----------------------------------------------------------------------------- token-wise
def _tokens(b=5, n1=4, n2=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    img = _unit(rng, b, n1, d)
    txt = _unit(rng, b, n2, d)
    mask = jnp.asarray(np.arange(n2)[None, :] < rng.integers(1, n2 + 1, size=(b, 1)))
    return img, txt, mask


def test_token_similarity_matches_brute_force():
    img, txt, mask = _tokens()
    s_i, s_t = tokenwise.token_similarity(img, None, txt, mask)
    a, b, m = np.asarray(img), np.asarray(txt), np.asarray(mask)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            sim = a[i] @ b[j][m[j]].T  # [n1, valid n2]
            np.testing.assert_allclose(s_i[i, j], sim.max(1).mean(), rtol=1e-5)
            np.testing.assert_allclose(s_t[i, j], sim.max(0).mean(), rtol=1e-5)


def test_filip_one_token_and_replicated_tokens_equal_clip():
    x, y = _pair()
    ref = clip_loss(x, y, 10.0)
    one, _ = tokenwise.filip_loss(x[:, None], y[:, None], None, 10.0)
    np.testing.assert_allclose(one, ref, rtol=1e-5)
    rep, _ = tokenwise.filip_loss(
        jnp.repeat(x[:, None], 3, 1), jnp.repeat(y[:, None], 5, 1), jnp.ones((6, 5), bool), 10.0
    )
    np.testing.assert_allclose(rep, ref, rtol=1e-5)


def test_filip_padding_is_ignored_and_zero_pad_floor_differs():
    img, txt, mask = _tokens()
    base, _ = tokenwise.filip_loss(img, txt, mask, 5.0)
    rng = np.random.default_rng(3)
    padded = jnp.concatenate([txt, _unit(rng, 5, 3, 8)], axis=1)
    pmask = jnp.concatenate([mask, jnp.zeros((5, 3), bool)], axis=1)
    again, _ = tokenwise.filip_loss(img, padded, pmask, 5.0)
    np.testing.assert_allclose(again, base, rtol=1e-6)
    floor, _ = tokenwise.filip_loss(-jnp.abs(img), jnp.abs(txt), mask, 5.0, zero_pad_floor=True)
    masked, _ = tokenwise.filip_loss(-jnp.abs(img), jnp.abs(txt), mask, 5.0)
    assert not np.isclose(float(floor), float(masked))  # All sims < 0: the 0 floor wins.


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_chunked_token_similarity_equals_dense_values_and_grads(chunk):
    img, txt, mask = _tokens(b=5)

    def loss(i, t, c):
        return tokenwise.filip_loss(i, t, mask, 4.0, chunk_size=c)[0]

    np.testing.assert_allclose(loss(img, txt, chunk), loss(img, txt, None), rtol=1e-6)
    g_c = jax.grad(loss, argnums=(0, 1))(img, txt, chunk)
    g_d = jax.grad(loss, argnums=(0, 1))(img, txt, None)
    for a, b in zip(g_c, g_d):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_token_selection_keeps_exactly_the_top_tokens():
    img, txt, mask = _tokens(b=4, n1=8)
    kept, kmask = tokenwise.select_top_tokens(img, None, txt, mask, 0.3, group_size=2)
    assert kept.shape == (4, 3, 8) and bool(jnp.all(kmask))
    a, b, m = np.asarray(img), np.asarray(txt), np.asarray(mask)
    for i in range(4):
        group = range(2 * (i // 2), 2 * (i // 2) + 2)
        score = np.max([(a[i] @ b[j][m[j]].T).max(1) for j in group], axis=0)
        top = np.sort(np.argsort(-score)[:3])
        chosen = sorted(int(np.argmax(np.all(np.isclose(a[i], k), 1))) for k in np.asarray(kept[i]))
        assert chosen == top.tolist()
    same, _ = tokenwise.select_top_tokens(img, None, txt, mask, 1.0)
    assert same is img
    full, _ = tokenwise.filip_loss(img, txt, mask, 3.0, img_keep_ratio=1.0, txt_keep_ratio=1.0)
    np.testing.assert_allclose(full, tokenwise.filip_loss(img, txt, mask, 3.0)[0])


def test_filip_sharded_over_8_devices_equals_one_device():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    img, txt, mask = _tokens(b=16, seed=4)
    sh = NamedSharding(mesh, P("data"))

    def loss(i, t, m):
        return tokenwise.filip_loss(i, t, m, 6.0, chunk_size=4)[0]

    args = [jax.device_put(a, sh) for a in (img, txt, mask)]
    with jax.set_mesh(mesh):
        val, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(*args)
    ref_val, ref_grads = jax.value_and_grad(loss, argnums=(0, 1))(img, txt, mask)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- PyramidCLIP
def test_pyramid_pair_loss_invariants():
    x, y = _pair(b=3)
    np.testing.assert_allclose(pyramid.pair_loss(x, y, 5.0, 0.0), clip_loss(x, y, 5.0), rtol=1e-6)
    for alpha in (0.0, 0.3):
        np.testing.assert_allclose(pyramid.pair_loss(x, y, 0.0, alpha), math.log(3), rtol=1e-6)
    # Closed form: i2t = (1 - a) CE_pos + a mean_{j != i} (-log p_ij), both directions.
    a, t = 0.2, 4.0
    logits = np.asarray(t * (x @ y.T), np.float64)

    def direction(lg):
        logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
        off = (logp.sum(1) - np.diag(logp)) / 2
        return np.mean(-(1 - a) * np.diag(logp) - a * off)

    expected = 0.5 * (direction(logits) + direction(logits.T))
    np.testing.assert_allclose(pyramid.pair_loss(x, y, t, a), expected, rtol=1e-5)


def test_pyramid_total_with_identical_views_is_a_multiple_of_clip():
    x, y = _pair()
    views, texts = {"global": x, "local": x}, {"original": y, "summary": y}
    total, parts = pyramid.pyramid_loss(
        views,
        texts,
        8.0,
        peer_pairs=pyramid.parse_pairs(["global:summary", "local:original"]),
        cross_pairs=pyramid.parse_pairs(["global:original", "local:summary"]),
        cross_weight=1.0,
        alpha=0.0,
    )
    np.testing.assert_allclose(total, 4 * clip_loss(x, y, 8.0), rtol=1e-5)
    assert set(parts) == {"global:summary", "local:original", "global:original", "local:summary"}
    with pytest.raises(ValueError, match="not available"):
        pyramid.pyramid_loss(views, texts, 1.0, peer_pairs=[("roi", "summary")])
    with pytest.raises(ValueError, match="view:text"):
        pyramid.parse_pairs(["global-summary"])


# ----------------------------------------------------------------------------- LightCLIP
def test_lightclip_schedule_and_degenerate_cases():
    steps = jnp.arange(0, 101, 10)
    for shape in ("linear", "cosine"):
        a = lightclip.alpha_schedule(steps, 100, 0.3, shape)
        assert float(a[0]) == 0.0 and abs(float(a[-1]) - 0.3) < 1e-6
        assert bool(jnp.all(jnp.diff(a) >= 0))
    x, y = _pair()
    for w in lightclip.NEG_WEIGHTINGS:
        np.testing.assert_allclose(
            lightclip.instance_loss(x, y, 9.0, 0.0, w), clip_loss(x, y, 9.0), rtol=1e-6
        )
    soft = lightclip.instance_loss(x, y, 9.0, 0.2, "similarity")
    assert np.isfinite(float(soft)) and not np.isclose(float(soft), float(clip_loss(x, y, 9.0)))
    np.testing.assert_allclose(
        lightclip.relaxed_token_loss(x[:, None], y[:, None], None, 9.0),
        clip_loss(x, y, 9.0),
        rtol=1e-5,
    )


def test_lightclip_mlm_masking_and_loss_ignore_unmasked_positions():
    tokens = jnp.array([[1, 5, 6, 7, 99, 0, 0], [1, 8, 9, 99, 0, 0, 0]])
    masked, labels = lightclip.mask_tokens(tokens, jax.random.key(0), 1.0, mask_id=2)
    # Everything maskable is masked at prob 1: not PAD (0), BOS (1) or the EOT (row max).
    assert masked.tolist() == [[1, 2, 2, 2, 99, 0, 0], [1, 2, 2, 99, 0, 0, 0]]
    assert labels.tolist() == [
        [-100, 5, 6, 7, -100, -100, -100],
        [-100, 8, 9, -100, -100, -100, -100],
    ]
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 100)), jnp.float32)
    only = jnp.full((2, 7), -100).at[0, 1].set(5)
    expected = -jax.nn.log_softmax(logits[0, 1])[5]
    np.testing.assert_allclose(lightclip.mlm_loss(logits, only), expected, rtol=1e-6)
    assert float(lightclip.mlm_loss(logits, jnp.full((2, 7), -100))) == 0.0


# ----------------------------------------------------------------------------- DreamLIP
def test_dreamlip_multi_positive_reduces_to_clip():
    x, y = _pair()
    np.testing.assert_allclose(
        dreamlip.multi_positive_loss(x, y[:, None], 6.0), clip_loss(x, y, 6.0), rtol=1e-6
    )
    copies = jnp.repeat(y[:, None], 4, axis=1)
    np.testing.assert_allclose(
        dreamlip.multi_positive_loss(x, copies, 6.0), clip_loss(x, y, 6.0), rtol=1e-5
    )


def test_dreamlip_circle_loss_numeric_case_and_monotonicity():
    img = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    txt = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # s_p = 1, s_n = 0 for both images
    np.testing.assert_allclose(dreamlip.circle_loss(img, txt, 32.0, 0.25), 0.0181499, rtol=1e-4)
    worse = l2_normalize(jnp.array([[[1.0, 0.5]], [[0.5, 1.0]]]))
    assert float(dreamlip.circle_loss(img, worse)) > float(dreamlip.circle_loss(img, txt))


def test_dreamlip_grouping_weights_and_constant_patches():
    rng = np.random.default_rng(0)
    texts, patches = _unit(rng, 3, 4, 8), _unit(rng, 3, 10, 8)
    w = dreamlip.grouping_weights(texts, patches, delta=0.3)
    np.testing.assert_allclose(jnp.sum(w, -1), 1.0, rtol=1e-5)
    s = jnp.einsum("bpd,bmd->bpm", texts, patches)
    sn = (s - s.min(-1, keepdims=True)) / (s.max(-1, keepdims=True) - s.min(-1, keepdims=True))
    assert bool(jnp.all(jnp.where(sn < 0.3, w == 0, True)))
    const = jnp.broadcast_to(patches[:, :1], patches.shape)
    wc = dreamlip.grouping_weights(texts, const)
    assert bool(jnp.all(jnp.isfinite(wc)))
    g = l2_normalize(jnp.einsum("bpm,bmd->bpd", wc, const))
    np.testing.assert_allclose(g, jnp.broadcast_to(patches[:, :1], g.shape), atol=1e-5)
    assert np.isfinite(float(dreamlip.grouping_loss(texts, const, 10.0)))


# ----------------------------------------------------------------------------- UNITER
def test_ipot_marginals_identical_sets_and_bounds():
    rng = np.random.default_rng(0)
    x = _unit(rng, 2, 5, 8)
    xm = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    d = uniter.ot_distance(x, xm, x, xm)
    assert float(jnp.max(jnp.abs(d))) < 1e-4
    y = _unit(rng, 2, 7, 8)
    ym = jnp.array([[1] * 7, [1, 1, 1, 1, 0, 0, 0]], bool)
    cost = 1.0 - jnp.einsum("bid,bjd->bij", x, y)
    plan = uniter.ipot(cost, xm, ym)
    rows = jnp.sum(plan, 2)
    np.testing.assert_allclose(rows[0], 1 / 5, rtol=1e-5)
    np.testing.assert_allclose(rows[1, :3], 1 / 3, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(plan, 1)[0], 1 / 7, rtol=0.05)
    assert float(jnp.max(jnp.abs(plan[1, 3:]))) == 0 and float(jnp.max(plan[1, :, 4:])) == 0
    dist = uniter.ot_distance(x, xm, y, ym)
    assert bool(jnp.all((dist >= 0) & (dist <= 2)))


def test_ipot_padding_and_permutation_invariance_and_no_plan_gradient():
    rng = np.random.default_rng(1)
    x, y = _unit(rng, 1, 4, 8), _unit(rng, 1, 6, 8)
    xm, ym = jnp.ones((1, 4), bool), jnp.ones((1, 6), bool)
    d = uniter.ot_distance(x, xm, y, ym)
    xp = jnp.concatenate([x, _unit(rng, 1, 2, 8)], 1)
    xpm = jnp.concatenate([xm, jnp.zeros((1, 2), bool)], 1)
    np.testing.assert_allclose(uniter.ot_distance(xp, xpm, y, ym), d, rtol=1e-5)
    perm = np.random.default_rng(2).permutation(6)
    np.testing.assert_allclose(uniter.ot_distance(x, xm, y[:, perm], ym), d, rtol=1e-5)
    # The gradient is that of <C(x), T> with the plan T held fixed.
    plan = uniter.ipot(1.0 - jnp.einsum("bid,bjd->bij", x, y), xm, ym)
    g = jax.grad(lambda a: uniter.ot_distance(a, xm, y, ym).sum())(x)
    g_fixed = jax.grad(lambda a: jnp.sum((1.0 - jnp.einsum("bid,bjd->bij", a, y)) * plan))(x)
    np.testing.assert_allclose(g, g_fixed, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- Wukong
def test_token_reduction_shapes_and_uniform_attention():
    rng = np.random.default_rng(0)
    x = _unit(rng, 2, 16, 8)
    mod = TokenReduction(num_tokens=3, groups=4)
    params = mod.init(jax.random.key(0), x)["params"]
    z, attn = mod.apply({"params": params}, x, return_attention=True)
    assert z.shape == (2, 3, 8) and attn.shape == (2, 3, 16)
    np.testing.assert_allclose(jnp.sum(attn, -1), 1.0, rtol=1e-5)
    params = jax.tree_util.tree_map(lambda p: p, params)
    params["attn_out"]["kernel"] = jnp.zeros_like(params["attn_out"]["kernel"])
    z0 = mod.apply({"params": params}, x)
    f = jnp.einsum("bnd,de->bne", x, _dense_of_grouped(params["value"]["kernel"], 4))
    np.testing.assert_allclose(z0, jnp.repeat(l2_normalize(f.mean(1))[:, None], 3, 1), atol=1e-5)


def _dense_of_grouped(kernel, groups):
    """The [D, D] matrix of a grouped 1x1 conv kernel [1, D/groups, D] (block diagonal)."""
    k = np.asarray(kernel)[0]
    d_in, d = k.shape[0] * groups, k.shape[1]
    dense = np.zeros((d_in, d), np.float32)
    per = d // groups
    for g in range(groups):
        dense[g * k.shape[0] : (g + 1) * k.shape[0], g * per : (g + 1) * per] = k[
            :, g * per : (g + 1) * per
        ]
    return jnp.asarray(dense)


# ----------------------------------------------------------------------------- CLIM
def test_mosaic_order_and_region_pooling():
    colours = jnp.arange(8, dtype=jnp.float32)  # 8 constant images -> 2 mosaics of 2x2
    images = jnp.broadcast_to(colours[:, None, None, None], (8, 8, 8, 3))
    mosaics = clim.make_mosaics(images, 2)
    assert mosaics.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(mosaics[0, :4, 4:, 0], 1.0)  # image 1: row 0, col 1
    np.testing.assert_allclose(mosaics[1, 4:, :4, 0], 6.0)  # image 6: row 1, col 0
    # A 4x4 token map that is the mosaic itself: tile k pools image k's value.
    tokens = mosaics[:, ::2, ::2, :].reshape(2, 16, 3)
    pooled = clim.region_pool(tokens.reshape(2, 4, 4, 3), clim.mosaic_boxes(2))
    np.testing.assert_allclose(pooled[..., 0].reshape(-1), colours, atol=1e-6)
    whole = clim.region_pool(tokens.reshape(2, 4, 4, 3), clim.mosaic_boxes(1))
    np.testing.assert_allclose(whole[:, 0], tokens.mean(1), rtol=1e-6)
    # A box covering half a cell weights that cell by its covered area.
    grid = jnp.arange(3.0).reshape(1, 1, 3, 1)
    half = clim.region_pool(grid, jnp.array([[0.0, 0.0, 0.5, 1.0]]))
    np.testing.assert_allclose(half[0, 0, 0], (0 * 1 + 1 * 0.5) / 1.5, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        clim.make_mosaics(images[:7], 2)


# ----------------------------------------------------------------------------- builder
def test_builder_rejects_unknown_method_fields_and_values():
    with pytest.raises(ValueError, match=r"'config.loss.chunk' \(did you mean 'chunk_size'\?\)"):
        objectives.build({"name": "filip", "chunk": 4})
    with pytest.raises(ValueError, match="Valid choices: 'linear', 'cosine', 'constant'"):
        objectives.build({"name": "lightclip", "schedule": "exp"})
    with pytest.raises(ValueError, match=r"'config.loss.impl'.*loss 'filip'"):
        objectives.build({"name": "filip", "impl": "ring"})
    obj = objectives.build({"name": "dreamlip", "group_weight": 0.0})
    assert obj.needs_tokens is False and obj.heads(None) == {}


def _ctx(step=0):
    return objectives.StepContext(step=jnp.int32(step))


# ----------------------------------------------------------------------------- negclip
def test_negclip_is_clip_plus_the_negative_mass_term():
    """L - L_clip = ½ mean_i log(1 + Σ_j e^{t x_i·n_j} / Σ_j e^{t x_i·y_j}) >= 0."""
    zimg, ztxt = _pair(b=6, d=8, seed=1)
    zneg = _unit(np.random.default_rng(2), 6, 8)
    t = 7.0
    loss = negclip.negclip_loss(zimg, ztxt, zneg, t)
    pos, neg = t * zimg @ ztxt.T, t * zimg @ zneg.T
    extra = 0.5 * jnp.mean(
        jnp.log1p(jnp.exp(jax.nn.logsumexp(neg, axis=1) - jax.nn.logsumexp(pos, axis=1)))
    )
    np.testing.assert_allclose(loss, clip_loss(zimg, ztxt, t) + extra, rtol=1e-5)
    assert float(extra) > 0


def test_negclip_far_negatives_give_clip_and_close_ones_cost_more():
    # Images share a direction e0; every negative points the other way: x·n ~ -0.95 while
    # the texts score up to 1, so at t = 50 the negatives' softmax mass is ~e^-97.
    rng = np.random.default_rng(3)
    e0 = jnp.eye(8)[0]
    zimg = l2_normalize(jnp.asarray(rng.normal(size=(5, 8)), jnp.float32) * 0.1 + e0)
    ztxt = l2_normalize(zimg + 0.05 * jnp.asarray(rng.normal(size=(5, 8)), jnp.float32))
    far = jnp.tile(-e0, (5, 1))
    np.testing.assert_allclose(
        negclip.negclip_loss(zimg, ztxt, far, 50.0), clip_loss(zimg, ztxt, 50.0), rtol=4e-6
    )  # Equal up to float32 rounding of the two programs (~2e-6 relative seen).
    # A negative that moves towards its image raises the loss; the gradient says so too.
    rng = np.random.default_rng(4)
    zneg = _unit(rng, 5, 8)
    closer = l2_normalize(zneg + 2.0 * zimg)
    assert negclip.negclip_loss(zimg, ztxt, closer, 5.0) > negclip.negclip_loss(
        zimg, ztxt, zneg, 5.0
    )
    g = jax.grad(lambda n: negclip.negclip_loss(zimg, ztxt, n, 5.0))(zneg)
    assert float(jnp.sum(g * zimg)) > 0  # Descent pushes each negative away from the images.


def test_negclip_is_invariant_to_permuting_the_batch():
    zimg, ztxt = _pair(b=7, d=8, seed=5)
    zneg = _unit(np.random.default_rng(6), 7, 8)
    perm = np.random.default_rng(7).permutation(7)
    np.testing.assert_allclose(
        negclip.negclip_loss(zimg, ztxt, zneg, 9.0),
        negclip.negclip_loss(zimg[perm], ztxt[perm], zneg[perm], 9.0),
        rtol=1e-6,
    )


# ----------------------------------------------------------------------------- objectives
def _outputs(b=8, n1=4, n2=5, d=8, seed=0):
    from alignjax.models.two_tower import TwoTowerOutput

    rng = np.random.default_rng(seed)
    img_tokens, txt_tokens = _unit(rng, b, n1, d), _unit(rng, b, n2, d)
    return TwoTowerOutput(
        zimg=_unit(rng, b, d),
        ztxt=_unit(rng, b, d),
        logit_scale=jnp.float32(10.0),
        img_tokens=img_tokens,
        txt_tokens=txt_tokens,
        txt_mask=jnp.ones((b, n2), bool),
    )


@pytest.mark.parametrize(
    "name, cfg, wrap",
    [
        ("lightclip", {"token_weight": 0.0, "alpha_max": 0.5}, lambda o: {"main": o}),
        ("dreamlip", {"group_weight": 0.0}, lambda o: {"main": o}),
        ("uniter", {"weight": 0.0}, lambda o: o),
        ("clim", {}, lambda o: {"main": o}),  # No mosaic tokens: every image is a single.
        ("pyramid", {"alpha": 0.0, "cross_pairs": ()}, lambda o: {"main": o, "local": o}),
    ],
)
def test_objectives_reduce_to_clip_in_their_degenerate_case(name, cfg, wrap):
    out = _outputs()
    obj = objectives.build({"name": name, **cfg})
    loss, metrics = obj.loss(wrap(out), None, _ctx())
    scale = 2.0 if name == "pyramid" else 1.0  # Two peer pairs, each the CLIP loss.
    np.testing.assert_allclose(loss, scale * clip_loss(out.zimg, out.ztxt, 10.0), rtol=1e-5)
    assert {"loss", "logit_scale", "i2t_acc", "t2i_acc"} <= set(metrics)


def test_negclip_objective_reports_its_clip_part():
    out = _outputs()
    obj = objectives.build({"name": "negclip"})
    zneg = _unit(np.random.default_rng(9), 8, 8)
    loss, metrics = obj.loss({"main": out, "zneg": zneg}, None, _ctx())
    np.testing.assert_allclose(loss, negclip.negclip_loss(out.zimg, out.ztxt, zneg, 10.0))
    np.testing.assert_allclose(metrics["loss_clip"], clip_loss(out.zimg, out.ztxt, 10.0))
    assert float(loss) > float(metrics["loss_clip"])


def test_clim_regions_and_frozen_text():
    out = _outputs(b=8, n1=16)
    obj = objectives.build({"name": "clim", "grid": 2, "freeze_text": True})
    assert not obj.supports_accumulation

    def loss_of(ztxt, mosaic_tokens):
        o = out.replace(ztxt=ztxt)
        return obj.loss({"main": o, "mosaic_tokens": mosaic_tokens}, None, _ctx())[0]

    mosaic = _unit(np.random.default_rng(5), 1, 16, 8)
    g_txt, g_mosaic = jax.grad(loss_of, argnums=(0, 1))(out.ztxt, mosaic)
    assert float(jnp.max(jnp.abs(g_txt))) == 0.0 and float(jnp.max(jnp.abs(g_mosaic))) > 0
    regions = clim.region_features(mosaic, 2)
    expected = clip_loss(jnp.concatenate([regions, out.zimg[4:]]), out.ztxt, 10.0)
    np.testing.assert_allclose(loss_of(out.ztxt, mosaic), expected, rtol=1e-6)
