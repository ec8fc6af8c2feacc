"""Weight converters: released CLIP/SigLIP checkpoints <-> alignjax parameters.

Each ``from_*`` returns a :class:`Converted` (model config, numpy params, preprocess and
tokenizer settings); ``alignjax.load_pretrained`` wraps them in one call and
``python -m alignjax.convert`` writes them to disk for ``config.init_from``.

* :func:`from_hf` / :func:`to_hf`: Hugging Face ``CLIPModel`` folders, both ways;
  :func:`from_hf` also reads ``SiglipModel`` (SigLIP, SigLIP 2) and fixed-resolution
  ``Siglip2Model`` folders (``hf_siglip``).
* :func:`from_open_clip`: open_clip hub folders or state dicts + a model name/config.
* :func:`from_openai`: OpenAI's ``.pt`` TorchScript archives (needs torch).
* :func:`from_big_vision`: big_vision SigLIP, SigLIP 2 and LiT ``.npz`` checkpoints.

``.safetensors`` and ``.npz`` are read without torch.
"""

from alignjax.interop import common, hf_siglip
from alignjax.interop.big_vision import from_big_vision
from alignjax.interop.common import Converted, read_safetensors, stack_scan, write_safetensors
from alignjax.interop.hf_clip import from_hf_clip, to_hf
from alignjax.interop.hf_siglip import from_hf_siglip
from alignjax.interop.open_clip import from_open_clip
from alignjax.interop.openai import from_openai

FORMATS = ("hf", "open_clip", "openai", "big_vision")

__all__ = [
    "FORMATS",
    "Converted",
    "convert",
    "from_big_vision",
    "from_hf",
    "from_hf_clip",
    "from_hf_siglip",
    "from_open_clip",
    "from_openai",
    "read_safetensors",
    "stack_scan",
    "to_hf",
    "write_safetensors",
]


def from_hf(path: str) -> Converted:
    """Converts a Hugging Face model folder (or a file in it) by its ``config.json``'s
    ``model_type``: 'clip' (:func:`from_hf_clip`), 'siglip' / 'siglip2'
    (:func:`from_hf_siglip`)."""
    _, hf = common.read_hf_config(path)
    if hf.get("model_type") in hf_siglip.MODEL_TYPES:
        return from_hf_siglip(path)
    return from_hf_clip(path)


def convert(fmt: str, path: str, **kwargs) -> Converted:
    """Dispatches to ``from_<fmt>`` (fmt in :data:`FORMATS`); kwargs go to that function."""
    fns = dict(hf=from_hf, open_clip=from_open_clip, openai=from_openai, big_vision=from_big_vision)
    if fmt not in fns:
        raise ValueError(f"Unknown checkpoint format {fmt!r}. Valid: {', '.join(FORMATS)}.")
    return fns[fmt](path, **kwargs)
