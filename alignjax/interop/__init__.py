"""Weight converters: released CLIP/SigLIP checkpoints <-> alignjax parameters.

Each ``from_*`` returns a :class:`Converted` (model config, numpy params, preprocess and
tokenizer settings); ``alignjax.load_pretrained`` wraps them in one call and
``python -m alignjax.convert`` writes them to disk for ``config.init_from``.

* :func:`from_hf` / :func:`to_hf`: Hugging Face ``CLIPModel`` folders, both ways.
* :func:`from_open_clip`: open_clip hub folders or state dicts + a model name/config.
* :func:`from_openai`: OpenAI's ``.pt`` TorchScript archives (needs torch).
* :func:`from_big_vision`: big_vision SigLIP / LiT ``.npz`` checkpoints.

``.safetensors`` and ``.npz`` are read without torch.
"""

from alignjax.interop.big_vision import from_big_vision
from alignjax.interop.common import Converted, read_safetensors, stack_scan, write_safetensors
from alignjax.interop.hf_clip import from_hf, to_hf
from alignjax.interop.open_clip import from_open_clip
from alignjax.interop.openai import from_openai

FORMATS = ("hf", "open_clip", "openai", "big_vision")

__all__ = [
    "FORMATS",
    "Converted",
    "convert",
    "from_big_vision",
    "from_hf",
    "from_open_clip",
    "from_openai",
    "read_safetensors",
    "stack_scan",
    "to_hf",
    "write_safetensors",
]


def convert(fmt: str, path: str, **kwargs) -> Converted:
    """Dispatches to ``from_<fmt>`` (fmt in :data:`FORMATS`); kwargs go to that function."""
    fns = dict(hf=from_hf, open_clip=from_open_clip, openai=from_openai, big_vision=from_big_vision)
    if fmt not in fns:
        raise ValueError(f"Unknown checkpoint format {fmt!r}. Valid: {', '.join(FORMATS)}.")
    return fns[fmt](path, **kwargs)
