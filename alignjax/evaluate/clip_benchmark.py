"""Adapter so LAION CLIP_benchmark can evaluate an alignjax checkpoint directly.

CLIP_benchmark loads a model through `clip_benchmark.models.load_clip(model_type, model_name,
pretrained, cache_dir, device)`, which must return `(model, transform, tokenizer)` with
  model.encode_image(images [B, 3, H, W] torch) -> [B, D] torch,
  model.encode_text(tokens) -> [B, D] torch,   model.eval(),
  transform(PIL image) -> [3, H, W] torch,     tokenizer(list[str]) -> tokens (torch int).
This module provides them (torch is needed only for this bridge; the embeddings are computed
by the jitted JAX model on the default mesh):

  python -m alignjax.evaluate.clip_benchmark eval --model_type alignjax \\
      --model /path/to/workdir --pretrained latest --no_amp \\
      --dataset wds/mydata --dataset_root /data/mydata_wds \\
      --task zeroshot_classification --num_workers 2 --output result.json

`--no_amp` keeps CLIP_benchmark's own logits float32 on CPU (autocast means bfloat16 there);
a `wds/` dataset needs `--num_workers` <= its shard count. Installing CLIP_benchmark (its
CLI needs torchvision and open_clip built for your torch; its metrics need numpy < 2.4):
docs/EVALUATION.md.

`--model` is a training workdir (its config.json and checkpoints/), `--pretrained` a step
number or 'latest'. The entry point registers the 'alignjax' model type with CLIP_benchmark
and then runs its own CLI with the remaining arguments. From Python:
`model, transform, tokenizer = load_alignjax('/path/to/workdir', 'latest')`; the objects also
work without torch on numpy arrays (`encode_image` of NHWC or NCHW float images).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import numpy as np
from PIL import Image

from alignjax import errors, restore, weight_files
from alignjax.data import transforms as T
from alignjax.evaluate.embed import Embedder

try:  # torch is optional: only CLIP_benchmark's side needs it.
    import torch

    _Module = torch.nn.Module
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None
    _Module = object


def _to_numpy(x) -> tuple[np.ndarray, Any]:
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.cpu().numpy(), x
    return np.asarray(x), None


def _like(z: np.ndarray, ref) -> Any:
    if ref is not None:
        return torch.from_numpy(np.ascontiguousarray(z)).to(ref.device)
    return z


class AlignjaxCLIP(_Module):
    """`encode_image` / `encode_text` of an alignjax model with fixed parameters."""

    def __init__(self, model, params, mesh, batch_size: int = 256):
        super().__init__()
        self._params = params
        self._embedder = Embedder(model, mesh, batch_size)

    def encode_image(self, images):
        """[B, 3, H, W] (torch / CLIP_benchmark) or [B, H, W, 3] -> [B, D], L2-normalised."""
        x, ref = _to_numpy(images)
        if x.ndim == 4 and x.shape[1] == 3 and x.shape[-1] != 3:
            x = np.transpose(x, (0, 2, 3, 1))  # NCHW -> NHWC
        return _like(self._embedder.images(self._params, x.astype(np.float32)), ref)

    def encode_text(self, tokens):
        """[B, L] int tokens (from `tokenizer`) -> [B, D], L2-normalised."""
        x, ref = _to_numpy(tokens)
        return _like(self._embedder.texts(self._params, x.astype(np.int32)), ref)

    def forward(self, images, tokens):
        return self.encode_image(images), self.encode_text(tokens)


class Transform:
    """PIL image -> float [3, H, W] (torch if installed): the eval crop and normalisation."""

    def __init__(self, image_size: int, normalize: str):
        self.image_size = image_size
        self.normalize = normalize

    def __call__(self, image: Image.Image):
        img = image.convert('RGB') if isinstance(image, Image.Image) else image
        x = T.crop_resize(img, 'center', self.image_size)  # resize shortest side, center crop
        x = np.transpose(T.normalize_image(x, self.normalize), (2, 0, 1))
        return torch.from_numpy(np.ascontiguousarray(x)) if torch is not None else x


class Tokenizer:
    """list[str] -> int [B, L] (torch if installed) with the run's tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = np.asarray(self.tokenizer(texts), np.int64)
        return torch.from_numpy(tokens) if torch is not None else tokens


def load_alignjax(
    model_name: str,
    pretrained: str | int | None = 'latest',
    cache_dir: str | None = None,
    device: Any = 'cpu',
    batch_size: int = 256,
):
    """(model, transform, tokenizer) for the checkpoint `pretrained` of workdir `model_name`.

    `model_name`: a training workdir (config.json + checkpoints/). `pretrained`: a step, or
    'latest'/None for the newest. `cache_dir` and `device` are CLIP_benchmark's arguments and
    are ignored: JAX places the computation on its own devices.
    """
    del cache_dir, device
    step = None if pretrained in (None, '', 'latest') else int(pretrained)
    run = restore.load_run(
        restore.load_config(model_name), os.path.join(model_name, 'checkpoints'), step
    )
    model = AlignjaxCLIP(run.model, run.params, run.mesh, batch_size)
    transform = Transform(run.config.data.image_size, run.config.data.normalize)
    return model, transform, Tokenizer(run.tokenizer)


def register() -> None:
    """Adds model type 'alignjax' to CLIP_benchmark's registry (`--model_type alignjax`).

    Raises:
      ImportError: CLIP_benchmark, or a package its model registry imports (open_clip,
        torchvision), is missing; the message says which (see `import_cli`).
    """
    from clip_benchmark import models as cb_models

    cb_models.TYPE2FUNC['alignjax'] = load_alignjax
    if 'alignjax' not in cb_models.MODEL_TYPES:
        cb_models.MODEL_TYPES.append('alignjax')


def import_cli():
    """`clip_benchmark.cli` with the 'alignjax' model type registered.

    CLIP_benchmark's CLI imports open_clip (its model registry), torchvision (its dataset
    builder), webdataset and scikit-learn at start-up, whatever the model and dataset; only
    its metric functions (`clip_benchmark.metrics`) need no more than torch and scikit-learn.

    Raises:
      SystemExit: one line saying whether CLIP_benchmark itself is missing, or which of the
        packages it imports is missing or broken (e.g. a torchvision built for another
        torch), and what to install.
    """
    if importlib.util.find_spec('clip_benchmark') is None:
        raise SystemExit(
            'CLIP_benchmark is not installed: pip install clip-benchmark (its CLI also needs '
            'torchvision and open_clip_torch matching your torch; see docs/EVALUATION.md).'
        )
    try:
        register()
        from clip_benchmark import cli
    except ImportError as e:
        missing = getattr(e, 'name', None) or str(e)
        reason = weight_files.short_reason(e)
        raise SystemExit(
            f'CLIP_benchmark is installed, but {missing!r}, which its CLI imports, is '
            f'missing ({reason}); install it (CLIP_benchmark needs torchvision, '
            'open_clip_torch, webdataset and scikit-learn; see docs/EVALUATION.md).'
        ) from None
    except Exception as e:  # noqa: BLE001 -- e.g. torchvision's ops failing to load
        reason = weight_files.short_reason(e)
        raise SystemExit(
            'CLIP_benchmark is installed, but importing its CLI failed '
            f'({type(e).__name__}: {reason}); a torchvision built for another '
            'torch fails this way: install the torchvision release made for your torch.'
        ) from None
    return cli


def main(argv: list[str] | None = None) -> None:
    """`python -m alignjax.evaluate.clip_benchmark <clip_benchmark arguments>`."""
    cli = import_cli()
    sys.argv = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    cli.main()


if __name__ == '__main__':
    errors.run_main(main)
