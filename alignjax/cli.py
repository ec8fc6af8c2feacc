"""What every `python -m alignjax.<tool>` shares: config overrides and one-line errors.

**Config overrides.** `--config FILE[:ARG]` loads `get_config(ARG)` of a config file;
`--config.a.b=VALUE` (or `--config.a.b VALUE`) then sets one field. The value is parsed as
the type of the field it replaces (bool: true/false/1/0/yes/no; int; float; str; a tuple
or list: a Python literal `(1, 2)` or comma-separated `a,b`; the literal `None` clears a
field). A field that does not exist is an error naming the closest valid one, or listing
them all, before anything runs. Two parts are open maps instead, checked when the config
is resolved: `evals` (`--config.evals.NAME.type=zeroshot` adds an evaluator NAME, and
`--config.evals.NAME.classnames=...` sets any field its type has) and `loss` (the chosen
method's fields; `--config.loss.name=filip --config.loss.chunk_size=64`). Values given
for new fields are Python literals where they parse as one, else strings.

ml_collections' `config_flags` does the same for existing fields, but cannot add an
evaluator, and a typo surfaces as its 57-line traceback; parsing here keeps one wording for
every tool, applies the same overrides to a config stored in a run (`evaluate --workdir`)
and lets a tool load its config only when it needs it.

**Errors.** `run(main, argv)` runs a tool's absl `main` through `alignjax.errors.guard`: a
user error (ValueError, a file that is missing or not writable, a full disk, a missing
optional dependency, Ctrl-C) becomes one `error: ...` line, `--debug` shows the traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import app, flags

from alignjax import config as config_lib
from alignjax import errors
from alignjax.validation import closest, parse_as

ConfigDict = ml_collections.ConfigDict

class UsageError(ValueError):
    """A command line that cannot work (printed as one `error:` line)."""


# --------------------------------------------------------------------------------------
# Config overrides.


@dataclasses.dataclass(frozen=True)
class Override:
    """One `--config.a.b=value`: the field path and the value as typed."""

    path: tuple[str, ...]
    raw: str

    @property
    def flag(self) -> str:
        return f'--config.{".".join(self.path)}'


def split_overrides(argv: Sequence[str], name: str = 'config') -> tuple[list[str], list[Override]]:
    """(argv without the `--<name>.*` overrides, the overrides in order)."""
    prefix = f'--{name}.'
    rest: list[str] = []
    overrides: list[Override] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(prefix):
            key, eq, value = arg[len(prefix) :].partition('=')
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f'{arg} has no value: write {arg}=VALUE.')
                i += 1
                value = args[i]
            path = tuple(key.split('.'))
            if not all(path):
                raise UsageError(f'{arg}: empty field name in {key!r}.')
            overrides.append(Override(path, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def load_config(spec: str) -> ConfigDict:
    """The config of `FILE[:ARG]`: `get_config(ARG)` of a .py file, or a run's config.json.

    One-line errors for a missing file and an unreadable JSON file.
    """
    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
        hint = ' (it is a directory)' if os.path.isdir(path) else ''
        raise UsageError(
            f'--config {spec}: no config file at {os.path.abspath(path)}{hint}; give a '
            f'configs/*.py file (e.g. --config configs/demo.py) or a run\'s config.json.'
        )
    if path.endswith('.json'):
        try:
            with open(path) as f:
                return ConfigDict(json.load(f))
        except ValueError as e:
            raise UsageError(f'--config {path} is not valid JSON ({e}).') from e
    return config_lib.load_config_file(path, arg or None)


def parse_value(raw: str, current: Any, flag: str) -> Any:
    """`raw` as the type of `current`, the value it replaces (`validation.parse_as`); a
    section (a dict) takes a dict literal only."""
    if isinstance(current, (ConfigDict, dict)):
        value = parse_as(raw, None, flag)
        if not isinstance(value, dict):
            fields = ', '.join(sorted(current)) or '(none)'
            raise UsageError(
                f'{flag} is a section, not a value: set one of its fields, e.g. '
                f'{flag}.FIELD=VALUE (fields: {fields}).'
            )
        return ConfigDict(value)
    try:
        return parse_as(raw, current, flag)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _opens_new(path: tuple[str, ...], depth: int) -> bool:
    """May `path[depth]` name a field the config does not have yet?

    `evals.NAME` (a new evaluator) and its fields, and `loss.FIELD` (the chosen method's
    fields, which the config holds only once resolved): both are checked by `resolve`.
    """
    if path[0] == 'evals':
        return depth in (1, 2) and len(path) == 3
    return path[0] == 'loss' and depth == 1 and len(path) == 2


def apply_overrides(config: ConfigDict, overrides: Sequence[Override]) -> ConfigDict:
    """Sets each override on (an unlocked copy of) `config`; errors name the flag."""
    config = ConfigDict(config.to_dict())
    for o in overrides:
        node, where = config, 'config'
        for depth, key in enumerate(o.path[:-1]):
            if key not in node:
                if not _opens_new(o.path, depth):
                    raise _unknown(o, where, key, node)
                node[key] = ConfigDict()
            elif not isinstance(node[key], (ConfigDict, dict)):
                raise UsageError(
                    f'{o.flag}: {where}.{key} is a value ({node[key]!r}), not a section.'
                )
            node, where = node[key], f'{where}.{key}'
        leaf = o.path[-1]
        if leaf in node:
            node[leaf] = parse_value(o.raw, node[leaf], o.flag)
        elif _opens_new(o.path, len(o.path) - 1):
            node[leaf] = parse_as(o.raw, None, o.flag)
        else:
            raise _unknown(o, where, leaf, node)
    return config


def _unknown(o: Override, where: str, key: str, node: ConfigDict) -> UsageError:
    if o.path[0] == 'evals' and len(o.path) == 2:
        return UsageError(
            f'{o.flag}: set one field of an evaluator, --config.evals.NAME.FIELD=VALUE (e.g. '
            f'--config.evals.inet.type=zeroshot).'
        )
    valid = sorted(node.keys())
    hint = closest(key, valid)
    listed = '' if hint else f' Valid fields of {where}: {", ".join(valid) or "(none)"}.'
    return UsageError(f'{o.flag}: {where} has no field {key!r}{hint}.{listed}')


def run(main: Callable[[list[str], list[Override]], Any], argv: Sequence[str] | None = None):
    """Parses absl flags (minus `--config.*` overrides and `--debug`) and calls
    `main(args, overrides)`, printing user errors as one line (see the module docstring).
    """
    argv = list(sys.argv if argv is None else argv)
    debug = errors.debug_requested(argv)
    argv = [a for a in argv if a != '--debug']
    if 'debug' not in flags.FLAGS:
        flags.DEFINE_bool('debug', False, f'Show tracebacks of errors (or set {errors.DEBUG_ENV}=1).')
    try:
        argv, overrides = split_overrides(argv)
    except UsageError as e:
        errors.fail(str(e))

    def parse(args):
        try:
            return flags.FLAGS(args)
        except flags.Error as e:
            errors.fail(f'{e} (see --help).')

    app.run(lambda args: errors.guard(lambda: main(args, overrides), debug), argv=argv, flags_parser=parse)
