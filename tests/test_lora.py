"""LoRA (alignjax/lora.py): fresh adapters change nothing, each layout's update is the
rank-r product the layer would add, only the factors train, and a run's export (merged)
loads into a plain model that computes what the adapted model computed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config
from flax import linen as nn
from flax import traverse_util

from alignjax import export, lora, models, restore, train
from alignjax.config import load_config_file
from alignjax.models import layers

RANK = 2


def _config(rank=RANK, **lora_fields):
    c = tiny_config.get_config()
    c.total_steps = 3
    c.checkpoint_every_steps = 3
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.lr = 1e-2
    c.lora.rank = rank
    c.lora.update(lora_fields)
    c.optim.freeze = lora.FREEZE_ALL_BUT_LORA
    return c


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def _images_tokens(seed=0):
    b = tiny_config.random_batch(seed)
    return jnp.asarray(b['image'][:4]), jnp.asarray(b['tokens'][:4])


def _embed(model, params, images, tokens):
    out = model.apply({'params': params}, images, tokens)
    return np.asarray(out.zimg), np.asarray(out.ztxt)


@pytest.fixture(scope='module')
def fresh():
    """A trainer of `_config()` and its initial parameters (host): the init compiles once for
    the fresh-adapter test and the run's starting point."""
    t = train.build_trainer(_config())
    return t, jax.device_get(t.init_fn().params)


def test_fresh_adapters_leave_the_model_exactly_as_it_was(fresh):
    t, params = fresh
    merged = t.build.model_params(params)
    plain = {k: v for k, v in params.items() if k != lora.LORA}
    assert _flat(merged).keys() == _flat(plain).keys()
    for path, x in _flat(plain).items():
        np.testing.assert_array_equal(_flat(merged)[path], x, err_msg=path)
    # Every attention projection and both MLP layers of both towers got factors.
    adapted = {p.rsplit('/', 1)[0] for p in _flat(params[lora.LORA])}
    assert {p.split('/')[0] for p in adapted} == {'img', 'txt'}
    assert {p.split('/')[-2] for p in adapted} == {'query', 'key', 'value', 'out', 'fc1', 'fc2'}


@pytest.mark.parametrize(
    'layout, module, in_shape',
    [
        ('mlp/fc1', nn.Dense(20), (5, 12)),
        ('attn/query', layers.HeadsIn(3, 4), (5, 12)),
        ('attn/out', layers.HeadsOut(12), (5, 3, 4)),
    ],
)
def test_the_update_is_the_rank_r_product_the_layer_adds(layout, module, in_shape):
    """Independently of `merge`'s reshapes: layer(x; W') == layer(x; W) + s (x A) B with x
    and the output flattened to [d_in] and [d_out], and W' - W has rank r."""
    rng = np.random.default_rng(0)
    r, s = RANK, 0.5
    x = jnp.asarray(rng.normal(size=in_shape), jnp.float32)
    params = jax.device_get(nn.unbox(module.init(jax.random.key(0), x)['params']))
    path = f'txt/block/{layout}/kernel'
    tree = traverse_util.unflatten_dict({path: params['kernel']}, sep='/')
    (f,) = lora.factors(tree, {'targets': ('txt/.*kernel',)})
    a = rng.normal(size=(f.d_in, r)).astype(np.float32)
    b = rng.normal(size=(r, f.d_out)).astype(np.float32)
    factors = traverse_util.unflatten_dict({f'{path}/a': a, f'{path}/b': b}, sep='/')
    merged = lora.merge({**tree, lora.LORA: factors}, {'rank': r, 'alpha': s * r})
    kernel, new_kernel = params['kernel'], _flat(merged)[path]
    assert np.linalg.matrix_rank((new_kernel - kernel).reshape(f.d_in, f.d_out)) == r

    def apply(k):
        return np.asarray(module.apply({'params': dict(params, kernel=k)}, x))

    base = apply(kernel)
    update = s * (np.asarray(x).reshape(len(x), f.d_in) @ a) @ b
    np.testing.assert_allclose(
        apply(new_kernel), base + update.reshape(base.shape), rtol=1e-5, atol=1e-5
    )


def test_a_scanned_encoder_gets_factors_per_layer():
    c = _config()
    c.model.image.depth = c.model.text.depth = 2
    c.model.scan = True
    t = train.build_trainer(c)
    params = jax.device_get(t.init_fn().params)
    f = _flat(params)
    a = f['lora/img/encoder/blocks/attn/query/kernel/a']
    assert a.shape == (2, 32, RANK)  # [depth, d_in, r]
    rng = np.random.default_rng(1)
    f = {
        k: (rng.normal(size=v.shape).astype(v.dtype) if k.endswith('/b') else v)
        for k, v in f.items()
    }
    params = traverse_util.unflatten_dict(f, sep='/')
    merged = _flat(t.build.model_params(params))
    w = f['img/encoder/blocks/attn/query/kernel']  # [depth, D, H, K]
    b = f['lora/img/encoder/blocks/attn/query/kernel/b']
    for layer in range(2):
        want = w[layer] + (a[layer] @ b[layer]).reshape(w[layer].shape)
        np.testing.assert_allclose(
            merged['img/encoder/blocks/attn/query/kernel'][layer], want, rtol=1e-6, atol=1e-6
        )


@pytest.fixture(scope='module')
def lora_run(tmp_path_factory, fresh):
    """A 3-step LoRA run (towers frozen), its initial parameters and its workdir."""
    workdir = str(tmp_path_factory.mktemp('lora_run'))
    c = _config()
    _, initial = fresh  # What the run's own init gives: same config and seed.
    train.train_and_evaluate(c, workdir)
    return c, workdir, initial


def test_only_the_factors_train(lora_run):
    c, workdir, initial = lora_run
    run = restore.load_run(None, workdir)
    trained = restore.checkpoint_lib.restore_subtree(
        f'{workdir}/checkpoints', run.step, {'params': run.build.abstract_state.params}
    )['params']
    before, after = _flat(initial), _flat(trained)
    moved = sorted(p for p in before if not np.array_equal(before[p], after[p]))
    assert moved and all(p.startswith('lora/') for p in moved), moved
    assert any(p.endswith('/b') for p in moved)  # B left zero: the update is live


def test_the_export_is_a_plain_model_computing_the_adapted_one(lora_run, tmp_path):
    c, workdir, initial = lora_run
    run = restore.load_run(None, workdir)
    assert lora.LORA not in run.params  # load_run hands out merged parameters
    out = export.export_checkpoint(workdir, str(tmp_path / 'export'))
    params, model_config = export.load(out)
    assert lora.LORA not in params
    plain = models.build(model_config)
    images, tokens = _images_tokens()
    got = _embed(plain, params, images, tokens)
    want = _embed(run.model, run.params, images, tokens)
    base = _embed(plain, {k: v for k, v in initial.items() if k != lora.LORA}, images, tokens)
    for g, w, b in zip(got, want, base):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        assert np.abs(g - b).max() > 1e-4  # and the adapters did change the model


def test_init_from_a_lora_run_without_adapters_is_refused(lora_run, tmp_path):
    _, workdir, _ = lora_run
    c = tiny_config.get_config()
    c.total_steps, c.optim.warmup_steps = 1, 0
    c.init_from.path = workdir
    with pytest.raises(ValueError, match='is a LoRA run.*alignjax.export'):
        train.train_and_evaluate(c, str(tmp_path / 'plain'))


def test_bad_lora_configs_fail_with_one_line():
    with pytest.raises(ValueError, match='match no parameter'):
        train.build_trainer(_config(targets=('img/nothing/.*',)))
    with pytest.raises(ValueError, match='rank must be >= 0'):
        train.build_trainer(_config(rank=-1))
    with pytest.raises(ValueError, match='not a kernel'):
        train.build_trainer(_config(targets=(r'img/.*attn/query/bias',)))
    with pytest.raises(ValueError, match='config.lora.rank is 0'):
        lora.merge({'w': np.zeros(2), lora.LORA: {}}, {'rank': 0, 'alpha': 0.0})


def test_the_lora_config_trains_only_its_adapters():
    """configs/lora.py as written (`--dry_run`: no weights read): the trained values are
    exactly the factors', a few percent of the model."""
    c = load_config_file('configs/lora.py')
    out = train.dry_run(c, None, compile=False)
    t = train.build_trainer(c)
    n_factors = sum(x.size for x in jax.tree_util.tree_leaves(t.abstract_state.params[lora.LORA]))
    assert out['trainable_params'] == n_factors
    assert n_factors < 0.1 * out['params']['params']
