"""Weight-space tools: the soup / interpolation / task-vector arithmetic (weight_space) and
the procedures over real runs and exports (soup): identical ingredients give the model,
the running average is the plain mean, the greedy score never drops, float32 averaging
keeps dtypes, alpha 0 / 1 are the endpoints, negation, learned coefficients, the CLI."""

import json
import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import export, soup, train
from alignjax import weight_space as ws

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        'img': {'encoder': {'block_0': {'kernel': rng.normal(size=(4, 3))},
                            'block_1': {'kernel': rng.normal(size=(4, 3))}},
                'head': {'kernel': rng.normal(size=(3, 2))}},
        'log_scale': rng.normal(size=()),
    }  # fmt: skip


def _cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _allclose(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), **kw)


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ weight_space (pure)


def test_a_soup_of_identical_models_is_that_model():
    theta = _cast(_tree(0), jnp.float32)
    _equal(ws.uniform_soup([theta, theta, theta]), theta)


def test_the_running_average_is_the_plain_mean():
    thetas = [_cast(_tree(s), jnp.float32) for s in range(4)]
    soup = ws.to_float32(thetas[0])
    for n, t in enumerate(thetas[1:], start=1):
        soup = ws.running_average(soup, n, t)
    plain = jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]), 0), *thetas)
    _allclose(soup, plain, rtol=1e-6, atol=1e-6)
    _allclose(ws.uniform_soup(thetas), plain, rtol=1e-6, atol=1e-6)


def test_bfloat16_ingredients_average_in_float32_and_keep_their_dtype():
    thetas = [_cast(_tree(s), jnp.bfloat16) for s in range(8)]
    out = ws.uniform_soup(thetas)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))
    exact = jax.tree.map(
        lambda *xs: np.mean(np.stack([np.asarray(x, np.float32) for x in xs]), 0), *thetas
    )
    # Rounded to bfloat16 once, at the end: within one bfloat16 ulp (2^-7 relative) of the
    # exact mean (a bfloat16 running sum of 8 would drift by several).
    _allclose(out, exact, rtol=2**-7, atol=1e-6)
    mixed = ws.interpolate(thetas[0], _cast(thetas[1], jnp.float32), 0.5)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(mixed))


def test_interpolation_endpoints_are_exact_and_the_middle_is_the_mean():
    a, b = _cast(_tree(0), jnp.float32), _cast(_tree(1), jnp.float32)
    _equal(ws.interpolate(a, b, 0.0), a)
    _equal(ws.interpolate(a, b, 1.0), b)
    _allclose(ws.interpolate(a, b, 0.5), ws.uniform_soup([a, b]), rtol=1e-6)
    _allclose(
        ws.interpolate(a, b, 0.25),
        jax.tree.map(lambda x, y: 0.75 * np.asarray(x) + 0.25 * np.asarray(y), a, b),
        rtol=1e-6,
    )


def test_task_vectors_zero_one_and_negation():
    base, ft = _cast(_tree(0), jnp.float32), _cast(_tree(1), jnp.float32)
    tau = ws.task_vector(ft, base)
    _equal(ws.add_task_vectors(base, [tau], [0.0]), base)
    _allclose(ws.add_task_vectors(base, [tau], [1.0]), ft, rtol=1e-6, atol=1e-6)
    neg = jax.tree.map(lambda b, f: 2 * np.asarray(b) - np.asarray(f), base, ft)
    _allclose(ws.add_task_vectors(base, [tau], [-1.0]), neg, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match='2 task vectors but 1'):
        ws.add_task_vectors(base, [tau, tau], [1.0])


def test_blocks_group_layers_and_share_a_scanned_stack():
    assert ws.block_of('img/encoder/block_3/attn/query/kernel') == 'img/encoder/block_3'
    assert ws.block_of('txt/encoder/blocks/mlp/fc1/kernel') == 'txt/encoder/blocks'
    assert ws.block_of('img/head/kernel') == 'img/head'
    assert ws.block_of('log_scale') == 'log_scale'
    names, of_leaf = ws.blocks(_tree(0))
    assert names == ['img/encoder/block_0', 'img/encoder/block_1', 'img/head', 'log_scale']
    assert of_leaf.tolist() == [0, 1, 2, 3]


def test_per_block_coefficients_scale_each_block_of_each_vector():
    base = _cast(_tree(0), jnp.float32)
    taus = [ws.task_vector(_cast(_tree(s), jnp.float32), base) for s in (1, 2)]
    names, of_leaf = ws.blocks(base)
    same = jnp.asarray([[0.5] * len(names), [-0.25] * len(names)])
    _allclose(
        ws.add_block_scaled(base, taus, same, of_leaf),
        ws.add_task_vectors(base, taus, [0.5, -0.25]),
        rtol=1e-6,
        atol=1e-6,
    )
    only_head = np.zeros((2, len(names)), np.float32)
    only_head[0, names.index('img/head')] = 1.0
    out = ws.add_block_scaled(base, taus, jnp.asarray(only_head), of_leaf)
    _allclose(out['img']['head'], _tree(1)['img']['head'], rtol=1e-6)
    _equal(out['img']['encoder'], base['img']['encoder'])


def test_a_different_architecture_is_one_clear_error():
    a = _tree(0)
    b = _tree(1)
    b['img']['head']['kernel'] = np.zeros((5, 2))
    del b['log_scale']
    expected = (r"Ingr X does not have the reference architecture: missing \['log_scale'\], "
                r"shapes differ \(img/head/kernel: \(5, 2\) vs \(3, 2\)\)")  # fmt: skip
    with pytest.raises(ValueError, match=expected):
        ws.check_same_structure(a, b, 'Ingr X')


# ------------------------------------------------------------- procedures on real runs

EVAL = dict(type='zeroshot', data='synthetic:shapes', split='val', tasks=['shape', 'color'],
            num_examples=48, batch_size=16)  # fmt: skip


def _run_config(seed, width=32, evals=True):
    c = tiny_config.get_config()
    c.seed = seed
    c.total_steps = 3
    c.checkpoint_every_steps = 3
    c.log_every_steps = 3
    c.optim.lr = 3e-3
    c.model.image.width = width
    if evals:
        c.evals.heldout = dict(EVAL)
    return c


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Three tiny runs of one architecture (seeds 0-2) and one of another width.

    Only run 0 has the evaluator: it is the reference of every test and CLI call here, whose
    config is the one read (`load_ingredient` restores an ingredient against the reference's
    config), so the other runs skip compiling and running a final evaluation no test reads.
    """
    root = tmp_path_factory.mktemp('soup')
    out = []
    for seed in range(3):
        wd = str(root / f'run{seed}')
        train.train_and_evaluate(_run_config(seed, evals=seed == 0), wd)
        out.append(wd)
    other = str(root / 'wide')
    train.train_and_evaluate(_run_config(0, width=48, evals=False), other)
    return out, other


@pytest.fixture(scope='module')
def reference(runs):
    """Run 0 loaded once (tests only read it): the evaluators' encoders, jitted per model,
    compile once for the module instead of once per test."""
    return soup.load_reference(runs[0][0])


def _host(params):
    return jax.tree.map(np.asarray, params)


def test_identical_ingredients_give_the_model_and_the_soup_is_the_plain_mean(runs, reference):
    paths, _ = runs
    ref = reference
    same = soup.uniform(ref, [paths[0]] * 3)
    _equal(_host(same.params), _host(ref.params))
    assert jax.tree.leaves(same.params)[0].sharding == jax.tree.leaves(ref.params)[0].sharding
    mixed = soup.uniform(ref, paths)
    thetas = [_host(soup.load_ingredient(ref, p)) for p in paths]
    plain = jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0), *thetas)
    _allclose(_host(mixed.params), plain, rtol=1e-5, atol=1e-6)


def test_greedy_soup_never_drops_and_keeps_the_mean_of_what_it_kept(runs, reference):
    paths, _ = runs
    ref = reference
    score = soup.Scorer(ref)
    metric = 'zeroshot/heldout_*/acc1'
    result = soup.greedy(ref, paths, score, metric)
    r = result.record
    assert r['order'] == [
        paths[i] for i in np.argsort(-np.asarray(r['single_scores']), kind='stable')
    ]
    kept_scores = [h['candidate_score'] for h in r['history'] if h['kept']]
    assert kept_scores == sorted(kept_scores) and r['score'] == kept_scores[-1]
    assert r['score'] >= max(r['single_scores'])
    assert soup.select_metric(r['metrics'], metric) == pytest.approx(r['score'])
    kept = [_host(soup.load_ingredient(ref, p)) for p in r['kept']]
    plain = jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0), *kept)
    _allclose(_host(result.params), plain, rtol=1e-5, atol=1e-6)


def test_greedy_accept_gt_drops_ties_and_ge_keeps_them(runs, reference):
    """The same run three times: every candidate soup ties the soup; 'gt' keeps one."""
    paths, _ = runs
    ref = reference
    calls = []

    def score(params):  # Any deterministic score works: the procedure is what is tested.
        calls.append(1)
        return {'s': float(np.asarray(jax.tree.leaves(params)[0]).sum())}

    gt = soup.greedy(ref, [paths[1]] * 3, score, 's', accept='gt')
    ge = soup.greedy(ref, [paths[1]] * 3, score, 's', accept='ge')
    assert len(gt.record['kept']) == 1 and len(ge.record['kept']) == 3
    _allclose(_host(gt.params), _host(ge.params), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="accept='x'"):
        soup.greedy(ref, paths, score, 's', accept='x')


def test_greedy_drops_an_ingredient_that_hurts_and_returns_the_mean_of_the_kept(runs, reference):
    """Scored by closeness to the mean of runs 0 and 1: those two are kept, run 2 (which
    moves the soup away) is dropped, and the soup is exactly their mean."""
    paths, _ = runs
    ref = reference
    thetas = [_host(soup.load_ingredient(ref, p)) for p in paths]
    target = jax.tree.map(lambda a, b: (a.astype(np.float64) + b) / 2, thetas[0], thetas[1])

    def score(params):
        gaps = jax.tree.map(lambda p, t: float(((np.asarray(p, np.float64) - t) ** 2).sum()),
                            _host(params), target)  # fmt: skip
        return {'closeness': -sum(jax.tree.leaves(gaps))}

    r = soup.greedy(ref, [paths[2], paths[0], paths[1]], score, 'closeness').record
    assert sorted(r['kept']) == sorted(paths[:2]) and r['history'][-1]['kept'] is False
    result = soup.greedy(ref, [paths[2], paths[0], paths[1]], score, 'closeness')
    _allclose(_host(result.params), target, rtol=1e-5, atol=1e-6)


def test_metric_globs_skip_per_scorer_metrics_unless_asked():
    results = {'zeroshot/a/acc1': 0.5, 'zeroshot/b/acc1': 0.7, 'zeroshot/a/acc1@tokens': 0.1}
    assert soup.matching_metrics(results, 'zeroshot/*/acc1') == ['zeroshot/a/acc1',
                                                                 'zeroshot/b/acc1']  # fmt: skip
    assert soup.select_metric(results, 'zeroshot/*/acc1') == pytest.approx(0.6)
    assert soup.matching_metrics(results, '*@tokens') == ['zeroshot/a/acc1@tokens']
    with pytest.raises(ValueError, match="No metric matches 'x'"):
        soup.select_metric(results, 'x')


def test_wise_ft_endpoints_are_the_two_models(runs, reference):
    paths, _ = runs
    ref = reference
    id_metric, shift_metric = 'zeroshot/heldout_*/acc1', 'zeroshot/heldout_shape/acc1'
    scorer = soup.Scorer(ref)
    result = soup.wise_ft(ref, paths[1], [0.0, 0.5, 1.0], scorer, id_metric, shift_metric, 1.0)
    _equal(_host(result.params), _host(soup.load_ingredient(ref, paths[1])))
    curve = result.record['curve']
    assert [row['alpha'] for row in curve] == [0.0, 0.5, 1.0]
    zero = soup.select_metric(soup.Scorer(ref)(ref.params), 'zeroshot/heldout_*/acc1')
    assert curve[0]['id'] == pytest.approx(zero)
    at_zero = soup.wise_ft(ref, paths[1], [0.0], soup.Scorer(ref), 'zeroshot/*/acc1',
                           'zeroshot/*/acc1', alpha=0.0)  # fmt: skip
    _equal(_host(at_zero.params), _host(ref.params))


def test_exports_are_ingredients_like_their_runs(runs, reference, tmp_path):
    paths, _ = runs
    ref = reference
    exported = export.export_checkpoint(paths[1], str(tmp_path / 'e1'))
    _equal(_host(soup.load_ingredient(ref, os.path.dirname(exported))),
           _host(soup.load_ingredient(ref, paths[1])))  # fmt: skip
    tv = soup.task_vectors(ref, [os.path.dirname(exported)], [-1.0])
    neg = jax.tree.map(
        lambda b, f: 2 * b - f, _host(ref.params), _host(soup.load_ingredient(ref, paths[1]))
    )
    _allclose(_host(tv.params), neg, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='is an export.*pass --config FILE'):
        soup.load_reference(os.path.dirname(exported))
    from_export = soup.load_reference(os.path.dirname(exported), _run_config(0))
    _equal(_host(from_export.params), _host(soup.load_ingredient(ref, paths[1])))


def test_an_ingredient_of_another_architecture_fails_naming_it(runs, reference, tmp_path):
    paths, wide = runs
    ref = reference
    exported = os.path.dirname(export.export_checkpoint(wide, str(tmp_path / 'wide')))
    with pytest.raises(
        ValueError,
        match=r'The export .*wide does not have the reference architecture: shapes differ',
    ):
        soup.load_ingredient(ref, exported)
    with pytest.raises(ValueError, match=r'Ingredient .*wide'):
        soup.load_ingredient(ref, wide)
    with pytest.raises(ValueError, match='neither a training run'):
        soup.load_ingredient(ref, str(tmp_path))


def test_learned_coefficients_lower_the_few_shot_loss(runs, reference):
    paths, _ = runs
    ref = reference
    (ev,) = soup.Scorer(ref).evaluators
    data = soup.few_shot_examples(ev, 'shape', shots=2, seed=0)
    assert data.images.shape[0] <= 2 * 8 and np.bincount(data.labels).max() <= 2
    result = soup.learn_coefficients(ref, paths[1:], data, steps=15, lr=0.1, init=0.0)
    r = result.record
    assert r['loss_final'] < r['loss_first']
    assert set(r['coefficients']) >= {'img/encoder/block_0', 'txt/encoder/block_0'}
    assert all(len(v) == 2 for v in r['coefficients'].values())
    # The temperature is not learned: scaling it alone would lower the loss for nothing.
    assert 'log_scale' not in r['coefficients']
    _equal(_host(result.params['log_scale']), _host(ref.params['log_scale']))
    # The coefficients learned are the model returned.
    names, of_leaf = ws.fix_blocks(*ws.blocks(ref.params), fixed=soup.TEMPERATURE_BLOCKS)
    c = jnp.asarray([[r['coefficients'][b][i] for b in names] for i in range(2)])
    taus = [ws.task_vector(soup.load_ingredient(ref, p), ref.params) for p in paths[1:]]
    _allclose(_host(result.params), _host(ws.add_block_scaled(ref.params, taus, c, of_leaf)),
              rtol=1e-5, atol=1e-6)  # fmt: skip


def test_few_shot_examples_skip_the_padding_rows_and_read_only_the_picked_images(runs):
    paths, _ = runs
    config = _run_config(0)
    config.evals.padded = dict(EVAL, num_examples=40)  # 40 = 2.5 batches of 16
    ref = soup.load_reference(paths[0], config)
    (ev,) = soup.Scorer(ref, only=['padded']).evaluators
    rows = list(ev.split.batches)
    assert sum(len(b['mask']) for b in rows) == 48  # the last batch is padded
    real = np.concatenate([b['mask'] for b in rows]).astype(bool)
    index = np.concatenate([b['index'] for b in rows])[real]
    images = np.concatenate([b['image'] for b in rows])[real][np.argsort(index)]
    every = soup.few_shot_examples(ev, 'shape', shots=40, seed=0)  # more shots than rows
    assert every.images.shape[0] == 40
    np.testing.assert_array_equal(every.images, images)
    two = soup.few_shot_examples(ev, 'shape', shots=2, seed=1)
    assert np.bincount(two.labels).max() <= 2
    # Each picked image is its row's, the label its row's.
    pos = [int(np.flatnonzero((images == im).all(axis=(1, 2, 3)))[0]) for im in two.images]
    np.testing.assert_array_equal(two.labels, every.labels[pos])


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, 'tests')]))
    return subprocess.run([sys.executable, '-m', 'alignjax.soup', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def test_cli_greedy_and_wise_ft_write_an_export_soup_json_and_the_curve(runs, tmp_path):
    paths, _ = runs
    out = _cli('greedy', '--ingredients', ','.join(paths), '--config.evals.new.type=zeroshot',
               '--config.evals.new.tasks=shape', '--config.evals.new.num_examples=32',
               '--config.evals.new.batch_size=16', '--evals=new',
               '--metric=zeroshot/new_shape/acc1', '--out', str(tmp_path / 'g'))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / 'g' / soup.SOUP_FILE).read_text())
    assert record['mode'] == 'greedy' and len(record['single_scores']) == 3
    params, cfg = export.load(str(tmp_path / 'g'))
    assert cfg['image']['width'] == 32 and 'log_scale' in params
    out = _cli('wise_ft', '--base', paths[0], '--ingredients', paths[1], '--alphas=0,0.5,1',
               '--evals=heldout', '--id_metric=zeroshot/heldout_*/acc1',
               '--shift_metric=zeroshot/heldout_shape/acc1',
               '--out', str(tmp_path / 'w'))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert '| 0.5 |' in out.stdout
    assert (tmp_path / 'w' / soup.CURVE_FILE).stat().st_size > 1000
    assert [
        r['alpha'] for r in json.loads((tmp_path / 'w' / soup.SOUP_FILE).read_text())['curve']
    ] == [0, 0.5, 1]


@pytest.mark.parametrize(
    'args, message',
    [
        (['blend', '--ingredients', 'x'], "Unknown mode 'blend'"),
        (['wise_ft', '--ingredients', 'x'], 'wise_ft needs --base'),
        (['uniform', '--ingredients', '/nonexistent/run'], 'neither a training run'),
        (['greedy'], '--ingredients is empty'),
    ],
)
def test_cli_errors_are_one_line(args, message):
    out = _cli(*args, timeout=120)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]


def _flags(**kw):
    defaults = dict(ingredients=None, base=None, evals=None, metric=None, accept='gt',
                    alphas=None, alpha=None, id_metric=None, shift_metric=None,
                    lambdas=None, fewshot=None, task=None, shots=2, steps=1, lr=0.1,
                    init=0.0, seed=0)  # fmt: skip
    return types.SimpleNamespace(**{**defaults, **kw})


@pytest.mark.parametrize(
    'mode, kw, message',
    [
        ('greedy', {}, 'greedy needs --metric'),
        ('wise_ft', {'alphas': [], 'id_metric': 'a', 'shift_metric': 'b'}, '--alphas is empty'),
        ('learned', {'fewshot': 'nope'}, "--fewshot 'nope' is not in config.evals ['heldout']"),
    ],
)
def test_mode_errors_name_the_missing_flag(runs, mode, kw, message):
    paths, _ = runs
    if mode == 'greedy':
        f = _flags(ingredients=paths[:2], **kw)
    else:
        f = _flags(ingredients=paths[1:2], base=paths[0], **kw)
    with pytest.raises(ValueError, match=re.escape(message)):
        soup.run_mode(mode, f, None, [])
