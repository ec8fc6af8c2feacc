"""Portable parameters: one file holding every parameter, the model config, and what it
takes to feed the model (image preprocessing, tokenizer).

Write from a run, read anywhere (no Orbax, no alignjax trainer, no mesh needed)::

    python -m alignjax.export --workdir runs/demo --out runs/demo_export   # newest step

    from alignjax import export, models
    params, model_config = export.load('runs/demo_export')
    model = models.build(model_config)
    out = model.apply({'params': params}, images, tokens)

    clip = alignjax.load_pretrained('runs/demo_export')   # + preprocess and tokenizer
    clip.encode_image([pil_image]), clip.encode_text(['a red disk'])

Format (`.safetensors`, the default): one tensor per parameter, named by its '/'-joined
path (`img/encoder/block_0/mlp/fc1/kernel`), float32 as stored in the train state, and in
the header metadata, as JSON: the resolved model config (`alignjax_model_config`), the
image preprocessing (`alignjax_preprocess`: size, resize_mode, interpolation, mean, std on
the [0, 1] scale) and the tokenizer config (`alignjax_tokenizer`: `config.tokenizer`'s
fields), so the file alone rebuilds the model and says how to feed it. A tokenizer's
vocabulary file (SentencePiece model, CLIP BPE merges) is copied beside the export and named
relative to it. An export directory also gets `model_config.json`, `preprocess.json` and
`tokenizer.json` for people and tools (a file export only `model_config.json`, so that it
never overwrites another model's `tokenizer.json` in the same folder). `.msgpack` writes
the same content with flax's msgpack serialisation. Both load into nested dicts of numpy
arrays. Files are created with the usual permissions (the umask applies).

An export of a run records the run's evaluation transform: `data.image_size`, the centre
crop (or the source's `eval_crop` / `interpolation`) and `data.normalize`'s statistics.
A run with LoRA adapters (`config.lora`) is exported merged (`alignjax.lora.merge`): the
file holds plain kernels and loads into the plain model of its `model_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import json
import os
import shutil
from typing import Any

import numpy as np
from flax import serialization
from safetensors.numpy import save_file

from alignjax import checkpoint as checkpoint_lib
from alignjax import errors, lora, models, weight_files
from alignjax.data import clip_bpe, sources, transforms

FORMAT_VERSION = 2  # 2: + preprocess and tokenizer
CONFIG_KEY = 'alignjax_model_config'
PREPROCESS_KEY = 'alignjax_preprocess'
TOKENIZER_KEY = 'alignjax_tokenizer'
FILE_NAMES = ('params.safetensors', 'params.msgpack')
PREPROCESS_FILE = 'preprocess.json'
TOKENIZER_FILE = 'tokenizer.json'
CONFIG_FILE = 'model_config.json'
# The export's own JSON files; a vocabulary file of one of these names (an HF tokenizer.json)
# is copied as vocab_<name>.
_SIDECAR_FILES = (CONFIG_FILE, PREPROCESS_FILE, TOKENIZER_FILE)
#: Tokenizer config fields that name a vocabulary file (copied beside the export).
VOCAB_FIELDS = ('bpe_path', 'vocab_path', 'model_path')
#: What a preprocess dict holds (`alignjax.pretrained.Preprocess`'s fields).
PREPROCESS_FIELDS = ('size', 'resize_mode', 'interpolation', 'mean', 'std')

#: `data.normalize` -> (mean, std) per channel on the [0, 1] scale.
NORMALIZE_STATS = {
    'minus_one_one': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    'clip': (transforms.OPENAI_CLIP_MEAN, transforms.OPENAI_CLIP_STD),
    'zero_one': ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
# The data pipeline's eval crop -> `Preprocess.resize_mode`. 'none' keeps images as they
# come (sources whose images are already the model size); a centre crop leaves those as
# they are too.
_RESIZE_MODES = {'center': 'center', 'resize': 'squash', 'none': 'center'}


@dataclasses.dataclass
class Exported:
    """Everything an export (or a run's checkpoint, read as one) holds.

    Attributes:
      params: nested dict of numpy arrays.
      model_config: the resolved model config (`models.build(model_config)`).
      preprocess: `PREPROCESS_FIELDS` dict, or None for exports written before they were
        stored (then nothing says what the model expects).
      tokenizer: tokenizer config dict (vocabulary paths absolute), or None likewise.
      path: the file read.
    """

    params: dict[str, Any]
    model_config: dict[str, Any]
    preprocess: dict[str, Any] | None
    tokenizer: dict[str, Any] | None
    path: str


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
        run = ' (a training workdir: export it first, or use alignjax.load_pretrained)'
        raise weight_files.WeightFileMissing(
            f'{path} holds none of {", ".join(FILE_NAMES)}{run if is_run(path) else ""}.'
        )
    weight_files.require_file(path)
    return path


def is_export(path: str) -> bool:
    """True if `path` is an export file, or a directory holding one."""
    if os.path.isdir(path):
        return any(os.path.isfile(os.path.join(path, n)) for n in FILE_NAMES)
    return path.endswith(('.safetensors', '.msgpack')) and os.path.isfile(path)


def is_run(path: str) -> bool:
    """True if `path` is a training workdir, its `checkpoints` directory or one step of it."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        return False
    if os.path.isdir(os.path.join(path, 'checkpoints')):
        return True
    if os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, 'state')):
        return True
    return any(
        n.isdigit() and os.path.isdir(os.path.join(path, n, 'state')) for n in os.listdir(path)
    )


# ------------------------------------------------------------------------ preprocessing


def check_preprocess(pp: Any, where: str) -> dict[str, Any]:
    """`pp` as a plain dict with every `PREPROCESS_FIELDS` entry, or a ValueError naming
    what is missing (`where`: the file or argument it came from)."""
    if not isinstance(pp, dict):
        got = type(pp).__name__
        raise ValueError(f'{where}: the preprocessing must be a dict, got {got}.')  # noqa: TRY004
    missing = [k for k in PREPROCESS_FIELDS if k not in pp]
    if missing:
        raise ValueError(f'{where}: the preprocessing lacks {missing} (needs {PREPROCESS_FIELDS}).')
    return {k: pp[k] for k in PREPROCESS_FIELDS}


def preprocess_from_config(config: Any) -> dict[str, Any]:
    """The image preprocessing a run's evaluators apply, as a `PREPROCESS_FIELDS` dict.

    Size `data.image_size`; the centre crop (the data pipeline's eval crop, also what
    CLIP does) with bicubic interpolation, unless the training source's spec sets
    `eval_crop` / `interpolation`; mean/std of `data.normalize`.
    """
    data = dict(config['data'])
    normalize = data.get('normalize', 'minus_one_one')
    if normalize not in NORMALIZE_STATS:
        raise ValueError(f'data.normalize={normalize!r}; valid: {sorted(NORMALIZE_STATS)}.')
    if not data.get('image_size'):
        raise ValueError('data.image_size is not set: the export cannot say the image size.')
    crop, interpolation = 'center', 'bicubic'
    spec = str(data.get('train') or '')
    if ':' in spec and not spec.startswith('mix:'):
        _, _, query = sources.parse_spec(spec)
        crop = str(query.get('eval_crop', crop))
        interpolation = str(query.get('interpolation', interpolation))
    mean, std = NORMALIZE_STATS[normalize]
    return dict(
        size=int(data['image_size']),
        resize_mode=_RESIZE_MODES.get(crop, 'center'),
        interpolation=interpolation,
        mean=list(mean),
        std=list(std),
    )


# ---------------------------------------------------------------------------- tokenizer


def tokenizer_from_config(config: Any, tokenizer_path: str | None = None) -> dict[str, Any]:
    """A run's `config.tokenizer` as a plain dict, its vocabulary paths made absolute.

    `tokenizer_path` replaces the vocabulary (`model_path` for SentencePiece, `bpe_path`
    for CLIP BPE), for a run whose file has moved. A CLIP BPE tokenizer without a path is
    resolved as the tokenizer itself would (`clip_bpe.find_clip_bpe`).
    """
    tok = {k: v for k, v in dict(config['tokenizer']).items() if v is not None}
    name = tok.get('name', 'word_hash')
    if tokenizer_path:
        tok['model_path' if name == 'sentencepiece' else 'bpe_path'] = tokenizer_path
    if name == 'clip_bpe' and not tok.get('bpe_path'):
        tok['bpe_path'] = clip_bpe.find_clip_bpe() or ''
    for k in VOCAB_FIELDS:
        if tok.get(k):
            tok[k] = os.path.abspath(tok[k])
    return tok


def _vocab_copies(tokenizer: dict[str, Any], folder: str) -> tuple[dict[str, Any], list]:
    """(tokenizer config naming its vocabulary files relative to `folder`, [(src, dst)]).

    Checks everything before anything is written: each file must exist, and a file of the
    same name already in `folder` must be the same file (never overwritten).
    """
    tok, copies = dict(tokenizer), []
    for k in VOCAB_FIELDS:
        src = tok.get(k)
        if not src:
            continue
        if not os.path.isfile(src):
            raise weight_files.WeightFileMissing(
                f'tokenizer.{k}={src!r} does not exist, and the export must carry the '
                'vocabulary: put the file back there or pass --tokenizer-path FILE.'
            )
        name = os.path.basename(src)
        if name in _SIDECAR_FILES:  # a Hugging Face tokenizer.json: not our sidecar's name
            name = f'vocab_{name}'
        dst = os.path.join(folder, name)
        if os.path.abspath(src) != os.path.abspath(dst):
            if os.path.exists(dst) and not filecmp.cmp(src, dst, shallow=False):
                raise ValueError(
                    f'{dst} exists and differs from the tokenizer file {src}; export into an '
                    'empty directory (it is not overwritten).'
                )
            copies.append((src, dst))
        tok[k] = name
    return tok, copies


# -------------------------------------------------------------------------- save, load


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (no race with
    threads creating files), else by setting and restoring it."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save(
    path: str,
    params: Any,
    model_config: Any,
    *,
    preprocess: dict[str, Any] | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> str:
    """Writes `params` (nested dict, device or host arrays) and `model_config` to `path`.

    `model_config`: the model config (ConfigDict or dict); it is resolved with
    `alignjax.models.resolve_model_config` so that the file is self-contained.
    `preprocess`: `PREPROCESS_FIELDS` dict (`preprocess_from_config` for a run).
    `tokenizer`: tokenizer config dict; its vocabulary files are copied beside the export.
    Without these two the export still rebuilds the model, but `load_pretrained` will ask
    for them. The format follows the extension (`.safetensors` or `.msgpack`); a
    directory gets `params.safetensors`. Returns the file written. Call on one process
    with host-reachable params (e.g. `jax.device_get`, or `process_allgather` on pods).
    """
    is_dir = os.path.isdir(path) or not os.path.splitext(path)[1]
    if is_dir:
        path = os.path.join(path, FILE_NAMES[0])
    if not path.endswith(('.safetensors', '.msgpack')):
        raise ValueError(f'Unknown export format for {path}: use .safetensors or .msgpack.')
    folder = os.path.dirname(os.path.abspath(path))
    cfg = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
    cfg = json.loads(json.dumps(models.resolve_model_config(cfg)))
    flat = flatten(params)
    bad = {k: str(v.dtype) for k, v in flat.items() if v.dtype not in (np.float32, np.int32)}
    if bad:
        raise ValueError(f'Only float32/int32 parameters can be exported, got {bad}.')
    pp = None if preprocess is None else check_preprocess(dict(preprocess), 'preprocess')
    tok, copies = (None, []) if tokenizer is None else _vocab_copies(dict(tokenizer), folder)
    extras = {CONFIG_KEY: cfg, PREPROCESS_KEY: pp, TOKENIZER_KEY: tok}
    meta = {k: json.dumps(v, sort_keys=True) for k, v in extras.items() if v is not None}
    meta['alignjax_format'] = str(FORMAT_VERSION)

    os.makedirs(folder, exist_ok=True)
    tmp = f'{path}.tmp'
    try:
        if path.endswith('.safetensors'):
            # np.asarray(order='C'), not ascontiguousarray: that turns 0-d (log_scale) into [1].
            save_file({k: np.asarray(v, order='C') for k, v in flat.items()}, tmp, metadata=meta)
            os.chmod(tmp, 0o666 & ~_umask())  # save_file creates the file 0600
        else:
            blob = {k.removeprefix('alignjax_'): v for k, v in meta.items() if k in extras}
            blob.update(params=unflatten(flat), format=FORMAT_VERSION)
            with open(tmp, 'wb') as f:
                f.write(serialization.msgpack_serialize(blob))
        os.replace(tmp, path)  # Atomic: a reader never sees half a file.
    finally:
        if os.path.exists(tmp):  # our own temporary file, from a save that failed
            os.remove(tmp)
    for src, dst in copies:
        shutil.copyfile(src, dst)
    sidecars = {CONFIG_FILE: cfg}
    if is_dir:
        sidecars.update({PREPROCESS_FILE: pp, TOKENIZER_FILE: tok})
    for name, value in sidecars.items():
        if value is not None:
            with open(os.path.join(folder, name), 'w') as f:
                json.dump(value, f, indent=2, sort_keys=True)
    return path


def _json_entry(meta: dict[str, Any], key: str, path: str) -> Any:
    if meta.get(key) is None:
        return None
    try:
        return json.loads(meta[key])
    except (TypeError, ValueError) as e:
        raise weight_files.WeightFileError(
            f'{path}: its {key} metadata is not JSON: damaged.'
        ) from e


def read(path: str) -> Exported:
    """Everything an export holds (see `Exported`), from the file or its directory.

    The preprocessing and tokenizer come from the file's metadata, else from
    `preprocess.json` / `tokenizer.json` beside it (folders written before they were
    stored in the file); vocabulary paths are made absolute.

    Raises:
      WeightFileMissing: no export file there.
      WeightFileError: the file is damaged, or is not an alignjax export.
    """
    path = _resolve_path(path)
    if path.endswith('.safetensors'):
        with weight_files.open_safetensors(path) as f:
            meta = f.metadata() or {}
            if CONFIG_KEY not in meta:
                raise weight_files.WeightFileError(
                    f'{path} is not an alignjax export (no {CONFIG_KEY} in its metadata); a '
                    "Hugging Face or open_clip file loads with load_pretrained(..., format='hf' "
                    "or 'open_clip') or converts with python -m alignjax.convert."
                )
            flat = {k: weight_files.get_tensor(f, path, k) for k in f.keys()}  # noqa: SIM118
        params = unflatten(flat)
    elif path.endswith('.msgpack'):
        with open(path, 'rb') as f:
            raw = f.read()
        try:
            blob = serialization.msgpack_restore(raw)
        except Exception as e:  # msgpack raises several types
            raise weight_files.damaged('msgpack export', path, weight_files.short_reason(e)) from e
        if not isinstance(blob, dict) or 'params' not in blob or 'model_config' not in blob:
            raise weight_files.WeightFileError(f'{path} is not an alignjax .msgpack export.')
        params = blob['params']
        meta = {f'alignjax_{k}': blob.get(k) for k in ('model_config', 'preprocess', 'tokenizer')}
    else:
        raise ValueError(f'Unknown export format for {path}: use .safetensors or .msgpack.')
    folder = os.path.dirname(os.path.abspath(path))
    found = {}
    for key, sidecar in ((PREPROCESS_KEY, PREPROCESS_FILE), (TOKENIZER_KEY, TOKENIZER_FILE)):
        found[key] = _json_entry(meta, key, path)
        if found[key] is None and os.path.basename(path) in FILE_NAMES:
            side = os.path.join(folder, sidecar)
            if os.path.isfile(side):
                found[key] = weight_files.read_json(side)
    tok = found[TOKENIZER_KEY]
    if tok is not None:
        tok = dict(tok)
        for k in VOCAB_FIELDS:
            if tok.get(k) and not os.path.isabs(tok[k]):
                tok[k] = os.path.join(folder, tok[k])
    return Exported(
        params=params,
        model_config=_json_entry(meta, CONFIG_KEY, path),
        preprocess=found[PREPROCESS_KEY],
        tokenizer=tok,
        path=path,
    )


def load(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params as nested dict of numpy arrays, model config dict) from an export.

    `path`: the file, or a directory holding `params.safetensors` / `params.msgpack`.
    `alignjax.models.build(model_config)` rebuilds the model these params belong to;
    `read` also returns the preprocessing and tokenizer.
    """
    e = read(path)
    return e.params, e.model_config


def load_flat(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Like `load`, with params as {'/'-joined path: array}."""
    params, cfg = load(path)
    return flatten(params), cfg


# ----------------------------------------------------------------------------- runs


def _saved_config(directory: str, step: int) -> dict[str, Any] | None:
    """The resolved config saved with the step, else the run's `config.json`, else None."""
    for candidate in (
        os.path.join(directory, str(step), 'config', 'metadata'),
        os.path.join(os.path.dirname(directory), 'config.json'),
    ):
        if os.path.isfile(candidate):
            return weight_files.read_json(candidate)
    return None


def read_run(path: str, step: int | None = None, tokenizer_path: str | None = None) -> Exported:
    """A run's checkpoint (the newest good step by default) read as an export would be.

    `path`: a workdir, its `checkpoints` directory or one step directory (whose step wins
    over `step`). The model config, preprocessing and tokenizer come from the config saved
    with that step (else the workdir's `config.json`); `tokenizer_path`: see
    `tokenizer_from_config`.
    """
    if not os.path.exists(path):
        raise weight_files.WeightFileMissing(f'{path} does not exist.')
    # The newest good step (or `step`); a step whose arrays fail to read is skipped too.
    source, flat = checkpoint_lib.read_params_host(path, -1 if step is None else step)
    config = _saved_config(source.directory, source.step)
    if config is None or not config.get('model'):
        raise ValueError(
            f'No config found for {source.description} (neither saved with the step nor in '
            'a config.json beside the checkpoints).'
        )
    has_data = 'data' in config and 'tokenizer' in config
    return Exported(
        # A LoRA run's factors are merged into its kernels: the export is a plain model.
        params=lora.merge(unflatten(flat), config.get('lora')),
        model_config=config['model'],
        preprocess=preprocess_from_config(config) if has_data else None,
        tokenizer=tokenizer_from_config(config, tokenizer_path) if has_data else None,
        path=source.description,
    )


def export_checkpoint(
    workdir_or_checkpoints: str,
    out: str,
    step: int | None = None,
    tokenizer_path: str | None = None,
) -> str:
    """Exports a run's checkpoint (newest good step by default) to `out`, with the run's
    preprocessing and tokenizer (vocabulary copied beside it).

    `workdir_or_checkpoints`: a workdir, its `checkpoints` directory or one step directory
    (whose step wins over `step`). An export is re-written with what it holds.
    """
    path = workdir_or_checkpoints
    if not os.path.exists(path):
        raise weight_files.WeightFileMissing(f'{path} does not exist.')
    e = read(path) if is_export(path) else read_run(path, step, tokenizer_path)
    return save(out, e.params, e.model_config, preprocess=e.preprocess, tokenizer=e.tokenizer)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description='Export a run checkpoint as one portable file (+ its tokenizer files).'
    )
    p.add_argument('--workdir', required=True, help='run workdir or its checkpoints directory')
    p.add_argument('--step', type=int, default=None, help='step (default: newest good one)')
    p.add_argument('--out', required=True, help='a directory, file.safetensors or file.msgpack')
    p.add_argument(
        '--tokenizer-path',
        default=None,
        help="the run's vocabulary file (SentencePiece .model / CLIP BPE), if it has moved",
    )
    a = p.parse_args(argv)
    written = export_checkpoint(a.workdir, a.out, a.step, a.tokenizer_path)
    print(f'Wrote {written} (+ model config, preprocessing and tokenizer).')


if __name__ == '__main__':
    errors.run_main(main)
