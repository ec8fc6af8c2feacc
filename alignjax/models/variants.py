"""Named transformer sizes ("B/16", "So400m/14", "L", ...).

The table follows big_vision's ViT size names (Table 2 of arXiv:2106.04560 plus the
shape-optimised So400m of arXiv:2305.13035). The same letters size the text towers
(big_vision's text transformer reuses the ViT table): a bare name such as ``"B"`` gives
width/depth/mlp_dim/num_heads without a patch size.

Note that OpenAI CLIP's text towers are *not* in this table: CLIP B/16's text tower is
width 512, 8 heads, 12 layers (spell those out explicitly).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

# name: (width, depth, mlp_dim, num_heads)
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}

SIZE_FIELDS = ("width", "depth", "mlp_dim", "num_heads")

_VARIANT_RE = re.compile(r"^(?P<name>[A-Za-z0-9-]+?)(?:/(?P<patch>\d+))?$")


def parse_vit_variant(variant: str) -> dict[str, Any]:
    """Turns a size name into transformer hyper-parameters.

    Args:
      variant: ``"<size>"`` or ``"<size>/<patch>"``; size is one of ``VIT_SIZES``
        (case-sensitive, as in the papers: ``"So400m"``, ``"g"`` vs ``"G"``).

    Returns:
      ``dict(width, depth, mlp_dim, num_heads)`` plus ``patch_size`` (an int) when the
      name has a ``/<patch>`` suffix. E.g. ``parse_vit_variant("B/16") ==
      dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)``.

    Raises:
      ValueError: for a malformed string or an unknown size, naming the valid sizes.
    """
    if not isinstance(variant, str):
        raise ValueError(f"variant must be a string like 'B/16' or 'B', got {variant!r}")
    m = _VARIANT_RE.match(variant.strip())
    if m is None:
        raise ValueError(
            f"Malformed variant {variant!r}: expected '<size>' or '<size>/<patch>', "
            f"e.g. 'B/16', 'So400m/14', 'L'. Valid sizes: {', '.join(VIT_SIZES)}."
        )
    name, patch = m.group("name"), m.group("patch")
    if name not in VIT_SIZES:
        close = difflib.get_close_matches(name, list(VIT_SIZES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown model size {name!r} in variant {variant!r}.{hint} "
            f"Valid sizes: {', '.join(VIT_SIZES)}."
        )
    out: dict[str, Any] = dict(zip(SIZE_FIELDS, VIT_SIZES[name]))
    if patch is not None:
        if int(patch) <= 0:
            raise ValueError(f"Patch size must be positive in variant {variant!r}.")
        out["patch_size"] = int(patch)
    return out
