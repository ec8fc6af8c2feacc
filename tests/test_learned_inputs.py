"""Learned inputs: text input embeddings, CoOp context splicing, visual prompts.

Tiny models (width 32, depth 1, 16 px images, 12 text positions); ~1.5 min on 2 busy cores.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import models
from alignjax.models import prompts as P
from alignjax.models.vit import MAPHead

W = 32
L = 12
EOT = 63  # clip convention: EOT is the largest id; 0 pads; 1 is SOS
# big_vision convention: no SOS, EOS = 1, sticky EOS padding (pad_id == 1)
BV_EOS = 1

CLIP_TOKENS = jnp.array(
    [[1, 5, 7, EOT] + [0] * 8, [1, 9, 4, 2, 8, EOT] + [0] * 6, [1, 6, EOT] + [0] * 9], jnp.int32
)
BV_TOKENS = jnp.array(
    [[5, 7] + [BV_EOS] * 10, [9, 4, 2, 8] + [BV_EOS] * 8, [6] + [BV_EOS] * 11], jnp.int32
)
CONVENTIONS = {
    # convention: (tokens, pad_id, splice kwargs)
    "clip": (CLIP_TOKENS, 0, dict(eos_id=None, has_bos=True)),
    "big_vision": (BV_TOKENS, BV_EOS, dict(eos_id=BV_EOS, has_bos=False)),
}


def text_tower(convention):
    return models.TextTransformer(
        width=W,
        depth=1,
        mlp_dim=64,
        num_heads=2,
        vocab_size=64,
        context_length=L,
        convention=convention,
        pad_id=CONVENTIONS[convention][1],
        out_dim=16,  # a head, as in the two-tower model
    )


class Tower:
    """A text tower per convention with its variables and (eager) entry points.

    Eager on purpose: op-by-op dispatch reuses compiled ops across calls of one shape, where
    every jit would compile the whole tower again (test_embeddings_path_equals_ids_path
    covers jit).
    """

    def __init__(self, convention):
        self.convention = convention
        self.module = t = text_tower(convention)
        self.tokens = CONVENTIONS[convention][0]
        self.v = t.init(jax.random.PRNGKey(0), self.tokens)
        self.embed = lambda x: t.apply(self.v, x, method="embed_tokens")
        self.ids = lambda x: t.apply(self.v, x)  # (pooled, tokens, mask)
        self.emb = lambda x, e: t.apply(self.v, x, e)


@pytest.fixture(scope="module", params=["clip", "big_vision"])
def tower(request):
    return Tower(request.param)


def images(b=3, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (b, 16, 16, 3))


def tiny_two_tower(pool="tok", convention="clip"):
    return models.build(
        dict(
            embed_dim=W,
            image=dict(width=W, depth=1, mlp_dim=64, num_heads=2, patch_size=8, pool=pool),
            text=dict(
                width=W,
                depth=1,
                mlp_dim=64,
                num_heads=2,
                vocab_size=64,
                context_length=L,
                convention=convention,
            ),
        )
    )


@pytest.fixture(scope="module")
def clip_model():
    model = tiny_two_tower()
    return model, model.init(jax.random.PRNGKey(1), images(), CLIP_TOKENS)


def tree_shapes(variables):
    return jax.tree.map(lambda x: (x.shape, x.dtype), nn.unbox(variables))


def axis_names(variables):
    return jax.tree.map(lambda b: b.names, variables, is_leaf=lambda b: hasattr(b, "names"))


def assert_equal_tree(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------ text input embeddings


def test_embeddings_path_equals_ids_path(tower):
    t, v, toks = tower.module, tower.v, tower.tokens
    emb = t.apply(v, toks, method="embed_tokens")
    assert emb.shape == (3, L, W) and emb.dtype == jnp.float32
    np.testing.assert_array_equal(emb, v["params"]["token_embedding"]["embedding"].value[toks])
    assert_equal_tree(t.apply(v, toks, emb), t.apply(v, toks))  # pooled, tokens, mask
    # under jit
    ids_path = jax.jit(lambda v, x: t.apply(v, x))(v, toks)
    emb_path = jax.jit(lambda v, x: t.apply(v, x, t.apply(v, x, method="embed_tokens")))(v, toks)
    assert_equal_tree(emb_path, ids_path)


def test_embeddings_are_what_the_tower_reads(tower):
    """Tokens fix mask and pooling; the features come from the embeddings."""
    toks = tower.tokens
    emb = tower.embed(toks)
    pooled, _, mask = tower.emb(toks, emb)
    eot = 3  # row 0's EOS position (clip) / a sticky-padding position (big_vision)
    # (a random direction: a constant shift of all dims would vanish in the LayerNorms)
    delta = jax.random.normal(jax.random.PRNGKey(9), (W,))
    before = emb.at[0, 1].add(delta)
    p_before, _, m_before = tower.emb(toks, before)
    assert not np.allclose(p_before[0], pooled[0], atol=1e-4)
    np.testing.assert_array_equal(p_before[1:], pooled[1:])
    np.testing.assert_array_equal(m_before, mask)
    after = emb.at[0, eot + 2].add(delta)
    p_after = tower.emb(toks, after)[0]
    if tower.convention == "clip":  # causal + EOT pooling: positions after EOT cannot matter
        np.testing.assert_allclose(p_after, pooled, atol=1e-6)
    else:  # bidirectional: padding embeddings reach the last-position feature
        assert not np.allclose(p_after[0], pooled[0], atol=1e-4)


def test_init_with_learned_inputs_gives_the_same_parameter_tree():
    """Same paths, shapes, dtypes and logical axis names (abstract init, nothing runs)."""
    for pool in ("tok", "map"):
        model = tiny_two_tower(pool=pool)
        key = jax.random.PRNGKey(1)
        v = jax.eval_shape(lambda: model.init(key, images(), CLIP_TOKENS))
        v_learned = jax.eval_shape(
            lambda: model.init(
                key,
                images(),
                CLIP_TOKENS,
                text_embeddings=jnp.zeros((3, L, W)),
                image_prompts=jnp.zeros((2, W)),
            )
        )
        assert tree_shapes(v_learned) == tree_shapes(v)
        assert axis_names(v_learned) == axis_names(v)
        assert "token_embedding" in v_learned["params"]["txt"]


def test_two_tower_text_embeddings(clip_model):
    model, v = clip_model
    emb = model.apply(v, CLIP_TOKENS, method="embed_tokens")
    table = v["params"]["txt"]["token_embedding"]["embedding"].value
    np.testing.assert_array_equal(emb, table[CLIP_TOKENS])
    ref = model.apply(v, None, CLIP_TOKENS, return_tokens=True)
    out = model.apply(v, None, CLIP_TOKENS, return_tokens=True, text_embeddings=emb)
    assert_equal_tree(out, ref)
    np.testing.assert_array_equal(
        model.apply(v, CLIP_TOKENS, emb, method="encode_text"),
        model.apply(v, CLIP_TOKENS, method="encode_text"),
    )
    with pytest.raises(ValueError, match="text_embeddings need tokens"):
        model.apply(v, images(), None, text_embeddings=emb)
    with pytest.raises(ValueError, match="image_prompts were given without images"):
        model.apply(v, None, CLIP_TOKENS, image_prompts=jnp.zeros((1, W)))
    with pytest.raises(ValueError, match=r"embeddings must be \[B, L, width\]"):
        model.apply(v, CLIP_TOKENS, emb[:, :-1], method="encode_text")


# ------------------------------------------------------------------ context splicing


def id_embeddings(tokens):
    """Embeddings that spell out the ids ([C, L, 2]: id, id), to read layouts off."""
    return jnp.repeat(tokens[..., None].astype(jnp.float32), 2, axis=-1)


CTX3 = -jnp.arange(1, 4, dtype=jnp.float32)[:, None] * jnp.ones((1, 2))  # [3, 2]: -1, -2, -3
X = 2  # placeholder id


@pytest.mark.parametrize(
    "position,expected",
    [
        ("end", [[1, -1, -2, -3, 5, 7, EOT, 0], [1, -1, -2, -3, 6, EOT, 0, 0]]),
        ("middle", [[1, -1, 5, 7, -2, -3, EOT, 0], [1, -1, 6, -2, -3, EOT, 0, 0]]),
        ("front", [[1, 5, 7, -1, -2, -3, EOT, 0], [1, 6, -1, -2, -3, EOT, 0, 0]]),
    ],
)
def test_splice_layouts(position, expected):
    toks = CLIP_TOKENS[[0, 2], :8]
    emb, out = P.splice_context(
        toks, id_embeddings(toks), CTX3, placeholder_id=X, position=position
    )
    assert emb.shape == (2, 8, 2) and out.shape == (2, 8) and out.dtype == toks.dtype
    np.testing.assert_array_equal(emb[..., 0], expected)
    np.testing.assert_array_equal(emb[..., 1], expected)
    np.testing.assert_array_equal(out, np.where(np.asarray(expected) < 0, X, expected))
    # class-specific [C, M, W] context: row c gets its own vectors
    csc = jnp.stack([CTX3, 10 * CTX3])
    emb_c, out_c = P.splice_context(
        toks, id_embeddings(toks), csc, placeholder_id=X, position=position
    )
    np.testing.assert_array_equal(out_c, out)
    np.testing.assert_array_equal(emb_c[0], emb[0])
    exp1 = np.asarray(expected[1])
    np.testing.assert_array_equal(emb_c[1, :, 0], np.where(exp1 < 0, 10 * exp1, exp1))


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_splice_middle_puts_floor_half_before_the_class(m):
    toks = CLIP_TOKENS[:1]  # [SOS] 5 7 [EOT]
    ctx = -jnp.arange(1, m + 1, dtype=jnp.float32)[:, None] * jnp.ones((1, 2))
    emb, _ = P.splice_context(toks, id_embeddings(toks), ctx, placeholder_id=X, position="middle")
    row = np.asarray(emb[0, :, 0])
    i5, i7 = int(np.flatnonzero(row == 5)[0]), int(np.flatnonzero(row == 7)[0])
    assert i5 == 1 + m // 2 and i7 == i5 + 1  # class kept contiguous after floor(M/2) vectors
    np.testing.assert_array_equal(row[1:i5], -np.arange(1, m // 2 + 1))
    np.testing.assert_array_equal(row[i7 + 1 : 1 + m + 2], -np.arange(m // 2 + 1, m + 1))
    assert row[1 + m + 2] == EOT


def test_splice_class_lengths_keep_the_suffix_before_eos():
    toks = CLIP_TOKENS[:2, :10]  # bodies "5 7" and "9 4 2 8"; class names "5" and "9 4"
    kw = dict(placeholder_id=X, class_lengths=[1, 2])
    emb, _ = P.splice_context(toks, id_embeddings(toks), CTX3, position="front", **kw)
    np.testing.assert_array_equal(
        emb[..., 0], [[1, 5, -1, -2, -3, 7, EOT, 0, 0, 0], [1, 9, 4, -1, -2, -3, 2, 8, EOT, 0]]
    )
    emb, _ = P.splice_context(toks, id_embeddings(toks), CTX3, position="middle", **kw)
    np.testing.assert_array_equal(emb[0, :, 0], [1, -1, 5, -2, -3, 7, EOT, 0, 0, 0])
    emb_end, _ = P.splice_context(toks, id_embeddings(toks), CTX3, position="end", **kw)
    emb_ref, _ = P.splice_context(toks, id_embeddings(toks), CTX3, placeholder_id=X)
    np.testing.assert_array_equal(emb_end, emb_ref)  # 'end': the class length does not matter


def test_spliced_tokens_keep_pooling_and_mask(tower):
    """The EOT moves to eot + M for every position; mask and pooling follow."""
    convention, toks = tower.convention, tower.tokens
    kw = CONVENTIONS[convention][2]
    emb = tower.embed(toks)
    eot = np.array([3, 5, 2]) if convention == "clip" else np.array([2, 4, 1])
    for m in (0, 3, 4):
        ctx = 0.02 * jax.random.normal(jax.random.PRNGKey(m), (m, W))
        for position in P.POSITIONS:
            e, out = P.splice_context(toks, emb, ctx, placeholder_id=X, position=position, **kw)
            out_np = np.asarray(out)
            if convention == "clip":
                np.testing.assert_array_equal(out_np.argmax(-1), eot + m)
            else:
                np.testing.assert_array_equal((out_np == BV_EOS).argmax(-1), eot + m)
                assert (out_np[:, -1] == BV_EOS).all()  # big_vision pools the last position
            expected_mask = np.arange(L)[None] <= (eot + m)[:, None]
            if convention == "big_vision":  # non-pad ids; sticky padding masks the EOS too
                expected_mask = np.arange(L)[None] < (eot + m)[:, None]
            pooled, feats, mask = tower.emb(out, e)
            np.testing.assert_array_equal(mask, expected_mask)
            pool_at = eot + m if convention == "clip" else np.full(3, L - 1)
            np.testing.assert_array_equal(pooled, feats[np.arange(3), pool_at])


def test_context_of_placeholder_embeddings_equals_the_ids_path(tower):
    """Context "a photo of a" spliced before the class == the tokenized full prompt."""
    convention, toks = tower.convention, tower.tokens
    _, pad_id, kw = CONVENTIONS[convention]
    phrase_ids = [11, 12, 13, 11]  # "a photo of a"
    start = int(kw["has_bos"])
    eos = EOT if convention == "clip" else BV_EOS
    phrase = np.full((1, L), pad_id, np.int32)
    phrase[0, : start + 5] = ([1] if start else []) + phrase_ids + [eos]
    ctx, ids = P.phrase_context(phrase, tower.embed(phrase), **kw)
    assert ids.tolist() == phrase_ids and ctx.shape == (4, W)
    emb = tower.embed(toks)
    e, out = P.splice_context(toks, emb, ctx, placeholder_id=ids, position="end", **kw)
    # the same prompts, tokenized with the phrase written out
    full = np.full((3, L), pad_id, np.int32)
    for c, row in enumerate(np.asarray(toks)):
        body = row[start : int(np.flatnonzero(row == eos)[0])].tolist()
        seq = ([1] if start else []) + phrase_ids + body + [eos]
        full[c, : len(seq)] = seq
    np.testing.assert_array_equal(out, full)
    assert_equal_tree(tower.emb(out, e), tower.ids(jnp.asarray(full)))
    # LearnedContext initialised from the phrase gives that context back exactly
    lc = P.LearnedContext(4, W, context_init=P.context_init(ctx))
    np.testing.assert_array_equal(lc.apply(lc.init(jax.random.PRNGKey(3))), ctx)


def test_splice_errors():
    toks, emb = CLIP_TOKENS, id_embeddings(CLIP_TOKENS)
    ctx = jnp.zeros((7, 2))
    # row 1 has 6 tokens up to EOT; + 7 context = 13 > 12
    with pytest.raises(ValueError, match=r"L=12.*row 1 has 6 tokens.*need 13.*>= 13"):
        P.splice_context(toks, emb, ctx, placeholder_id=X)
    P.splice_context(toks, emb, ctx[:6], placeholder_id=X)  # 12 fits exactly
    with pytest.raises(ValueError, match="below the EOT id 63"):
        P.splice_context(toks, emb, ctx[:2], placeholder_id=EOT)
    with pytest.raises(ValueError, match="padding id"):
        P.splice_context(toks, emb, ctx[:2], placeholder_id=0)
    with pytest.raises(ValueError, match="must not be the EOS id 1"):
        P.splice_context(BV_TOKENS, emb, ctx[:2], placeholder_id=1, eos_id=1, has_bos=False)
    with pytest.raises(ValueError, match=r"rows \[1\] contain no EOS id 63"):
        P.splice_context(toks.at[1].set(3), emb, ctx[:2], placeholder_id=X, eos_id=EOT)
    with pytest.raises(ValueError, match="Unknown context position 'start'"):
        P.splice_context(toks, emb, ctx[:2], placeholder_id=X, position="start")
    with pytest.raises(ValueError, match=r"context must be \[M, W\] or \[C, M, W\] with C=3"):
        P.splice_context(toks, emb, jnp.zeros((2, 4, 2)), placeholder_id=X)
    with pytest.raises(ValueError, match="placeholder_id must be an int or 2 ids"):
        P.splice_context(toks, emb, ctx[:2], placeholder_id=[X, X, X])
    with pytest.raises(ValueError, match="class_lengths"):
        P.splice_context(toks, emb, ctx[:2], placeholder_id=X, class_lengths=[1, 5, 1])


def test_splice_under_jit():
    toks, emb = CLIP_TOKENS, id_embeddings(CLIP_TOKENS)
    ctx = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 2))
    for position in P.POSITIONS:
        ref = P.splice_context(toks, emb, ctx, placeholder_id=X, position=position)
        kw = dict(placeholder_id=X, position=position)
        closed = jax.jit(lambda c: P.splice_context(toks, emb, c, **kw))(ctx)
        traced = jax.jit(lambda t, e, c: P.splice_context(t, e, c, **kw))(toks, emb, ctx)
        assert_equal_tree(closed, ref)
        assert_equal_tree(traced, ref)
    # closed-over (concrete) class prompts are still checked under jit
    with pytest.raises(ValueError, match="overflows the sequence length L=12"):
        jax.jit(lambda c: P.splice_context(toks, emb, c, placeholder_id=X))(jnp.zeros((7, 2)))


# ------------------------------------------------------------------ learned context


def test_learned_context_module():
    lc = P.LearnedContext(16, W)
    v = lc.init(jax.random.PRNGKey(0))
    ctx = lc.apply(v)
    assert ctx.shape == (16, W) and ctx.dtype == jnp.float32
    assert 0.016 < float(jnp.std(ctx)) < 0.024 and abs(float(jnp.mean(ctx))) < 0.004
    assert v["params"]["context"].names == (None, "embed")
    csc = P.LearnedContext(4, W, num_classes=3)
    vc = csc.init(jax.random.PRNGKey(0))
    assert csc.apply(vc).shape == (3, 4, W)
    assert vc["params"]["context"].names == (None, None, "embed")
    values = jnp.arange(4 * W, dtype=jnp.float32).reshape(4, W)
    from_values = P.LearnedContext(4, W, num_classes=3, context_init=P.context_init(values))
    np.testing.assert_array_equal(
        from_values.apply(from_values.init(jax.random.PRNGKey(0))), jnp.stack([values] * 3)
    )
    with pytest.raises(ValueError, match=r"\(4, 32\) do not fit.*\(5, 32\)"):
        P.LearnedContext(5, W, context_init=P.context_init(values)).init(jax.random.PRNGKey(0))


def test_context_gradients_through_a_frozen_model(clip_model):
    """CoOp step: gradients reach exactly the context of the classes in the loss."""
    model, v = clip_model
    class_tokens = CLIP_TOKENS
    class_emb = model.apply(v, class_tokens, method="embed_tokens")
    lc = P.LearnedContext(4, W, num_classes=3)
    ctx_vars = lc.init(jax.random.PRNGKey(5))
    target = jax.random.normal(jax.random.PRNGKey(6), (W,))

    def loss(ctx_vars, tower_vars, position):
        tower_vars = jax.lax.stop_gradient(tower_vars)
        emb, ids = P.splice_context(
            class_tokens, class_emb, lc.apply(ctx_vars), placeholder_id=X, position=position
        )
        z = model.apply(tower_vars, ids, emb, method="encode_text")  # [C, D]
        return jnp.sum(z[0] * target)  # only class 0 in the loss

    # 'middle': context on both sides of the class name (the layouts are tested above)
    g_ctx, g_tower = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(
        ctx_vars, v, "middle"
    )
    g = nn.unbox(g_ctx)["params"]["context"]  # [3, 4, W]
    assert (jnp.linalg.norm(g[0], axis=-1) > 0).all()  # every vector of class 0
    np.testing.assert_array_equal(g[1:], 0.0)  # other classes: not in the loss
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_tower))


def test_embedding_gradients_follow_the_attention_pattern(tower):
    """d pooled / d embeddings: causal 'clip' sees nothing after the EOT, big_vision all."""
    t, toks = tower.module, tower.tokens

    def loss(e, v):
        return jnp.sum(t.apply(jax.lax.stop_gradient(v), toks, e)[0][0])

    g, g_v = jax.jit(jax.grad(loss, argnums=(0, 1)))(tower.embed(toks), tower.v)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_v))
    norms = np.asarray(jnp.linalg.norm(g, axis=-1))  # [C, L]
    assert (norms[1:] == 0).all()  # other rows
    if tower.convention == "clip":
        assert (norms[0, :4] > 0).all() and (norms[0, 4:] == 0).all()
    else:
        assert (norms[0] > 0).all()


# ------------------------------------------------------------------- visual prompts


def vit(pool, **kw):
    return models.ViT(
        width=W, depth=1, mlp_dim=64, num_heads=2, patch_size=8, pool=pool, pre_norm=True, **kw
    )


@pytest.fixture(scope="module", params=["tok", "gap", "map"])
def vit_model(request):
    m = vit(request.param)
    return request.param, m, m.init(jax.random.PRNGKey(0), images())


def test_visual_prompts_shapes_and_effect(vit_model):
    pool, m, v = vit_model
    x = images()
    pooled, tokens = m.apply(v, x)
    prm = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (3, W))
    p_pooled, p_tokens = m.apply(v, x, prm)
    assert p_pooled.shape == pooled.shape and p_tokens.shape == tokens.shape == (3, 4, W)
    assert not np.allclose(p_pooled, pooled, atol=1e-4)
    assert not np.allclose(p_tokens, tokens, atol=1e-4)
    assert_equal_tree(m.apply(v, x, jnp.zeros((0, W))), (pooled, tokens))  # P = 0: plain ViT
    # [P, W] is shared by the batch: same as [B, P, W] with identical rows
    shared = jnp.broadcast_to(prm, (3, 3, W))
    for a, b in zip(m.apply(v, x, shared), (p_pooled, p_tokens), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # per-example prompts act on their own example only
    per = shared.at[1].multiply(-1.0)
    q_pooled, _ = m.apply(v, x, per)
    others = np.array([0, 2])
    np.testing.assert_allclose(q_pooled[others], p_pooled[others], atol=1e-6, rtol=0)
    assert not np.allclose(q_pooled[1], p_pooled[1], atol=1e-4)
    with pytest.raises(ValueError, match=r"prompts must be \[P, width\] or \[B, P, width\]"):
        m.apply(v, x, jnp.zeros((2, 3, W)))


def test_visual_prompts_have_no_position_and_are_not_pooled(vit_model):
    pool, m, v = vit_model
    x = images()
    prm = jax.random.normal(jax.random.PRNGKey(1), (3, W))
    pooled, tokens = m.apply(v, x, prm)
    # no position embedding: the order of the prompts does not matter
    for a, b in zip(m.apply(v, x, prm[::-1]), (pooled, tokens), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # pooling reads the returned patch tokens only (or the class token)
    if pool == "gap":
        np.testing.assert_allclose(pooled, tokens.mean(1), atol=1e-6)
    elif pool == "map":
        head = MAPHead(num_heads=2, mlp_dim=64)
        ref = head.apply({"params": nn.unbox(v)["params"]["map_head"]}, tokens)
        np.testing.assert_allclose(pooled, ref, atol=1e-6)
    else:
        assert not np.allclose(pooled[:, None], tokens, atol=1e-3)


def test_two_tower_image_prompts_jit_and_gradients(clip_model):
    model, v = clip_model
    prm = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (2, W))
    out = jax.jit(lambda v, x, p: model.apply(v, x, None, return_tokens=True, image_prompts=p))(
        v, images(), prm
    )
    ref = model.apply(v, images(), None, return_tokens=True, image_prompts=prm)
    np.testing.assert_allclose(out.zimg, ref.zimg, atol=1e-6)
    assert out.img_tokens.shape == (3, 4, W)
    np.testing.assert_allclose(
        model.apply(v, images(), prm, method="encode_image"), ref.zimg, atol=1e-6
    )
    np.testing.assert_array_equal(
        model.apply(v, images(), None).zimg, model.apply(v, images(), method="encode_image")
    )

    def loss(p, tower_vars):
        z = model.apply(jax.lax.stop_gradient(tower_vars), images(), p, method="encode_image")
        return jnp.sum(z[0])

    g_p, g_tower = jax.jit(jax.grad(loss, argnums=(0, 1)))(prm, v)
    assert (jnp.linalg.norm(g_p, axis=-1) > 0).all()
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_tower))
