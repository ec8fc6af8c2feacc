"""Binding a new modality to a frozen tower: the depth rendering, the frozen text side, and
the emergent (never-trained) retrieval between the bound tower and another model's."""

import flax
import jax
import numpy as np
import pytest
import tiny_config

from alignjax import export, models, restore, train
from alignjax.config import load_config_file, resolve
from alignjax.data import get_source
from alignjax.data.synthetic import ShapesDataset
from alignjax.evaluate import evaluators as evaluators_lib
from alignjax.evaluate import metrics as metrics_lib

DEPTH = 'synthetic:shapes?render=depth'
BIND = load_config_file('configs/bind.py')
SCRATCH = load_config_file('configs/bind.py', '/runs/demo,scratch,steps=10')


# ------------------------------------------------------------------------- the rendering
def test_a_depth_map_shows_the_same_scene_with_the_same_caption_and_labels():
    photo, depth = ShapesDataset('test', 32), ShapesDataset('test', 32, render='depth')
    for i in range(20):
        p, d = photo[i], depth[i]
        assert (p['caption'], p['labels']) == (d['caption'], d['labels'])
        assert d['image'].shape == p['image'].shape and d['image'].dtype == np.uint8
        assert np.array_equal(d['image'][..., 0], d['image'][..., 2])  # grey in 3 channels
        # Near is dark: the object (where the photo differs from its ground) is nearer.
        rgb = p['image'].astype(np.float32)
        obj = np.abs(rgb - np.median(rgb, axis=(0, 1))).max(-1) > 60
        assert obj.any() and d['image'][obj, 0].mean() < d['image'][~obj, 0].mean() - 40
    assert np.array_equal(depth[3]['image'], ShapesDataset('test', 32, render='depth')[3]['image'])


def test_a_depth_map_carries_no_colour():
    ds = ShapesDataset('train', 32, render='depth')
    rng = np.random.default_rng([0, 0, 7])
    u = rng.random(12)
    labels = ds._sample_labels(u)
    maps = [ds._depth(dict(labels, color=c), u, np.random.default_rng(1)) for c in range(8)]
    assert all(np.array_equal(maps[0], m) for m in maps[1:])


def test_render_is_a_source_option_and_a_wrong_one_names_the_valid_ones():
    src = get_source(DEPTH, 'val', image_size=24)
    assert src.render == 'depth' and "render='depth'" in repr(src)
    with pytest.raises(ValueError, match=r"render='lidar'.*\['rgb', 'depth'\]"):
        get_source('synthetic:shapes?render=lidar', 'val')


# ------------------------------------------------------------------- a bound tiny model
def _tiny(steps):
    c = tiny_config.get_config()
    c.total_steps = c.checkpoint_every_steps = steps
    c.optim.warmup_steps = 1
    return c


def _cross_modal(anchor, **kw):
    return dict(
        type='cross_modal', data=DEPTH, anchor=anchor, anchor_data='synthetic:shapes',
        split='val', num_examples=48, batch_size=16, **kw,
    )  # fmt: skip


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """(anchor export, bound workdir, its summary): a tiny CLIP as initialised, exported,
    and a depth tower bound to its frozen text tower for 2 steps from scratch, as
    configs/bind.py does (the export is the anchor of the run's cross_modal evaluator)."""
    c = resolve(_tiny(2))
    model = models.build(c.model)
    batch = tiny_config.random_batch(0)
    params = model.init(jax.random.PRNGKey(1), batch['image'][:1], batch['tokens'][:1])
    anchor = export.save(
        str(tmp_path_factory.mktemp('anchor')),
        flax.core.meta.unbox(params)['params'],
        c.model,
        preprocess=export.preprocess_from_config(c),
        tokenizer=export.tokenizer_from_config(c),
    )
    c = _tiny(2)
    c.init_from.path, c.init_from.mapping = anchor, SCRATCH.init_from.mapping
    c.optim.freeze = BIND.optim.freeze
    c.data.train = DEPTH
    c.eval_every_steps = 2
    c.evals = dict(depth_photo=_cross_modal(anchor))
    bound = str(tmp_path_factory.mktemp('bound'))
    summary = train.train_and_evaluate(c, bound)
    return anchor, bound, summary


def _flat(tree, prefix=''):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f'{prefix}{k}/') if isinstance(v, dict) else {prefix + k: v})
    return out


def test_the_text_side_is_the_anchors_and_only_the_new_tower_trained(runs):
    anchor, bound, _ = runs
    a = _flat(export.read(anchor).params)
    b = _flat(restore.load_run(None, bound).params)
    for path in a:
        if path.startswith('txt/') or path == 'log_scale':
            np.testing.assert_array_equal(np.asarray(b[path]), np.asarray(a[path]), path)
    # Loaded from scratch: the depth tower is not the anchor's photo tower.
    assert not np.allclose(np.asarray(b['img/head/kernel']), np.asarray(a['img/head/kernel']))


def _evaluator(run, **fields):
    c = resolve(run.config)
    c.evals = dict(x=fields)
    [ev] = evaluators_lib.build_evaluators(c, run.model, run.tokenizer, run.mesh)
    return ev


def test_identical_towers_on_identical_scenes_retrieve_every_pair(runs):
    """The bound run against itself (a workdir as the anchor): row i is scene i on both
    sides, so every query finds its own scene first and agrees with it on every attribute."""
    _, bound, _ = runs
    run = restore.load_run(None, bound)
    ev = _evaluator(run, **dict(_cross_modal(bound), anchor_data=DEPTH))
    out = ev.run(run.params)
    for k in (1, 5, 10):
        assert out[f'cross_modal/x/to_anchor_recall@{k}'] == 1.0
        assert out[f'cross_modal/x/from_anchor_recall@{k}'] == 1.0
        assert out[f'cross_modal/x/chance/recall@{k}'] == k / 48
    for attr in ShapesDataset.attributes:
        assert out[f'cross_modal/x/match@1/{attr}'] == 1.0


def test_the_metrics_are_the_dense_reference_and_the_run_logged_them(runs):
    anchor, bound, summary = runs
    run = restore.load_run(None, bound)
    ev = _evaluator(run, **_cross_modal(anchor))
    out = ev.run(run.params)
    q = ev.split.embed(run.params, with_text=False)
    a = ev.anchor_embeddings()
    scores = q.image @ a.image.T  # [N, N]: depth i against photo j
    ref = metrics_lib.retrieval_metrics(scores.T, np.arange(48))  # text = depth, image = photo
    for k in (1, 5, 10):
        got = out[f'cross_modal/x/to_anchor_recall@{k}']
        assert got == pytest.approx(ref[f'image_retrieval_recall@{k}'])
        assert out[f'cross_modal/x/from_anchor_recall@{k}'] == pytest.approx(
            ref[f'text_retrieval_recall@{k}']
        )
    top = np.argmax(scores, axis=1)
    for attr in ShapesDataset.attributes:
        labels = q.labels[f'label_{attr}']
        assert out[f'cross_modal/x/match@1/{attr}'] == pytest.approx((labels[top] == labels).mean())
        p = np.bincount(labels) / 48
        assert out[f'cross_modal/x/chance/match@1/{attr}'] == pytest.approx((p**2).sum())
    assert summary['cross_modal/depth_photo/to_anchor_recall@1'] == pytest.approx(
        out['cross_modal/x/to_anchor_recall@1']
    )


def test_bad_anchors_and_mismatched_scenes_fail_naming_the_fix(runs, tmp_path):
    anchor, bound, _ = runs
    run = restore.load_run(None, bound)
    with pytest.raises(ValueError, match='evals.x.anchor is not set'):
        _evaluator(run, **_cross_modal(None))
    with pytest.raises(ValueError, match='neither a training run'):
        _evaluator(run, **_cross_modal(str(tmp_path)))
    other = dict(_cross_modal(anchor), anchor_data='synthetic:shapes?shapes=circle,square')
    with pytest.raises(ValueError, match='not the same scenes in the same order'):
        _evaluator(run, **other).run(run.params)
    with pytest.raises(ValueError, match='attributes'):
        _evaluator(run, **_cross_modal(anchor, attributes=['texture'])).run(run.params)


def test_the_bind_config_freezes_what_it_loads():
    """configs/bind.py as written (`--dry_run`: no weights read): only the image slot (the
    depth tower) trains; `scratch` loads only the frozen side."""
    out = train.dry_run(BIND, None, compile=False)
    t = train.build_trainer(BIND)
    flat = _flat(t.abstract_state.params)
    assert out['trainable_params'] == sum(x.size for p, x in flat.items() if p.startswith('img/'))
    assert tuple(BIND.init_from.mapping) == ()  # everything: the photo tower seeds the new one
    assert tuple(SCRATCH.init_from.mapping) == ('txt', 'log_scale')
    assert SCRATCH.total_steps == 10 and SCRATCH.evals.depth_photo.anchor == '/runs/demo'
