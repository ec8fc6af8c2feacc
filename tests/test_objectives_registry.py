"""The objectives registry: one source for method names, config.loss fields and the docs."""

import os

import ml_collections
import pytest

from alignjax import config as config_lib
from alignjax import objectives
from alignjax.objectives import __main__ as objectives_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT_IN = {'clip', 'siglip', 'filip', 'wukong', 'pyramid', 'lightclip', 'dreamlip', 'uniter',
            'clim', 'negclip'}


def test_every_built_in_method_is_registered_from_its_own_file():
    assert BUILT_IN <= set(objectives.names())
    for name in BUILT_IN:
        cls = objectives.get(name)
        assert cls.__module__ == f'alignjax.objectives.{name}', name
        assert cls.loss is not objectives.Objective.loss, name


def test_config_loss_holds_the_chosen_methods_fields_only():
    c = config_lib.resolve(config_lib.base_config())
    assert dict(c.loss) == {'name': 'clip'}
    c = config_lib.base_config()
    c.loss = objectives.loss_config('filip', chunk_size=4)
    resolved = config_lib.resolve(c)
    assert set(resolved.loss) == {'name', *objectives.get('filip').defaults}
    assert resolved.loss.chunk_size == 4
    # Changing only the name (as on the command line) selects that method's defaults.
    c = config_lib.base_config()
    c.loss.name = 'negclip'
    assert dict(config_lib.resolve(c).loss) == {'name': 'negclip', 'neg_key': 'neg_caption'}


def test_loss_config_errors_name_the_closest_valid_field_or_value():
    with pytest.raises(ValueError, match=r"config.loss.num_sub_caption' \(did you mean 'num_sub_captions'"):
        objectives.loss_config('dreamlip', num_sub_caption=2)
    c = config_lib.base_config()
    c.loss = ml_collections.ConfigDict({'name': 'dreamlip', 'group_norm': 'minmx'})
    with pytest.raises(ValueError, match=r"group_norm='minmx' \(did you mean 'minmax'\?\)"):
        config_lib.resolve(c)


def test_an_old_workdir_config_with_nested_method_settings_still_resolves():
    old = {'name': 'filip', 'impl': 'dense', 'batch_axes': ['data', 'fsdp'],
           'needs_tokens': False, 'filip': {'chunk_size': 8}, 'dreamlip': {'num_sub_captions': 3}}
    c = config_lib.base_config()
    c.loss = ml_collections.ConfigDict(old)
    loss = config_lib.resolve(c).loss
    assert loss.name == 'filip' and loss.chunk_size == 8 and 'impl' not in loss


def test_register_refuses_malformed_methods():
    class NoName(objectives.Objective):
        pass

    with pytest.raises(ValueError, match='non-empty identifier'):
        objectives.register(NoName)

    class BadChoice(objectives.Objective):
        name = 'bad_choice_method'
        defaults = {'mode': 'c'}
        choices = {'mode': ('a', 'b')}

    with pytest.raises(ValueError, match=r"BadChoice.defaults.mode='c'"):
        objectives.register(BadChoice)

    class Clash(objectives.Objective):
        name = 'clip'

    with pytest.raises(ValueError, match="'clip' is already registered"):
        objectives.register(Clash)


def test_imports_accepts_a_file_path(tmp_path):
    path = tmp_path / 'my_objective.py'
    path.write_text(
        'from alignjax import objectives\n'
        'from alignjax.losses import clip_loss\n\n\n'
        '@objectives.register\n'
        'class Mine(objectives.Objective):\n'
        "    name = 'mine_from_a_file'\n"
        "    defaults = {'w': 1.0}\n\n"
        '    def loss(self, out, batch, ctx):\n'
        '        loss = self.cfg["w"] * clip_loss(out.zimg, out.ztxt, out.logit_scale)\n'
        '        return loss, self.metrics(loss, out)\n'
    )
    c = config_lib.base_config()
    c.imports = (str(path),)
    c.loss = ml_collections.ConfigDict({'name': 'mine_from_a_file'})
    assert dict(config_lib.resolve(c).loss) == {'name': 'mine_from_a_file', 'w': 1.0}
    c.imports = (str(tmp_path / 'missing.py'),)
    with pytest.raises(ValueError, match='config.imports: no file'):
        config_lib.resolve(c)
    c.imports = ('no_such_module_xyz',)
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        config_lib.resolve(c)


def test_docs_method_table_is_generated_from_the_registry():
    with open(os.path.join(ROOT, 'docs', 'OBJECTIVES.md')) as f:
        doc = f.read()
    table = objectives.base.methods_table()
    assert objectives_cli.replace_table(doc, table) == doc, (
        'docs/OBJECTIVES.md is stale: python -m alignjax.objectives --write docs/OBJECTIVES.md'
    )
    for name in BUILT_IN:
        assert f'| `{name}` |' in table


def test_train_py_names_no_method():
    with open(os.path.join(ROOT, 'alignjax', 'train.py')) as f:
        source = f.read()
    for name in objectives.names():
        assert f"'{name}'" not in source and f'"{name}"' not in source, name
    assert 'getattr(' not in source
