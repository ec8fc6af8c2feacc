"""Data sources by spec string: ``get_source('synthetic:shapes', 'train', image_size=32)``.

Spec grammar: ``scheme:name[?key=value&key=value...]``. Query parameters are passed to the
source constructor as keyword arguments (ints/floats/bools parsed; explicit ``**kwargs``
win). Every source is a grain random-access source (``__len__``, ``__getitem__``) yielding
``{'image': uint8 [H, W, 3], 'caption': str, ...}`` examples.

Schemes register a factory ``fn(name, split, **kwargs) -> source`` in ``SOURCES``
(``register_source``); ``tfds:``, ``wds:`` and ``csv:`` are planned.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Callable

from alignjax.data import synthetic

__all__ = ["get_source", "register_source", "parse_spec", "SOURCES"]

SOURCES: dict[str, Callable[..., Any]] = {}


def register_source(scheme: str):
    """Decorator: registers ``fn(name, split, **kwargs)`` for specs ``scheme:name``."""

    def wrap(fn):
        if scheme in SOURCES:
            raise ValueError(f"Source scheme {scheme!r} is already registered.")
        SOURCES[scheme] = fn
        return fn

    return wrap


def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``'scheme:name?k=v'`` -> ``(scheme, name, {k: v})``."""
    if ":" not in spec:
        raise ValueError(
            f"Data source spec {spec!r} has no scheme; expected 'scheme:name[?k=v&...]' with "
            f"scheme in {sorted(SOURCES)} (e.g. 'synthetic:shapes')."
        )
    scheme, rest = spec.split(":", 1)
    name, _, query = rest.partition("?")
    params = {k: _parse_value(v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    return scheme, name, params


def get_source(spec: str, split: str, **kwargs):
    """Builds the source named by ``spec`` for ``split``.

    Raises:
      ValueError: unknown scheme or name (the message lists the valid ones).
    """
    scheme, name, params = parse_spec(spec)
    if scheme not in SOURCES:
        raise ValueError(
            f"Unknown data source scheme {scheme!r} in {spec!r}; valid schemes: {sorted(SOURCES)}."
        )
    params.update(kwargs)
    return SOURCES[scheme](name, split, **params)


_SYNTHETIC = {"shapes": synthetic.ShapesDataset}


@register_source("synthetic")
def _synthetic(name: str, split: str, **kwargs):
    if name not in _SYNTHETIC:
        raise ValueError(f"Unknown synthetic dataset {name!r}; valid: {sorted(_SYNTHETIC)}.")
    return _SYNTHETIC[name](split=split, **kwargs)
