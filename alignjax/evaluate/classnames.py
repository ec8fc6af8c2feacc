"""Class names and prompt templates for zero-shot classification: package data, not code.

The lists are JSON files in LAION CLIP_benchmark's layout, shipped in `alignjax/evaluate/data/`
and read with `importlib.resources`:

- `en_classnames.json`: dataset -> class names in label order. `imagenet1k`: the 1000
  ImageNet-1k names as cleaned up by OpenAI for CLIP (identical in open_clip's
  `zero_shot_metadata.py` and CLIP_benchmark); `cifar10`, `cifar100`: the label names
  (CIFAR-100's fine labels, underscores as spaces, as in CLIP's prompts.md).
- `en_zeroshot_classification_templates.json`: dataset -> templates with `{c}` where the
  class name goes (CLIP_benchmark's placeholder). `imagenet1k`: CLIP's 80 ImageNet
  templates; `cifar10`/`cifar100`: CLIP's 18 CIFAR templates.

Templates are returned with `str.format`'s `{}` (`'a photo of a {}.'.format(classname)`).
`get_classnames` / `get_templates` resolve a config value: a built-in name ('imagenet' and
'cifar' are aliases), a CLIP_benchmark-format JSON file and its dataset key
(`'/path/en_classnames.json:cars'`, so CLIP_benchmark's other datasets and languages work
without code), a file (text: one entry per line; `.json`: a list of strings), an inline
list as the command line gives it (`'cat,dog,bird'`; entries separated by `|` instead when
they contain commas, as templates may: `'a photo of a {}.|a {}, in a picture.'`), or a list.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
from collections.abc import Sequence

CLASSNAMES_FILE = 'en_classnames.json'
TEMPLATES_FILE = 'en_zeroshot_classification_templates.json'
# Names accepted besides the files' own dataset keys.
_ALIASES = {'imagenet': 'imagenet1k', 'cifar': 'cifar10'}
# Templates that are not any dataset's.
_GENERIC_TEMPLATES = {'simple': ('a photo of a {}.',), 'identity': ('{}',)}


def _to_format(template: str) -> str:
    """CLIP_benchmark's `{c}` placeholder as `str.format`'s `{}`."""
    return template.replace('{c}', '{}')


@functools.cache
def _package_json(name: str) -> dict[str, tuple[str, ...]]:
    text = importlib.resources.files('alignjax.evaluate').joinpath('data', name).read_text('utf-8')
    return {k: tuple(v) for k, v in json.loads(text).items()}


def builtin_classnames() -> dict[str, tuple[str, ...]]:
    """dataset -> class names of the shipped `en_classnames.json`, plus the aliases."""
    names = dict(_package_json(CLASSNAMES_FILE))
    names.update({alias: names[key] for alias, key in _ALIASES.items() if key in names})
    return names


def builtin_templates() -> dict[str, tuple[str, ...]]:
    """dataset -> templates (`{}` placeholder) of the shipped file, aliases, 'simple', 'identity'."""
    templates = {k: tuple(map(_to_format, v)) for k, v in _package_json(TEMPLATES_FILE).items()}
    templates.update({a: templates[k] for a, k in _ALIASES.items() if k in templates})
    templates.update(_GENERIC_TEMPLATES)
    return templates


def _read_keyed_json(path: str, key: str, what: str, templates: bool) -> list[str]:
    """Entry `key` of a CLIP_benchmark-format JSON file (dataset -> list of strings)."""
    try:
        with open(path, encoding='utf-8-sig') as f:
            table = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f'{what} file {path!r} is not valid JSON ({e}).') from e
    if not isinstance(table, dict):
        raise ValueError(
            f"{what} {path + ':' + key!r}: the file holds no dataset -> list mapping (the "
            f"CLIP_benchmark layout); give the file alone when it is a plain list."
        )
    if key not in table:
        raise ValueError(f'{what}: {path!r} has no dataset {key!r}; it has {sorted(table)[:20]}.')
    items = table[key]
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError(f'{what}: {path!r}[{key!r}] must be a non-empty list of strings.')
    return [_to_format(v) if templates else v for v in items]


def _split_keyed(value: str) -> tuple[str, str] | None:
    """`'/x/names.json:cars'` -> ('/x/names.json', 'cars') when that file exists."""
    path, sep, key = value.rpartition(':')
    if sep and key and path.endswith('.json') and os.path.isfile(path):
        return path, key
    return None


def _read_list_file(path: str, what: str) -> list[str]:
    """A JSON list of strings (`.json`), else one entry per non-empty line."""
    with open(path, encoding='utf-8-sig') as f:
        text = f.read()
    if path.endswith('.json'):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f'{what} file {path!r} is not valid JSON ({e}).') from e
        if isinstance(items, dict) and items and all(isinstance(v, list) for v in items.values()):
            raise ValueError(
                f"{what} file {path!r} maps datasets to lists (CLIP_benchmark's layout): name "
                f"one as '{path}:KEY', e.g. '{path}:{next(iter(items), 'cars')}'."
            )
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ValueError(f'{what} file {path!r} must hold a JSON list of strings.')
        items = [v.strip() for v in items]
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    if not items:
        raise ValueError(f'{what} file {path!r} is empty; put one entry per line.')
    return items


def split_inline(value: str) -> list[str]:
    """`'a|b|c'` or `'a,b,c'` -> ['a', 'b', 'c'] ('|' wins: templates may hold commas)."""
    sep = '|' if '|' in value else ','
    return [v.strip() for v in value.split(sep) if v.strip()]


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(('.txt', '.json'))


def _resolve(
    value: str | Sequence[str],
    builtin: dict,
    what: str,
    inline_ok=lambda items: len(items) > 1,
    templates: bool = False,
) -> list[str]:
    """A built-in list's name, a CLIP_benchmark JSON file and key ('file.json:key'), a file
    (text: one entry per line; `.json`: a list), an inline list ('a,b,c', or 'a|b|c' when
    entries contain commas: what the command line gives), or a list of strings."""
    if isinstance(value, str):
        if value in builtin:
            return list(builtin[value])
        keyed = _split_keyed(value)
        if keyed is not None:
            return _read_keyed_json(*keyed, what, templates)
        if os.path.isfile(value):
            return _read_list_file(value, what)
        if _looks_like_path(value):
            raise ValueError(
                f'{what} file {value!r} does not exist; give an existing file (one entry per '
                f'line, or a .json list), a built-in list ({sorted(builtin)}) or an inline '
                f"list 'a,b,c'."
            )
        items = split_inline(value)
        if not inline_ok(items):
            raise ValueError(
                f'{what} {value!r} is neither a built-in list ({sorted(builtin)}), an existing '
                f"file (one entry per line, or a .json list) nor an inline list 'a,b,c' "
                f"('a|b|c' when entries contain commas)."
            )
        return items
    items = [str(v) for v in value]
    if not items:
        raise ValueError(f'{what} is an empty list.')
    return items


def get_classnames(value: str | Sequence[str], what: str = 'classnames') -> list[str]:
    """Class names from a built-in name ('imagenet', 'cifar10', 'cifar100'), a file, an
    inline list ('cat,dog') or a list, in label order. `what` names the value in errors
    (e.g. 'evals.inet.classnames')."""
    return _resolve(value, builtin_classnames(), what)


def get_templates(value: str | Sequence[str], what: str = 'templates') -> list[str]:
    """Templates from a built-in name ('imagenet', 'cifar', 'simple'), a file, an inline list
    ('a {}.|a photo of a {}.') or a list.

    Every template must contain one `{}` where the class name goes.
    """
    # One inline template is a list too: it has the class name's `{}`.
    templates = _resolve(
        value, builtin_templates(), what, lambda items: '{}' in value, templates=True
    )
    bad = [t for t in templates if t.count('{}') != 1]
    if bad:
        hint = (
            " (inline templates are split at ','; separate them with '|' when they contain commas)"
            if isinstance(value, str) and '|' not in value and ',' in value
            else ''
        )
        raise ValueError(
            f'{what}: every template must contain exactly one "{{}}" for the class name; got '
            f'{bad[:3]}{hint}.'
        )
    return templates


def default_templates(classnames_value) -> str:
    """The templates that go with a `classnames` value when none are given.

    A built-in dataset: its own templates. A CLIP_benchmark file and key
    (`'/x/de_classnames.json:pets'`): key `pets` of the language's templates file beside it
    (`/x/de_zeroshot_classification_templates.json`, CLIP_benchmark's naming) if it has one.
    Otherwise `'simple'` ('a photo of a {}.').
    """
    if isinstance(classnames_value, str):
        if classnames_value in builtin_templates():
            return classnames_value
        keyed = _split_keyed(classnames_value)
        if keyed is not None and keyed[0].endswith('_classnames.json'):
            path = keyed[0][: -len('classnames.json')] + 'zeroshot_classification_templates.json'
            if os.path.isfile(path):
                with open(path, encoding='utf-8-sig') as f:
                    if keyed[1] in json.load(f):
                        return f'{path}:{keyed[1]}'
    return 'simple'

