"""Config validation: every trainer field exists; misspellings name the valid field."""

import os

import ml_collections
import pytest

from alignjax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REQUIRED = (
    'total_steps',
    'batch_size',
    'seed',
    'log_every_steps',
    'eval_every_steps',
    'checkpoint_every_steps',
    'model',
    'loss',
    'optim',
    'mesh',
)


def test_base_config_has_required_fields():
    c = config_lib.base_config()
    for name in REQUIRED:
        assert name in c
    assert 'train' in c.data


def test_unknown_top_level_field_suggests_closest():
    c = config_lib.base_config()
    c.totl_steps = 3
    with pytest.raises(ValueError, match=r"config\.totl_steps.*did you mean 'total_steps'"):
        config_lib.resolve(c)


def test_unknown_nested_field_suggests_closest():
    c = config_lib.base_config()
    c.optim.learning_rate = 3e-4
    with pytest.raises(ValueError, match=r"config\.optim\.learning_rate"):
        config_lib.resolve(c)


def test_batch_not_divisible_by_micro_batches():
    c = config_lib.base_config()
    c.batch_size, c.grad_accum_steps = 10, 4
    with pytest.raises(ValueError, match='batch_size=10.*grad_accum_steps=4'):
        config_lib.resolve(c)


def test_resolved_config_is_locked():
    c = config_lib.resolve(config_lib.base_config())
    with pytest.raises(AttributeError):
        c.new_field = 1


def test_load_config_file_builds_on_another_config(tmp_path):
    demo = config_lib.load_config_file(os.path.join(REPO, 'configs', 'demo.py'))
    siglip = config_lib.load_config_file(os.path.join(REPO, 'configs', 'demo.py'), 'siglip')
    clip = config_lib.load_config_file(os.path.join(REPO, 'configs', 'demo.py'), 'clip')
    assert (demo.loss.name, siglip.loss.name, clip.loss.name) == ('dreamlip', 'siglip', 'clip')
    with pytest.raises(FileNotFoundError, match='No config file'):
        config_lib.load_config_file(str(tmp_path / 'missing.py'))


def test_a_config_saved_before_newer_fields_resolves_with_their_defaults():
    """A run's config.json from an older alignjax lacks fields added since (`log`,
    `ema.evaluate`): they take their defaults, the saved values are kept."""
    saved = config_lib.base_config().to_dict()
    del saved['log']
    del saved['ema']['evaluate']
    saved['ema']['decay'] = 0.5
    resolved = config_lib.resolve(ml_collections.ConfigDict(saved))
    assert resolved.log.wandb.project == '' and resolved.ema.evaluate is True
    assert resolved.ema.decay == 0.5
