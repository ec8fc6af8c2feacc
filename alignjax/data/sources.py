"""Data sources by spec string: ``get_source('synthetic:shapes', 'train', image_size=32)``.

Spec grammar: ``scheme:name[?key=value&key=value...]``. Query parameters are passed to the
source constructor as keyword arguments (ints/floats/bools parsed; explicit ``**kwargs``
win). Every source is a grain random-access source (``__len__``, ``__getitem__``) yielding
``{'image': uint8 [H, W, 3], 'caption': str, ...}`` examples.

Schemes register a factory ``fn(name, split, **kwargs) -> source`` in ``SOURCES``
(``register_source``). Built in (grammar and parameters: docs/DATA.md):

- ``synthetic:shapes`` -- the embedded shapes dataset (``synthetic.ShapesDataset``);
- ``csv:PATH`` / ``jsonl:PATH`` -- image paths + captions (``csv_source.TableSource``);
- ``tfds:NAME[/CONFIG][:VERSION]`` -- prepared ArrayRecord TFDS data (``tfds_source``);
- ``wds:PATTERN`` -- WebDataset tar shards, a stream (``wds.WdsSource``);
- ``mix:W1*SPEC1;W2*SPEC2`` -- weighted mixtures (``mixture``);
- ``fewshot:SPEC?label=L&shots=K[&shot_seed=S][&pool=P][&classes=base|new]`` -- K
  examples per class of label L of SPEC (``few_shot.FewShotSource``); the other query
  parameters are SPEC's.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from alignjax.data import csv_source, few_shot, label_prompts, mixture, synthetic, tfds_source, wds

__all__ = ["SOURCES", "get_source", "parse_spec", "register_source"]

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

    ``kwargs`` (e.g. ``image_size``, ``seed`` from the trainer) override the spec's query
    parameters; ``None`` values are dropped (they mean "the source's default").

    Raises:
      ValueError: unknown scheme or name (the message lists the valid ones).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if spec.startswith("mix:"):
        return _mixture(spec[len("mix:") :], split, **kwargs)
    if spec.startswith("fewshot:"):
        return _few_shot(spec[len("fewshot:") :], split, **kwargs)
    if spec.startswith("labels:"):
        return _label_prompts(spec[len("labels:") :], split, **kwargs)
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


def _mixture(body: str, split: str, **kwargs):
    block = kwargs.pop("block", 1000)
    parts = mixture.parse_mixture(body)
    comps = [get_source(spec, split, **kwargs) for _, spec in parts]
    weights = [w for w, _ in parts]
    streams = [getattr(c, "is_stream", False) for c in comps]
    if all(streams):
        return mixture.MixtureStream(comps, weights, block=block)
    if any(streams):
        raise ValueError(
            f"mix:{body} mixes streams (wds:) with random-access sources; mix only one kind."
        )
    return mixture.MixtureSource(comps, weights, block=block)


FEW_SHOT_KEYS = ("label", "shots", "shot_seed", "pool", "classes")


def _few_shot(body: str, split: str, **kwargs):
    inner, _, query = body.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    mine = {k: _parse_value(v) for k, v in pairs if k in FEW_SHOT_KEYS}
    rest = urllib.parse.urlencode([(k, v) for k, v in pairs if k not in FEW_SHOT_KEYS])
    if "label" not in mine or "shots" not in mine:
        raise ValueError(
            f"fewshot:{body} needs label= and shots=, e.g. "
            "'fewshot:synthetic:shapes?label=shape&shots=4'."
        )
    source = get_source(inner + (f"?{rest}" if rest else ""), split, **kwargs)
    return few_shot.FewShotSource(
        source,
        str(mine["label"]),
        int(mine["shots"]),
        seed=int(mine.get("shot_seed", 0)),
        pool=None if mine.get("pool") is None else int(mine["pool"]),
        classes=None if mine.get("classes") is None else str(mine["classes"]),
    )


LABEL_PROMPT_KEYS = ("label", "templates", "names")


def _label_prompts(body: str, split: str, **kwargs):
    inner, _, query = body.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    mine = {k: v for k, v in pairs if k in LABEL_PROMPT_KEYS}
    rest = urllib.parse.urlencode([(k, v) for k, v in pairs if k not in LABEL_PROMPT_KEYS])
    if "label" not in mine:
        raise ValueError(
            f"labels:{body} needs label=, e.g. 'labels:synthetic:shapes?label=shape'."
        )
    source = get_source(inner + (f"?{rest}" if rest else ""), split, **kwargs)
    templates = mine.get("templates")
    names = mine.get("names")
    return label_prompts.LabelPromptSource(
        source,
        mine["label"],
        templates=templates.split("|") if templates else label_prompts.DEFAULT_TEMPLATES,
        names=[n.strip() for n in names.split(",")] if names else None,
    )


@register_source("csv")
def _csv(name: str, split: str, **kwargs):
    return csv_source.TableSource(name, split, fmt="csv", **kwargs)


@register_source("jsonl")
def _jsonl(name: str, split: str, **kwargs):
    return csv_source.TableSource(name, split, fmt="jsonl", **kwargs)


@register_source("tfds")
def _tfds(name: str, split: str, **kwargs):
    return tfds_source.TfdsSource(name, split, **kwargs)


@register_source("wds")
def _wds(name: str, split: str, **kwargs):
    return wds.WdsSource(name, split, **kwargs)
