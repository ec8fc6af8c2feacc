"""Shared pieces of the weight converters: the safetensors writer, tree helpers, layouts.

Everything here works on plain numpy arrays. The file readers (``read_safetensors``,
``torch_state_dict``, ``read_npz``, ...) are ``alignjax.weight_files``'s, re-exported:
weight files are not trusted, and every reader fails with one :class:`WeightFileError`
line naming the file (and the tensor), never with advice to load unsafely.

Layout conventions (alignjax side, see ``alignjax.models``): Dense kernels are ``[in, out]``,
attention q/k/v kernels ``[D, H, K]`` with biases ``[H, K]``, the output kernel
``[H, K, D]``, the patch conv ``[p, p, C, D]`` (HWIO). PyTorch ``nn.Linear`` weights are
``[out, in]`` and ``nn.Conv2d`` weights ``[D, C, p, p]`` (OIHW).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

# The readers live in a leaf module (the exporter uses them too); re-exported here, where
# the converters have always found them.
from alignjax.weight_files import (  # noqa: F401
    MissingDependency,
    WeightFileError,
    WeightFileMissing,
    import_torch,
    read_json,
    read_npz,
    read_safetensors,
    read_state_dict,
    short_reason,
    torch_state_dict,
)

Params = dict[str, Any]

# safetensors dtype names <-> numpy dtypes.
_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}

#: OpenAI CLIP image statistics (RGB, [0, 1] scale), shared by OpenAI, open_clip and HF CLIP.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: Gemma's vocabulary size: a SigLIP 2 text tower (big_vision .npz or Hugging Face).
GEMMA_VOCAB = 256_000


def sentencepiece_or_hf(path: str) -> str:
    """Tokenizer name for a vocabulary file: 'hf' for a ``tokenizer.json`` (or a folder
    holding one), else 'sentencepiece' (a ``.model``)."""
    return "hf" if path.endswith(".json") or os.path.isdir(path) else "sentencepiece"


@dataclasses.dataclass
class Converted:
    """Result of a converter.

    Attributes:
      model_config: nested dict for ``alignjax.models.build`` that reproduces the source
        model's forward pass (sizes, activation, LayerNorm eps, pooling conventions).
      params: nested dict of float32 numpy arrays (the ``'params'`` collection, unboxed,
        ``scan=False`` layout: ``encoder/block_i``).
      preprocess: dict of :class:`alignjax.pretrained.Preprocess` fields (size, resize mode,
        mean/std, interpolation).
      tokenizer: dict for ``alignjax.data.tokenizers.build_tokenizer`` (paths may be empty
        when the source has no vocabulary; ``load_pretrained`` then asks for one).
    """

    model_config: dict
    params: Params
    preprocess: dict
    tokenizer: dict


# ------------------------------------------------------------------------------ files


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata=None) -> None:
    """Writes numpy arrays as a ``.safetensors`` file (readable by torch/HF/safetensors).

    Written here rather than with ``safetensors.numpy.save_file``: that creates the file
    with mode 0600, and a released model folder must be readable by others (umask applies).
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset, bufs = 0, []
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        a = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        if a.dtype not in _ST_NAMES:
            raise ValueError(f"Tensor {name!r} has dtype {a.dtype}, which safetensors lacks.")
        b = a.tobytes()
        header[name] = {
            "dtype": _ST_NAMES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(b)],
        }
        offset += len(b)
        bufs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in bufs:
            f.write(b)


# ------------------------------------------------------------------------------ trees


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> ``{'a/b/c': leaf}``."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> Params:
    """``{'a/b/c': leaf}`` -> nested dict."""
    out: Params = {}
    for key, v in flat.items():
        node = out
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def to_f32(tree: Mapping[str, Any]) -> Params:
    return {
        k: to_f32(v) if isinstance(v, Mapping) else np.asarray(v, np.float32)
        for k, v in tree.items()
    }


class Consumer:
    """A state dict that records which keys were read, so converters can fail on leftovers
    (a key nobody maps means the checkpoint has a feature the converter would drop)."""

    def __init__(self, sd: Mapping[str, np.ndarray], source: str, ignore=()):
        self.sd = dict(sd)
        self.source = source
        self.used: set[str] = set(k for k in sd if any(k.endswith(s) for s in ignore))
        self.last: str | None = None  # the tensor read last, to name in `misfit`

    def __contains__(self, key: str) -> bool:
        return key in self.sd

    def __call__(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The tensor ``key`` as float32; ``shape``: what the model config says it must be."""
        if key not in self.sd:
            raise WeightFileError(
                f"{self.source}: expected tensor {key!r} is missing. Is this the right "
                f"format? A few keys present: {sorted(self.sd)[:8]}"
            )
        self.used.add(key)
        self.last = key
        x = np.asarray(self.sd[key], np.float32)
        if shape is not None and tuple(x.shape) != tuple(shape):
            raise WeightFileError(
                f"{self.source}: tensor {key!r} has shape {tuple(x.shape)} but the model "
                f"config needs {tuple(shape)}: the config and the weights do not belong together."
            )
        return x

    def misfit(self, e: Exception) -> WeightFileError:
        """The error for a numpy reshape/split that failed on the tensor read last."""
        if isinstance(e, WeightFileError):
            return e
        shape = tuple(np.shape(self.sd[self.last])) if self.last else None
        return WeightFileError(
            f"{self.source}: tensor {self.last!r} (shape {shape}) does not fit the model "
            f"config ({short_reason(e)}): the config and the weights do not belong together."
        )

    def convert(self, build, model_config: Mapping[str, Any]):
        """`build(self, model_config)` -> params, with a failed reshape named as `misfit`
        and leftover tensors refused (`check_all_used`): every converter's frame."""
        try:
            params = build(self, model_config)
        except ValueError as e:
            raise self.misfit(e) from e
        self.check_all_used()
        return params

    def check_all_used(self) -> None:
        left = sorted(set(self.sd) - self.used)
        if left:
            raise ValueError(
                f"{self.source}: {len(left)} tensor(s) are not understood by the converter "
                f"(the model has parts alignjax would silently drop): {left[:12]}"
            )


def check_params_match(params: Params, expected: Mapping[str, Any], source: str) -> None:
    """Fails unless ``params`` has exactly the paths and shapes of ``expected``.

    ``expected``: the model's abstract parameters (``jax.eval_shape`` of its init, anything
    with ``.shape`` as leaves). One line naming the first bad parameter and both shapes,
    so a converted checkpoint whose config disagrees with its tensors fails here and not
    as a Flax shape error deep inside the first forward pass.
    """
    have, want = flatten(params), flatten(expected)
    missing = sorted(set(want) - set(have))
    if missing:
        raise WeightFileError(
            f"{source}: the model config needs parameter(s) the weights lack: {missing[:6]}."
        )
    extra = sorted(set(have) - set(want))
    if extra:
        raise WeightFileError(
            f"{source}: the weights hold parameter(s) the model config has no place for: "
            f"{extra[:6]}."
        )
    for k in sorted(want):
        a, b = tuple(np.shape(have[k])), tuple(want[k].shape)
        if a != b:
            raise WeightFileError(
                f"{source}: parameter {k!r} has shape {a} but the model config needs {b}: "
                "the config and the weights do not belong together."
            )


# ----------------------------------------------------------------------- torch layouts


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> Dense kernel [in, out]."""
    return np.ascontiguousarray(w.T)


def heads_in(w: np.ndarray, b: np.ndarray, num_heads: int) -> dict:
    """torch q/k/v Linear ([H*K, D], [H*K]) -> HeadsIn kernel [D, H, K], bias [H, K]."""
    d = w.shape[1]
    return {"kernel": w.T.reshape(d, num_heads, -1).copy(), "bias": b.reshape(num_heads, -1)}


def heads_out(w: np.ndarray, b: np.ndarray, num_heads: int) -> dict:
    """torch out Linear ([D, H*K], [D]) -> HeadsOut kernel [H, K, D], bias [D]."""
    d = w.shape[0]
    return {"kernel": w.T.reshape(num_heads, -1, d).copy(), "bias": b}


def heads_in_torch(p: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`heads_in`."""
    k = np.asarray(p["kernel"])
    d = k.shape[0]
    return k.reshape(d, -1).T.copy(), np.asarray(p["bias"]).reshape(-1)


def heads_out_torch(p: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`heads_out`."""
    k = np.asarray(p["kernel"])
    return k.reshape(-1, k.shape[-1]).T.copy(), np.asarray(p["bias"])


def conv_to_flax(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight [D, C, p, p] (OIHW) -> flax [p, p, C, D] (HWIO)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def conv_to_torch(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w).transpose(3, 2, 0, 1))


def layer_norm(w: np.ndarray, b: np.ndarray) -> dict:
    return {"scale": w, "bias": b}


def ln_torch(p: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(p["scale"]), np.asarray(p["bias"])


def block_from_torch(get, prefix: str, names: Mapping[str, str], num_heads: int) -> dict:
    """One pre-LN transformer block from a torch state dict with separate q/k/v.

    ``names`` maps alignjax parts to torch key stems: ln_attn, q, k, v, out, ln_mlp, fc1, fc2.
    """
    n = {k: prefix + v for k, v in names.items()}
    return {
        "ln_attn": layer_norm(get(n["ln_attn"] + ".weight"), get(n["ln_attn"] + ".bias")),
        "attn": {
            part: heads_in(get(n[t] + ".weight"), get(n[t] + ".bias"), num_heads)
            for part, t in (("query", "q"), ("key", "k"), ("value", "v"))
        }
        | {"out": heads_out(get(n["out"] + ".weight"), get(n["out"] + ".bias"), num_heads)},
        "ln_mlp": layer_norm(get(n["ln_mlp"] + ".weight"), get(n["ln_mlp"] + ".bias")),
        "mlp": {
            "fc1": {"kernel": linear(get(n["fc1"] + ".weight")), "bias": get(n["fc1"] + ".bias")},
            "fc2": {"kernel": linear(get(n["fc2"] + ".weight")), "bias": get(n["fc2"] + ".bias")},
        },
    }


#: A Hugging Face transformer block (CLIP, SigLIP): alignjax part -> torch key stem under
#: ``...encoder.layers.{i}.`` (see :func:`block_from_torch`).
HF_BLOCK = dict(
    ln_attn="layer_norm1",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    out="self_attn.out_proj",
    ln_mlp="layer_norm2",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
)
#: Hugging Face ``hidden_act`` -> alignjax ``act``.
HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}
#: PIL resample codes (``preprocessor_config.json``'s ``resample``) -> alignjax interpolation.
HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def hf_encoder(get, prefix: str, cfg: Mapping[str, Any], norm: str) -> dict:
    """alignjax ``encoder`` subtree of a Hugging Face tower: the blocks
    ``{prefix}encoder.layers.{i}.*`` (``cfg['depth']`` of them, ``cfg['num_heads']`` heads)
    and the final LayerNorm ``{prefix}{norm}`` as ``encoder_norm``."""
    blocks = {
        f"block_{i}": block_from_torch(
            get, f"{prefix}encoder.layers.{i}.", HF_BLOCK, cfg["num_heads"]
        )
        for i in range(cfg["depth"])
    }
    blocks["encoder_norm"] = layer_norm(get(f"{prefix}{norm}.weight"), get(f"{prefix}{norm}.bias"))
    return blocks


def count_layers(keys, prefix: str) -> int:
    """Number of ``{prefix}{i}.`` blocks among ``keys``."""
    idx = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                idx.add(int(head))
    if idx and idx != set(range(len(idx))):
        raise ValueError(f"Non-contiguous layer indices under {prefix!r}: {sorted(idx)}")
    return len(idx)


def stack_scan(params: Params) -> Params:
    """Converts ``encoder/block_i`` subtrees into the ``scan=True`` layout
    (``encoder/blocks`` with a leading ``[depth]`` axis), for configs with ``scan=True``."""

    def visit(node):
        if not isinstance(node, Mapping):
            return node
        node = {k: visit(v) for k, v in node.items()}
        blocks = sorted(
            (k for k in node if k.startswith("block_") and k[6:].isdigit()),
            key=lambda k: int(k[6:]),
        )
        if blocks:
            flat = [flatten(node.pop(k)) for k in blocks]
            node["blocks"] = unflatten({k: np.stack([f[k] for f in flat]) for k in flat[0]})
        return node

    return visit(params)


def unstack_scan(params: Params) -> Params:
    """Inverse of :func:`stack_scan`."""

    def visit(node):
        if not isinstance(node, Mapping):
            return node
        node = {k: visit(v) for k, v in node.items()}
        if "blocks" in node and isinstance(node["blocks"], Mapping):
            flat = flatten(node.pop("blocks"))
            depth = next(iter(flat.values())).shape[0]
            for i in range(depth):
                node[f"block_{i}"] = unflatten({k: v[i] for k, v in flat.items()})
        return node

    return visit(params)


# ------------------------------------------------------------------ Hugging Face folders


def read_hf_config(path: str) -> tuple[str, dict]:
    """(folder, its ``config.json``) for a Hugging Face model folder or a file in it.

    Raises:
      WeightFileMissing: no ``config.json``.
      WeightFileError: a ``config.json`` that is not a model config (an alignjax run's
        resolved config is named as such).
    """
    if os.path.isfile(path):
        path = os.path.dirname(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise WeightFileMissing(f"{path} has no config.json; is it a Hugging Face model folder?")
    hf = read_json(cfg_path)
    if "model_type" not in hf and "vision_config" not in hf:
        run = "model" in hf and "data" in hf  # an alignjax training run's resolved config
        raise WeightFileError(
            f"{cfg_path} is not a Hugging Face model config (no model_type, no vision_config)"
            + ("; this is an alignjax training workdir: use --from alignjax" if run else ".")
        )
    return path, hf


def read_hf_weights(path: str, what: str) -> tuple[dict[str, np.ndarray], str]:
    """(state dict, source name for messages) of a Hugging Face folder: ``model.safetensors``
    (no torch), ``pytorch_model.bin`` (torch) or the shards a ``model.safetensors.index.json``
    lists. ``what`` names the model kind in messages ('HF CLIPModel').

    Raises:
      WeightFileMissing: none of those files.
      WeightFileError: a damaged file, or an index naming tensors no shard holds.
    """
    for name in ("model.safetensors", "pytorch_model.bin"):
        wpath = os.path.join(path, name)
        if os.path.exists(wpath):
            return read_state_dict(wpath), f"{what} {wpath}"
    index = os.path.join(path, "model.safetensors.index.json")
    if not os.path.exists(index):
        raise WeightFileMissing(f"{path} has neither model.safetensors nor pytorch_model.bin.")
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise WeightFileError(f"{index} has no weight_map: damaged; re-download it.")
    sd: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        sd.update(read_safetensors(os.path.join(path, shard)))
    lost = sorted(set(weight_map) - set(sd))
    if lost:
        raise WeightFileError(
            f"{index} lists tensors no shard holds (e.g. {lost[0]!r} in "
            f"{weight_map[lost[0]]}): a shard is damaged or stale; re-download it."
        )
    return sd, f"{what} {path}"
