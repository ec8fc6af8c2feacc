"""Portable parameters: one file holding every parameter plus the model config.

Write from a run, read anywhere (no Orbax, no alignjax trainer, no mesh needed)::

    python -m alignjax.export --workdir runs/demo --out demo.safetensors   # newest step

    from alignjax import export, models
    params, model_config = export.load('demo.safetensors')
    model = models.build(model_config)
    out = model.apply({'params': params}, images, tokens)

Format (`.safetensors`, the default; needs the `safetensors` package): one tensor per
parameter, named by its '/'-joined path (`img/encoder/block_0/mlp/fc1/kernel`), float32 as
stored in the train state, and the resolved model config as JSON in the header metadata
(`alignjax_model_config`), so the file alone rebuilds the model. `model_config.json` is also
written beside it for people and tools. `.msgpack` writes the same content with flax's
msgpack serialisation (`{'params': nested dict, 'model_config': JSON string}`) for
environments without safetensors. Both load into nested dicts of numpy arrays.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
from flax import serialization

from alignjax import checkpoint as checkpoint_lib
from alignjax import models

FORMAT_VERSION = 1
CONFIG_KEY = 'alignjax_model_config'
FILE_NAMES = ('params.safetensors', 'params.msgpack')


def flatten(params: Any) -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {'a/b/c': numpy array} (host copies)."""
    out: dict[str, np.ndarray] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) or hasattr(node, 'items'):
            for key, value in node.items():
                walk(f'{prefix}/{key}' if prefix else str(key), value)
        else:
            out[prefix] = np.asarray(node)

    walk('', params)
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
    return checkpoint_lib.unflatten_paths(flat)


def _resolve_path(path: str) -> str:
    if os.path.isdir(path):
        for name in FILE_NAMES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f'{path} holds none of {FILE_NAMES}.')
    return path


def is_export(path: str) -> bool:
    """True if `path` is an export file, or a directory holding one."""
    if os.path.isdir(path):
        return any(os.path.isfile(os.path.join(path, n)) for n in FILE_NAMES)
    return path.endswith(('.safetensors', '.msgpack')) and os.path.isfile(path)


def save(path: str, params: Any, model_config: Any) -> str:
    """Writes `params` (nested dict, device or host arrays) and `model_config` to `path`.

    `model_config`: the model config (ConfigDict or dict); it is resolved with
    `alignjax.models.resolve_model_config` so that the file is self-contained. The format
    follows the extension (`.safetensors` or `.msgpack`); a directory gets
    `params.safetensors`. Returns the file written. Call on one process with host-reachable
    params (e.g. `jax.device_get`, or `multihost_utils.process_allgather` on pods).
    """
    if os.path.isdir(path) or not os.path.splitext(path)[1]:
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, FILE_NAMES[0])
    cfg = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
    cfg = json.loads(json.dumps(models.resolve_model_config(cfg)))
    flat = flatten(params)
    bad = {k: str(v.dtype) for k, v in flat.items() if v.dtype not in (np.float32, np.int32)}
    if bad:
        raise ValueError(f'Only float32/int32 parameters can be exported, got {bad}.')
    config_json = json.dumps(cfg, sort_keys=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp'
    if path.endswith('.safetensors'):
        # safetensors: optional here (.msgpack serves environments without it).
        from safetensors.numpy import save_file

        meta = {CONFIG_KEY: config_json, 'alignjax_format': str(FORMAT_VERSION)}
        # np.asarray(order='C'), not ascontiguousarray: that turns 0-d (log_scale) into [1].
        save_file({k: np.asarray(v, order='C') for k, v in flat.items()}, tmp, metadata=meta)
    elif path.endswith('.msgpack'):
        blob = {'params': unflatten(flat), 'model_config': config_json, 'format': FORMAT_VERSION}
        with open(tmp, 'wb') as f:
            f.write(serialization.msgpack_serialize(blob))
    else:
        raise ValueError(f'Unknown export format for {path}: use .safetensors or .msgpack.')
    os.replace(tmp, path)  # Atomic: a reader never sees half a file.
    with open(os.path.join(os.path.dirname(os.path.abspath(path)), 'model_config.json'), 'w') as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    return path


def load(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params as nested dict of numpy arrays, model config dict) from an export.

    `path`: the file, or a directory holding `params.safetensors` / `params.msgpack`.
    `alignjax.models.build(model_config)` rebuilds the model these params belong to.
    """
    path = _resolve_path(path)
    if path.endswith('.safetensors'):
        # safetensors: optional here (.msgpack serves environments without it).
        from safetensors import safe_open

        with safe_open(path, framework='numpy') as f:
            meta = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        if CONFIG_KEY not in meta:
            raise ValueError(f'{path} has no {CONFIG_KEY} metadata: not an alignjax export.')
        return unflatten(flat), json.loads(meta[CONFIG_KEY])
    if path.endswith('.msgpack'):
        with open(path, 'rb') as f:
            blob = serialization.msgpack_restore(f.read())
        return blob['params'], json.loads(blob['model_config'])
    raise ValueError(f'Unknown export format for {path}: use .safetensors or .msgpack.')


def load_flat(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Like `load`, with params as {'/'-joined path: array}."""
    params, cfg = load(path)
    return flatten(params), cfg


def export_checkpoint(workdir_or_checkpoints: str, out: str, step: int | None = None) -> str:
    """Exports the parameters of a run's checkpoint (newest good step by default) to `out`.

    `workdir_or_checkpoints`: a workdir, its `checkpoints` directory or one step directory
    (whose step wins over `step`). An export file is re-written as it is.
    """
    path = workdir_or_checkpoints
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} does not exist.')
    if is_export(path):
        params, model_config = load(path)
        return save(out, params, model_config)
    directory, fixed = checkpoint_lib.find_checkpoint_dir(path, -1 if step is None else step)
    if fixed is None:
        raise FileNotFoundError(f'{path}: no committed checkpoint in {directory}.')
    source = checkpoint_lib.SavedParams(directory, fixed)
    if source.model_config is None:
        raise ValueError(
            f'No model config found for {workdir_or_checkpoints} (neither in the checkpoint '
            f'nor in a config.json beside it).'
        )
    return save(out, unflatten(source.read_host()), source.model_config)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description='Export a run checkpoint as one portable file.')
    p.add_argument('--workdir', required=True, help='run workdir or its checkpoints directory')
    p.add_argument('--step', type=int, default=None, help='step (default: newest good one)')
    p.add_argument('--out', required=True, help='file.safetensors, file.msgpack or a directory')
    a = p.parse_args(argv)
    written = export_checkpoint(a.workdir, a.out, a.step)
    print(f'Wrote {written} (+ model_config.json beside it).')


if __name__ == '__main__':
    main()
