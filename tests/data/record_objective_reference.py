"""Records each method's loss and gradient norm on one fixed batch (tests/data/objectives_reference.*).

  python tests/data/record_objective_reference.py

The committed reference was recorded before the objectives moved into the registry
(this script at commit ec8160e, where the loss configs had the old nested layout):
`test_objective_reference.py` checks that the moved code gives the same values. Each method
runs its config (data, loss, optimizer; the model shrunk by `shrink` so the test compiles
fast), with the batch cut to 16 and one CPU device, through the production train step
(`Trainer.step_fn`); the metrics of that step are the loss and the global gradient norm
before clipping. The batch is stored too (images
as uint8, exactly invertible), so a later change of a config's data does not move the
reference.
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from alignjax import config as config_lib  # noqa: E402
from alignjax import train  # noqa: E402

BATCH = 16
# method -> (config file, arg)
METHODS = {
    'clip': ('demo.py', 'clip'),
    'siglip': ('demo.py', 'siglip'),
    'dreamlip_demo': ('demo.py', None),
    'dreamlip': ('dreamlip.py', None),
    'filip': ('filip.py', None),
    'wukong': ('wukong.py', None),
    'pyramid': ('pyramid.py', None),
    'lightclip': ('lightclip.py', None),
    'uniter': ('uniter.py', None),
    'clim': ('clim.py', None),
    'negclip': ('negclip.py', None),
}


def shrink(c):
    """The methods' configs with a smaller model, so that the test compiles fast."""
    m = c.model
    m.embed_dim = 16
    m.image.width, m.image.depth, m.image.mlp_dim, m.image.num_heads = 32, 1, 64, 2
    m.image.patch_size = 12  # 48 px -> 4 x 4 = 16 patch tokens.
    m.text.width, m.text.depth, m.text.mlp_dim, m.text.num_heads = 32, 1, 64, 2


def to_uint8(x):
    u = np.round((np.asarray(x, np.float32) + 1.0) * 127.5).astype(np.uint8)
    back = np.multiply(u, np.float32(2.0 / 255.0), dtype=np.float32) + np.float32(-1.0)
    assert np.array_equal(back, np.asarray(x, np.float32)), 'image not invertible'
    return u


def main():
    out, arrays = {}, {}
    for key, (fname, arg) in METHODS.items():
        c = config_lib.load_config_file(os.path.join(ROOT, 'configs', fname), arg)
        c.batch_size = BATCH
        shrink(c)
        t = train.build_trainer(c, devices=jax.devices()[:1])
        batch = next(t.train_iterator())
        state = t.init_fn()
        _, metrics = t.step_fn(state, t.global_batch(batch))
        metrics = jax.device_get(metrics)
        name = t.config.loss.name
        fields = {k: v for k, v in t.config.loss.items() if k != 'name'}
        out[key] = {
            'config': fname + (f':{arg}' if arg else ''),
            'loss_name': name,
            'loss_fields': {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
            'loss': float(metrics['train/loss']),
            'grad_norm': float(metrics['train/grad_norm']),
            'batch_keys': sorted(batch),
        }
        for k, v in batch.items():
            v = np.asarray(v)
            arrays[f'{key}/{k}'] = to_uint8(v) if v.dtype == np.float32 else v
        print(key, out[key]['loss'], out[key]['grad_norm'], sorted(batch), flush=True)
    with open(os.path.join(HERE, 'objectives_reference.json'), 'w') as f:
        json.dump(out, f, indent=1, sort_keys=True)
    np.savez_compressed(os.path.join(HERE, 'objectives_reference.npz'), **arrays)


if __name__ == '__main__':
    main()
