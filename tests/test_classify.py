"""Fine-tuning on labels through the zero-shot head (alignjax/objectives/classify.py): at the
start its logits are the zero-shot evaluator's classifier applied to the images, the towers
receive the gradient, and one-line errors."""

import functools

import jax
import numpy as np
import pytest
import tiny_config

from alignjax import train
from alignjax.data.synthetic import SHAPES
from alignjax.evaluate import evaluators as evaluators_lib
from alignjax.objectives import coop, loss_config

TEMPLATES = ('a photo of a {}.', 'a {} shape.')


def _config(**loss):
    c = tiny_config.get_config()
    c.total_steps = 3
    c.optim.warmup_steps = 0
    c.data.train = 'fewshot:synthetic:shapes?label=shape&shots=2&pool=200'
    c.loss = loss_config('classify', **{'classnames': SHAPES, 'label_key': 'shape', **loss})
    c.evals = dict(
        shapes=dict(
            type='zeroshot', data='synthetic:shapes', split='val', num_examples=32,
            batch_size=16, classnames=list(SHAPES), label_key='shape', templates=list(TEMPLATES),
        )
    )  # fmt: skip
    return c


@pytest.fixture(scope='module')
def trainer():
    t = train.build_trainer(_config(templates=TEMPLATES))
    return t, t.init_fn().params


def test_the_start_is_zero_shot_classification_with_the_templates(trainer):
    t, params = trainer
    (ev,) = evaluators_lib.build_evaluators(
        t.config, t.model, t.tokenizer, t.mesh, t.objective.scorers
    )
    emb = ev.split.embed(params, with_text=False)
    w = ev.class_embeddings(params, next(iter(ev.tasks)))[0]  # [C, D], the evaluator's own
    apply = functools.partial(t.model.apply, {'params': params})
    images = np.stack([b['image'] for b in ev.split.batches])[0][:8]
    out = t.objective.forward(apply, {'image': images}, None)
    zimg = np.asarray(apply(images, method='encode_image'))
    expected = np.exp(float(params['log_scale'])) * zimg @ np.asarray(w).T
    np.testing.assert_allclose(out['logits'], expected, rtol=1e-4, atol=1e-4)
    assert emb.image.shape[1] == w.shape[1]


def test_both_towers_receive_the_gradient(trainer):
    t, params = trainer
    rng = np.random.default_rng(0)
    batch = {
        'image': rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
        coop.LABEL: np.array([0, 1, 2, 3], np.int32),
    }

    def loss_of(p):
        apply = functools.partial(t.model.apply, {'params': p})
        return t.objective.loss(t.objective.forward(apply, batch, None), batch, None)[0]

    g = jax.jit(jax.grad(loss_of))(params)  # One compiled program, not op by op.
    for tower in ('img', 'txt'):
        assert max(float(np.abs(x).max()) for x in jax.tree_util.tree_leaves(g[tower])) > 0


def test_it_trains_and_reports_accuracy(tmp_path):
    summary = train.train_and_evaluate(_config(), str(tmp_path))
    assert 'zeroshot/shapes/acc1' in summary


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match='classnames is empty'):
        train.build_trainer(_config(classnames=()))
    with pytest.raises(ValueError, match="templates must be prompts with '{}'"):
        train.build_trainer(_config(templates=('a photo',)))
