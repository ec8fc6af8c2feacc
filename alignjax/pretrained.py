"""One call to use released weights: ``alignjax.load_pretrained(path)``.

    import alignjax
    clip = alignjax.load_pretrained("openai/clip-vit-base-patch32")   # a local HF folder
    x = clip.preprocess([pil_image])              # float32 [1, 224, 224, 3]
    t = clip.tokenizer(["a photo of a cat"])      # int32 [1, 77]
    out = clip.model.apply({"params": clip.params}, x, t)
    logits = out.logit_scale * out.zimg @ out.ztxt.T

``path`` may be a Hugging Face ``CLIPModel`` folder, an open_clip hub folder, an OpenAI
``.pt``, a big_vision ``.npz`` or an alignjax export written by ``python -m
alignjax.convert`` (``params.safetensors`` + ``model_config.json`` + ``preprocess.json`` +
``tokenizer.json``); the format is detected, or given with ``format=``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from alignjax import export, interop, models
from alignjax.data import clip_bpe, tokenizers
from alignjax.interop import common
from alignjax.interop.common import Converted

__all__ = [
    "Preprocess",
    "Pretrained",
    "detect_format",
    "load_pretrained",
    "read_export",
    "save_converted",
]

PREPROCESS_FILE = "preprocess.json"
TOKENIZER_FILE = "tokenizer.json"
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Image preprocessing that travels with pretrained weights.

    ``__call__(images) -> float32 [N, size, size, 3]``, ``(x / 255 - mean) / std``, where
    ``images`` is a PIL image, a uint8 ``[H, W, 3]`` array, a uint8 ``[N, H, W, 3]`` array
    or a list of the first two.

    Attributes:
      size: output side length.
      resize_mode: ``'shortest'``: resize the shortest side to ``size`` (the long side to
        ``int(size * long / short)``) then center-crop (OpenAI, open_clip, HF CLIP);
        ``'squash'``: resize both sides to ``size`` (big_vision/SigLIP).
      interpolation: PIL filter name (OpenAI: 'bicubic', SigLIP: 'bilinear').
      mean, std: per-channel statistics on the [0, 1] scale.
    """

    size: int = 224
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    mean: tuple = (0.48145466, 0.4578275, 0.40821073)
    std: tuple = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self):
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(
                f"resize_mode must be 'shortest' or 'squash', got {self.resize_mode!r}"
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}.")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def resize(self, image) -> np.ndarray:
        """One PIL image / uint8 HWC array -> uint8 [size, size, 3] (resized, cropped)."""
        if not isinstance(image, Image.Image):
            arr = np.asarray(image)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
                raise ValueError(
                    f"Preprocess takes PIL images or uint8 [H, W, 3] arrays, got {arr.dtype} "
                    f"{arr.shape}. Convert float images with (x * 255).round().astype(uint8)."
                )
            image = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
        image = image.convert("RGB")
        resample = getattr(Image.Resampling, self.interpolation.upper())
        w, h = image.size
        s = self.size
        if self.resize_mode == "squash":
            return np.asarray(image.resize((s, s), resample))
        # torchvision Resize(int) semantics: short side -> s, long side -> int(s * long/short)
        if w <= h:
            nw, nh = s, int(s * h / w)
        else:
            nw, nh = int(s * w / h), s
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), resample)
        top = int(round((nh - s) / 2.0))
        left = int(round((nw - s) / 2.0))
        return np.asarray(image.crop((left, top, left + s, top + s)))

    def __call__(self, images) -> np.ndarray:
        arr = images if isinstance(images, np.ndarray) else None
        if arr is not None and arr.ndim == 4:
            images = list(arr)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        x = np.stack([self.resize(im) for im in images]).astype(np.float32) / np.float32(255)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (x - mean) / std


class MissingTokenizer:
    """Stands in for a tokenizer whose vocabulary file was not found; calling it explains."""

    def __init__(self, message: str):
        self.message = message

    def __call__(self, texts):
        raise FileNotFoundError(self.message)

    def __repr__(self):
        return f"MissingTokenizer({self.message!r})"


@dataclasses.dataclass
class Pretrained:
    """What :func:`load_pretrained` returns.

    Attributes:
      model: ``alignjax.models.TwoTower`` (Flax module).
      params: nested dict of arrays, ``model.apply({'params': params}, images, tokens)``.
      preprocess: :class:`Preprocess` (images -> float32 [N, S, S, 3]).
      tokenizer: callable list[str] -> int32 [N, L] (an ``alignjax.data`` tokenizer).
      config: the resolved model config dict (``models.build(config)`` rebuilds ``model``).
      tokenizer_config: settings for ``data.build_tokenizer`` / a training config.
      source: the format the weights came from.
    """

    model: Any
    params: Any
    preprocess: Preprocess
    tokenizer: Callable
    config: dict
    tokenizer_config: dict
    source: str = ""

    @functools.cached_property
    def _encoders(self):
        def enc(method):
            return jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=method))

        return enc("encode_image"), enc("encode_text")

    def encode_image(self, images) -> np.ndarray:
        """Images (see :class:`Preprocess`) -> unit-norm float32 [N, D] (jitted)."""
        return np.asarray(self._encoders[0](self.params, self.preprocess(images)))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> unit-norm float32 [N, D] (jitted)."""
        return np.asarray(self._encoders[1](self.params, self.tokenizer(list(texts))))


def detect_format(path: str) -> str:
    """'alignjax' | 'hf' | 'open_clip' | 'openai' | 'big_vision' from the files at ``path``."""
    if os.path.isdir(path):
        if export.is_export(path):
            return "alignjax"
        if os.path.exists(os.path.join(path, "open_clip_config.json")):
            return "open_clip"
        if os.path.exists(os.path.join(path, "config.json")):
            return "hf"
        raise ValueError(
            f"Cannot tell the checkpoint format of folder {path}: expected params.safetensors "
            "(alignjax), config.json (Hugging Face) or open_clip_config.json (open_clip)."
        )
    if path.endswith(".npz"):
        return "big_vision"
    if path.endswith((".pt", ".pth", ".bin")):
        return "openai"
    if export.is_export(path):
        return "alignjax"
    raise ValueError(
        f"Cannot tell the checkpoint format of {path}; pass format= one of "
        f"alignjax, {', '.join(interop.FORMATS)}."
    )


def _build_tokenizer(cfg: dict):
    cfg = {k: v for k, v in cfg.items() if v is not None}
    try:
        if cfg.get("name") == "sentencepiece" and not cfg.get("model_path"):
            raise FileNotFoundError(
                "This checkpoint's text tower uses a SentencePiece model that is not stored "
                "with the weights; pass tokenizer_path='.../sentencepiece.model' (SigLIP "
                "English: big_vision's c4_en, gs://t5-data/vocabs/cc_en.32000/"
                "sentencepiece.model)."
            )
        return tokenizers.build_tokenizer(cfg)
    except FileNotFoundError as e:
        return MissingTokenizer(str(e))


def read_export(path: str) -> Converted:
    """An alignjax export folder/file (``save_converted``'s layout) as a :class:`Converted`.

    Reads ``params.safetensors`` / ``.msgpack`` with its model config and, when present
    beside it, ``preprocess.json`` and ``tokenizer.json`` (vocabulary paths made absolute).
    """
    params, mc = export.load(path)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    pp, tok = {}, {}
    if os.path.exists(os.path.join(folder, PREPROCESS_FILE)):
        with open(os.path.join(folder, PREPROCESS_FILE)) as f:
            pp = json.load(f)
    if os.path.exists(os.path.join(folder, TOKENIZER_FILE)):
        with open(os.path.join(folder, TOKENIZER_FILE)) as f:
            tok = json.load(f)
        for k in ("bpe_path", "vocab_path", "model_path"):
            if tok.get(k) and not os.path.isabs(tok[k]):
                tok[k] = os.path.join(folder, tok[k])
    return Converted(model_config=mc, params=params, preprocess=pp, tokenizer=tok)


def load_pretrained(
    path: str,
    *,
    format: str | None = None,  # pylint: disable=redefined-builtin
    model_name: str | None = None,
    tokenizer_path: str | None = None,
    dtype: str | None = None,
    scan: bool = False,
) -> Pretrained:
    """Loads released or converted weights with their preprocessing and tokenizer.

    Args:
      path: checkpoint file or folder (see module docstring).
      format: 'alignjax' | 'hf' | 'open_clip' | 'openai' | 'big_vision'; None: detected.
      model_name: open_clip model name for bare state dicts (e.g. 'ViT-B-32-quickgelu').
      tokenizer_path: CLIP BPE file (``bpe_simple_vocab_16e6.txt.gz`` / ``merges.txt``) or
        SentencePiece ``.model`` when it is not stored with the weights.
      dtype: compute dtype override ('bfloat16'); parameters stay float32.
      scan: build the model with ``scan=True`` (stacked layer params).

    Returns:
      :class:`Pretrained` with ``.model``, ``.params``, ``.preprocess``, ``.tokenizer``,
      ``.config``.
    """
    fmt = format or detect_format(path)
    if fmt == "alignjax":
        conv = read_export(path)
    elif fmt == "open_clip" or fmt == "openai" and model_name is not None:
        conv = interop.from_open_clip(path, model_name=model_name, bpe_path=tokenizer_path or "")
    elif fmt == "openai":
        conv = interop.from_openai(path, bpe_path=tokenizer_path or "")
    elif fmt == "big_vision":
        conv = interop.from_big_vision(path, tokenizer_path=tokenizer_path)
    elif fmt == "hf":
        conv = interop.from_hf(path)
    else:
        raise ValueError(f"Unknown format {fmt!r}; valid: alignjax, {', '.join(interop.FORMATS)}.")
    tok_cfg = dict(conv.tokenizer)
    if tokenizer_path and fmt in ("alignjax", "hf"):
        key = "model_path" if tok_cfg.get("name") == "sentencepiece" else "bpe_path"
        tok_cfg[key] = tokenizer_path
    mc = dict(conv.model_config)
    if dtype is not None:
        mc["dtype"] = dtype
    mc["scan"] = bool(scan or mc.get("scan", False))
    params = common_layout(conv.params, mc["scan"])
    cfg = models.resolve_model_config(mc)
    return Pretrained(
        model=models.build(cfg),
        params=params,
        preprocess=Preprocess(**conv.preprocess) if conv.preprocess else Preprocess(),
        tokenizer=_build_tokenizer(tok_cfg) if tok_cfg else MissingTokenizer("no tokenizer.json"),
        config=cfg,
        tokenizer_config=tok_cfg,
        source=fmt,
    )


def common_layout(params, scan: bool):
    """Params in the layer layout the model expects (stacked for ``scan=True``)."""
    return common.stack_scan(common.unstack_scan(params)) if scan else common.unstack_scan(params)


def save_converted(conv: Converted, out_dir: str) -> str:
    """Writes a converted checkpoint as an alignjax export that ``config.init_from`` and
    :func:`load_pretrained` read: ``params.safetensors`` (+ ``model_config.json``, via
    ``alignjax.export.save``), ``preprocess.json``, ``tokenizer.json`` and copies of the
    tokenizer's vocabulary files (paths in ``tokenizer.json`` are relative to ``out_dir``).
    Returns the params file written."""
    os.makedirs(out_dir, exist_ok=True)
    written = export.save(out_dir, conv.params, conv.model_config)
    with open(os.path.join(out_dir, PREPROCESS_FILE), "w") as f:
        json.dump(Preprocess(**conv.preprocess).to_dict(), f, indent=2)
    tok = dict(conv.tokenizer)
    if tok.get("name") == "clip_bpe" and not tok.get("bpe_path"):
        tok["bpe_path"] = clip_bpe.find_clip_bpe() or ""
    for k in ("bpe_path", "vocab_path", "model_path"):
        src = tok.get(k)
        if src and os.path.isfile(src):
            dst = os.path.join(out_dir, os.path.basename(src))
            if os.path.abspath(src) != os.path.abspath(dst):
                shutil.copyfile(src, dst)
            tok[k] = os.path.basename(src)
    with open(os.path.join(out_dir, TOKENIZER_FILE), "w") as f:
        json.dump(tok, f, indent=2)
    return written
