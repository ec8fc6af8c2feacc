"""Every config in configs/ loads, validates and trains 2 steps on CPU with tiny overrides.

The overrides shrink sizes only; each config's conventions (pooling, text convention,
loss and its implementation, freezing, clamping) stay as written.
"""

import importlib.util
import os

import pytest

from alignjax import train

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
CONFIGS = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith('.py'))


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__ and 'python -m alignjax.train' in module.__doc__, (
        f'configs/{name}.py must give its launch command in the docstring'
    )
    return module.get_config(arg) if arg else module.get_config()


def shrink(c):
    c.total_steps, c.batch_size = 2, 16
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 1, 0, 2
    c.grad_accum_steps = 1
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    # The embedded data, with the config's options (e.g. ?hard_negatives=true) kept.
    options = c.data.train.partition('?')[2] if c.data.train.startswith('synthetic:') else ''
    c.data.train = 'synthetic:shapes' + ('?' + options if options else '')
    c.data.image_size, c.data.num_workers = 16, 0
    c.tokenizer.vocab_size, c.tokenizer.context_length = 256, 8
    c.tokenizer.name = 'word_hash'
    c.optim.warmup_steps = 1
    for tower in (c.model.image, c.model.text):
        tower.variant = None
        tower.width, tower.depth, tower.mlp_dim, tower.num_heads = 32, 1, 64, 2
    c.model.image.patch_size = 4
    c.model.text.vocab_size, c.model.text.context_length = 256, 8
    c.model.embed_dim = 16 if c.model.image.head else 32
    c.model.dtype = 'float32'
    for ev in c.evals.values():
        ev.num_examples, ev.batch_size = 32, 16
    return c


def test_config_list():
    assert {'demo', 'clip_vit_b16', 'siglip_vit_b16', 'lit_vit_b16'} <= set(CONFIGS)


@pytest.mark.parametrize(
    'name, arg', [(n, None) for n in CONFIGS] + [('demo', 'siglip'), ('demo', 'clip')]
)
def test_config_trains_two_steps(tmp_path, name, arg):
    c = shrink(load(name, arg))
    summary = train.train_and_evaluate(c, str(tmp_path / name))
    assert summary['step'] == 2
    if c.evals:
        assert any(k.startswith('zeroshot/') for k in summary)


def test_demo_rejects_unknown_argument():
    with pytest.raises(ValueError, match='siglip'):
        load('demo', 'sigmoid')


def test_demo_tokenizer_has_no_collisions_on_the_dataset_vocabulary():
    """A hashed-word collision silently ties two words (at vocab 1024 'hoops' == 'pair',
    which tied the ring class to every two-object image and sank shape zero-shot)."""
    from alignjax.data import ShapesDataset, build_tokenizer

    c = load('demo')
    tok = build_tokenizer(c.tokenizer)
    special = {0, tok.bos_id, tok.eos_id}
    ids = {}
    for word in ShapesDataset.vocabulary():
        body = tuple(int(x) for x in tok([word])[0] if int(x) not in special)
        assert body not in ids, f'{word!r} and {ids[body]!r} share token ids {body}'
        ids[body] = word
