"""CoOp (alignjax/objectives/coop.py): the phrase start is zero-shot classification with
that phrase, only the context trains, the scorer matches the training logits, the layouts
and class-specific contexts, and one-line errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import data as data_lib
from alignjax import restore, train
from alignjax import workdir as workdir_lib
from alignjax.data.synthetic import SHAPES
from alignjax.evaluate import evaluators as evaluators_lib
from alignjax.objectives import coop as coop_lib
from alignjax.objectives import loss_config

FREEZE = ('(?!coop_context).*',)


def _config(**loss):
    c = tiny_config.get_config()
    c.total_steps = 3
    c.checkpoint_every_steps = 3
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.lr = 1e-2
    c.optim.freeze = FREEZE
    c.data.train = 'fewshot:synthetic:shapes?label=shape&shots=2&pool=200'
    c.loss = loss_config('coop', classnames=SHAPES, label_key='shape', **loss)
    return c


def _trainer(**loss):
    t = train.build_trainer(_config(**loss))
    state = t.init_fn()
    return t, state.params


def _images(n=6, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 16, 16, 3)), jnp.float32)


def _apply(t, params):
    return functools.partial(t.model.apply, {'params': params})


def _zero_shot_logits(t, params, images, template):
    apply = _apply(t, params)
    tokens = jnp.asarray(t.tokenizer([template.format(c) for c in SHAPES]))
    w = apply(tokens, method='encode_text')
    zimg = apply(images, method='encode_image')
    return jnp.exp(params['log_scale']) * zimg @ w.T


@pytest.mark.parametrize('position', ['end', 'middle', 'front'])
def test_the_phrase_start_is_zero_shot_with_that_phrase(position):
    t, params = _trainer(position=position)
    apply = _apply(t, params)
    images = _images()
    out = t.objective.forward(apply, {'image': images}, None)
    m = 'a photo of a'.split()
    template = {
        'end': 'a photo of a {}.',
        'middle': ' '.join(m[:2]) + ' {} ' + ' '.join(m[2:]) + ' .',
        'front': '{} a photo of a .',
    }[position]
    expected = _zero_shot_logits(t, params, images, template)
    # The word tokenizer splits '{}.' as '{} .': the 'end' layout is that prompt exactly.
    np.testing.assert_allclose(out['logits'], expected, rtol=1e-5, atol=1e-5)


def test_class_specific_contexts_start_equal_to_the_unified_one():
    t, params = _trainer(class_specific=True)
    assert params['coop_context'].shape == (len(SHAPES), 4, 32)
    out = t.objective.forward(_apply(t, params), {'image': _images()}, None)
    expected = _zero_shot_logits(t, params, _images(), 'a photo of a {}.')
    np.testing.assert_allclose(out['logits'], expected, rtol=1e-5, atol=1e-5)


def test_random_init_has_n_ctx_free_vectors():
    t, params = _trainer(ctx_init='', n_ctx=3)
    ctx = np.asarray(params['coop_context'])
    assert ctx.shape == (3, 32) and 0.005 < ctx.std() < 0.05
    np.testing.assert_array_equal(np.asarray(t.objective.context(_apply(t, params))), ctx)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A tiny CLIP run, and CoOp started from it (3 steps)."""
    root = tmp_path_factory.mktemp('coop')
    clip = tiny_config.get_config()
    clip.total_steps = 2
    clip.checkpoint_every_steps = 2
    clip.optim.warmup_steps = 0
    clip_dir = str(root / 'clip')
    train.train_and_evaluate(clip, clip_dir)
    c = _config()
    c.init_from.path = clip_dir
    common = dict(data='synthetic:shapes', split='val', num_examples=32, batch_size=16,
                  classnames=list(SHAPES), label_key='shape')  # fmt: skip
    c.evals.phrase = dict(type='zeroshot', templates=['a photo of a {}.'], **common)
    c.evals.bare = dict(type='zeroshot', templates=['{}.'], **common)
    coop_dir = str(root / 'coop')
    summary = train.train_and_evaluate(c, coop_dir)
    return clip_dir, coop_dir, summary


def test_only_the_context_trains(runs):
    clip_dir, coop_dir, _ = runs
    start = restore.load_run(None, clip_dir).params
    after = restore.load_run(None, coop_dir).params
    assert float(jnp.abs(after['coop_context']).max()) > 0  # it moved from zero
    for name in start:
        for a, b in zip(jax.tree.leaves(start[name]), jax.tree.leaves(after[name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_step_on_the_context_lowers_the_loss_and_the_towers_get_no_update(runs):
    _, coop_dir, _ = runs
    loaded = restore.load_run(None, coop_dir)
    obj, params = loaded.build.objective, loaded.params
    batch = {'image': _images(16, seed=3), 'coop_label': jnp.arange(16) % len(SHAPES)}

    def loss_of(context):
        p = dict(params, coop_context=context)
        apply = functools.partial(loaded.model.apply, {'params': p})
        return obj.loss(obj.forward(apply, batch, None), batch, None)[0]

    # Jitted (one compile, reused for the step's loss) rather than run op by op.
    loss_and_grad = jax.jit(jax.value_and_grad(loss_of))
    loss, g = loss_and_grad(params['coop_context'])
    assert float(jnp.abs(g).max()) > 0
    assert loss_and_grad(params['coop_context'] - 0.5 * g)[0] < loss
    rows = [r for r in workdir_lib.read_metrics(coop_dir) if 'train/loss' in r]
    assert len(rows) == 3 and all(np.isfinite(r['train/loss']) for r in rows)
    assert 0.0 <= rows[-1]['train/acc1'] <= 1.0


def test_the_coop_scorer_ranks_with_the_training_logits(runs):
    _, coop_dir, summary = runs
    loaded = restore.load_run(None, coop_dir)
    (ev,) = evaluators_lib.build_evaluators(
        evaluators_lib.keep_only(loaded.config, ['bare']),
        loaded.model, loaded.tokenizer, loaded.mesh, loaded.build.objective.scorers,
    )  # fmt: skip
    emb = ev.split.embed(loaded.params, with_text=False)
    labels = ev.class_ids(next(iter(ev.tasks)), emb.labels)
    apply = functools.partial(loaded.model.apply, {'params': loaded.params})
    w = loaded.build.objective.class_embeddings(apply)
    pred = np.argmax(np.asarray(emb.image) @ np.asarray(w).T, -1)
    acc = float(np.mean(pred == labels))
    assert summary['zeroshot/bare@coop/acc1'] == pytest.approx(acc)
    assert 'zeroshot/phrase/acc1' in summary


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match=r"ctx_init='a photo of a' is 4 tokens but n_ctx=3"):
        _trainer(n_ctx=3)
    c = _config()
    c.optim.freeze = ('img/.*',)
    with pytest.raises(ValueError, match='set config.optim.freeze'):
        train.build_trainer(c)
    c = _config()
    c.loss.classnames = ()
    with pytest.raises(ValueError, match='classnames is empty'):
        train.build_trainer(c)
    label = coop_lib.ClassLabel('shape', ('circle', 'square'))
    assert int(label.map({'labels': {'shape': 1}})['coop_label']) == 1
    assert int(label.map({'labels': {'shape': 'square'}})['coop_label']) == 1
    with pytest.raises(ValueError, match='outside the 2 config.loss.classnames'):
        label.map({'labels': {'shape': 5}})
    with pytest.raises(ValueError, match="'disk' of 'shape' is not in config.loss.classnames"):
        label.map({'labels': {'shape': 'disk'}})


def test_the_few_shot_spec_wraps_any_source():
    s = data_lib.get_source(
        'fewshot:synthetic:shapes?label=shape&shots=3&pool=300&classes=new', 'train',
        image_size=16, seed=0,
    )  # fmt: skip
    assert len(s) == 12 and s.classes == [4, 5, 6, 7]
    with pytest.raises(ValueError, match='needs label= and shots='):
        data_lib.get_source('fewshot:synthetic:shapes?label=shape', 'train')
