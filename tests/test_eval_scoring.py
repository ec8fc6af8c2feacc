"""Method-specific scoring at evaluation (alignjax.scoring + the zero-shot / retrieval
evaluators): the global scorer's metrics are unchanged, other scorers report under their own
names, token-wise scores equal a dense numpy reference (chunked or not), and a custom scorer
may call a model method (as Wukong's token reduction does)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import config as config_lib
from alignjax import data as data_lib
from alignjax import evaluate, parallel, scoring, train
from alignjax.evaluate import ranks

COLORS = ('red', 'green', 'blue')
RGB = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220]], np.uint8)


class Colors:
    """Flat color images with 1-3 captions each (label = the color); 18 examples."""

    def __init__(self, image_size=16, seed=0):
        self.size, self.seed = image_size, seed

    def __len__(self):
        return 18

    def __getitem__(self, i):
        label = (i * 7 + self.seed) % 3
        rng = np.random.default_rng([self.seed, i])
        noise = rng.integers(-20, 21, size=(self.size, self.size, 3))
        image = np.clip(RGB[label].astype(int) + noise, 0, 255).astype(np.uint8)
        captions = [f'a {COLORS[label]} thing {i}', f'{COLORS[label]} {i}', f'number {i}']
        captions = captions[: i % 3 + 1]
        return {
            'image': image,
            'caption': captions[0],
            'captions': captions,
            'labels': {'label': label},
        }


if 'scoretest' not in data_lib.SOURCES:
    data_lib.register_source('scoretest')(lambda name, split, **kw: Colors(**kw))

ZS = dict(
    type='zeroshot',
    data='scoretest:colors',
    classnames=list(COLORS),
    templates=['a {} picture', '{}'],
    batch_size=8,
    chunk_size=5,
)
RET = dict(type='retrieval', data='scoretest:colors', ks=(1, 2, 5), batch_size=8, chunk_size=7)


@pytest.fixture(scope='module')
def trainer():
    t = train.build_trainer(tiny_config.get_config())
    return t, t.init_fn()


def _evaluators(t, scorers=None, **evals):
    """{name: evaluator}; `scorers=None`: today's call, without the argument."""
    c = tiny_config.get_config()
    for name, ev in evals.items():
        c.evals[name] = ev
    args = (config_lib.resolve(c), t.model, t.tokenizer, t.mesh)
    if scorers is None:
        evaluators = evaluate.build_evaluators(*args)
    else:
        evaluators = evaluate.build_evaluators(*args, scorers)
    return {ev.name: ev for ev in evaluators}


def _run(evaluators, params):
    out = {}
    for ev in evaluators.values():
        out.update(ev.run(params))
    return out


def _pooled_as_tokens(name='pooled'):
    """Token-wise scoring of one token per side, the pooled embedding: the global cosine."""
    return scoring.tokenwise_scorer(
        name,
        image_features=lambda apply, x: {'tokens': apply(x, method='encode_image')[:, None]},
        text_features=lambda apply, t: {'tokens': apply(t, method='encode_text')[:, None]},
        gallery_chunk=3,
        query_chunk=4,
    )


def _dense_tokenwise(x, xm, y, ym):
    """Numpy reference: (s_i2t, s_t2i) [n, m] masked max-mean, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xm = np.ones(x.shape[:2], bool) if xm is None else np.asarray(xm, bool)
    ym = np.ones(y.shape[:2], bool) if ym is None else np.asarray(ym, bool)
    a = np.einsum('ikd,jrd->ijkr', x, y)
    a = np.where(xm[:, None, :, None] & ym[None, :, None, :], a, -np.inf)
    best_r = np.where(xm[:, None, :], a.max(3), 0.0)  # [n, m, n1]
    best_k = np.where(ym[None, :, :], a.max(2), 0.0)  # [n, m, n2]
    return best_r.sum(2) / xm.sum(1)[:, None], best_k.sum(2) / ym.sum(1)[None, :]


def test_global_metrics_unchanged_and_other_scorers_named_apart(trainer):
    t, state = trainer
    before = _run(_evaluators(t, zs=ZS, ret=RET), state.params)  # today's call
    tw = scoring.tokenwise_scorer()
    # The global scorer under another name takes the generic path (scorer features, scores
    # on device, template embeddings averaged as `combine_templates='embeddings'` says).
    cosine = dataclasses.replace(scoring.GLOBAL, name='cosine')
    after = _run(_evaluators(t, (scoring.GLOBAL, tw, cosine), zs=ZS, ret=RET), state.params)
    # The global metrics: the same names and exactly the same values.
    assert {k: after[k] for k in before} == before
    zs_keys = {'acc1', 'acc5', 'mean_per_class_recall'}
    ret_keys = {f'{d}_retrieval_recall@{k}' for d in ('image', 'text') for k in (1, 2, 5)}
    assert set(after) - set(before) == {
        f'{group}@{s}/{k}'
        for s in ('tokenwise', 'cosine')
        for group, keys in (('zeroshot/zs', zs_keys), ('retrieval/ret', ret_keys))
        for k in keys
    }
    for k, v in before.items():
        if not k.startswith('geometry/'):
            group, metric = k.rsplit('/', 1)
            assert after[f'{group}@cosine/{metric}'] == v, k
    assert not any('@' in k for k in before if k.startswith('geometry/'))
    assert all(0.0 <= v <= 1.0 for k, v in after.items() if '@tokenwise' in k)
    # ... and they are the dense metrics of the embeddings (the unchanged reference).
    evs = _evaluators(t, zs=ZS, ret=RET)
    zs, ret = evs['zs'], evs['ret']
    emb = ret.split.embed(state.params)
    dense = evaluate.retrieval_metrics(emb.image @ emb.text.T, emb.image_of_text, ks=(1, 2, 5))
    assert {f'retrieval/ret/{k}': v for k, v in dense.items()} == pytest.approx(
        {k: before[k] for k in before if k.startswith('retrieval/')}
    )
    (w,) = zs.class_embeddings(state.params, '')
    dense = evaluate.zero_shot_metrics(emb.image @ w.T, emb.labels['label_label'])
    assert {f'zeroshot/zs/{k}': v for k, v in dense.items()} == pytest.approx(
        {k: before[k] for k in before if k.startswith('zeroshot/')}
    )


def test_one_token_per_side_ranks_like_global(trainer):
    t, state = trainer
    pooled = _pooled_as_tokens()
    zs_spec = dict(ZS, templates=['{}'])  # One template: mean score == score of the mean.
    evs = _evaluators(t, (scoring.GLOBAL, pooled), zs=zs_spec, ret=RET)
    m, ret = _run(evs, state.params), evs['ret']
    emb = ret.split.embed(state.params)
    img, txt = emb.features['pooled']
    np.testing.assert_allclose(img['tokens'][:, 0], emb.image, atol=1e-6)
    np.testing.assert_allclose(txt['tokens'][:, 0], emb.text, atol=1e-6)
    for got, want in zip(ret.ranks(emb, pooled), ret.ranks(emb, scoring.GLOBAL)):
        np.testing.assert_array_equal(got, want)
    for k, v in m.items():
        if '@' not in k and not k.startswith('geometry/'):
            group, metric = k.rsplit('/', 1)
            assert m[f'{group}@pooled/{metric}'] == v, k


def test_templates_averaged_by_score_and_prototypes_maxed(trainer):
    t, state = trainer
    pooled = _pooled_as_tokens()
    spec = dict(data='synthetic:shapes', num_examples=16, batch_size=8, tasks=['shape'])
    zs = _evaluators(t, (scoring.GLOBAL, pooled), a=dict(type='zeroshot', **spec))['a']
    m = zs.run(state.params)
    emb = zs.split.embed(state.params, with_text=False)
    labels = emb.labels['label_shape']
    # Per prototype group: mean over the class's templates of <x, z_t>; then max over groups.
    groups = []
    encode = jax.jit(lambda p, x: t.model.apply({'params': p}, x, method='encode_text'))
    for tokens in zs.prompts['shape']:
        z = np.asarray(encode(state.params, tokens))
        groups.append((emb.image @ z.T).reshape(len(labels), 8, -1).mean(-1))
    assert len(groups) == 2 and zs.prompts['shape'][1].shape[0] > 8  # several templates
    scores = np.max(groups, axis=0)
    np.testing.assert_allclose(
        zs.class_scores(state.params, 'shape', pooled, emb.features['pooled'][0]),
        scores,
        atol=1e-5,
    )
    for k, v in evaluate.zero_shot_metrics(scores, labels).items():
        assert m[f'zeroshot/a_shape@pooled/{k}'] == pytest.approx(v)
    # The global scorer keeps CLIP's rule (mean embedding): other numbers in general.
    assert {'zeroshot/a_shape/acc1', 'zeroshot/a_shape@pooled/acc1'} <= set(m)


def test_tokenwise_scores_and_ranks_match_dense_reference_chunked_or_not():
    mesh = parallel.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
    rng = np.random.default_rng(0)
    n, m, n1, n2, d = 9, 13, 4, 4, 5
    # Small integers and 1, 2 or 4 valid tokens: every score is exact in float32, so ties
    # are real and the tie rule (lower gallery index first) is checked exactly.
    img = {
        'tokens': rng.integers(-1, 2, size=(n, n1, d)).astype(np.float32),
        'mask': np.arange(n1)[None, :] < rng.choice([1, 2, 4], size=(n, 1)),
    }
    txt = {
        'tokens': rng.integers(-1, 2, size=(m, n2, d)).astype(np.float32),
        'mask': np.arange(n2)[None, :] < rng.choice([1, 2, 4], size=(m, 1)),
    }
    s_i2t, s_t2i = _dense_tokenwise(img['tokens'], img['mask'], txt['tokens'], txt['mask'])
    tw = scoring.tokenwise_scorer()
    image_of_text = rng.integers(0, n, size=m)
    first = None
    for chunk, g_chunk in [(100, None), (4, 1), (2, 3), (9, 16)]:
        got_i2t = ranks.gallery_scores(tw.i2t, img, txt, mesh, chunk, g_chunk)
        got_t2i = ranks.gallery_scores(tw.t2i, txt, img, mesh, chunk, g_chunk)
        np.testing.assert_array_equal(got_i2t, s_i2t.astype(np.float32))
        np.testing.assert_array_equal(got_t2i, s_t2i.T.astype(np.float32))
        t2i = ranks.scored_positive_ranks(
            tw.t2i, txt, image_of_text, img, np.arange(n), mesh, chunk, g_chunk
        )
        i2t = ranks.scored_positive_ranks(
            tw.i2t, img, np.arange(n), txt, image_of_text, mesh, chunk, g_chunk
        )
        np.testing.assert_array_equal(t2i, ranks.ranks_from_scores(s_t2i.T, image_of_text))
        dense_t = evaluate.retrieval_metrics(s_i2t, image_of_text, ks=(1, 3))
        from_ranks = evaluate.retrieval_metrics_from_ranks(t2i, i2t, ks=(1, 3))
        assert {k: v for k, v in from_ranks.items() if k.startswith('text')} == {
            k: v for k, v in dense_t.items() if k.startswith('text')
        }
        first = first or (t2i, i2t, got_i2t)
        np.testing.assert_array_equal(i2t, first[1])  # chunked == unchunked
    # Template averaging: consecutive groups of gallery columns.
    grouped = ranks.gallery_scores(tw.i2t, img, jax.tree.map(lambda a: a[:12], txt), mesh, 4, 2, 3)
    np.testing.assert_allclose(grouped, s_i2t[:, :12].reshape(n, 4, 3).mean(-1), rtol=1e-6)
    # Token-wise with one token per side is the cosine.
    one = {'tokens': img['tokens'][:, :1]}
    np.testing.assert_array_equal(
        ranks.gallery_scores(tw.i2t, one, {'tokens': txt['tokens'][:, :1]}, mesh, 4, 2),
        img['tokens'][:, 0] @ txt['tokens'][:, 0].T,
    )


def _reduce_tokens(module, images):
    """A stand-in for Wukong's token reduction head: the image tower's patch tokens, mean
    over groups of 4 consecutive patches, renormalised ([B, 16, D] -> [B, 4, D])."""
    tokens = module.img(images)[1]
    b, n, d = tokens.shape
    pooled = tokens.reshape(b, n // 4, 4, d).mean(axis=2)
    return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)


def test_custom_scorer_calls_a_model_method(trainer):
    t, state = trainer
    wukong = scoring.tokenwise_scorer(
        'wukong',
        image_features=lambda apply, x: {'tokens': apply(x, method=_reduce_tokens)},
        gallery_chunk=2,
    )
    evs = _evaluators(t, (scoring.GLOBAL, wukong), zs=ZS, ret=RET)
    m, ret = _run(evs, state.params), evs['ret']
    emb = ret.split.embed(state.params)
    img, txt = emb.features['wukong']
    # Reference: the method and the towers applied directly, on one device, no pipeline.
    src = Colors()
    images = data_lib.normalize_image(
        np.stack([src[i]['image'] for i in range(18)]), 'minus_one_one'
    )
    reduce = jax.jit(lambda p, x: t.model.apply({'params': p}, x, method=_reduce_tokens))
    text = jax.jit(lambda p, x: t.model.apply({'params': p}, None, x, return_tokens=True))
    ref_img = np.asarray(reduce(state.params, images))
    assert ref_img.shape == (18, 4, 16)
    np.testing.assert_allclose(img['tokens'], ref_img, atol=2e-5)
    captions = [c for i in range(18) for c in src[i]['captions']]
    out = text(state.params, t.tokenizer(captions))
    np.testing.assert_allclose(txt['tokens'], out.txt_tokens, atol=2e-5)
    np.testing.assert_array_equal(txt['mask'], out.txt_mask)
    s_i2t, s_t2i = _dense_tokenwise(ref_img, None, out.txt_tokens, out.txt_mask)
    dense = evaluate.retrieval_metrics(s_i2t, emb.image_of_text, ks=(1, 2, 5))
    dense_img = evaluate.retrieval_metrics(s_t2i, emb.image_of_text, ks=(1, 2, 5))
    for k in (1, 2, 5):
        got = m[f'retrieval/ret@wukong/text_retrieval_recall@{k}']
        assert got == pytest.approx(dense[f'text_retrieval_recall@{k}'])
        got = m[f'retrieval/ret@wukong/image_retrieval_recall@{k}']
        assert got == pytest.approx(dense_img[f'image_retrieval_recall@{k}'])
    # Zero-shot: mean over the 2 templates of each class of the prompts' token-wise scores.
    prompts = t.tokenizer([tmpl.format(c) for c in COLORS for tmpl in ZS['templates']])
    p = text(state.params, prompts)
    scores = _dense_tokenwise(ref_img, None, p.txt_tokens, p.txt_mask)[0]
    scores = scores.reshape(18, 3, 2).mean(-1)
    for k, v in evaluate.zero_shot_metrics(scores, emb.labels['label_label']).items():
        assert m[f'zeroshot/zs@wukong/{k}'] == pytest.approx(v)


def test_scorer_checks_and_names(trainer):
    t, _ = trainer
    tw = scoring.tokenwise_scorer()
    assert scoring.GLOBAL.qualify('zeroshot/inet') == 'zeroshot/inet'
    assert tw.qualify('retrieval/coco') == 'retrieval/coco@tokenwise'
    with pytest.raises(ValueError, match='distinct'):
        _evaluators(t, (scoring.GLOBAL, tw, scoring.tokenwise_scorer()), zs=ZS)
    with pytest.raises(ValueError, match='At least one'):
        _evaluators(t, (), zs=ZS)
    with pytest.raises(ValueError, match='letters'):
        scoring.tokenwise_scorer('token wise')
    with pytest.raises(ValueError, match='combine_templates'):
        scoring.Scorer('x', tw.image_features, tw.text_features, tw.score, 'mean')
    # Linear probe and geometry ignore the scorers (global embeddings only).
    geo = dict(type='geometry', data='scoretest:colors', batch_size=8)
    assert _evaluators(t, (scoring.GLOBAL, tw), g=geo)['g'].split.scorers == ()
