"""Objectives inside the trainer: heads, pipeline transforms, trainer-level refusals.

Gradient accumulation through the production step, for every method, is in
tests/test_grad_accum.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import data as data_lib
from alignjax import evaluate as evaluate_lib
from alignjax import models, objectives, optim, train
from alignjax.objectives.dreamlip import SampleSubCaptions, split_sentences
from alignjax.objectives.negclip import TokenizeNegative
from alignjax.objectives.pyramid import TokenizeSummary, TwoViews


def _batch(rng, n=32, k=2):
    return {
        'image': rng.normal(size=(n, 16, 16, 3)).astype(np.float32),
        'image_local': rng.normal(size=(n, 16, 16, 3)).astype(np.float32),
        'tokens': _tokens(rng, n),
        'summary_tokens': _tokens(rng, n),
        'sub_tokens': _tokens(rng, n * k).reshape(n, k, 8),
    }


def _tokens(rng, n):
    """CLIP-convention rows: BOS, words, EOT (255, the largest id), padding."""
    out = np.zeros((n, 8), np.int32)
    lengths = rng.integers(1, 6, size=n)
    for i, length in enumerate(lengths):
        out[i, 0] = 1
        out[i, 1 : 1 + length] = rng.integers(3, 250, size=length)
        out[i, 1 + length] = 255
    return out


def _config(name, **loss):
    c = tiny_config.get_config()
    c.batch_size = 8
    c.mesh = {'data': 2, 'fsdp': 1, 'tensor': 1}
    c.loss = objectives.loss_config(name, **loss)
    return c


def test_heads_do_not_change_inference_outputs():
    c = _config('wukong', num_tokens=3, groups=4)
    base = models.build(c.model)
    model = objectives.build(c.loss).wrap_model(base)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    tokens = jnp.asarray(_tokens(rng, 2))
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, tokens)['params'])
    assert 'wukong_reduce' in params
    tower_params = {k: v for k, v in params.items() if k != 'wukong_reduce'}
    for method, x in (('encode_image', images), ('encode_text', tokens)):
        a = jax.jit(lambda p, x, m=method: model.apply({'params': p}, x, method=m))(params, x)
        b = jax.jit(lambda p, x, m=method: base.apply({'params': p}, x, method=m))(tower_params, x)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_clim_refuses_gradient_accumulation():
    c = _config('clim')
    c.grad_accum_steps = 2
    with pytest.raises(ValueError, match='mixes examples'):
        train.build_trainer(c, jax.devices()[:2])


def test_method_transforms_in_the_pipeline():
    tok = data_lib.build_tokenizer({'name': 'word_hash', 'vocab_size': 256, 'context_length': 8})
    src = data_lib.get_source('synthetic:shapes?extra_captions=true', 'train', image_size=16)
    transforms = (TwoViews(), TokenizeSummary(tok), SampleSubCaptions(tok, num=3))
    it = data_lib.make_train_iterator(
        src, tokenizer=tok, global_batch_size=4, seed=0, extra_transforms=transforms
    )
    b = next(it)
    it.close()
    assert b['image'].dtype == np.float32 and b['image_local'].shape == (4, 16, 16, 3)
    assert b['image_local'].min() >= -1.0 and b['image_local'].max() <= 1.0
    assert b['summary_tokens'].shape == (4, 8) and b['sub_tokens'].shape == (4, 3, 8)
    assert not np.array_equal(b['image'], b['image_local'])
    # Sub-captions are sentences of the long caption; without one, the caption itself.
    ex = {'caption': 'a red circle', 'long_caption': 'one. two.\nthree</s>four'}
    assert split_sentences(ex['long_caption']) == ['one', 'two', 'three', 'four']
    out = SampleSubCaptions(tok, num=4).random_map(ex, np.random.default_rng(0))
    assert sorted(map(tuple, out['sub_tokens'].tolist())) == sorted(
        map(tuple, tok(['one', 'two', 'three', 'four']).tolist())
    )
    fallback = SampleSubCaptions(tok, num=2).random_map(
        {'caption': 'a red circle'}, np.random.default_rng(0)
    )
    assert (fallback['sub_tokens'] == tok(['a red circle'])[0]).all()


def test_hard_negative_captions_swap_one_attribute_and_never_a_held_out_pair():
    from alignjax.data import synthetic

    plain = data_lib.ShapesDataset('train', 32, seed=3)
    hard = data_lib.ShapesDataset('train', 32, seed=3, hard_negatives=True)
    held_out = {(s, c) for s, c in data_lib.ShapesDataset.held_out_pairs()}
    colour_words = {w: c for c, ws in synthetic._COLOR_WORDS.items() for w in ws}
    shape_words = {w: s for s, ws in synthetic._SHAPE_WORDS.items() for pair in ws for w in pair}
    swapped_shapes = 0
    for i in range(200):
        a, b = plain[i], hard[i]
        assert a['caption'] == b['caption'] and np.array_equal(a['image'], b['image'])
        pos, neg = b['caption'], b['neg_caption']
        assert neg != pos
        # The same template and synonyms: only the swapped attribute's words differ (a
        # swapped count also changes is/are and the plural).
        if b['labels']['count'] == 1 or 'two' not in pos and 'pair' not in pos:
            changed = [(p, n) for p, n in zip(pos.split(), neg.split()) if p != n]
            assert len(pos.split()) != len(neg.split()) or 1 <= len(changed) <= 2, (pos, neg)
        words = neg.replace(',', ' ').split()
        colours = [colour_words[w] for w in words if w in colour_words]
        shapes = [shape_words[w] for w in words if w in shape_words]
        if colours and shapes:
            assert (shapes[0], colours[0]) not in held_out, neg
        label_shape = synthetic.SHAPES[b['labels']['shape']]
        swapped_shapes += bool(shapes) and shapes[0] != label_shape
    assert swapped_shapes > 150  # Shape is swapped whenever the caption names it (~95%).


def test_negclip_trains_through_the_pipeline_and_needs_negatives():
    tok = data_lib.build_tokenizer({'name': 'word_hash', 'vocab_size': 256, 'context_length': 24})
    src = data_lib.get_source('synthetic:shapes?hard_negatives=true', 'train', image_size=16)
    it = data_lib.make_train_iterator(
        src,
        tokenizer=tok,
        global_batch_size=4,
        seed=0,
        extra_transforms=(TokenizeNegative(tok),),
    )
    b = next(it)
    it.close()
    assert b['neg_tokens'].shape == (4, 24) and not np.array_equal(b['neg_tokens'], b['tokens'])
    with pytest.raises(ValueError, match='hard_negatives=true'):
        TokenizeNegative(tok).map({'caption': 'a red circle'})

    c = _config('negclip')
    t = train.build_trainer(c, jax.devices()[:2])
    state = t.init_fn()
    rng = np.random.default_rng(0)
    batch = t.global_batch({**_batch(rng, n=8), 'neg_tokens': _tokens(rng, 8)})
    state, metrics = t.step_fn(state, batch)
    assert np.isfinite(float(metrics['train/loss']))
    assert float(metrics['train/loss']) > float(metrics['train/loss_clip'])


def test_extra_captions_leave_the_default_examples_unchanged():
    plain = data_lib.ShapesDataset('train', 32, seed=3)
    extra = data_lib.ShapesDataset('train', 32, seed=3, extra_captions=True)
    for i in range(5):
        a, b = plain[i], extra[i]
        assert a['caption'] == b['caption'] and np.array_equal(a['image'], b['image'])
        assert 'summary' in b and len(split_sentences(b['long_caption'])) == 4
        assert 'summary' not in a


def test_optimizer_sees_head_parameters():
    t = train.build_trainer(_config('dreamlip'), jax.devices()[:2])
    paths = jax.tree_util.tree_leaves(optim.tree_paths(t.abstract_state.params))
    assert 'group_log_scale' in paths


@pytest.mark.parametrize('name', ['filip', 'wukong'])
def test_token_wise_methods_evaluate_with_their_own_scorer_too(name):
    c = _config(name, **({'num_tokens': 3, 'groups': 4} if name == 'wukong' else {}))
    c.evals = {
        'shapes': dict(type='zeroshot', data='synthetic:shapes', split='test', num_examples=32,
                       batch_size=16, tasks=('color',)),
        'pairs': dict(type='retrieval', data='synthetic:shapes', split='test', num_examples=32,
                      batch_size=16),
    }
    t = train.build_trainer(c, jax.devices()[:2])
    assert [s.name for s in t.objective.scorers] == ['global', 'tokenwise']
    evaluators = evaluate_lib.build_evaluators(
        t.config, t.model, t.tokenizer, t.mesh, t.objective.scorers
    )
    state = t.init_fn()
    metrics = {}
    for ev in evaluators:
        metrics.update(ev.run(state.params))
    plain = {k for k in metrics if '@tokenwise' not in k}
    tokenwise = {k for k in metrics if '@tokenwise' in k}
    assert any(k.endswith('acc1') for k in plain) and any(k.endswith('acc1') for k in tokenwise)
    assert {k.replace('@tokenwise', '') for k in tokenwise} == {
        k for k in plain if not k.startswith('geometry/')
    }
