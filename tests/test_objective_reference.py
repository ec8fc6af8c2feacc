"""Behaviour is unchanged by the move to the objectives registry.

`tests/data/objectives_reference.json` holds each method's loss and global gradient norm on
one fixed batch (stored in the .npz beside it), recorded with the code before the move
(`tests/data/record_objective_reference.py`, at commit ec8160e). Here the same config and
batch go through today's production step (`Trainer.step_fn`) on one device.
"""

import json
import os

import jax
import numpy as np
import pytest

from alignjax import objectives, train
from alignjax.config import load_config_file
from data.record_objective_reference import shrink

DATA = os.path.join(os.path.dirname(__file__), 'data')
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs')
with open(os.path.join(DATA, 'objectives_reference.json')) as f:
    REFERENCE = json.load(f)


def _batch(key):
    arrays = np.load(os.path.join(DATA, 'objectives_reference.npz'))
    batch = {}
    for name in REFERENCE[key]['batch_keys']:
        x = arrays[f'{key}/{name}']
        if x.dtype == np.uint8:  # Images were stored exactly as uint8 (see the recorder).
            x = np.multiply(x, np.float32(2.0 / 255.0), dtype=np.float32) + np.float32(-1.0)
        batch[name] = x
    return batch


@pytest.mark.parametrize('key', sorted(REFERENCE))
def test_loss_and_gradient_norm_match_the_recorded_reference(key):
    ref = REFERENCE[key]
    fname, _, arg = ref['config'].partition(':')
    c = load_config_file(os.path.join(CONFIGS, 'demo.py'), 'siglip' if key == 'siglip' else 'clip')
    c.batch_size = 16
    shrink(c)
    c.evals = {}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in ref['loss_fields'].items()}
    c.loss = objectives.loss_config(ref['loss_name'], **fields)
    t = train.build_trainer(c, devices=jax.devices()[:1])
    _, metrics = t.step_fn(t.init_fn(), t.global_batch(_batch(key)))
    metrics = jax.device_get(metrics)
    np.testing.assert_allclose(float(metrics['train/loss']), ref['loss'], rtol=1e-6)
    np.testing.assert_allclose(float(metrics['train/grad_norm']), ref['grad_norm'], rtol=1e-6)
