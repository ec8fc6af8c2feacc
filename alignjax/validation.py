"""Config validation helpers, shared by every part of a config (a leaf: imports nothing).

One wording for every config error: an unknown field names the closest valid one and lists
them all; an invalid value lists the valid choices. `parse_as` reads a value typed on the
command line as the type of the value it replaces (or of a field's default).
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_choice", "check_fields", "closest", "parse_as"]


def closest(name: str, valid: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or ''."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ''


def check_fields(
    given: Mapping[str, Any],
    valid: Mapping[str, Any] | Iterable[str],
    where: str,
    owner: str = '',
) -> None:
    """Raises ValueError if `given` has a key that `valid` lacks, naming the closest.

    `owner` says whose fields these are when `where` alone does not (e.g. "loss 'filip'").
    """
    valid_names = sorted(valid.keys() if isinstance(valid, Mapping) else valid)
    for key in given.keys():
        if key not in valid_names:
            listed = ', '.join(valid_names) if valid_names else '(none)'
            of = owner or f"'{where}'"
            raise ValueError(
                f"Unknown config field '{where}.{key}'{closest(key, valid_names)}. "
                f"Valid fields of {of}: {listed}."
            )


def check_choice(value: Any, valid: Iterable[Any], field: str) -> None:
    """Raises ValueError if `value` is not one of `valid`, listing them."""
    valid = list(valid)
    if value not in valid:
        hint = closest(str(value), [str(v) for v in valid])
        raise ValueError(
            f"Invalid {field}={value!r}{hint}. Valid choices: {', '.join(repr(v) for v in valid)}."
        )


_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def _literal(text: str) -> Any:
    """A Python literal if `text` is one, else `text`."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_as(text: str, like: Any, where: str) -> Any:
    """`text` (typed on a command line) as the type of `like`; ValueError naming `where`.

    bool: true/false/yes/no/1/0/on/off; int; float; str as is; tuple or list: a literal
    `(1, 2)` / `[1, 2]` or comma-separated `a,b` (each item as the type of `like[0]`, or a
    literal when `like` is empty); the literal `None` is None for any type. Anything else
    (`like` None, a dict): a Python literal where `text` parses as one, else the string.
    """
    text = text.strip()

    def bad(what: str) -> ValueError:
        return ValueError(f"{where}={text!r}: expected {what} (like {like!r}).")

    if text == "None":
        return None
    if isinstance(like, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise bad("true or false")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            raise bad("an integer") from None
    if isinstance(like, float):
        try:
            return float(text)
        except ValueError:
            raise bad("a number") from None
    if isinstance(like, str):
        return text
    if isinstance(like, (tuple, list)):
        if text[:1] in ("(", "["):
            value = _literal(text)
            if not isinstance(value, (tuple, list)):
                raise bad("a tuple such as (1, 2) or a,b")
        else:
            items = [item.strip() for item in text.split(",") if item.strip()]
            value = [parse_as(item, like[0], where) if like else _literal(item) for item in items]
        return type(like)(value)
    return _literal(text)
