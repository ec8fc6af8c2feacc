"""One call to use released weights or your own run: ``alignjax.load_pretrained(path)``.

    import alignjax
    clip = alignjax.load_pretrained("openai/clip-vit-base-patch32")   # a local HF folder
    x = clip.preprocess([pil_image])              # float32 [1, 224, 224, 3]
    t = clip.tokenizer(["a photo of a cat"])      # int32 [1, 77]
    out = clip.model.apply({"params": clip.params}, x, t)
    logits = out.logit_scale * out.zimg @ out.ztxt.T

``path`` may be a Hugging Face ``CLIPModel`` or ``SiglipModel`` / ``Siglip2Model`` folder
(SigLIP, SigLIP 2), a name ``hf-hub:ORG/NAME`` of one in the local Hugging Face cache (read
offline, ``alignjax.hub``), an open_clip hub folder, an OpenAI
``.pt``, a big_vision ``.npz``, an alignjax export (``python -m alignjax.export`` or
``python -m alignjax.convert``: the params file with the model config, preprocessing and
tokenizer it records) or an alignjax training workdir (its newest good checkpoint, with the
run's own config); the format is detected, or given with ``format=``. Nothing is guessed:
an export that does not record its preprocessing or tokenizer is refused with a message
saying what to pass (``preprocess=``, ``tokenizer=``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from PIL import Image

from alignjax import export, hub, interop, models, weight_files
from alignjax.data import clip_bpe, tokenizers, transforms
from alignjax.interop import common
from alignjax.interop.common import Converted

__all__ = [
    "Preprocess",
    "Pretrained",
    "check_against_model",
    "check_converted",
    "detect_format",
    "load_pretrained",
    "read_export",
    "read_source",
    "save_converted",
]

PREPROCESS_FILE = export.PREPROCESS_FILE
TOKENIZER_FILE = export.TOKENIZER_FILE
FORMATS = ("alignjax", "run") + interop.FORMATS
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
# What the data pipeline's crop_resize (resize_mode 'center') supports.
_CENTER_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
_RESIZE_MODES = ("shortest", "squash", "center")


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
        ``'squash'``: resize both sides to ``size`` (big_vision/SigLIP); ``'center'``: cut
        the central square and resize it in one step (alignjax's own eval transform,
        ``data.transforms.crop_resize(..., 'center', ...)``: what a run was evaluated with).
      interpolation: PIL filter name (OpenAI: 'bicubic', SigLIP: 'bilinear').
      mean, std: per-channel statistics on the [0, 1] scale.
    """

    size: int = 224
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    mean: tuple = (0.48145466, 0.4578275, 0.40821073)
    std: tuple = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self):
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"resize_mode must be one of {_RESIZE_MODES}, got {self.resize_mode!r}"
            )
        valid = _CENTER_INTERPOLATIONS if self.resize_mode == "center" else _INTERPOLATIONS
        if self.interpolation not in valid:
            raise ValueError(
                f"interpolation={self.interpolation!r} with resize_mode={self.resize_mode!r}; "
                f"valid: {valid}."
            )
        if int(self.size) <= 0:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(float(v) for v in self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0: {self.mean}, {self.std}")
        object.__setattr__(self, "size", int(self.size))
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
        if self.resize_mode == "center":
            return transforms.crop_resize(
                image, "center", self.size, interpolation=self.interpolation
            )
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
    """One of :data:`FORMATS` from the files at ``path``: 'alignjax' (an export), 'run' (a
    training workdir, its checkpoints or one step), 'hf', 'open_clip', 'openai',
    'big_vision'."""
    path = hub.resolve(path)
    if not os.path.exists(path):
        raise weight_files.WeightFileMissing(f"{path} does not exist.")
    if os.path.isdir(path):
        if export.is_export(path):
            return "alignjax"
        if export.is_run(path):
            return "run"
        if os.path.exists(os.path.join(path, "open_clip_config.json")):
            return "open_clip"
        if os.path.exists(os.path.join(path, "config.json")):
            return "hf"
        raise ValueError(
            f"Cannot tell the checkpoint format of folder {path}: expected params.safetensors "
            "(alignjax export), checkpoints/ (alignjax run), config.json (Hugging Face) or "
            "open_clip_config.json (open_clip)."
        )
    if path.endswith(".npz"):
        return "big_vision"
    if path.endswith((".pt", ".pth", ".bin")):
        return "openai"
    if export.is_export(path):
        return "alignjax"
    raise ValueError(
        f"Cannot tell the checkpoint format of {path}; pass format= one of {', '.join(FORMATS)}."
    )


def _build_tokenizer(cfg: dict):
    cfg = {k: v for k, v in cfg.items() if v is not None}
    try:
        if cfg.get("name") == "sentencepiece" and not cfg.get("model_path"):
            raise FileNotFoundError(
                "This checkpoint's text tower uses a SentencePiece model that is not stored "
                "with the weights; pass tokenizer_path='.../sentencepiece.model' (SigLIP "
                "English: big_vision's c4_en, gs://t5-data/vocabs/cc_en.32000/"
                "sentencepiece.model; SigLIP 2: the Gemma tokenizer, e.g. the tokenizer.json "
                "of a Hugging Face google/siglip2-* folder)."
            )
        return tokenizers.build_tokenizer(cfg)
    except FileNotFoundError as e:
        return MissingTokenizer(str(e))


def _as_converted(e: export.Exported) -> Converted:
    return Converted(
        model_config=e.model_config,
        params=e.params,
        preprocess=e.preprocess or {},
        tokenizer=e.tokenizer or {},
    )


def read_export(path: str) -> Converted:
    """An alignjax export folder/file (``alignjax.export``'s layout) as a :class:`Converted`:
    params, model config and, when the export records them, preprocessing and tokenizer
    (vocabulary paths absolute; empty dicts when not recorded)."""
    return _as_converted(export.read(path))


def read_source(
    path: str,
    fmt: str | None = None,
    *,
    model_name: str | None = None,
    tokenizer_path: str | None = None,
    step: int | None = None,
) -> tuple[str, Converted]:
    """(format, :class:`Converted`) for weights in any of :data:`FORMATS` (``fmt`` None:
    detected); what :func:`load_pretrained` and ``python -m alignjax.convert`` read.
    ``hf-hub:ORG/NAME`` names are resolved from the local Hugging Face cache first."""
    path = hub.resolve(path)
    fmt = fmt or detect_format(path)
    if fmt == "alignjax" and not export.is_export(path) and export.is_run(path):
        fmt = "run"  # `--from alignjax` / format='alignjax' on a training workdir
    if fmt == "alignjax":
        conv = read_export(path)
    elif fmt == "run":
        conv = _as_converted(export.read_run(path, step, tokenizer_path))
    elif fmt == "open_clip" or fmt == "openai" and model_name is not None:
        conv = interop.from_open_clip(path, model_name=model_name, bpe_path=tokenizer_path or "")
    elif fmt == "openai":
        conv = interop.from_openai(path, bpe_path=tokenizer_path or "")
    elif fmt == "big_vision":
        conv = interop.from_big_vision(path, tokenizer_path=tokenizer_path)
    elif fmt == "hf":
        conv = interop.from_hf(path)
    else:
        raise ValueError(f"Unknown format {fmt!r}; valid: {', '.join(FORMATS)}.")
    if tokenizer_path and fmt in ("alignjax", "hf") and conv.tokenizer:
        tok = dict(conv.tokenizer)
        if tok.get("name") in ("sentencepiece", "hf"):
            tok.update(name=common.sentencepiece_or_hf(tokenizer_path), model_path=tokenizer_path)
        else:
            tok["bpe_path"] = tokenizer_path
        conv.tokenizer = tok
    return fmt, conv


def _missing(path: str, what: str, arg: str, example: str) -> ValueError:
    return ValueError(
        f"{path} does not record its {what} (an export written before alignjax stored it); "
        f"nothing is guessed: pass {arg}={example}, or re-export the run with "
        "python -m alignjax.export, which now records it."
    )


def check_against_model(params, model, preprocess: Preprocess, source: str) -> None:
    """Fails, naming the parameter and both shapes, unless ``params`` fit ``model`` fed
    ``preprocess.size`` images (a wrong size shows up as a position-embedding mismatch)."""
    text_len = int(dict(model.text or {}).get("context_length") or 1)
    images = jax.ShapeDtypeStruct((1, preprocess.size, preprocess.size, 3), np.float32)
    tokens = jax.ShapeDtypeStruct((1, text_len), np.int32)
    try:
        abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, tokens)
    except Exception as e:  # e.g. a size the patch size does not divide
        raise ValueError(
            f"{source}: the model cannot take {preprocess.size}x{preprocess.size} images "
            f"({weight_files.short_reason(e)})."
        ) from e
    expected = nn.meta.unbox(abstract)["params"]
    have = np.shape(common.flatten(params).get("img/pos_embedding", ()))
    want = common.flatten(expected).get("img/pos_embedding")
    if want is not None and have and tuple(have) != tuple(want.shape):
        raise ValueError(
            f"{source}: {preprocess.size} px images need an image position embedding of shape "
            f"{tuple(want.shape)}, the weights hold {tuple(have)}: the preprocessing size does "
            "not fit this model; pass preprocess with the size it was trained at."
        )
    common.check_params_match(params, expected, source)


def check_converted(conv: Converted, source: str) -> None:
    """:func:`check_against_model` for a :class:`Converted` (before it is written out)."""
    mc = models.resolve_model_config({**conv.model_config, "scan": False})
    pp = Preprocess(**export.check_preprocess(conv.preprocess, source))
    check_against_model(common.unstack_scan(conv.params), models.build(mc), pp, source)


def load_pretrained(
    path: str,
    *,
    format: str | None = None,  # pylint: disable=redefined-builtin
    model_name: str | None = None,
    tokenizer_path: str | None = None,
    preprocess: Preprocess | dict | None = None,
    tokenizer: dict | None = None,
    step: int | None = None,
    dtype: str | None = None,
    scan: bool = False,
) -> Pretrained:
    """Loads released or converted weights, or a run, with their preprocessing and tokenizer.

    Args:
      path: checkpoint file or folder, export, or training workdir (see module docstring).
      format: one of :data:`FORMATS`; None: detected.
      model_name: open_clip model name for bare state dicts (e.g. 'ViT-B-32-quickgelu').
      tokenizer_path: CLIP BPE file (``bpe_simple_vocab_16e6.txt.gz`` / ``merges.txt``) or
        SentencePiece ``.model`` when it is not stored with the weights.
      preprocess: :class:`Preprocess` (or its fields as a dict) to use instead of the
        recorded one; required for exports that do not record theirs.
      tokenizer: tokenizer config dict (``config.tokenizer``'s fields) instead of the
        recorded one; required for exports that do not record theirs.
      step: for a training workdir, the step to load (None: the newest good one).
      dtype: compute dtype override ('bfloat16'); parameters stay float32.
      scan: build the model with ``scan=True`` (stacked layer params).

    Returns:
      :class:`Pretrained` with ``.model``, ``.params``, ``.preprocess``, ``.tokenizer``,
      ``.config``.

    Raises:
      ValueError: unreadable or damaged files (``weight_files.WeightFileError``, naming the
        file and tensor), weights that do not fit their config or the preprocessing size
        (naming the parameter and both shapes), or an export that does not record its
        preprocessing or tokenizer (saying what to pass).
    """
    fmt, conv = read_source(
        path, format, model_name=model_name, tokenizer_path=tokenizer_path, step=step
    )
    if isinstance(preprocess, Preprocess):
        pp = preprocess
    elif preprocess is not None:
        pp = Preprocess(**export.check_preprocess(dict(preprocess), "preprocess="))
    elif conv.preprocess:
        pp = Preprocess(**export.check_preprocess(conv.preprocess, f"{path} ({fmt})"))
    else:
        example = "dict(size=..., resize_mode='center', interpolation='bicubic', mean=..., std=...)"
        raise _missing(path, "image preprocessing", "preprocess", example)
    tok_cfg = dict(tokenizer) if tokenizer is not None else dict(conv.tokenizer)
    if not tok_cfg:
        raise _missing(
            path, "tokenizer", "tokenizer", "dict(name=..., ...) (the run's config.tokenizer)"
        )
    mc = dict(conv.model_config)
    if dtype is not None:
        mc["dtype"] = dtype
    mc["scan"] = bool(scan or mc.get("scan", False))
    params = common_layout(conv.params, mc["scan"])
    cfg = models.resolve_model_config(mc)
    model = models.build(cfg)
    check_against_model(params, model, pp, f"{path} ({fmt})")
    return Pretrained(
        model=model,
        params=params,
        preprocess=pp,
        tokenizer=_build_tokenizer(tok_cfg),
        config=cfg,
        tokenizer_config=tok_cfg,
        source=fmt,
    )


def common_layout(params, scan: bool):
    """Params in the layer layout the model expects (stacked for ``scan=True``)."""
    return common.stack_scan(common.unstack_scan(params)) if scan else common.unstack_scan(params)


def save_converted(conv: Converted, out_dir: str) -> str:
    """Writes a converted checkpoint as an alignjax export that ``config.init_from`` and
    :func:`load_pretrained` read (``alignjax.export.save``: ``params.safetensors`` with the
    model config, preprocessing and tokenizer in its metadata, the same as
    ``model_config.json``, ``preprocess.json`` and ``tokenizer.json``, and copies of the
    tokenizer's vocabulary files, named relative to ``out_dir``). Returns the file written."""
    tok = dict(conv.tokenizer)
    if tok.get("name") == "clip_bpe" and not tok.get("bpe_path"):
        tok["bpe_path"] = clip_bpe.find_clip_bpe() or ""
    # A vocabulary the source names but does not have (an HF folder without merges.txt)
    # stays unnamed; load_pretrained then asks for tokenizer_path.
    tok = {k: v for k, v in tok.items() if k not in export.VOCAB_FIELDS or os.path.isfile(v or "")}
    return export.save(
        out_dir,
        conv.params,
        conv.model_config,
        preprocess=Preprocess(**conv.preprocess).to_dict(),
        tokenizer=tok,
    )
