"""Gradient accumulation through the production step (`Trainer.step_fn`), for every method.

GradCache (`grad_accum_steps=M`) must give the full-batch loss, gradient and update. Each
case runs the same config, initial state and batch with M = 4 and M = 1 and compares the
loss, the gradient norm and the parameter update. Adam's first update is ~sign(g), which
would hide a wrong gradient magnitude and flip on float noise, so `optim.eps` is made large:
then `update = -lr g / (sqrt(v) + eps) ~ -lr g / eps` is linear in the gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import objectives, optim, train

# Tested in their own files, with what they need: distill a teacher run
# (tests/test_distill.py), clip_refine its frozen start and every term on
# (tests/test_clip_refine.py).
OWN_ACCUMULATION_TEST = ('distill', 'clip_refine')
ACCUMULATING = [
    n
    for n in objectives.names()
    if objectives.get(n).supports_accumulation
    and n not in OWN_ACCUMULATION_TEST
    # Built-in methods only: other test modules register their own before collection.
    and objectives.get(n).__module__.startswith('alignjax.')
]
METHOD_FIELDS = {  # Switch on every part of the methods that has one.
    'lightclip': dict(mlm_weight=0.5, mlm_prob=0.5, chunk_size=3),
    'dreamlip': dict(num_sub_captions=2, group_weight=1.0, circle_weight=0.1),
    'wukong': dict(num_tokens=3, groups=4),
    'uniter': dict(iterations=5),
    'filip': dict(chunk_size=5),
    'coop': dict(classnames=('circle', 'square', 'triangle'), label_key='shape'),
    'classify': dict(classnames=('circle', 'square', 'triangle'), label_key='shape'),
}
METHOD_OVERRIDES = {  # What a method's config must set besides its loss fields.
    'coop': {'optim.freeze': ('(?!coop_context).*',)},  # Only the context trains.
    'mlm': {'model.text.convention': 'big_vision'},  # MLM needs a bidirectional tower.
    # CLIP itself, with an EMA copy updated by the step: every check of plain CLIP, and the
    # EMA's, from one pair of compiled steps (a case of its own would compile both again).
    'clip': {'ema.decay': 0.9},
}
CASES = [(n, METHOD_OVERRIDES.get(n, {})) for n in ACCUMULATING] + [
    ('clip', {'optim.freeze': ('img/.*',)}),  # LiT: a frozen tower.
    # FLIP patch dropout: a row's mask follows its global index, not the micro-batch split.
    ('clip', {'model.image.patch_dropout': 0.5}),
    # LoRA: the factors train through the merged kernels, the towers frozen.
    ('clip', {'lora.rank': 2, 'optim.freeze': ('(?!lora/).*',)}),
]


def _tokens(rng, n, length=8):
    """CLIP-convention rows: BOS, words, EOT (255, the largest id), padding."""
    out = np.zeros((n, length), np.int32)
    for i, k in enumerate(rng.integers(1, length - 2, size=n)):
        out[i, 0] = 1
        out[i, 1 : 1 + k] = rng.integers(3, 250, size=k)
        out[i, 1 + k] = 255
    return out


def _batch(n=16):
    rng = np.random.default_rng(0)
    return {
        'image': rng.normal(size=(n, 16, 16, 3)).astype(np.float32),
        'image_local': rng.normal(size=(n, 16, 16, 3)).astype(np.float32),
        'tokens': _tokens(rng, n),
        'summary_tokens': _tokens(rng, n),
        'neg_tokens': _tokens(rng, n),
        'sub_tokens': _tokens(rng, n * 2).reshape(n, 2, 8),
        'coop_label': (np.arange(n) % 3).astype(np.int32),
        # The attributes objective's labels (`attributes.KEY`), one column per attribute.
        **{
            f'attr_{a}': (np.arange(n) % c).astype(np.int32)
            for a, c in zip(('shape', 'color', 'size', 'position', 'count'), (8, 8, 2, 3, 2))
        },
        # UniCL: classes shared across micro-batches, and captions (-1) of their own.
        'class_id': np.where(np.arange(n) % 4 == 3, -1, np.arange(n) % 3).astype(np.int32),
        'data_type': (np.arange(n) % 4 != 3).astype(np.int32),
    }


def _config(name, overrides, accum):
    c = tiny_config.get_config('siglip' if name == 'siglip' else None)
    c.batch_size, c.grad_accum_steps = 16, accum
    c.mesh = {'data': 2, 'fsdp': 1, 'tensor': 1}
    c.loss = objectives.loss_config(name, **METHOD_FIELDS.get(name, {}))
    c.optim.eps, c.optim.weight_decay, c.optim.grad_clip_norm = 1e3, 0.0, 0.0
    c.optim.lr = 10.0  # Updates ~1e-2 g: far above float32 rounding of the parameters.
    c.optim.warmup_steps, c.optim.schedule = 0, 'constant'
    for key, value in overrides.items():
        *path, field = key.split('.')
        node = c
        for part in path:
            node = node[part]
        node[field] = value
    return c


def _run(name, overrides):
    """The parameters before, and (new state, metrics) of the full-batch step and of M = 4.

    Both steps start from one `init_fn` state (put back on its shardings for the second, as
    the first step donates it): `grad_accum_steps` does not enter the state, and the init
    compiles as long as a step does, so compiling it once per case halves that part.
    """
    devices = jax.devices()[:2]
    trainers = [train.build_trainer(_config(name, overrides, m), devices) for m in (1, 4)]
    state = trainers[0].init_fn()
    start = jax.device_get(state)
    outs = []
    for t in trainers:
        assert t.abstract_state == trainers[0].abstract_state
        if state is None:
            state = jax.device_put(start, t.state_shardings)
        new, metrics = t.step_fn(state, t.global_batch(_batch()))
        outs.append((jax.device_get(new), jax.device_get(metrics)))
        state = None
    return start.params, outs[0], outs[1]


def _flat(tree):
    paths = jax.tree_util.tree_leaves(optim.tree_paths(tree))
    return dict(zip(paths, jax.tree_util.tree_leaves(tree)))


@pytest.mark.parametrize('name, overrides', CASES, ids=[f'{n}{list(o)}' for n, o in CASES])
def test_step_with_accumulation_equals_the_full_batch_step(name, overrides):
    before, (full, m_full), (acc, m_acc) = _run(name, overrides)
    np.testing.assert_allclose(m_acc['train/loss'], m_full['train/loss'], rtol=1e-5)
    np.testing.assert_allclose(m_acc['train/grad_norm'], m_full['train/grad_norm'], rtol=1e-5)
    d_full = _flat(jax.tree_util.tree_map(lambda a, b: a - b, full.params, before))
    d_acc = _flat(jax.tree_util.tree_map(lambda a, b: a - b, acc.params, before))
    scale = max(float(np.abs(d).max()) for d in d_full.values())
    assert scale > 0
    start = _flat(before)
    for path, d in d_full.items():
        # A difference of two float32 parameters is exact only to their spacing.
        spacing = 4 * float(np.spacing(np.float32(np.abs(start[path]).max())))
        atol = max(1e-5 * scale, spacing)
        np.testing.assert_allclose(d_acc[path], d, rtol=1e-5, atol=atol, err_msg=path)
    if 'optim.freeze' in overrides:  # The frozen tower did not move, in either run.
        assert all(not np.any(d) for p, d in d_full.items() if p.startswith('img/'))
        assert all(not np.any(d) for p, d in d_acc.items() if p.startswith('img/'))
    for set_name in full.weights:  # Extra weight sets (the EMA) agree too.
        for path, w in _flat(full.weights[set_name]).items():
            np.testing.assert_allclose(_flat(acc.weights[set_name])[path], w, rtol=1e-5, atol=1e-7)
    if 'ema.decay' in overrides:
        assert set(full.weights) == {'ema'}
        assert float(jnp.asarray(m_full['train/loss'])) > 0
