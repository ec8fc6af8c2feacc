"""Convert released weights into an alignjax export, or an alignjax model back to HF CLIP.

    # into alignjax (a folder that config.init_from and alignjax.load_pretrained read)
    python -m alignjax.convert --from hf /ckpt/clip-vit-base-patch32 --out /ckpt/b32
    python -m alignjax.convert --from open_clip /ckpt/laion-b32 --out /ckpt/b32_laion
    python -m alignjax.convert --from open_clip b32.safetensors --model-name ViT-B-32 --out D
    python -m alignjax.convert --from openai ViT-B-32.pt --out /ckpt/b32_openai   # torch
    python -m alignjax.convert --from big_vision webli_en_b16_224.npz \\
        --tokenizer-path c4_en.model --out /ckpt/siglip_b16
    python -m alignjax.convert --from big_vision siglip2_b16_224.npz \\
        --tokenizer-path siglip2/tokenizer.json --out /ckpt/siglip2_b16
    # a SigLIP / SigLIP 2 / CLIP model already in the local Hugging Face cache (offline)
    python -m alignjax.convert --from hf hf-hub:google/siglip2-base-patch16-224 --out D

    # back to a Hugging Face CLIPModel folder (from an export, a run or any format above)
    python -m alignjax.convert --from alignjax /ckpt/b32 --to hf --out /ckpt/b32_hf
    python -m alignjax.convert --from alignjax runs/clip --to hf --out /ckpt/run_hf

The output folder holds ``params.safetensors`` + ``model_config.json`` (``alignjax.export``
format), ``preprocess.json`` and ``tokenizer.json`` (with copies of the vocabulary files).
"""

from __future__ import annotations

import argparse
import os
import sys

from alignjax import errors, hub, interop, pretrained, weight_files


def run(
    fmt: str,
    path: str,
    out: str,
    *,
    to: str = "alignjax",
    model_name: str | None = None,
    tokenizer_path: str | None = None,
    step: int | None = None,
) -> str:
    """Converts ``path`` (format ``fmt``) and writes it to ``out``; returns what was written.

    ``fmt='alignjax'`` also takes a training workdir (its newest good checkpoint, or
    ``step``). Every failure is a ValueError (or subclass) with one line naming the file.
    """
    if fmt not in pretrained.FORMATS:
        raise ValueError(f"Unknown --from {fmt!r}; valid: {', '.join(pretrained.FORMATS)}.")
    if to not in ("alignjax", "hf"):
        raise ValueError(f"Unknown --to {to!r}; valid: alignjax, hf.")
    path = hub.resolve(path)  # hf-hub:ORG/NAME -> its folder in the local HF cache
    if not os.path.exists(path):
        raise weight_files.WeightFileMissing(f"{path} does not exist.")
    _, conv = pretrained.read_source(
        path, fmt, model_name=model_name, tokenizer_path=tokenizer_path, step=step
    )
    if conv.preprocess:  # weights that do not fit their config are not written out
        pretrained.check_converted(conv, f"{path} ({fmt})")
    if to == "alignjax":
        return pretrained.save_converted(conv, out)
    return interop.to_hf(
        conv.params,
        conv.model_config,
        out,
        preprocess=conv.preprocess or None,
        tokenizer=conv.tokenizer or None,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m alignjax.convert",
        description="Convert CLIP, SigLIP and SigLIP 2 checkpoints to alignjax "
        "(or alignjax to HF CLIPModel).",
    )
    p.add_argument(
        "--from",
        dest="fmt",
        required=True,
        choices=("alignjax",) + interop.FORMATS,
        help="source format (alignjax: an export, or a training workdir)",
    )
    p.add_argument(
        "path", help="checkpoint file or folder, or hf-hub:ORG/NAME (local Hugging Face cache)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--step", type=int, default=None, help="workdir step (default: newest good)")
    p.add_argument("--to", default="alignjax", choices=("alignjax", "hf"), help="output format")
    p.add_argument("--model-name", default=None, help="open_clip model name (state dicts)")
    p.add_argument(
        "--tokenizer-path",
        default=None,
        help="CLIP BPE vocabulary, SentencePiece .model or tokenizer.json, when not stored "
        "with the weights",
    )
    a = p.parse_args(argv)
    written = run(
        a.fmt,
        a.path,
        a.out,
        to=a.to,
        model_name=a.model_name,
        tokenizer_path=a.tokenizer_path,
        step=a.step,
    )
    print(f"Wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(errors.run_main(main))
