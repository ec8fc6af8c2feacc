"""Starting a run from another run's parameters (`config.init_from`).

`init_params_from(config.init_from, state, abstract_params)` replaces parameters of a
freshly initialised train state by those of an alignjax checkpoint (a workdir, its
`checkpoints` directory or one step directory) or of an export file (`alignjax.export`),
under a mapping of '/'-joined path prefixes ('dst=src'). Orbax sources are read straight
into the target sharding, only the needed arrays. Syntax and examples: docs/CHECKPOINTS.md.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from alignjax import checkpoint, export, lora, optim


class ParamsSource:
    """The parameters of another run, read lazily: an alignjax checkpoint or an export.

    `path`: a workdir, its `checkpoints` directory, one step directory, an export file
    (`.safetensors` / `.msgpack`) or a directory holding one. `step` (Orbax only): -1 for
    the newest committed step. `shapes` maps '/'-joined parameter paths to (shape, dtype);
    `model_config` is the source's model config when known.
    """

    def __init__(self, path: str, step: int = -1):
        self.path = path
        self.model_config: dict[str, Any] | None = None
        if not os.path.exists(path):
            raise FileNotFoundError(f'init_from.path {path} does not exist.')
        if export.is_export(path):
            self._flat, self.model_config = export.load_flat(path)
            self.shapes = {k: (tuple(v.shape), v.dtype) for k, v in self._flat.items()}
            self.description = f'export {path}'
            return
        # The newest good step (bad ones skipped with a warning), or exactly `step`.
        directory, fixed = checkpoint.find_checkpoint_dir(path, step, 'init_from.step')
        if fixed is None:
            raise FileNotFoundError(
                f'init_from.path {path}: no committed checkpoint in {directory} and no '
                f'export file ({", ".join(export.FILE_NAMES)}).'
            )
        self.step = fixed
        self._saved = checkpoint.SavedParams(directory, fixed)
        self.shapes = self._saved.shapes
        self.description = self._saved.description
        self.model_config = self._saved.model_config

    def read(self, targets: dict[str, tuple[str, jax.ShapeDtypeStruct]]) -> dict[str, jax.Array]:
        """{dst: (src, abstract dst with sharding)} -> {dst: array with that sharding/dtype}."""
        if hasattr(self, '_flat'):
            out: dict[str, jax.Array] = {}
            for dst, (src, abstract) in targets.items():
                host = np.asarray(self._flat[src], abstract.dtype)
                out[dst] = jax.make_array_from_callback(
                    host.shape, abstract.sharding, lambda idx, h=host: h[idx]
                )
            return out
        return self._saved.read(targets)

    def read_host(self) -> dict[str, np.ndarray]:
        """Every parameter as host numpy arrays (for exporting)."""
        if hasattr(self, '_flat'):
            return dict(self._flat)
        return self._saved.read_host()


def parse_mapping(mapping: Any) -> list[tuple[str, str]]:
    """('img=img', 'txt=text') -> [('img', 'img'), ('txt', 'text')]; () -> [('', '')]."""
    rules = []
    for entry in tuple(mapping or ()) or ('=',):
        dst, sep, src = str(entry).partition('=')
        src = src if sep else dst
        rules.append((dst.strip().strip('/'), src.strip().strip('/')))
    return rules


def _under(path: str, prefix: str) -> str | None:
    """The rest of `path` below `prefix` ('' for the prefix itself), or None."""
    if not prefix:
        return path
    if path == prefix:
        return ''
    if path.startswith(prefix + '/'):
        return path[len(prefix) + 1 :]
    return None


def _join(prefix: str, rest: str) -> str:
    return '/'.join(p for p in (prefix, rest) if p)


def match_params(
    dst_shapes: dict[str, tuple[int, ...]],
    src_shapes: dict[str, tuple[int, ...]],
    mapping: Any,
    where: str = 'init_from',
) -> dict[str, str]:
    """{dst path: src path} under `mapping`; raises ValueError on shape mismatches.

    Later rules win for a parameter matched by several. A rule that matches no parameter of
    the config or of the source is an error (it is certainly a typo).
    """
    pairs: dict[str, str] = {}
    for dst_prefix, src_prefix in parse_mapping(mapping):
        hits = 0
        for dst in dst_shapes:
            rest = _under(dst, dst_prefix)
            if rest is None:
                continue
            src = _join(src_prefix, rest)
            if src in src_shapes:
                pairs[dst] = src
                hits += 1
        if not hits:
            raise ValueError(
                f"{where}.mapping entry '{dst_prefix}={src_prefix}' loads nothing: no "
                f"parameter '{dst_prefix or '*'}/...' of this config has a counterpart "
                f"'{src_prefix or '*'}/...' in the source. Source parameters look like "
                f'{sorted(src_shapes)[:4]}; this config\'s like {sorted(dst_shapes)[:4]}.'
            )
    bad = [(d, s) for d, s in pairs.items() if tuple(dst_shapes[d]) != tuple(src_shapes[s])]
    if bad:
        shown = '; '.join(
            f'{d} {tuple(dst_shapes[d])} <- {s} {tuple(src_shapes[s])}' for d, s in bad[:6]
        )
        raise ValueError(
            f'{where}: shape mismatch for {len(bad)} parameter(s): {shown}. The source was '
            f'built with another model config: match config.model to it, or restrict '
            f'{where}.mapping to the subtrees that agree (e.g. ("img=img",)).'
        )
    return pairs


def _summarize(paths: list[str], sizes: dict[str, int]) -> str:
    """'img (12 tensors, 0.10M values), txt/head/kernel (1 tensor, ...)' grouped by tower."""
    groups: dict[str, list[str]] = {}
    for p in paths:
        groups.setdefault(p.split('/')[0], []).append(p)
    parts = []
    for g, ps in sorted(groups.items()):
        n = sum(sizes[p] for p in ps)
        label = ps[0] if len(ps) == 1 else g
        parts.append(f'{label} ({len(ps)} tensor{"s" * (len(ps) > 1)}, {n / 1e6:.3g}M values)')
    return ', '.join(parts) or 'nothing'


def load_params(
    init_from: Any, params: Any, abstract_params: Any, freeze: Any = ()
) -> tuple[Any, dict[str, Any]]:
    """`params` with the leaves `init_from` names replaced by those of another run.

    `init_from`: a mapping with `path`, `mapping` and `step` (as `config.init_from`).
    `abstract_params`: the target ShapeDtypeStructs with shardings; loaded arrays arrive in
    those shardings. `freeze` only labels the report. Returns (params, report) with report
    {'source', 'loaded': {dst: src}, 'fresh': [...], 'frozen': [...], 'unused_source': [...],
    'text': a few lines for people}.
    """
    source = ParamsSource(init_from['path'], init_from.get('step', -1))
    dst_abstract = checkpoint.flat_by_path(abstract_params)
    dst_shapes = {k: tuple(v.shape) for k, v in dst_abstract.items()}
    src_shapes = {k: s for k, (s, _) in source.shapes.items()}
    lora_prefix = lora.LORA + '/'
    if any(k.startswith(lora_prefix) for k in src_shapes) and not any(
        k.startswith(lora_prefix) for k in dst_shapes
    ):  # Its kernels alone are the model before adaptation: loading them loses the update.
        raise ValueError(
            f"init_from.path {init_from['path']} is a LoRA run: its kernels do not include "
            f"the adapters ('lora/...'). Export it (python -m alignjax.export --workdir "
            f"{init_from['path']} --out DIR), which merges them, and set init_from.path=DIR."
        )
    pairs = match_params(dst_shapes, src_shapes, init_from.get('mapping', ()))
    loaded = source.read({d: (s, dst_abstract[d]) for d, s in pairs.items()})

    def replace(path, x):
        return loaded.get(checkpoint.path_str(path), x)

    params = jax.tree_util.tree_map_with_path(replace, params)
    frozen_tree = optim.frozen_mask(abstract_params, tuple(freeze))
    frozen = sorted(k for k, f in checkpoint.flat_by_path(frozen_tree).items() if f)
    fresh = sorted(set(dst_shapes) - set(pairs))
    sizes = {k: int(np.prod(s)) for k, s in dst_shapes.items()}
    report = {
        'source': source.description,
        'loaded': dict(sorted(pairs.items())),
        'fresh': fresh,
        'frozen': frozen,
        'unused_source': sorted(set(src_shapes) - set(pairs.values())),
    }
    report['text'] = '\n'.join(
        [
            f'init_from {source.description}:',
            f'  loaded: {_summarize(sorted(pairs), sizes)}',
            f'  freshly initialised: {_summarize(fresh, sizes)}',
            f'  frozen (optim.freeze): {_summarize(frozen, sizes)}',
        ]
    )
    return params, report


def init_params_from(
    init_from: Any, state: Any, abstract_params: Any, freeze: Any = ()
) -> tuple[Any, dict[str, Any]]:
    """Replaces parameters of a freshly initialised train `state` by those of another run.

    `abstract_params`: `trainer.abstract_state.params`. Returns the new state and the report
    of `load_params`. The optimizer state is kept: AdamW's initial state does not depend on
    the parameter values.
    """
    params, report = load_params(init_from, state.params, abstract_params, freeze)
    return state.replace(params=params), report
