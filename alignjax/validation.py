"""Config validation helpers, shared by every part of a config (a leaf: imports nothing).

One wording for every config error: an unknown field names the closest valid one and lists
them all; an invalid value lists the valid choices.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_choice", "check_fields", "closest"]


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
