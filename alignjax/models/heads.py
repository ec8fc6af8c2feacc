"""Trainable heads that objectives add to the two-tower model (Wukong, LightCLIP, DreamLIP, ...).

An objective declares its heads (``Objective.heads(model)``: name -> ``Head(make, init_args,
param)``, see :mod:`alignjax.objectives.base`); :func:`with_heads` returns the same model
class extended with them (:class:`TwoTowerWithHeads`). Each head's parameters live at the top
level of the parameter tree under the head's name, next to ``img`` / ``txt``; the towers'
paths are unchanged, so evaluators, converters and freezing regexes see the same model. An
objective calls a head with ``apply(x, method=lambda m, x: m.<name>(x))``; a one-parameter
head is read with ``apply(method=lambda m: m.<name>)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from alignjax.models.two_tower import TwoTower

__all__ = ["TwoTowerWithHeads", "with_heads"]


class TwoTowerWithHeads(TwoTower):
    """:class:`TwoTower` plus named heads (``heads``: tuple of (name, spec dict))."""

    heads: tuple = ()

    def setup(self):
        super().setup()
        for name, spec in self.heads:
            if spec.get('param') is not None:
                init, shape, dtype = spec['param']
                setattr(self, name, self.param(name, init, shape, dtype))
            else:
                setattr(self, name, spec['make']())

    def __call__(self, images, tokens, **kwargs):
        init = self.is_initializing() and images is not None and tokens is not None
        if init:  # Heads read per-token features: compute them once at init.
            kwargs = dict(kwargs, return_tokens=True)
        out = super().__call__(images, tokens, **kwargs)
        if init:  # Create the heads' parameters from example inputs of the right shapes.
            for name, spec in self.heads:
                if spec.get('param') is None:
                    getattr(self, name)(*spec['init_args'](out))
        return out


def with_heads(model: TwoTower, heads: Mapping[str, Mapping[str, Any]]) -> TwoTower:
    """``model`` unchanged when ``heads`` is empty, else the same model plus the heads.

    ``heads``: name -> dict(make=..., init_args=..., param=...) (the fields of
    ``objectives.Head``).
    """
    if not heads:
        return model
    if not isinstance(model, TwoTower):
        raise TypeError(f'Objective heads need a TwoTower model, got {type(model).__name__}.')
    taken = {f.name for f in dataclasses.fields(model)} | {'img', 'txt', 'log_scale', 'logit_bias'}
    clash = sorted(set(heads) & taken)
    if clash:
        raise ValueError(f'Head name(s) {clash} clash with the model\'s own attributes.')
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.init and f.name not in ('parent', 'name')
    }
    if isinstance(model, TwoTowerWithHeads):  # Heads on heads: merge.
        fields['heads'] = tuple(model.heads)
    spec = tuple(fields.pop('heads', ())) + tuple((k, dict(v)) for k, v in heads.items())
    return TwoTowerWithHeads(**fields, heads=_Hashable(spec))


class _Hashable(tuple):
    """A tuple of (name, spec dict) hashed by identity: Flax hashes module fields."""

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

