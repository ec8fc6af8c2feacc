"""STRUCTURE as a method: unimodal objectives, per-layer features, alignment layers.

Tiny models: two short trainer runs (image-only ``attributes``, text-only ``mlm``) shared by
the module, then everything else on their frozen weights or on planted features.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import restore, structure, train
from alignjax.losses import lightclip as lightclip_lib
from alignjax.losses.contrastive import clip_loss
from alignjax.models import two_tower
from alignjax.objectives import mlm as mlm_lib

STEPS = 25
# One device: tiny models run faster unsharded than over the 8 forced CPU devices.
ONE = jax.devices()[:1]


def _unimodal(tower):
    c = tiny_config.get_config()
    c.data.train = 'synthetic:shapes'
    c.total_steps = c.checkpoint_every_steps = STEPS
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 5
    c.model.image.depth = c.model.text.depth = 2
    return structure.unimodal_config(c, tower)


def _metrics(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [r for r in map(json.loads, f) if 'train/loss' in r]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('structure')
    out = {}
    for tower in structure.TOWERS:
        workdir = str(root / tower)
        train.train_and_evaluate(_unimodal(tower), workdir, devices=ONE)
        out[tower] = workdir
    return out


@pytest.fixture(scope='module')
def loaded(runs):
    return {t: restore.load_run(None, w, devices=ONE) for t, w in runs.items()}


# -- the unimodal objectives ---------------------------------------------------------------
def test_attribute_heads_learn_without_text(runs):
    rows = _metrics(runs['image'])
    # Colour and size are learned within a few steps (chance 1/8 and 1/2).
    acc = [np.mean([r['train/acc_color'], r['train/acc_size']]) for r in rows]
    assert np.mean(acc[-5:]) > np.mean(acc[:5]) + 0.15, acc
    assert rows[-1]['train/loss'] < rows[0]['train/loss']
    assert {'loss_shape', 'acc_count'} <= {k[len('train/') :] for k in rows[-1]}


def test_mlm_learns(runs):
    rows = _metrics(runs['text'])
    assert rows[-1]['train/loss'] < rows[0]['train/loss'] - 1.0
    assert rows[-1]['train/acc'] > rows[0]['train/acc']
    assert 0.02 < np.mean([r['train/masked_frac'] for r in rows]) < 0.15  # of all positions


def test_mlm_scores_masked_positions_only():
    tokens = jnp.asarray([[1, 10, 11, 12, 255, 0, 0, 0]] * 4, jnp.int32)
    masked, labels = lightclip_lib.mask_tokens(tokens, jax.random.PRNGKey(0), 0.5, 2)
    scored = np.asarray(labels != lightclip_lib.IGNORE)
    assert scored.any() and not scored.all()
    logits = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 256))
    loss, m = mlm_lib.mlm_metrics(logits, labels)
    noise = 50.0 * jax.random.normal(jax.random.PRNGKey(2), logits.shape)
    at_unscored = logits + jnp.where(jnp.asarray(scored)[..., None], 0.0, noise)
    at_scored = logits + jnp.where(jnp.asarray(scored)[..., None], noise, 0.0)
    np.testing.assert_allclose(mlm_lib.mlm_metrics(at_unscored, labels)[0], loss, rtol=1e-6)
    assert abs(float(mlm_lib.mlm_metrics(at_scored, labels)[0]) - float(loss)) > 1.0
    # The loss is the mean CE over the masked positions.
    logp = jax.nn.log_softmax(logits)
    want = -np.mean([logp[b, t, int(tokens[b, t])] for b, t in zip(*np.nonzero(scored))])
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert np.all(np.asarray(masked)[scored] == 2)


def test_mlm_refuses_a_causal_tower():
    c = _unimodal('text')
    c.model.text.convention = 'clip'
    with pytest.raises(ValueError, match="convention='big_vision'"):
        mlm_lib.MaskedLanguageModel.check(c)


# -- per-layer features --------------------------------------------------------------------
def test_layer_features_shapes_and_last_layer(loaded):
    img, txt = loaded['image'], loaded['text']
    images = np.random.default_rng(0).normal(size=(6, 16, 16, 3)).astype(np.float32)
    tokens = np.asarray(txt.tokenizer(['a red disk.', 'two blue stars on the left'] * 3))
    xs = structure.image_layer_features(img.model, img.params, images)
    ys = structure.text_layer_features(txt.model, txt.params, tokens)
    assert [x.shape for x in xs] == [(6, 32), (6, 32), (6, 16)]  # 2 blocks, then the output
    assert [y.shape for y in ys] == [(6, 32), (6, 32), (6, 16)]
    pooled = img.model.apply({'params': img.params}, images, method=lambda m, x: m.img(x)[0])
    np.testing.assert_allclose(xs[-1], pooled, rtol=1e-5, atol=1e-6)
    _, final, mask = txt.model.apply({'params': txt.params}, tokens, method=lambda m, t: m.txt(t))
    w = np.asarray(mask, np.float32)[..., None]
    np.testing.assert_allclose(ys[-1], (final * w).sum(1) / w.sum(1), rtol=1e-5, atol=1e-6)
    # Block features differ from layer to layer (each block's own output was captured).
    assert not np.allclose(xs[0], xs[1]) and not np.allclose(ys[0], ys[1])


def test_extract_and_align_leaves_the_towers_frozen(loaded):
    img, txt = loaded['image'], loaded['text']
    before = jax.tree_util.tree_map(np.array, (img.params, txt.params))
    spec = 'synthetic:shapes?num_examples=64'
    pool = structure.extract_features(img, txt, spec, 'val', batch_size=32)
    test = structure.extract_features(img, txt, split='test', num_examples=32, batch_size=32)
    assert len(pool) == 64 and len(test) == 32
    assert [x.shape[1] for x in pool.image] == [32, 32, 16]
    assert set(pool.labels) == {'shape', 'color', 'size', 'position', 'count'}
    cfg = structure.AlignConfig(dim=8, steps=20, batch_size=32, warmup_steps=5)
    result = structure.run(pool, test, structure.task_prompts(txt), 0.5, 0, cfg)
    assert result['pairs'] == 32 and len(result['scores']) == 3
    assert 0.0 <= result['zeroshot/mean'] <= 1.0 and 0.0 <= result['i2t_r1'] <= 1.0
    after = jax.tree_util.tree_map(np.array, (img.params, txt.params))
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    again = structure.extract_features(img, txt, spec, 'val', batch_size=32)
    for a, b in zip(pool.image + pool.text, again.image + again.text):
        np.testing.assert_array_equal(a, b)


# -- layer selection and the alignment layers ----------------------------------------------
def _planted(n=200, seed=0):
    """Image layer 1 and text layer 2 are rotations of one latent; every other layer is
    that latent's first coordinates drowned in independent noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 16)).astype(np.float32)

    def noisy(d):
        return np.concatenate([z[:, :2], 3 * rng.normal(size=(n, d - 2))], 1).astype(np.float32)

    q1, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    q2, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    image = [noisy(12), (z @ q1).astype(np.float32), noisy(20)]
    text = [noisy(10), noisy(14), (z @ q2).astype(np.float32)]
    labels = {'shape': (z[:, 0] > 0).astype(np.int32)}
    return structure.Features(image, text, labels)


def test_selection_picks_the_planted_pair():
    pool = _planted()
    for metric in ('mutual_knn', 'cka'):
        (i, j), scores = structure.select(pool.take(np.arange(100)), metric)
        assert (i, j) == (1, 2), (metric, scores)
        assert scores.shape == (3, 3)


def test_training_reduces_the_loss_and_aligns_the_pairs():
    pool = _planted()
    cfg = structure.AlignConfig(dim=16, steps=150, batch_size=64, warmup_steps=20)
    a = structure.train_alignment(pool, (1, 2), cfg, seed=0)
    assert a.losses.shape == (150,)
    assert a.losses[-10:].mean() < 0.5 * a.losses[:10].mean()
    x, y = a.embed('image', pool.image[1]), a.embed('text', pool.text[2])
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    assert structure.recall_at_1(x, y) > 0.5  # chance: 1/200
    # The noise layers align far worse than the planted pair.
    noise = structure.train_alignment(pool, (0, 0), cfg, seed=0)
    bad = structure.recall_at_1(
        noise.embed('image', pool.image[0]), noise.embed('text', pool.text[0])
    )
    assert bad < structure.recall_at_1(x, y) - 0.3


def test_lambda_zero_is_the_plain_clip_loss():
    pool = _planted()
    cfg = structure.AlignConfig(dim=8, steps=30, batch_size=200, warmup_steps=5, lambda_max=0.0)
    a = structure.train_alignment(pool, (1, 2), cfg, seed=3)
    np.testing.assert_allclose(a.losses, a.metrics['clip'], rtol=1e-6)
    assert np.all(a.metrics['lambda'] == 0) and np.all(a.metrics['reg_image'] > 0)
    # Step 0's loss is CLIP of the initial layers at t = 1/τ (the batch is all 200 pairs,
    # in some order: CLIP does not depend on it).
    mean_i, std_i = a.stats['image']
    mean_t, std_t = a.stats['text']
    key_i, key_t, _ = jax.random.split(jax.random.PRNGKey(3), 3)
    f = structure.Aligner(8)
    pi = f.init(key_i, jnp.zeros((1, 16)))['params']
    pt = f.init(key_t, jnp.zeros((1, 16)))['params']
    xa = f.apply({'params': pi}, (pool.image[1] - mean_i) / std_i)
    ya = f.apply({'params': pt}, (pool.text[2] - mean_t) / std_t)
    want = clip_loss(two_tower.l2_normalize(xa), two_tower.l2_normalize(ya), 1 / 0.05)
    np.testing.assert_allclose(a.losses[0], want, rtol=1e-4)
    # With λ > 0 the regulariser is added once the warm-up has begun.
    s = structure.train_alignment(pool, (1, 2), dataclasses.replace(cfg, lambda_max=10.0), 3)
    late = s.losses[10:] - s.metrics['clip'][10:]
    assert np.all(late > 0)


def test_seed_makes_it_deterministic():
    pool = _planted()
    cfg = structure.AlignConfig(
        dim=8, steps=20, batch_size=50, warmup_steps=5, kind='mlp', hidden=16
    )
    a = structure.train_alignment(pool, (1, 2), cfg, seed=7)
    b = structure.train_alignment(pool, (1, 2), cfg, seed=7)
    c = structure.train_alignment(pool, (1, 2), cfg, seed=8)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert not np.allclose(a.losses, c.losses)
    np.testing.assert_array_equal(
        structure.split_pool(100, 0.1, 4), structure.split_pool(100, 0.1, 4)
    )
    assert len(structure.split_pool(100, 0.1, 4)) == 10


def test_bad_input_is_named():
    pool = _planted()
    with pytest.raises(ValueError, match='out of range'):
        structure.train_alignment(pool, (3, 0))
    with pytest.raises(ValueError, match='kind'):
        structure.AlignConfig(kind='deep')
    with pytest.raises(ValueError, match='fraction'):
        structure.split_pool(10, 0.0, 0)
    with pytest.raises(ValueError, match='tower'):
        structure.unimodal_config(tiny_config.get_config(), 'audio')
