"""The architecture and cluster guides cite only what exists (text checks, no training).

For docs/ARCHITECTURE.md, docs/TPU_PODS.md and docs/GPU_CLUSTERS.md:
* every repository path they name (`alignjax/...`, `configs/...`, `docs/...`, `tests/...`,
  `experiments/...`) exists;
* every `alignjax/<file>.py: name` resolves (the module imports, `name` is an attribute,
  dotted names followed), and so does every dotted `alignjax.module.name`; a
  `Class.attr` span of a class cited that way is an attribute of that class;
* every `--flag` given to `python -m alignjax.train` (in a command, or alone in backticks)
  is a flag that CLI defines: parsed from the `flags.DEFINE_*` calls of
  `alignjax/train.py: main` and `alignjax/cli.py` (`--debug`), not by running it.
The path and dotted-name patterns follow tests/test_configs.py,
`test_docstring_cites_only_what_exists`.
"""

import importlib
import inspect
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDES = ('docs/ARCHITECTURE.md', 'docs/TPU_PODS.md', 'docs/GPU_CLUSTERS.md')

_PATH = re.compile(r'(?<![\w/.$~-])((?:alignjax|configs|docs|tests|experiments)/[\w./-]*\w)')
_CITE = re.compile(r'`(alignjax/[\w/]+\.py): ([\w.]+)`')
_DOTTED = re.compile(r'(?<![\w/.$-])(alignjax(?:\.\w+)+)')
_CLASS_ATTR = re.compile(r'`([A-Z]\w*)\.(\w+)`')
_TRAIN_CMD = re.compile(r'alignjax\.train(?![\w.])')
_FLAG = re.compile(r'(?<![\w-])--([A-Za-z][\w-]*)')
_FLAG_SPAN = re.compile(r'`--([A-Za-z][\w-]*)[^`]*`')
_DEFINE = re.compile(r"flags\.DEFINE_\w+\(\s*'(\w+)'")

# Flags of other command lines (gcloud, sbatch, srun) that the guides name on their own.
OTHER_CLI_FLAGS = {
    'command',
    'gpus-per-node',
    'gpus-per-task',
    'gpu-bind',
    'ntasks-per-node',
    'signal',
}


def _read(path: str) -> str:
    with open(os.path.join(REPO, path), encoding='utf-8') as f:
        return f.read()


def _resolve(module_name: str, attrs: list[str]):
    obj = importlib.import_module(module_name)
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


def _resolve_dotted(dotted: str):
    """The longest importable prefix of `dotted`, then its attributes."""
    parts = dotted.split('.')
    for i in range(len(parts), 0, -1):
        try:
            importlib.import_module('.'.join(parts[:i]))
        except ImportError:
            continue
        return _resolve('.'.join(parts[:i]), parts[i:])
    raise ImportError(dotted)


def _module_of(path: str) -> str:
    name = path[: -len('.py')].replace('/', '.')
    return name.removesuffix('.__init__')


def train_flags() -> set[str]:
    """The flags `python -m alignjax.train` defines, read from the source."""
    train = _read('alignjax/train.py')
    names = set(_DEFINE.findall(train[train.index('def main(') :]))
    names |= set(_DEFINE.findall(_read('alignjax/cli.py')))
    return names


def _logical_lines(text: str) -> list[str]:
    """Lines with shell continuations (a trailing backslash) joined."""
    return re.sub(r'\\\n', ' ', text).splitlines()


def train_command_flags(text: str) -> list[str]:
    """Every `--flag` after `alignjax.train` on a line, up to the end of that command."""
    found = []
    for line in _logical_lines(text):
        for match in _TRAIN_CMD.finditer(line):
            tail = re.split(r'["`;&|]', line[match.end() :], maxsplit=1)[0]
            found += _FLAG.findall(tail)
    return found


def test_train_flags_are_parsed():
    assert {
        'config',
        'workdir',
        'dry_run',
        'coordinator_address',
        'num_processes',
        'process_id',
        'debug',
    } <= train_flags()


@pytest.mark.parametrize('guide', GUIDES)
def test_cited_paths_exist(guide):
    text = _read(guide)
    missing = sorted({p for p in _PATH.findall(text) if not os.path.exists(os.path.join(REPO, p))})
    assert not missing, f'{guide} names paths that are not in the repository: {missing}'


@pytest.mark.parametrize('guide', GUIDES)
def test_cited_names_resolve(guide):
    text = _read(guide)
    classes = {}
    for path, name in _CITE.findall(text):
        assert os.path.exists(os.path.join(REPO, path)), f'{guide}: {path} does not exist'
        try:
            obj = _resolve(_module_of(path), name.split('.'))
        except (ImportError, AttributeError) as e:
            raise AssertionError(f'{guide}: `{path}: {name}` does not resolve ({e})') from e
        if inspect.isclass(obj):
            classes[name] = obj
    for dotted in set(_DOTTED.findall(text)):
        try:
            _resolve_dotted(dotted)
        except (ImportError, AttributeError) as e:
            raise AssertionError(f'{guide}: {dotted} does not resolve ({e})') from e
    for cls_name, attr in _CLASS_ATTR.findall(text):
        if cls_name in classes:
            assert hasattr(classes[cls_name], attr), f'{guide}: {cls_name}.{attr} does not exist'


@pytest.mark.parametrize('guide', GUIDES)
def test_train_flags_exist(guide):
    text = _read(guide)
    known = train_flags()
    in_commands = train_command_flags(text)
    alone = [f for f in _FLAG_SPAN.findall(text) if f not in OTHER_CLI_FLAGS]
    unknown = sorted({f for f in in_commands + alone if f not in known})
    assert not unknown, f'{guide} uses flags alignjax.train does not define: {unknown}'


def test_the_checks_catch_inventions():
    """The patterns see what they are meant to see."""
    text = (
        'python -m alignjax.train --config c.py --workdir w --made_up=1 \\\n  --also_made_up\n'
        '`--config.mesh.data=8` and `alignjax/train.py: no_such_name`'
    )
    flags = train_command_flags(text) + _FLAG_SPAN.findall(text)
    assert sorted(set(flags) - train_flags()) == ['also_made_up', 'made_up']
    assert _CITE.findall(text) == [('alignjax/train.py', 'no_such_name')]
    with pytest.raises(AttributeError):
        _resolve('alignjax.train', ['no_such_name'])
    assert _PATH.findall('see docs/NOPE.md and ~/alignjax/x') == ['docs/NOPE.md']
