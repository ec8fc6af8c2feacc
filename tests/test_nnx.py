"""The two-tower model from Flax NNX (through `nnx.bridge`): the README's snippet, tested.

NNX users wrap the Linen model with `bridge.ToNNX` and train it with `nnx.Optimizer`; the
outputs and one AdamW step must be those of the Linen model with the same parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tiny_config
from flax import nnx
from flax.nnx import bridge

from alignjax import models, parallel
from alignjax.losses import clip_loss


def _inputs():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
    tokens = jnp.asarray(rng.integers(1, 255, size=(4, 8)), jnp.int32)
    return images, tokens


def _loss(out):
    return clip_loss(out.zimg, out.ztxt, out.logit_scale)


def _pure(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def test_nnx_bridge_matches_the_linen_model_and_trains_one_step_identically():
    c = tiny_config.get_config()
    images, tokens = _inputs()
    linen_model = models.build(c.model)
    # The parameters carry logical sharding annotations: create them inside a mesh.
    mesh = parallel.make_mesh(c.mesh, jax.devices()[:1])
    with parallel.mesh_context(mesh):
        model = bridge.ToNNX(linen_model, rngs=nnx.Rngs(0))
        bridge.lazy_init(model, images, tokens)
        params = _pure(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

        nnx_out = nnx.jit(lambda m: m(images, tokens))(model)
        linen_out = linen_model.apply({'params': params}, images, tokens)
        for a, b in zip(jax.tree_util.tree_leaves(nnx_out), jax.tree_util.tree_leaves(linen_out)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)

        # SGD, not Adam: Adam's first step is lr * sign(g), so a gradient that is ~0 up to
        # float rounding (the two programs fuse differently) would move a parameter by +-lr
        # in one step and -lr in the other; SGD keeps the comparison at rounding level.
        tx = optax.sgd(1e-1)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def train_step(model, optimizer):
            loss, grads = nnx.value_and_grad(lambda m: _loss(m(images, tokens)))(model)
            optimizer.update(model, grads)
            return loss

        nnx_loss = train_step(model, optimizer)
        after_nnx = _pure(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

        @jax.jit  # The Linen reference step, compiled whole (not optax op by op).
        def linen_step(p):
            loss, g = jax.value_and_grad(
                lambda p: _loss(linen_model.apply({'params': p}, images, tokens))
            )(p)
            updates, _ = tx.update(g, tx.init(p), p)
            return loss, optax.apply_updates(p, updates)

        linen_loss, after_linen = linen_step(params)
        after_linen = _pure(after_linen)

    np.testing.assert_allclose(float(nnx_loss), float(linen_loss), rtol=1e-6)
    assert jax.tree_util.tree_structure(after_nnx) == jax.tree_util.tree_structure(after_linen)
    moved = 0
    for a, b, p in zip(
        jax.tree_util.tree_leaves(after_nnx),
        jax.tree_util.tree_leaves(after_linen),
        jax.tree_util.tree_leaves(params),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        moved += int(not np.allclose(a, p))
    assert moved > 0  # The step changed the parameters (equal, not trivially unchanged).
