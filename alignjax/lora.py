"""LoRA: low-rank updates of chosen kernels, trained with the towers frozen, merged for export.

Hu et al. 2022. For each kernel ``W`` that ``config.lora.targets`` selects (regexes over
'/'-joined parameter paths, like ``optim.freeze``), two factors are added to the parameter
tree and the model runs with

    W' = W + (alpha / r) * reshape(A @ B),   A: [d_in, r],  B: [r, d_out],  B = 0 at init,

so a fresh adapter changes nothing (W' = W) and the update has rank <= r. ``A`` starts
uniform in ``+-1/sqrt(d_in)`` (peft's Kaiming-uniform bound). The factors live under the
top-level ``lora`` subtree, mirroring the kernel's path
(``lora/img/encoder/block_0/attn/query/kernel/{a,b}``), so ``optim.freeze=('(?!lora/).*',)``
freezes everything else and checkpoints carry them like any parameter.

Kernel layouts (what ``d_in`` and ``d_out`` are):

* a Dense kernel ``[in, out]``: as is;
* an attention input projection (``attn/query|key|value``, ``[D, H, K]``):
  ``d_in = D``, ``d_out = H*K`` (the ``[D, D]`` matrix the heads split);
* the attention output projection (``attn/out``, ``[H, K, D]``): ``d_in = H*K``, ``d_out = D``;
* a scanned encoder (``.../blocks/...``, ``model.*.scan=True``) has a leading ``[depth]``
  axis: each layer gets its own factors (``A: [depth, d_in, r]``).

:func:`merge` turns a parameter tree with factors into the plain one the model applies
(the trainer's steps and evaluators, `restore.load_run` and `alignjax.export` all call it),
so an export of a LoRA run loads into a plain model. Nothing in the model changes: LoRA is a
view of the parameters, not a layer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from alignjax import optim, validation

__all__ = [
    "DEFAULT_TARGETS",
    "FREEZE_ALL_BUT_LORA",
    "LORA",
    "Factor",
    "abstract_factors",
    "check_config",
    "default_config",
    "enabled",
    "factors",
    "init_factors",
    "merge",
    "scale",
]

#: The top-level parameter subtree holding the factors.
LORA = "lora"
#: Every attention projection and both MLP layers of both towers.
DEFAULT_TARGETS = (
    r"(img|txt)/.*attn/(query|key|value|out)/kernel",
    r"(img|txt)/.*mlp/fc[12]/kernel",
)
#: ``optim.freeze`` that trains the factors only (towers, heads and temperature frozen).
FREEZE_ALL_BUT_LORA = (rf"(?!{LORA}/).*",)


def default_config() -> ml_collections.ConfigDict:
    """``config.lora``: rank 0 is off."""
    return ml_collections.ConfigDict(
        {
            "rank": 0,  # r; 0: no adapters.
            "alpha": 0.0,  # The update is scaled by alpha / r; 0: alpha = r (scale 1).
            "targets": DEFAULT_TARGETS,  # Regexes (full match) of the adapted kernels.
        }
    )


def _get(c: Any, key: str):
    return c[key] if isinstance(c, Mapping) else getattr(c, key)


def enabled(c: Any) -> bool:
    """True when ``config.lora`` asks for adapters (rank > 0)."""
    return c is not None and int(_get(c, "rank")) > 0


def scale(c: Any) -> float:
    """``alpha / r`` (1 when ``alpha`` is 0)."""
    rank, alpha = int(_get(c, "rank")), float(_get(c, "alpha"))
    return (alpha or rank) / rank


def check_config(c: ml_collections.ConfigDict) -> None:
    """Validates ``config.lora`` (called by `alignjax.config.resolve`)."""
    validation.check_fields(c, default_config(), "lora")
    if int(c.rank) < 0:
        raise ValueError(f"config.lora.rank must be >= 0 (0: off), got {c.rank}.")
    if float(c.alpha) < 0:
        raise ValueError(f"config.lora.alpha must be >= 0 (0: alpha = rank), got {c.alpha}.")
    if enabled(c) and not tuple(c.targets):
        raise ValueError("config.lora.targets is empty: name the kernels to adapt (regexes).")
    for pattern in tuple(c.targets):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"Invalid regex {pattern!r} in config.lora.targets: {e}") from e


@dataclasses.dataclass(frozen=True)
class Factor:
    """One adapted kernel: its path, leading per-layer axes and matrix view ``[d_in, d_out]``."""

    path: str
    shape: tuple[int, ...]
    batch: tuple[int, ...]
    d_in: int
    d_out: int


def _layout(path: str, shape: tuple[int, ...]) -> Factor:
    parts = path.split("/")
    n_batch = 1 if "blocks" in parts[:-1] else 0  # nn.scan's leading [depth] axis
    core = shape[n_batch:]
    if parts[-1] != "kernel" or len(core) < 2:
        raise ValueError(
            f"config.lora.targets selects {path} of shape {shape}, which is not a kernel "
            f"matrix: LoRA adapts kernels; narrow the regexes to '.../kernel' paths."
        )
    # The attention output projection [H, K, D] reads two axes; every other kernel one.
    n_in = 2 if len(core) == 3 and parts[-2] == "out" else 1
    d_in, d_out = math.prod(core[:n_in]), math.prod(core[n_in:])
    return Factor(path, tuple(shape), tuple(shape[:n_batch]), d_in, d_out)


def factors(params: Any, c: Any) -> list[Factor]:
    """The kernels of ``params`` (without a ``lora`` subtree) that ``c.targets`` selects.

    Raises ValueError when no parameter matches (the regexes are certainly wrong)."""
    targets = tuple(_get(c, "targets"))
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    found = [
        _layout(path, tuple(x.shape))
        for path, x in sorted(flat.items())
        if not path.startswith(LORA + "/") and optim.match_any(targets, path)
    ]
    if not found:
        kernels = [p for p in sorted(flat) if p.endswith("kernel")][:4]
        raise ValueError(
            f"config.lora.targets {targets} match no parameter of this model; its kernels "
            f"look like {kernels}."
        )
    return found


def _factor_shapes(f: Factor, rank: int) -> dict[str, tuple[int, ...]]:
    return {"a": (*f.batch, f.d_in, rank), "b": (*f.batch, rank, f.d_out)}


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(flat, sep="/")


def abstract_factors(params: Any, c: Any) -> dict[str, Any]:
    """The ``lora`` subtree's ShapeDtypeStructs (float32) for ``params``' selected kernels."""
    rank = int(_get(c, "rank"))
    flat = {}
    for f in factors(params, c):
        for name, shape in _factor_shapes(f, rank).items():
            flat[f"{f.path}/{name}"] = jax.ShapeDtypeStruct(shape, jnp.float32)
    return _nest(flat)


def init_factors(key: jax.Array, params: Any, c: Any) -> dict[str, Any]:
    """A fresh ``lora`` subtree: ``A ~ U(+-1/sqrt(d_in))``, ``B = 0`` (jit-traceable)."""
    rank = int(_get(c, "rank"))
    flat = {}
    for i, f in enumerate(factors(params, c)):
        shapes = _factor_shapes(f, rank)
        bound = 1.0 / math.sqrt(f.d_in)
        k = jax.random.fold_in(key, i)
        flat[f"{f.path}/a"] = jax.random.uniform(k, shapes["a"], jnp.float32, -bound, bound)
        flat[f"{f.path}/b"] = jnp.zeros(shapes["b"], jnp.float32)
    return _nest(flat)


def merge(params: Any, c: Any) -> Any:
    """The plain parameters the model applies: each adapted kernel ``W`` replaced by
    ``W + scale * reshape(A @ B)``, the ``lora`` subtree dropped.

    ``params`` without a ``lora`` subtree (or ``c`` off) come back unchanged. Works on jax
    arrays (differentiable: the gradient reaches ``A`` and ``B``) and on host numpy arrays
    (an export). The update is computed in float32 and cast to the kernel's dtype.
    """
    if not isinstance(params, Mapping) or LORA not in params:
        return params
    if not enabled(c):
        raise ValueError(
            "These parameters hold LoRA factors ('lora/...') but config.lora.rank is 0: "
            "use the config the run was trained with (its config.lora)."
        )
    s = scale(c)
    flat = traverse_util.flatten_dict({k: v for k, v in params.items() if k != LORA}, sep="/")
    ab = traverse_util.flatten_dict(dict(params[LORA]), sep="/")
    for path in sorted({p.rsplit("/", 1)[0] for p in ab}):
        if path not in flat:
            raise ValueError(f"LoRA factors for {path}, which this model does not have.")
        w, a, b = flat[path], ab[f"{path}/a"], ab[f"{path}/b"]
        xp = np if all(isinstance(x, np.ndarray) for x in (w, a, b)) else jnp
        delta = xp.einsum("...ir,...ro->...io", a.astype(np.float32), b.astype(np.float32))
        flat[path] = (w.astype(np.float32) + s * delta.reshape(w.shape)).astype(w.dtype)
    return _nest(flat)
