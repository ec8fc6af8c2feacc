"""Evaluators with a tiny model: the on-device, sharded path gives the dense metrics, several
captions per image, labelled sources with class-name lists, the linear probe and config
errors. (The CLI, multi-process run and CLIP_benchmark adapter: tests/test_eval_cli.py.)"""

import json

import jax
import numpy as np
import pytest
import tiny_config

from alignjax import config as config_lib
from alignjax import data as data_lib
from alignjax import evaluate, train
from alignjax.evaluate import classnames, linear_probe

COLORS = ('red', 'green', 'blue')
RGB = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220]], np.uint8)


class ColorPatches:
    """Labelled image-text source: a flat color image with 1-3 captions, label = the color.

    Example i has i % 3 + 1 captions (several captions per image, Karpathy style).
    """

    def __init__(self, split='test', image_size=16, seed=0, num_examples=30):
        self.n, self.size, self.seed = num_examples, image_size, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        label = (i * 7 + self.seed) % 3
        rng = np.random.default_rng([self.seed, i])
        noise = rng.integers(-20, 21, size=(self.size, self.size, 3))
        image = np.clip(RGB[label].astype(int) + noise, 0, 255).astype(np.uint8)
        captions = [f'a {COLORS[label]} picture number {i}', f'{COLORS[label]} thing {i}', 'color']
        captions = captions[: i % 3 + 1]
        return {
            'image': image,
            'caption': captions[0],
            'captions': captions,
            'labels': {'label': label},
        }


if 'evaltest' not in data_lib.SOURCES:
    data_lib.register_source('evaltest')(lambda name, split, **kw: ColorPatches(split, **kw))


@pytest.fixture(scope='module')
def trainer():
    c = tiny_config.get_config()
    t = train.build_trainer(c)
    return t, t.init_fn()


def _evaluators(t, **evals):
    c = tiny_config.get_config()
    for name, ev in evals.items():
        c.evals[name] = ev
    return evaluate.build_evaluators(config_lib.resolve(c), t.model, t.tokenizer, t.mesh)


def _direct_image_embeddings(t, state, source, n):
    """Reference: the model applied on one device to the normalised images, no pipeline."""
    images = np.stack([source[i]['image'] for i in range(n)])
    x = data_lib.normalize_image(images, 'minus_one_one')
    return np.asarray(
        t.model.apply({'params': state.params}, x, method=t.model.encode_image), np.float64
    )


def test_retrieval_with_several_captions_equals_dense_metrics(trainer):
    t, state = trainer
    spec = dict(data='evaltest:colors', split='test', batch_size=8, chunk_size=7)
    (ev,) = _evaluators(t, ret=dict(type='retrieval', ks=(1, 2, 5), **spec))
    m = ev.run(state.params)
    emb = ev.split.embed(state.params)
    src = ColorPatches()
    # Source order and caption grouping: example i has i % 3 + 1 captions.
    expected_groups = np.repeat(np.arange(30), [i % 3 + 1 for i in range(30)])
    np.testing.assert_array_equal(emb.image_of_text, expected_groups)
    np.testing.assert_allclose(emb.image, _direct_image_embeddings(t, state, src, 30), atol=2e-5)
    dense = evaluate.retrieval_metrics(emb.image @ emb.text.T, emb.image_of_text, ks=(1, 2, 5))
    for k, v in dense.items():
        assert m[f'retrieval/ret/{k}'] == pytest.approx(v)
    geo = evaluate.geometry_metrics(emb.image[emb.image_of_text], emb.text)
    assert m['geometry/ret/alignment'] == pytest.approx(geo['alignment'], rel=1e-5)
    assert m['geometry/ret/modality_gap'] == pytest.approx(
        float(evaluate.modality_gap(emb.image, emb.text)), rel=1e-5
    )
    assert {'geometry/ret/uniformity_image', 'geometry/ret/uniformity_text'} <= set(m)


def test_max_captions_drops_extra_captions(trainer):
    t, state = trainer
    (ev,) = _evaluators(
        t, geo=dict(type='geometry', data='evaltest:colors', batch_size=8, max_captions=1)
    )
    m = ev.run(state.params)
    assert ev.split.embed(state.params).text.shape[0] == 30
    assert set(m) == {f'geometry/geo/{k}' for k in evaluate.geometry_metrics(np.eye(2), np.eye(2))}


def test_zero_shot_with_classnames_equals_dense_metrics(trainer, tmp_path):
    t, state = trainer
    names = tmp_path / 'names.txt'
    names.write_text('red\ngreen\nblue\n')
    (ev,) = _evaluators(
        t,
        zs=dict(
            type='zeroshot',
            data='evaltest:colors',
            classnames=str(names),
            templates=['a {} picture', '{}'],
            label_key='label',
            batch_size=8,
        ),
    )
    m = ev.run(state.params)
    assert set(m) == {'zeroshot/zs/acc1', 'zeroshot/zs/acc5', 'zeroshot/zs/mean_per_class_recall'}
    # Class embeddings: mean of normalised template embeddings, renormalised.
    prompts = t.tokenizer([tmpl.format(c) for c in COLORS for tmpl in ('a {} picture', '{}')])
    z = np.asarray(t.model.apply({'params': state.params}, prompts, method=t.model.encode_text))
    w = z.reshape(3, 2, -1).mean(1)
    w /= np.linalg.norm(w, axis=-1, keepdims=True)
    assert ev.class_embeddings(state.params, '').shape == (1, 3, w.shape[-1])  # one group
    np.testing.assert_allclose(ev.class_embeddings(state.params, '')[0], w, atol=2e-5)
    emb = ev.split.embed(state.params, with_text=False)
    labels = emb.labels['label_label']
    np.testing.assert_array_equal(labels, [(i * 7) % 3 for i in range(30)])
    dense = evaluate.zero_shot_metrics(
        emb.image @ ev.class_embeddings(state.params, '')[0].T, labels
    )
    for k, v in dense.items():
        assert m[f'zeroshot/zs/{k}'] == pytest.approx(v)
    assert m['zeroshot/zs/acc5'] == 1.0  # 3 classes: acc5 capped


def _write_table(tmp_path, fmt):
    """Real files: 12 PNG images of flat colors, a label column, 1-3 captions per image."""
    from PIL import Image

    rows = []
    for i in range(12):
        ex = ColorPatches()[i]
        path = tmp_path / f'{i}.png'
        Image.fromarray(ex['image']).save(path)
        # Image i's own word makes every caption distinct: identical captions of different
        # images are exact ties, ranked by the tie rule (tested in the ranks tests), which
        # the dense numpy reference below does not model.
        titles = [f'{c} item{i}' for c in ex['captions']]
        rows.append({'filepath': path.name, 'title': titles, 'label': ex['labels']['label']})
    if fmt == 'jsonl':
        (tmp_path / 'd.jsonl').write_text('\n'.join(json.dumps(r) for r in rows))
        return f'jsonl:{tmp_path}/d.jsonl?label_key=label'
    lines = ['filepath,title,label'] + [
        f"{r['filepath']},{r['title'][0]},{r['label']}" for r in rows
    ]
    (tmp_path / 'd.csv').write_text('\n'.join(lines))
    return f'csv:{tmp_path}/d.csv?label_key=label'


@pytest.mark.parametrize('fmt', ['csv', 'jsonl'])
def test_file_sources_with_label_column_and_several_captions(trainer, tmp_path, fmt):
    t, state = trainer
    spec = _write_table(tmp_path, fmt)
    common = dict(data=spec, split='test', batch_size=8)
    zs, ret = _evaluators(
        t,
        a=dict(type='zeroshot', classnames=list(COLORS), **common),
        b=dict(type='retrieval', ks=(1, 5), **common),
    )
    m = zs.run(state.params)
    emb = zs.split.embed(state.params)
    np.testing.assert_array_equal(emb.labels['label_label'], [(i * 7) % 3 for i in range(12)])
    (w,) = zs.class_embeddings(state.params, '')
    for k, v in evaluate.zero_shot_metrics(emb.image @ w.T, emb.labels['label_label']).items():
        assert m[f'zeroshot/a/{k}'] == pytest.approx(v)
    # JSONL list captions: all of them (i % 3 + 1 per image); CSV: one per image.
    per_image = [i % 3 + 1 for i in range(12)] if fmt == 'jsonl' else [1] * 12
    np.testing.assert_array_equal(emb.image_of_text, np.repeat(np.arange(12), per_image))
    m = ret.run(state.params)
    dense = evaluate.retrieval_metrics(emb.image @ emb.text.T, emb.image_of_text, ks=(1, 5))
    for k, v in dense.items():
        assert m[f'retrieval/b/{k}'] == pytest.approx(v)


def test_zero_shot_source_tasks_and_shared_split(trainer):
    t, state = trainer
    common = dict(data='synthetic:shapes', split='test', num_examples=24, batch_size=8)
    zs, ret = _evaluators(
        t,
        a=dict(type='zeroshot', tasks=['shape', 'size'], **common),
        b=dict(type='retrieval', geometry=False, **common),
    )
    assert zs.split is ret.split  # one decoded split, one set of embeddings per round
    m = zs.run(state.params)
    assert sorted(m) == sorted(
        f'zeroshot/a_{task}/{k}'
        for task in ('shape', 'size')
        for k in ('acc1', 'acc5', 'mean_per_class_recall')
    )
    assert all(k.startswith('retrieval/b/') for k in ret.run(state.params))
    # The shape task has singular and plural prototypes: a class scores its better group.
    w = zs.class_embeddings(state.params, 'shape')
    assert w.shape[:2] == (2, 8)
    emb = zs.split.embed(state.params, with_text=False)
    scores = np.maximum(emb.image @ w[0].T, emb.image @ w[1].T)
    dense = evaluate.zero_shot_metrics(scores, emb.labels['label_shape'])
    for k, v in dense.items():
        assert m[f'zeroshot/a_shape/{k}'] == pytest.approx(v)


def test_prototype_scores_and_ranks_follow_the_tie_rule():
    from alignjax.evaluate import ranks, zero_shot

    rng = np.random.default_rng(0)
    q, p = rng.normal(size=(7, 4)), rng.normal(size=(3, 5, 4))
    np.testing.assert_allclose(
        ranks.max_prototype_scores(q, p, chunk_size=3),
        np.max(np.einsum('nd,gcd->gnc', q, p), 0),
        rtol=1e-5,
    )
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    # Row 0, label 2: one higher (0.9) and one equal at a lower index -> 2; row 1: ties only.
    np.testing.assert_array_equal(ranks.ranks_from_scores(scores, [2, 3]), [2, 3])
    np.testing.assert_array_equal(ranks.ranks_from_scores(scores, [1, 0]), [0, 0])
    task = {
        'classnames': ['a', 'b'],
        'templates': ['{}'],
        'prototypes': [{'classnames': ['as', 'bs'], 'templates': ['two {}', 'many {}']}],
    }
    assert zero_shot._prototype_groups(task) == [
        (['a', 'b'], ['{}']),
        (['as', 'bs'], ['two {}', 'many {}']),
    ]
    with pytest.raises(ValueError, match='one class name per class'):
        zero_shot._prototype_groups(
            dict(task, prototypes=[{'classnames': ['x'], 'templates': ['{}']}])
        )


def test_builtin_classnames_and_templates():
    assert len(classnames.get_classnames('imagenet')) == 1000
    assert len(classnames.get_templates('imagenet')) == 80
    assert classnames.get_classnames('cifar10')[0] == 'airplane'
    assert len(set(classnames.get_classnames('cifar100'))) == 100
    assert len(classnames.get_templates('cifar')) == 18
    assert classnames.get_classnames('imagenet')[:3] == ['tench', 'goldfish', 'great white shark']
    assert classnames.get_templates('imagenet')[0] == 'a bad photo of a {}.'
    with pytest.raises(ValueError, match='neither a built-in'):
        classnames.get_classnames('imagenet21k')
    with pytest.raises(ValueError, match='exactly one'):
        classnames.get_templates(['no placeholder'])


@pytest.mark.parametrize(
    'ev, match',
    [
        (dict(type='zeroshot', data='evaltest:colors'), 'defines no zero-shot tasks'),
        (dict(type='zeroshot', batch_sise=8), 'batch_size'),
        (dict(type='zero_shot'), 'zeroshot'),
        (dict(type='zeroshot', num_examples=8, tasks=['colour']), 'color'),
    ],
)
def test_config_errors_name_the_fix(trainer, ev, match):
    t, _ = trainer
    with pytest.raises(ValueError, match=match):
        _evaluators(t, bad=ev)


def test_wrong_label_key_and_too_few_classnames(trainer):
    t, state = trainer
    common = dict(type='zeroshot', data='evaltest:colors', batch_size=8)
    (ev,) = _evaluators(t, a=dict(classnames=['red', 'green', 'blue'], label_key='kind', **common))
    with pytest.raises(ValueError, match="no label column 'label_kind'.*'label'"):
        ev.run(state.params)
    (ev,) = _evaluators(t, a=dict(classnames=['red', 'green'], **common))
    with pytest.raises(ValueError, match='cover every label'):
        ev.run(state.params)


def test_logistic_regression_reaches_the_optimum_and_wd_search():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8))
    y = rng.integers(0, 4, size=200)
    x = (centers[y] + rng.normal(size=(200, 8))).astype(np.float32)
    wds = np.array([1e-3, 1e-1])
    p = linear_probe.fit_logistic_regression(x, y, wds, 4, 300)
    for i, wd in enumerate(wds):  # Convex objective: a zero gradient is the optimum.
        params = {'w': p['w'][i], 'b': p['b'][i]}
        g = jax.grad(linear_probe._objective)(params, x, y, wd)
        assert max(float(np.abs(v).max()) for v in g.values()) < 1e-3
    # Stronger decay, smaller weights.
    assert np.linalg.norm(p['w'][1]) < np.linalg.norm(p['w'][0])
    # Weight-decay search: validation accuracy per wd, best wins, ties to the larger wd.
    acc = linear_probe.validation_accuracies(x, y, 4, wds, val_fraction=0.25, max_iters=300)
    assert acc.shape == (2,) and acc.max() > 0.5  # 4 classes: chance is 0.25
    assert linear_probe.pick_weight_decay([1e-3, 1e-1, 1.0], [0.5, 0.7, 0.6]) == 1
    assert linear_probe.pick_weight_decay([1e-3, 1e-1, 1.0], [0.7, 0.7, 0.6]) == 1


def test_linear_probe_evaluator(trainer):
    t, state = trainer
    (ev,) = _evaluators(
        t,
        lp=dict(
            type='linear_probe',
            data='evaltest:colors',
            train_split='train',
            num_train_examples=24,
            batch_size=8,
            weight_decays=(1e-4, 1e-2),
            max_iters=100,
        ),
    )
    m = ev.run(state.params)
    assert set(m) == {
        f'linear_probe/lp/{k}' for k in ('acc1', 'acc5', 'mean_per_class_recall', 'wd', 'val_acc1')
    }
    assert m['linear_probe/lp/wd'] in (1e-4, 1e-2)
    # Flat colors are linearly separable even in a random model's embedding.
    assert m['linear_probe/lp/acc1'] >= 0.9


def test_due_uses_own_period(trainer):
    t, _ = trainer
    (ev,) = _evaluators(
        t, a=dict(type='geometry', data='evaltest:colors', batch_size=8, every_steps=3)
    )
    assert [s for s in range(1, 10) if ev.due(s)] == [3, 6, 9]
