"""Tests for alignjax.models: towers, two-tower outputs, scan/remat/bf16, partitioning, config.

All models are tiny (width 32, depth <= 2, 16 px images) so the file runs in well under a
minute on 2 CPU cores.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import models
from alignjax.models import layers

W = 32  # tiny width everywhere


def tiny_config(**over):
    cfg = dict(
        embed_dim=W,
        image=dict(width=W, depth=2, mlp_dim=64, num_heads=2, patch_size=8),
        text=dict(width=W, depth=2, mlp_dim=64, num_heads=2, vocab_size=64, context_length=8),
    )
    for k, v in over.items():
        if k in ("image", "text"):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def images(b=2, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (b, 16, 16, 3))


# EOT is the largest id (63) at positions 3 and 5; zeros are padding.
TOKENS = jnp.array([[1, 5, 7, 63, 0, 0, 0, 0], [1, 9, 4, 2, 8, 63, 0, 0]], jnp.int32)


def init(model, imgs=None, toks=None):
    return model.init(
        jax.random.PRNGKey(1), images() if imgs is None else imgs, TOKENS if toks is None else toks
    )


def unboxed(variables):
    return nn.meta.unbox(variables)


@pytest.fixture(scope="module")
def clip_model():
    model = models.build(tiny_config())
    return model, init(model)


# ----------------------------------------------------------------------- image tower


@pytest.mark.parametrize("pool,posemb", [("tok", "learn"), ("gap", "sincos2d"), ("map", "learn")])
def test_vit_shapes_per_pool(pool, posemb):
    vit = models.ViT(
        width=W,
        depth=1,
        mlp_dim=64,
        num_heads=2,
        patch_size=8,
        pool=pool,
        posemb=posemb,
        pre_norm=True,
    )
    x = images(3)
    v = vit.init(jax.random.PRNGKey(0), x)
    pooled, tokens = vit.apply(v, x)
    assert pooled.shape == (3, W)
    assert tokens.shape == (3, 4, W)  # 16/8 * 16/8 patches, class token excluded
    p = v["params"]
    assert ("pos_embedding" in p) == (posemb == "learn")
    assert ("cls" in p) == (pool == "tok")
    assert ("map_head" in p) == (pool == "map")
    if posemb == "learn":
        assert p["pos_embedding"].value.shape == (1, 4 + (pool == "tok"), W)
    if pool == "gap":  # pooled is the mean of the returned (normed) patch tokens
        np.testing.assert_allclose(pooled, tokens.mean(1), atol=1e-5)
    if pool == "tok":  # the class token is pooled, not a patch token
        assert not np.allclose(pooled[:, None], tokens, atol=1e-3)


def test_vit_head_out_dim_and_no_bias():
    vit = models.ViT(
        width=W,
        depth=1,
        mlp_dim=64,
        num_heads=2,
        patch_size=8,
        pool="gap",
        out_dim=16,
        head_bias=False,
    )
    v = vit.init(jax.random.PRNGKey(0), images())
    pooled, tokens = vit.apply(v, images())
    assert pooled.shape == (2, 16) and tokens.shape == (2, 4, 16)
    assert set(v["params"]["head"]) == {"kernel"}


def test_sincos2d_posemb_values():
    pe = models.vit.posemb_sincos_2d(2, 3, 8)
    assert pe.shape == (1, 6, 8)
    # position (y=0, x=0): sin(0)=0, cos(0)=1 in each quarter
    np.testing.assert_allclose(pe[0, 0], [0, 0, 1, 1, 0, 0, 1, 1])
    # position (y=1, x=2) is row 1*3+2=5; omega = [1, 1e-4]
    np.testing.assert_allclose(pe[0, 5, :2], np.sin([2.0, 2e-4]), rtol=1e-6)
    np.testing.assert_allclose(pe[0, 5, 6:], np.cos([1.0, 1e-4]), rtol=1e-6)


# ------------------------------------------------------------------------ layer norm


@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_layer_norm_matches_two_pass_reference_values_and_grads(offset):
    """The hand-written backward of layers.normalize equals autodiff of the textbook formula,
    and the module equals flax's two-pass LayerNorm, also on large-mean activations."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 48)) * 2.0 + offset
    ct = jax.random.normal(jax.random.PRNGKey(1), x.shape)

    def reference(x):
        xc = x - x.mean(-1, keepdims=True)
        return xc / jnp.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-6)

    y, vjp = jax.vjp(lambda x: layers.normalize(x, 1e-6), x)
    y_ref, vjp_ref = jax.vjp(reference, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vjp(ct)[0], vjp_ref(ct)[0], rtol=1e-4, atol=1e-5)

    ours = layers.layer_norm("ln", jnp.float32, jnp.float32, 1e-6)
    theirs = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)
    v = ours.init(jax.random.PRNGKey(2), x)
    assert jax.tree.map(jnp.shape, nn.unbox(v)) == jax.tree.map(
        jnp.shape, theirs.init(jax.random.PRNGKey(2), x)
    )
    v = {"params": {"scale": jnp.linspace(0.5, 1.5, 48), "bias": jnp.linspace(-1, 1, 48)}}
    np.testing.assert_allclose(ours.apply(v, x), theirs.apply(v, x), rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda p, x: jnp.sum(ct * ours.apply(p, x)), argnums=(0, 1))(v, x)
    g_ref = jax.grad(lambda p, x: jnp.sum(ct * theirs.apply(p, x)), argnums=(0, 1))(v, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g, g_ref)
    # bf16 compute: statistics in float32, output cast.
    bf = layers.layer_norm("ln", jnp.bfloat16, jnp.float32, 1e-6).apply(v, x.astype(jnp.bfloat16))
    assert bf.dtype == jnp.bfloat16


# ------------------------------------------------------------------------ text tower


def text_tower(convention, **kw):
    return models.TextTransformer(
        width=W,
        depth=2,
        mlp_dim=64,
        num_heads=2,
        vocab_size=64,
        context_length=8,
        convention=convention,
        **kw,
    )


@pytest.mark.parametrize("convention", ["clip", "big_vision"])
def test_text_shapes_and_mask(convention):
    t = text_tower(convention)
    v = t.init(jax.random.PRNGKey(0), TOKENS)
    pooled, tokens, mask = t.apply(v, TOKENS)
    assert pooled.shape == (2, W) and tokens.shape == (2, 8, W)
    assert mask.dtype == jnp.bool_ and mask.shape == (2, 8)
    if convention == "clip":
        expected = np.arange(8)[None] <= np.array([3, 5])[:, None]
        np.testing.assert_array_equal(pooled, tokens[np.arange(2), [3, 5]])
    else:
        expected = np.asarray(TOKENS) != 0
        np.testing.assert_array_equal(pooled, tokens[:, -1])
    np.testing.assert_array_equal(mask, expected)


def test_text_big_vision_pad_id_and_shorter_sequence():
    t = text_tower("big_vision", pad_id=1)
    toks = jnp.array([[5, 6, 1, 1]])  # sticky EOS (=1) padding, length 4 < context 8
    v = t.init(jax.random.PRNGKey(0), toks)
    _, tokens, mask = t.apply(v, toks)
    assert tokens.shape == (1, 4, W)
    np.testing.assert_array_equal(mask, [[True, True, False, False]])


def test_clip_convention_ignores_tokens_after_eot(clip_model):
    model, v = clip_model
    enc = jax.jit(lambda t: model.apply(v, t, method=model.encode_text))
    base = enc(TOKENS)
    after = TOKENS.at[0, 6].set(17).at[1, 7].set(33)  # after EOT: causal + EOT pooling
    np.testing.assert_allclose(enc(after), base, atol=1e-6)
    before = TOKENS.at[0, 1].set(17)  # before EOT: must matter
    assert not np.allclose(enc(before)[0], base[0], atol=1e-4)
    np.testing.assert_allclose(enc(before)[1], base[1], atol=1e-6)


def test_big_vision_convention_is_bidirectional():
    t = text_tower("big_vision")
    v = t.init(jax.random.PRNGKey(0), TOKENS)
    _, tok0, _ = t.apply(v, TOKENS)
    _, tok1, _ = t.apply(v, TOKENS.at[0, 7].set(17))
    # no causal mask: the last token changes the representation of the first one
    assert not np.allclose(tok0[0, 0], tok1[0, 0], atol=1e-4)


def test_text_errors():
    with pytest.raises(ValueError, match="clip.*big_vision"):
        text_tower("bert").init(jax.random.PRNGKey(0), TOKENS)
    long = jnp.zeros((1, 9), jnp.int32)
    with pytest.raises(ValueError, match="context_length=8"):
        text_tower("clip").init(jax.random.PRNGKey(0), long)


# ------------------------------------------------------------------------- two tower


def test_two_tower_outputs(clip_model):
    model, v = clip_model
    out = model.apply(v, images(), TOKENS)
    assert isinstance(out, models.TwoTowerOutput)
    for z in (out.zimg, out.ztxt):
        assert z.shape == (2, W) and z.dtype == jnp.float32
        np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out.logit_scale, 1 / 0.07, rtol=1e-5)
    assert out.logit_scale.dtype == jnp.float32
    assert out.logit_bias is None
    assert out.img_tokens is None and out.txt_tokens is None and out.txt_mask is None
    assert "logit_bias" not in v["params"]
    # encode_* methods agree with __call__
    np.testing.assert_allclose(
        model.apply(v, images(), method=model.encode_image), out.zimg, atol=1e-6
    )
    np.testing.assert_allclose(
        model.apply(v, TOKENS, method=model.encode_text), out.ztxt, atol=1e-6
    )


def test_two_tower_return_tokens_and_missing_inputs(clip_model):
    model, v = clip_model
    out = model.apply(v, images(), TOKENS, return_tokens=True)
    assert out.img_tokens.shape == (2, 4, W) and out.txt_tokens.shape == (2, 8, W)
    np.testing.assert_allclose(jnp.linalg.norm(out.img_tokens, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(out.txt_tokens, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out.txt_mask, np.arange(8)[None] <= np.array([3, 5])[:, None])
    # the EOT token feature is the pooled text embedding (same head, same normalisation)
    np.testing.assert_allclose(out.txt_tokens[np.arange(2), [3, 5]], out.ztxt, atol=1e-6)
    only_txt = model.apply(v, None, TOKENS)
    assert only_txt.zimg is None and only_txt.ztxt.shape == (2, W)
    only_img = model.apply(v, images(), None)
    assert only_img.ztxt is None and only_img.zimg.shape == (2, W)


def test_logit_bias_only_when_configured():
    model = models.build(
        tiny_config(
            logit_scale_init=10.0,
            logit_bias_init=-10.0,
            image=dict(pool="map", posemb="sincos2d", head=False),
            text=dict(convention="big_vision", head_bias=True),
        )
    )
    v = init(model)
    p = v["params"]
    assert "logit_bias" in p and "head" not in p["img"] and "bias" in p["txt"]["head"]
    out = model.apply(v, images(), TOKENS)
    np.testing.assert_allclose(out.logit_bias, -10.0)
    np.testing.assert_allclose(out.logit_scale, 10.0, rtol=1e-5)
    np.testing.assert_allclose(p["log_scale"].value, np.log(10.0), rtol=1e-6)


def test_head_false_needs_matching_width():
    with pytest.raises(ValueError, match=r"width=32 and embed_dim=16"):
        models.build(tiny_config(embed_dim=16, image=dict(head=False)))


def test_jit_apply(clip_model):
    model, v = clip_model
    f = jax.jit(lambda v, x, t: model.apply(v, x, t, return_tokens=True))
    out = f(v, images(), TOKENS)
    ref = model.apply(v, images(), TOKENS, return_tokens=True)
    np.testing.assert_allclose(out.zimg, ref.zimg, atol=1e-5)
    np.testing.assert_allclose(out.txt_tokens, ref.txt_tokens, atol=1e-5)
    hash(model)  # usable as a static argument


# -------------------------------------------------------------- scan / remat / dtype


def _stack_blocks(params):
    """Unscanned layout (encoder/block_i/...) -> scanned layout (encoder/blocks/... [depth])."""
    if not isinstance(params, dict):
        return params
    out = {}
    for k, v in params.items():
        if k == "encoder":
            blocks = sorted((n for n in v if n.startswith("block_")), key=lambda n: int(n[6:]))
            enc = {n: x for n, x in v.items() if not n.startswith("block_")}
            enc["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[v[n] for n in blocks])
            out[k] = enc
        else:
            out[k] = _stack_blocks(v)
    return out


def test_scan_matches_loop(clip_model):
    model, v = clip_model
    scanned = models.build(tiny_config(scan=True))
    sv = jax.eval_shape(lambda: init(scanned))
    converted = {"params": _stack_blocks(unboxed(v)["params"])}
    # same tree structure and shapes as the scanned model's own init
    assert jax.tree.map(jnp.shape, converted) == jax.tree.map(jnp.shape, unboxed(sv))
    k = sv["params"]["img"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert k.names == ("layers", "embed", "mlp") and k.value.shape == (2, W, 64)
    a = model.apply(v, images(), TOKENS, return_tokens=True)
    b = scanned.apply(converted, images(), TOKENS, return_tokens=True)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_same_values_and_grads(scan):
    # One tower is enough: both towers share layers.Encoder, where remat lives.
    def value_and_grad(remat):
        t = text_tower("clip", scan=scan, remat=remat)

        def f(params):
            pooled, tokens, _ = t.apply({"params": params}, TOKENS)
            return jnp.sum(pooled**2) + jnp.sum(jnp.sin(tokens))

        return t, jax.jit(jax.value_and_grad(f))

    t, f0 = value_and_grad(None)
    params = unboxed(t.init(jax.random.PRNGKey(0), TOKENS))["params"]
    l0, g0 = f0(params)
    l1, g1 = value_and_grad("nothing_saveable")[1](params)
    # Recomputation changes XLA's fusion/op order, so equality is up to float32 rounding.
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 + 1e-5 * np.abs(y).max())


def test_remat_policy_errors():
    with pytest.raises(ValueError, match="dots_saveable"):
        text_tower("clip", remat="dots").init(jax.random.PRNGKey(0), TOKENS)


def test_bf16_compute_fp32_params(clip_model):
    model, v = clip_model
    bf = models.build(tiny_config(dtype="bfloat16"))
    bv = jax.eval_shape(lambda: init(bf))
    dtypes = {x.dtype for x in jax.tree.leaves(unboxed(bv))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    ref = model.apply(v, images(), TOKENS)
    out = bf.apply(v, images(), TOKENS)
    assert out.zimg.dtype == jnp.float32 and out.ztxt.dtype == jnp.float32
    np.testing.assert_allclose(out.zimg, ref.zimg, atol=5e-2)
    np.testing.assert_allclose(out.ztxt, ref.ztxt, atol=5e-2)
    # bf16 really was used for compute
    assert not np.allclose(out.zimg, ref.zimg, atol=1e-6)


# ------------------------------------------------------------------ partitioning


def _boxed_leaves(variables):
    return jax.tree_util.tree_flatten_with_path(
        variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]


@pytest.mark.parametrize("scan", [False, True])
def test_every_param_logically_partitioned(scan):
    model = models.build(tiny_config(scan=scan, logit_bias_init=-10.0, image=dict(pool="map")))
    variables = jax.eval_shape(lambda: init(model))
    leaves = _boxed_leaves(variables)
    assert leaves
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{name} is not partitioned"
        assert len(leaf.names) == leaf.value.ndim, name
        assert set(leaf.names) <= set(layers.LOGICAL_AXES) | {None}, (name, leaf.names)
        if scan and "/blocks/" in "/".join(str(getattr(p, "key", p)) for p in path):
            assert leaf.names[0] == "layers", name


def test_sharded_init_and_apply_on_mesh():
    """Partition specs from the logical names: what a trainer does (8 forced CPU devices)."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = (
        ("batch", "data"),
        ("length", None),
        ("embed", None),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv", None),
        ("vocab", "model"),
        ("joint", None),
        ("layers", None),
    )
    model = models.build(tiny_config(scan=True))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x, t = jax.device_put((images(8), jnp.tile(TOKENS, (4, 1))), batch)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), x, t), out_shardings=shardings)()
    fc1 = variables["params"]["img"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"].value
    assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, None, "model")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        out = jax.jit(model.apply)(variables, x, t)
    assert out.zimg.sharding.spec[0] == "data"  # batch stays sharded through the model
    ref = jax.jit(model.apply)(jax.device_get(variables), images(8), jnp.tile(TOKENS, (4, 1)))
    np.testing.assert_allclose(out.zimg, ref.zimg, atol=1e-5)


# ------------------------------------------------------------------ variants & config


def test_parse_vit_variant():
    assert models.parse_vit_variant("B/16") == dict(
        width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16
    )
    assert models.parse_vit_variant("So400m/14") == dict(
        width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14
    )
    assert models.parse_vit_variant("L") == dict(width=1024, depth=24, mlp_dim=4096, num_heads=16)
    assert models.parse_vit_variant("mu/8")["width"] == 32
    with pytest.raises(ValueError, match=r"'So400m'.*Valid sizes: mu, Ti, S"):
        models.parse_vit_variant("so400m/14")
    with pytest.raises(ValueError, match="Malformed"):
        models.parse_vit_variant("B/16/2")


def test_build_variants_and_conflicts():
    m = models.build(dict(image=dict(variant="mu/8"), text=dict(variant="mu", vocab_size=64)))
    assert m.image["width"] == 32 and m.image["patch_size"] == 8 and m.text["depth"] == 1
    with pytest.raises(
        ValueError,
        match=r"image.variant='B/16' already sets width=768.*"
        r"image.width=64",
    ):
        models.build(dict(image=dict(variant="B/16", width=64)))
    cfg = models.default_model_config()
    cfg.image.width = 64  # full config with the default variant: conflict is explained
    with pytest.raises(ValueError, match="variant=None"):
        models.build(cfg)
    with pytest.raises(ValueError, match="text tower size is incomplete: text.num_heads"):
        models.build(dict(text=dict(width=32, depth=1, mlp_dim=64)))
    with pytest.raises(ValueError, match="bare size name"):
        models.build(dict(text=dict(variant="B/16")))


def test_unknown_config_field_names_closest():
    with pytest.raises(ValueError, match=r"'model.embed_dims' \(did you mean 'embed_dim'\?\)"):
        models.build(dict(embed_dims=128))
    with pytest.raises(ValueError, match=r"'model.image.pol' \(did you mean 'pool'\?\).*posemb"):
        models.build(dict(image=dict(pol="map")))
    with pytest.raises(ValueError, match=r"remat='nothing'.*nothing_saveable"):
        models.build(dict(remat="nothing"))
    with pytest.raises(ValueError, match="convention"):
        models.build(dict(text=dict(convention="bert")))
    with pytest.raises(ValueError, match="attention_impl"):
        models.build(dict(attention_impl="flash"))
    with pytest.raises(ValueError, match="cudnn.*bfloat16"):
        models.build(dict(attention_impl="cudnn"))
    models.build(dict(attention_impl="cudnn", dtype="bfloat16"))  # accepted (runs on GPU)


def test_default_config_builds_and_is_complete():
    cfg = models.default_model_config()
    m = models.build(cfg)
    assert m.image["width"] == 768 and m.image["patch_size"] == 16 and m.text["width"] == 512
    assert set(cfg.image) >= {"variant", "posemb", "pool", "pre_norm", "head", "head_bias"}
    assert set(cfg.text) >= {"convention", "pad_id", "context_length", "vocab_size"}
    # the default B/16 model shapes, without allocating it
    shapes = jax.eval_shape(
        lambda: m.init(
            jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 77), jnp.int32)
        )
    )
    n = sum(x.size for x in jax.tree.leaves(unboxed(shapes)))
    assert 149e6 < n < 150e6, n  # OpenAI CLIP ViT-B/16 has 149.6M parameters
