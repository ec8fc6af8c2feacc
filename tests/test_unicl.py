"""UniCL and prefix conditioning (alignjax/losses/unicl.py, alignjax/objectives/unicl.py,
alignjax/data/label_prompts.py): the loss is CLIP's with unique labels and spreads each row
over its class otherwise; replace-SOS starts as the plain text tower; prepend shifts the
tokens and the EOT by one; labelled sources become prompts; a mixed run trains and scores
with each prefix."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import data as data_lib
from alignjax import train
from alignjax.data import label_prompts
from alignjax.data.synthetic import SHAPES
from alignjax.losses.contrastive import clip_loss
from alignjax.losses.unicl import label_targets, unicl_loss
from alignjax.objectives import loss_config
from alignjax.objectives import unicl as unicl_lib

MIX = 'mix:0.5*labels:synthetic:shapes?label=shape;0.5*synthetic:shapes'


def _unit(rng, n, d=8):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _numpy_unicl(x, y, t, labels):
    """The formula, written out: row i's positives are the columns with its label."""
    logits = t * np.asarray(x) @ np.asarray(y).T
    n = len(labels)
    pos = np.array([[labels[i] == labels[j] and (labels[i] >= 0 or i == j) for j in range(n)]
                    for i in range(n)])  # fmt: skip

    def ce(lg, p):
        logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
        return -np.mean([logp[i][p[i]].mean() for i in range(n)])

    return 0.5 * (ce(logits, pos) + ce(logits.T, pos.T))


def test_unique_labels_give_clip_and_shared_labels_spread_the_targets():
    rng = np.random.default_rng(0)
    x, y = _unit(rng, 6), _unit(rng, 6)
    unique = jnp.asarray([-1, -2, 3, 4, 5, -6])
    np.testing.assert_allclose(unicl_loss(x, y, 10.0, unique), clip_loss(x, y, 10.0), rtol=1e-6)
    shared = np.array([2, 2, -1, 5, 2, -2])
    t = np.asarray(label_targets(jnp.asarray(shared)))
    np.testing.assert_allclose(t.sum(1), 1.0)
    np.testing.assert_allclose(t[0], [1 / 3, 1 / 3, 0, 0, 1 / 3, 0])
    np.testing.assert_allclose(t[2], np.eye(6)[2])  # a caption: only its own image
    np.testing.assert_allclose(
        unicl_loss(x, y, 10.0, jnp.asarray(shared)), _numpy_unicl(x, y, 10.0, shared), rtol=1e-5
    )
    assert float(unicl_loss(x, y, 10.0, jnp.asarray(shared))) != pytest.approx(
        float(clip_loss(x, y, 10.0))
    )


def test_captions_get_labels_of_their_own():
    labels = np.asarray(unicl_lib.unique_labels(jnp.asarray([7, -1, 7, -1], jnp.int32)))
    assert (
        labels[0] == labels[2] == 7
        and len(set(labels.tolist())) == 3
        and (labels[[1, 3]] < 0).all()
    )


def _trainer(prefix):
    c = tiny_config.get_config()
    c.data.train = MIX
    c.loss = loss_config('unicl', prefix=prefix)
    t = train.build_trainer(c)
    return t, t.init_fn().params


def _tokens(t, texts):
    return jnp.asarray(t.tokenizer(texts))


TEXTS = ['a red circle on the left', 'two big blue squares', 'a photo of a star.']


def test_replace_sos_starts_as_the_plain_text_tower():
    t, params = _trainer('replace_sos')
    apply = functools.partial(t.model.apply, {'params': params})
    tokens = _tokens(t, TEXTS)
    plain = apply(tokens, method='encode_text')
    for data_type in (0, 1):
        types = jnp.full((len(TEXTS),), data_type, jnp.int32)
        got = t.objective.encode_text(apply, tokens, types)
        np.testing.assert_allclose(got, plain, rtol=1e-6, atol=1e-6)
    # A trained offset changes the text features, per data type.
    # (A random direction: a constant shift of every dimension is what LayerNorm removes.)
    offset = jnp.asarray(np.random.default_rng(0).normal(size=params['text_prefix'].shape[1:]))
    moved = dict(params, text_prefix=params['text_prefix'].at[1].add(offset))
    apply = functools.partial(t.model.apply, {'params': moved})
    got = t.objective.encode_text(apply, tokens, jnp.asarray([0, 1, 1]))
    np.testing.assert_allclose(got[0], plain[0], rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(got[1:]) - np.asarray(plain[1:])).max() > 1e-4


def test_prepend_shifts_the_tokens_and_the_eot_by_one():
    t, params = _trainer('prepend')
    tokens = np.asarray(_tokens(t, TEXTS + ['one two three four five six seven eight nine ten']))
    eos = t.objective.eos_id
    eot = np.asarray(unicl_lib.prompts.eot_positions(jnp.asarray(tokens), eos))
    ids = np.asarray(unicl_lib.shift_right(jnp.asarray(tokens), eos))
    new_eot = np.asarray(unicl_lib.prompts.eot_positions(jnp.asarray(ids), eos))
    length = tokens.shape[1]
    for row in range(len(tokens)):
        if eot[row] < length - 1:
            assert new_eot[row] == eot[row] + 1
            np.testing.assert_array_equal(ids[row, 1:], tokens[row, :-1])
        else:  # the budget is one token shorter: the last word drops, the EOT stays last
            assert eot[row] == new_eot[row] == length - 1
            np.testing.assert_array_equal(ids[row, 1:-1], tokens[row, :-2])
    assert (eot == length - 1).any()  # the long text exercised the lost-EOT branch
    # With the prefix set to the embedding of the first token, the prefixed text is the
    # plain encoding of the shifted ids: the prefix takes position 0, the rest moves on.
    apply = functools.partial(t.model.apply, {'params': params})
    first = apply(jnp.asarray(tokens[:1, :1]), method='embed_tokens')[0, 0]
    same = dict(params, text_prefix=jnp.stack([first, first]))
    apply = functools.partial(t.model.apply, {'params': same})
    got = t.objective.encode_text(apply, jnp.asarray(tokens), jnp.zeros(len(tokens), jnp.int32))
    want = apply(jnp.asarray(ids), method='encode_text')
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_labelled_sources_become_prompts_with_stable_class_ids():
    ints = data_lib.get_source(
        'labels:synthetic:shapes?label=shape&templates=a photo of a {}.|a {} shape.',
        'train', image_size=16,
    )  # fmt: skip
    ex = ints[3]
    name = SHAPES[ex['labels']['shape']]
    assert ex['captions'] == [f'a photo of a {name}.', f'a {name} shape.'] and 'caption' not in ex
    assert int(ex['class_id']) == label_prompts.class_id(name)
    assert int(ex['data_type']) == label_prompts.CLASSIFICATION

    class Named:  # string labels: the same class name gives the same id
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {'image': np.zeros((4, 4, 3), np.uint8), 'labels': {'label': name}}

    other = label_prompts.LabelPromptSource(Named(), 'label')
    assert int(other[0]['class_id']) == int(ex['class_id'])
    with pytest.raises(ValueError, match='needs label='):
        data_lib.get_source('labels:synthetic:shapes', 'train')
    with pytest.raises(ValueError, match="templates must be prompts with '{}'"):
        label_prompts.LabelPromptSource(Named(), 'label', templates=('a photo',))
    with pytest.raises(ValueError, match='integer labels and no class names'):
        label_prompts.LabelPromptSource(Named(), 'label').class_name(1)


def test_a_mixed_run_trains_and_scores_with_each_prefix(tmp_path):
    c = tiny_config.get_config()
    c.total_steps = 3
    c.optim.warmup_steps = 0
    c.data.train = MIX
    c.loss = loss_config('unicl', prefix='prepend')
    c.evals = dict(
        shapes=dict(type='zeroshot', data='synthetic:shapes', split='test', num_examples=32,
                    batch_size=16)
    )  # fmt: skip
    summary = train.train_and_evaluate(c, str(tmp_path))
    for scorer in ('', '@caption', '@classification'):
        assert f'zeroshot/shapes_shape{scorer}/acc1' in summary
    rows = [r for r in train.workdir_lib.read_metrics(str(tmp_path)) if 'train/loss' in r]
    share = [r['train/classification_share'] for r in rows]
    assert all(0.0 < s < 1.0 for s in share), share  # both kinds in every batch


def test_replace_sos_needs_a_bos_token():
    objective = unicl_lib.UniCL(dict(name='unicl', prefix='replace_sos'))

    class NoBos:
        eos_is_max_id, eos_id, bos_id = False, 1, None

    with pytest.raises(ValueError, match="needs a tokenizer with a BOS token"):
        objective.bind_tokenizer(NoBos())
