"""k-shot sampling (seeded, nested, per class), base/new splits, the few-shot source, and
the few-shot evaluator's baselines: class means, the Tip-Adapter cache, the linear probe."""

import ml_collections
import numpy as np
import pytest
import tiny_config

from alignjax import data as data_lib
from alignjax import restore, train
from alignjax.data import few_shot
from alignjax.data.synthetic import SHAPES
from alignjax.evaluate import evaluators as evaluators_lib
from alignjax.evaluate import few_shot as few_shot_eval


def test_k_shot_indices_are_k_per_class_seeded_and_nested():
    labels = np.repeat(np.arange(5), 10)[np.random.default_rng(0).permutation(50)]
    for k in (1, 2, 4, 8):
        idx = few_shot.k_shot_indices(labels, k, seed=3)
        assert np.bincount(labels[idx], minlength=5).tolist() == [k] * 5
        assert np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(idx, few_shot.k_shot_indices(labels, k, seed=3))
    small, big = (set(few_shot.k_shot_indices(labels, k, 3).tolist()) for k in (2, 8))
    assert small <= big
    other_seed = few_shot.k_shot_indices(labels, 2, 4)
    assert not np.array_equal(few_shot.k_shot_indices(labels, 2, 3), other_seed)


def test_a_class_is_drawn_independently_of_the_others():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    only_01 = np.where(labels == 2, -1, labels)
    a = few_shot.k_shot_indices(labels, 2, seed=1)
    b = few_shot.k_shot_indices(only_01, 2, seed=1)
    assert set(b.tolist()) <= set(a.tolist()) and len(b) == 4  # -1: never picked
    assert len(few_shot.k_shot_indices(np.array([0, 1, 1, 1]), 3)) == 4  # class 0 keeps its one


def test_k_shot_errors():
    with pytest.raises(ValueError, match='shots must be >= 1'):
        few_shot.k_shot_indices(np.array([0, 1]), 0)
    with pytest.raises(ValueError, match='1-D integer array'):
        few_shot.k_shot_indices(np.array([0.5, 1.0]), 1)


def test_base_new_split_and_harmonic_mean():
    assert few_shot.base_new_split(8) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert few_shot.base_new_split(5) == ([0, 1, 2], [3, 4])
    assert few_shot.harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.32 / 1.2)
    assert few_shot.harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match='>= 2 classes'):
        few_shot.base_new_split(1)


def test_few_shot_source_is_a_balanced_subset_of_the_source():
    source = data_lib.get_source('synthetic:shapes', 'val', image_size=16, seed=0)
    sub = few_shot.FewShotSource(source, 'shape', shots=3, seed=0, pool=200)
    assert len(sub) == 3 * 8
    got = [few_shot.example_label(sub[i], 'shape') for i in range(len(sub))]
    assert np.bincount(got, minlength=8).tolist() == [3] * 8
    j = int(sub.indices[5])
    np.testing.assert_array_equal(sub[5]['image'], source[j]['image'])
    base, _ = few_shot.base_new_split(8)
    only_base = few_shot.FewShotSource(source, 'label_shape', 2, 0, pool=200, classes=base)
    assert sorted(set(only_base.labels.tolist())) == base and len(only_base) == 8
    with pytest.raises(KeyError, match="no label 'weight'; its labels are"):
        few_shot.FewShotSource(source, 'weight', 1, pool=10)


def test_class_means_and_the_cache_adapter():
    rng = np.random.default_rng(0)
    shots = rng.normal(size=(6, 4)).astype(np.float32)
    shots /= np.linalg.norm(shots, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = few_shot_eval.class_mean_logits(shots, shots, labels, 3)
    mean0 = shots[:2].mean(0) / np.linalg.norm(shots[:2].mean(0))
    np.testing.assert_allclose(logits[:, 0], shots @ mean0, rtol=1e-6)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    zs = few_shot_eval.tip_adapter_logits(shots, w, shots, labels, 0.0, 5.5, 100.0)
    np.testing.assert_allclose(zs, 100.0 * shots @ w.T, rtol=1e-6)  # alpha 0: zero-shot
    # A query equal to a shot, with a sharp cache that outweighs the prompts: its class.
    sharp = few_shot_eval.tip_adapter_logits(shots, w, shots, labels, 1e4, 50.0, 1.0)
    assert np.argmax(sharp, -1).tolist() == labels.tolist()
    affinity = np.exp(-5.5 * (1 - shots[:1] @ shots.T))
    per_class = affinity[0].reshape(3, 2).sum(axis=1)  # shots are class-major here
    expected = 100 * shots[:1] @ w.T + 2.0 * per_class
    got = few_shot_eval.tip_adapter_logits(shots[:1], w, shots, labels, 2.0, 5.5, 100.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def _config():
    c = tiny_config.get_config()
    c.total_steps = 2
    c.optim.warmup_steps = 0
    c.checkpoint_every_steps = 2
    common = dict(data='synthetic:shapes', split='val', num_examples=48, batch_size=16)
    c.evals.zs = dict(type='zeroshot', tasks=['shape', 'size'], **common)
    c.evals.fs = dict(type='fewshot', tasks=['shape', 'size'], train_split='train', pool_size=96,
                      shots=(1, 2), seeds=(0, 1), max_iters=30, **common)  # fmt: skip
    return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('fewshot') / 'w')
    summary = train.train_and_evaluate(_config(), workdir)
    return workdir, summary


def test_the_evaluator_reports_every_method_and_shot_and_agrees_with_zero_shot(run):
    _, summary = run
    for task in ('shape', 'size'):
        g = f'fewshot/fs_{task}'
        assert summary[f'{g}/zeroshot_acc1'] == pytest.approx(summary[f'zeroshot/zs_{task}/acc1'])
        for k in (1, 2):
            for m in few_shot_eval.METHODS:
                assert 0.0 <= summary[f'{g}/{k}shot/{m}_acc1'] <= 1.0
                assert summary[f'{g}/{k}shot/{m}_acc1_std'] >= 0.0


def _evaluator(run, name, **fields):
    """Evaluator `name` of the run's config, with `fields` changed, and the loaded run."""
    workdir, _ = run
    loaded = restore.load_run(None, workdir)
    config = ml_collections.ConfigDict(loaded.config.to_dict())
    ev = dict(config.evals[name].to_dict(), **fields)
    config.evals = ml_collections.ConfigDict({name: ev})
    (built,) = evaluators_lib.build_evaluators(
        config, loaded.model, loaded.tokenizer, loaded.mesh, loaded.build.objective.scorers
    )
    return built, loaded


def _build(run, **fields):
    return _evaluator(run, 'fs', **fields)


def test_tip_adapter_with_alpha_zero_is_zero_shot_classification(run):
    ev, loaded = _build(run, methods=('tip_adapter',), tip_alpha=0.0, shots=(2,), seeds=(0,))
    out = ev.run(loaded.params)
    assert out['fewshot/fs_shape/2shot/tip_adapter_acc1'] == pytest.approx(
        out['fewshot/fs_shape/zeroshot_acc1']
    )


def test_config_errors_name_the_field(run):
    with pytest.raises(ValueError, match=r"evals.fs.methods: unknown \['coop'\]"):
        _build(run, methods=('coop',))
    with pytest.raises(ValueError, match='evals.fs.shots must be integers >= 1'):
        _build(run, shots=(0,))
    ev, loaded = _build(run, pool_size=2)
    expected = r'the pool \(2 examples .* has no example of .*raise pool_size'
    with pytest.raises(ValueError, match=expected):
        ev.run(loaded.params)


def test_the_evaluator_draws_the_shots_a_few_shot_source_trains_on(run):
    """Same pool and seed: the baselines are scored on exactly the training shots."""
    ev, loaded = _build(run, pool_size=96)
    pool = ev.pool.embed(loaded.params, with_text=False)
    y = ev.class_ids('shape', pool.labels, ev.pool.source)
    trained_on = few_shot.FewShotSource(ev.pool.source, 'shape', 2, seed=1, pool=96)
    np.testing.assert_array_equal(few_shot.k_shot_indices(y, 2, 1), trained_on.indices)
    np.testing.assert_array_equal(pool.labels['label_shape'][trained_on.indices],
                                  trained_on.labels)  # fmt: skip


def _zero_shot(run, **fields):
    return _evaluator(run, 'zs', **fields)


def test_zero_shot_on_the_new_classes_ranks_only_them_on_only_their_images(run):
    ev, loaded = _zero_shot(run, tasks=['shape'], classes='new')
    assert ev.tasks['shape']['classnames'] == list(SHAPES[4:])
    got = ev.run(loaded.params)['zeroshot/zs_shape/acc1']
    emb = ev.split.embed(loaded.params, with_text=False)
    shape = emb.labels['label_shape']
    keep = shape >= 4
    w = ev.class_embeddings(loaded.params, 'shape')  # [G, 4, D]: the new classes' groups
    scores = np.einsum('nd,gcd->gnc', emb.image[keep], w).max(0)
    assert got == pytest.approx(float(np.mean(np.argmax(scores, -1) == shape[keep] - 4)))
    with pytest.raises(ValueError, match=r"evals.zs.classes=\[9\]: use 'base', 'new' or"):
        _zero_shot(run, tasks=['shape'], classes=[9])


def test_a_few_shot_source_resumes_exactly_in_the_train_pipeline():
    """8 classes x 2 shots = 16 examples, batches of 6 (epochs straddle batches)."""
    tok = data_lib.build_tokenizer(tiny_config.get_config().tokenizer)
    source = data_lib.get_source('fewshot:synthetic:shapes?label=shape&shots=2&pool=120',
                                 'train', image_size=16, seed=0)  # fmt: skip

    def batches(state=None, n=6):
        it = data_lib.make_train_iterator(
            source, tokenizer=tok, global_batch_size=6, seed=3, with_metadata=True,
            process_index=0, process_count=1,
        )  # fmt: skip
        with it:
            if state is not None:
                it.set_state_json(state)
            out = [next(it) for _ in range(n)]
            return out, it.get_state_json()

    reference, _ = batches()
    seen = np.concatenate([b['index'] for b in reference])
    assert set(seen.tolist()) == set(range(16))  # every shot, and only the shots
    _, state = batches(n=2)
    resumed, _ = batches(state, n=4)
    for a, b in zip(resumed, reference[2:]):
        np.testing.assert_array_equal(a['index'], b['index'])
        np.testing.assert_array_equal(a['image'], b['image'])
