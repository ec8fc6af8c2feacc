"""Readers for weight files, which are not trusted: downloads get cut short, names lie.

Every reader fails with one :class:`WeightFileError` line naming the file (and the tensor
or entry to blame), chained to the library's own error, and never with advice to load
unsafely. ``.safetensors`` files are read with the ``safetensors`` library (memory-mapped;
the header is checked against the file before a tensor is read; bfloat16 arrives as
``ml_dtypes.bfloat16``), ``.npz`` with ``np.load(allow_pickle=False)``, PyTorch files with
``torch.load(weights_only=True)`` (``torch.jit.load`` for TorchScript archives): none of
them runs code from the file. torch is optional and imported only for ``.pt``/``.bin``.

A leaf module (numpy, ml_dtypes, safetensors) shared by ``alignjax.export`` and the
converters in ``alignjax.interop``.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from collections.abc import Mapping

import ml_dtypes  # noqa: F401 -- registers bfloat16 with numpy, which safetensors needs
import numpy as np
import safetensors

__all__ = [
    "MissingDependency",
    "WeightFileError",
    "WeightFileMissing",
    "damaged",
    "get_tensor",
    "import_torch",
    "open_safetensors",
    "read_json",
    "read_npz",
    "read_safetensors",
    "read_state_dict",
    "require_file",
    "safetensors_problem",
    "short_reason",
    "torch_state_dict",
]


class WeightFileError(ValueError):
    """A weights file that cannot be what it claims to be: another format, damaged or cut
    short. The message is one line naming the file (and the tensor, when one is to blame)."""


class WeightFileMissing(WeightFileError, FileNotFoundError):
    """A weights file or folder that is not there (a ValueError for the CLIs' one-line
    errors, a FileNotFoundError for callers that test for that)."""


class MissingDependency(ImportError, ValueError):
    """An optional package a format needs is not installed; the message says how to get it."""


def damaged(kind: str, path: str, reason: str) -> WeightFileError:
    """The one error for an unreadable weights file; never suggests unsafe loading."""
    return WeightFileError(f"not a {kind} or damaged: {path} ({reason}); re-download it")


def short_reason(e: BaseException | str, limit: int = 160) -> str:
    """The first line of an exception's message, shortened, for a one-line error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise WeightFileMissing(f"{path} does not exist (or is not a file).")


# ------------------------------------------------------------------------- safetensors

# Bytes per element of every safetensors dtype (also those numpy cannot hold).
_ST_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
# The largest header the safetensors library accepts (its MAX_HEADER_SIZE).
_ST_MAX_HEADER = 100_000_000


def safetensors_problem(path: str) -> str | None:
    """What is wrong with a ``.safetensors`` file, found from its header, or None.

    The library rejects bad files with messages that name no tensor ("incomplete metadata,
    file not fully covered"); this re-reads the header, bounded so that random bytes cannot
    make it read gigabytes, and names the first tensor that does not fit.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _ST_MAX_HEADER):
            return f"its first 8 bytes give a {n}-byte header but the file has {size} bytes"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in info["data_offsets"])
            shape, dtype = [int(d) for d in info["shape"]], str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r} has a malformed header entry"
        need = int(np.prod(shape, dtype=np.int64)) * _ST_ITEMSIZE.get(dtype, 0)
        if dtype in _ST_ITEMSIZE and end - start != need:
            return (
                f"tensor {name!r}: shape {shape} {dtype} needs {need} bytes, the header gives "
                f"it {end - start}"
            )
        if end > data:
            return (
                f"tensor {name!r} ends at byte {end} of the data, but the file holds only "
                f"{data} bytes of data: it is cut short"
            )
    return None


def open_safetensors(path: str):
    """``safetensors.safe_open(path, framework='numpy')``, failing with one clear line.

    The library memory-maps the file and checks the header against its size (offsets,
    shapes, dtypes, full coverage) here, before any tensor is read. Use as a context
    manager; ``get_tensor`` reads one tensor.
    """
    require_file(path)
    try:
        return safetensors.safe_open(path, framework="numpy")
    except (safetensors.SafetensorError, OSError) as e:
        raise damaged("safetensors file", path, safetensors_problem(path) or short_reason(e)) from e


def get_tensor(f, path: str, name: str) -> np.ndarray:
    """Tensor ``name`` of an open safetensors file ``f`` (from :func:`open_safetensors`)."""
    try:
        return f.get_tensor(name)
    except Exception as e:  # dtypes numpy lacks (F8), bad buffers, ...
        dtype = f.get_slice(name).get_dtype()
        raise WeightFileError(
            f"{path}: tensor {name!r} ({dtype}) cannot be read as a numpy array "
            f"({short_reason(e)})."
        ) from e


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as numpy arrays.

    Raises:
      WeightFileMissing: ``path`` does not exist.
      WeightFileError: not a safetensors file, or damaged (the message names the tensor).
    """
    with open_safetensors(path) as f:
        return {name: get_tensor(f, path, name) for name in f.keys()}  # noqa: SIM118


# ------------------------------------------------------------------------------- torch


def import_torch(what: str):
    """Imports torch or fails with a message that says what needs it and how to install it."""
    try:
        # torch: optional (the `torch` extra) and slow to import; only .pt/.bin need it.
        import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise MissingDependency(
            f"{what} needs PyTorch, which is not installed. Install the CPU build with "
            "`pip install torch==2.13.0` (or `pip install 'alignjax[torch]'`), or convert "
            "the weights to .safetensors elsewhere (safetensors and .npz need no torch)."
        ) from e
    return torch


_TORCH_KIND = "PyTorch checkpoint"


def _torch_error(path: str, e: BaseException) -> WeightFileError:
    """Why torch could not read a file, without torch's advice to unpickle unsafely."""
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:  # an intact file that holds more than tensors: re-downloading will not help
        return WeightFileError(
            f"{path} pickles Python objects besides tensors ({found.group(1)}), which "
            "alignjax does not unpickle (that could run code); save only the state dict "
            "(torch.save(model.state_dict(), path)) or convert it to .safetensors."
        )
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return damaged(_TORCH_KIND, path, short_reason(text or e))


def _zip_problem(path: str, pickle_ok: bool = False) -> str | None:
    """Why ``path`` is not a readable zip archive (what .npz and torch.save write), or None.

    ``pickle_ok``: a pickle (torch.save's format before torch 1.6) passes too. Checked
    first so that a random or cut-short file gets this reason, not the reader's guess.
    """
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        return "a zip archive that is cut short or damaged"
    if pickle_ok and magic[:1] == b"\x80":
        return None
    return "neither a zip archive nor a pickle" if pickle_ok else "not a zip archive"


def _is_torchscript(path: str) -> bool:
    """TorchScript archives are zips holding ``<name>/constants.pkl`` and ``<name>/code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") for n in z.namelist())


def torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Loads a PyTorch checkpoint (pickle or TorchScript archive) as numpy arrays.

    TorchScript archives (OpenAI's released ``.pt`` files) are read with
    ``torch.jit.load``; plain pickles with ``torch.load(weights_only=True)``, which runs no
    code from the file. A dict with a ``'state_dict'`` entry (open_clip training
    checkpoints) is unwrapped and a leading ``'module.'`` (DDP) is stripped.

    Raises:
      MissingDependency: torch is not installed.
      WeightFileMissing: no such file.
      WeightFileError: torch cannot read it, or it holds no tensors.
    """
    torch = import_torch(f"Reading {os.path.basename(path)}")
    require_file(path)
    try:
        problem = _zip_problem(path, pickle_ok=True)
        if problem is None:
            if _is_torchscript(path):
                sd = torch.jit.load(path, map_location="cpu").state_dict()
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file.
        raise _torch_error(path, e) from e
    if problem:
        raise damaged(_TORCH_KIND, path, problem)
    if isinstance(sd, Mapping) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise damaged(_TORCH_KIND, path, f"it holds a {type(sd).__name__}, not a state dict")
    out = {}
    for k, v in sd.items():
        if not hasattr(v, "detach"):
            continue
        k = str(k).removeprefix("module.")
        v = v.detach().cpu()
        out[k] = v.float().numpy() if v.is_floating_point() else v.numpy()
    if not out:
        raise damaged(_TORCH_KIND, path, "it holds no tensors")
    return out


# --------------------------------------------------------------------------- npz, json

_NPZ_KIND = "NumPy .npz file"


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, refusing pickled (object) arrays.

    Raises:
      WeightFileMissing: no such file.
      WeightFileError: not an npz, damaged or cut short (naming the entry), or an entry
        holds pickled Python objects (never unpickled: that could run code).
    """
    require_file(path)
    problem = _zip_problem(path)
    if problem:
        raise damaged(_NPZ_KIND, path, problem)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # BadZipFile, OSError, ValueError, EOFError, ...
        raise damaged(_NPZ_KIND, path, short_reason(e)) from e
    out = {}
    with z:
        for k in z.files:
            try:
                out[k] = z[k]
            except Exception as e:  # a cut-short or corrupt member, ...
                if isinstance(e, ValueError) and "pickle" in str(e):
                    raise WeightFileError(
                        f"{path}: entry {k!r} holds pickled Python objects, which alignjax "
                        "does not load (unpickling can run code); save plain arrays instead."
                    ) from e
                raise damaged(_NPZ_KIND, path, f"entry {k!r}: {short_reason(e)}") from e
    return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """``.safetensors`` (no torch) or a PyTorch checkpoint (torch) -> numpy arrays."""
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return torch_state_dict(path)


def read_json(path: str) -> dict:
    """A JSON object from ``path``; damaged or non-object files fail naming the file."""
    require_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise WeightFileError(
            f"{path} is not valid JSON ({short_reason(e)}); re-download it"
        ) from e
    if not isinstance(out, dict):
        raise WeightFileError(f"{path} holds a JSON {type(out).__name__}, not an object.")
    return out
