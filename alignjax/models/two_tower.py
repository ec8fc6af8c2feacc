"""Two-tower (image, text) contrastive model and its config-driven constructor.

``TwoTower`` embeds images and texts into a joint ``embed_dim``-dimensional space:

    zimg = normalize(head_img(ViT(images)))       [B, D], ||zimg_i|| = 1
    ztxt = normalize(head_txt(Text(tokens)))      [B, D]
    logits = t * zimg @ ztxt.T (+ b)              t = exp(log_scale), b = logit_bias

The model returns ``t`` and ``b`` but never the logits, so losses (softmax/CLIP, sigmoid/
SigLIP, ring, token-wise) stay pure functions of the outputs.

Parameter tree (top level): ``img/…`` (image tower, incl. its ``head``), ``txt/…`` (text
tower, incl. its ``head``), ``log_scale`` and, when configured, ``logit_bias``. Heads live
inside the towers so that ``img/.*`` selects everything image-side (LiT freezing).

Learned inputs (prompt learning): ``text_embeddings`` [B, L, W] replace the text tower's
token-embedding lookup (``tokens`` still set mask and pooling; ``embed_tokens`` is the
lookup), ``image_prompts`` [P, W] or [B, P, W] are extra image tokens (VPT). Neither adds
parameters; see ``TextTransformer``, ``ViT`` and ``alignjax.models.prompts``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from alignjax import validation
from alignjax.models import layers
from alignjax.models.text import CONVENTIONS, TextTransformer
from alignjax.models.variants import SIZE_FIELDS, parse_vit_variant
from alignjax.models.vit import POOLS, POSEMBS, ViT

Array = jax.Array


@flax.struct.dataclass
class TwoTowerOutput:
    """Outputs of :class:`TwoTower` (a pytree; None fields are empty subtrees).

    Attributes:
      zimg: [B, D] float32 unit-norm image embeddings (None if no images were given).
      ztxt: [B, D] float32 unit-norm text embeddings (None if no tokens were given).
      logit_scale: [] float32, ``t = exp(log_scale)``.
      logit_bias: [] float32 or None (None when the model has no bias, e.g. CLIP).
      img_tokens: [B, N, D] float32 unit-norm per-patch embeddings (return_tokens only).
      txt_tokens: [B, L, D] float32 unit-norm per-token embeddings (return_tokens only).
      txt_mask: [B, L] bool valid-token mask (return_tokens only).
      img_raw: [B, D] float32 projected image embeddings before normalisation (return_raw
        only; CLIP-Refine's losses read these).
      txt_raw: [B, D] float32 projected text embeddings before normalisation (return_raw
        only).
    """

    zimg: Optional[Array]
    ztxt: Optional[Array]
    logit_scale: Array
    logit_bias: Optional[Array] = None
    img_tokens: Optional[Array] = None
    txt_tokens: Optional[Array] = None
    txt_mask: Optional[Array] = None
    img_raw: Optional[Array] = None
    txt_raw: Optional[Array] = None


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
    """``x / max(||x||, eps)`` over the last axis, in float32.

    The clamp (rather than ``+ eps``) keeps unit norms exact and gives a finite gradient at 0.
    """
    x = x.astype(jnp.float32)
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _tower_kwargs(tower: str, cfg: Mapping[str, Any], embed_dim: int) -> dict[str, Any]:
    """Splits ``head``/``head_bias`` off a tower's kwargs and turns them into out_dim."""
    kw = dict(cfg)
    head = kw.pop("head", True)
    head_bias = kw.pop("head_bias", True)
    if not head and kw["width"] != embed_dim:
        raise ValueError(
            f"{tower}.head=False needs the {tower} tower width to equal embed_dim, but "
            f"{tower} width={kw['width']} and embed_dim={embed_dim}. Set {tower}.head=True "
            f"or embed_dim={kw['width']}."
        )
    kw["out_dim"] = embed_dim if head else None
    kw["head_bias"] = head_bias
    return kw


class TwoTower(nn.Module):
    """CLIP/SigLIP/LiT two-tower model.

    Attributes:
      embed_dim: D, the joint embedding size.
      image: keyword arguments of :class:`ViT` plus ``head`` (bool) and ``head_bias`` (bool);
        None for a text-only model.
      text: keyword arguments of :class:`TextTransformer` plus ``head``/``head_bias``; None
        for an image-only model.
      logit_scale_init: initial multiplier t (param stores ``log t``): 1/0.07 for CLIP,
        10 for SigLIP.
      logit_bias_init: initial bias b (SigLIP: -10); None: no ``logit_bias`` param.

    Usually built by :func:`build` from a config.
    """

    embed_dim: int
    image: Optional[Mapping[str, Any]]
    text: Optional[Mapping[str, Any]]
    logit_scale_init: float = 1.0 / 0.07
    logit_bias_init: Optional[float] = None

    def setup(self):
        if self.image is not None:
            self.img = ViT(**_tower_kwargs("image", self.image, self.embed_dim))
        if self.text is not None:
            self.txt = TextTransformer(**_tower_kwargs("text", self.text, self.embed_dim))
        if self.logit_scale_init <= 0:
            raise ValueError(f"logit_scale_init must be > 0, got {self.logit_scale_init}.")
        # Scalars: logical names () (replicated). Always float32: exp() of a bf16 log-scale
        # would quantise the temperature.
        self.log_scale = self.param(
            "log_scale",
            layers.partitioned(nn.initializers.constant(math.log(self.logit_scale_init)), ()),
            (),
            jnp.float32,
        )
        if self.logit_bias_init is not None:
            self.logit_bias = self.param(
                "logit_bias",
                layers.partitioned(nn.initializers.constant(self.logit_bias_init), ()),
                (),
                jnp.float32,
            )

    def _need(self, tower: str):
        if (self.image if tower == "img" else self.text) is None:
            raise ValueError(f"This TwoTower has no {'image' if tower == 'img' else 'text'} tower.")

    def encode_image(self, images: Array, prompts: Optional[Array] = None) -> Array:
        """images [B, H, W, C] (+ visual prompts [P, Wi] or [B, P, Wi]) -> unit-norm
        float32 [B, D]."""
        self._need("img")
        return l2_normalize(self.img(images, prompts)[0])

    def encode_text(self, tokens: Array, embeddings: Optional[Array] = None) -> Array:
        """tokens [B, L] int (+ input embeddings [B, L, Wt] replacing the lookup) ->
        unit-norm float32 [B, D]."""
        self._need("txt")
        return l2_normalize(self.txt(tokens, embeddings)[0])

    def embed_tokens(self, tokens: Array) -> Array:
        """tokens [B, L] int -> the text tower's token embeddings [B, L, Wt] (the lookup
        that ``text_embeddings`` replace; no position embedding)."""
        self._need("txt")
        return self.txt.embed_tokens(tokens)

    def __call__(
        self,
        images: Optional[Array],
        tokens: Optional[Array],
        *,
        return_tokens: bool = False,
        return_raw: bool = False,
        train: bool = False,
        text_embeddings: Optional[Array] = None,
        image_prompts: Optional[Array] = None,
        example_ids: Optional[Array] = None,
    ) -> TwoTowerOutput:
        """Embeds a batch of images and/or texts.

        Args:
          images: [B, H, W, C] or None (then ``zimg`` is None).
          tokens: [B, L] int or None (then ``ztxt`` is None).
          return_tokens: also return per-token features, projected by the same head and
            unit-normalised (FILIP-style token-wise losses), and the text mask.
          return_raw: also return the pooled, projected embeddings before the L2
            normalisation (``img_raw`` / ``txt_raw``, float32).
          train: training mode: the image tower's patch dropout (``image.patch_dropout``)
            is on, drawing from the ``'patch_dropout'`` rng stream.
          text_embeddings: [B, L, Wt] input embeddings replacing the lookup of ``tokens``
            (which still give pooling position and mask), or None.
          image_prompts: [P, Wi] or [B, P, Wi] visual prompt tokens, or None.
          example_ids: [B] int, each image's index in the global batch (patch dropout draws
            example i's mask from it; None: ``arange(B)``).

        Returns:
          :class:`TwoTowerOutput`.
        """
        if text_embeddings is not None and tokens is None:
            raise ValueError(
                "text_embeddings need tokens as well: the tokens define the text mask and "
                "the pooling (EOT) position."
            )
        if image_prompts is not None and images is None:
            raise ValueError("image_prompts were given without images.")
        out: dict[str, Any] = {}
        if images is not None:
            self._need("img")
            pooled, toks = self.img(images, image_prompts, train=train, example_ids=example_ids)
            out["zimg"] = l2_normalize(pooled)
            if return_raw:
                out["img_raw"] = pooled.astype(jnp.float32)
            if return_tokens:
                out["img_tokens"] = l2_normalize(toks)
        if tokens is not None:
            self._need("txt")
            pooled, toks, mask = self.txt(tokens, text_embeddings)
            out["ztxt"] = l2_normalize(pooled)
            if return_raw:
                out["txt_raw"] = pooled.astype(jnp.float32)
            if return_tokens:
                out["txt_tokens"] = l2_normalize(toks)
                out["txt_mask"] = mask
        return TwoTowerOutput(
            zimg=out.get("zimg"),
            ztxt=out.get("ztxt"),
            logit_scale=jnp.exp(self.log_scale),
            logit_bias=self.logit_bias if self.logit_bias_init is not None else None,
            img_tokens=out.get("img_tokens"),
            txt_tokens=out.get("txt_tokens"),
            txt_mask=out.get("txt_mask"),
            img_raw=out.get("img_raw"),
            txt_raw=out.get("txt_raw"),
        )


# ----------------------------------------------------------------------------- config


def default_model_config() -> ml_collections.ConfigDict:
    """Every field ``build`` understands, with CLIP ViT-B/16-like defaults.

    Sizes of a tower come either from ``variant`` (big_vision names, see
    ``parse_vit_variant``) or from explicit ``width, depth, mlp_dim, num_heads`` (and
    ``patch_size`` for images), never both. The defaults are OpenAI CLIP B/16: image
    ``variant='B/16'``; text width 512, depth 12, mlp 2048, 8 heads (not a table entry).
    """
    return ml_collections.ConfigDict(
        dict(
            embed_dim=512,
            logit_scale_init=1.0 / 0.07,  # multiplier t; CLIP 1/0.07, SigLIP 10.0
            logit_bias_init=None,  # None: no bias (CLIP); SigLIP -10.0
            quick_gelu=False,  # True for OpenAI CLIP weights
            # MLP activation by name; None: 'quick_gelu' if quick_gelu else 'gelu' (erf).
            # 'gelu_tanh' is big_vision/SigLIP's (flax nn.gelu default).
            act=ml_collections.config_dict.placeholder(str),
            ln_eps=1e-6,  # LayerNorm epsilon: 1e-6 big_vision/SigLIP, 1e-5 OpenAI/HF CLIP
            dtype="float32",  # compute dtype: 'float32' | 'bfloat16'
            param_dtype="float32",
            remat=None,  # None | a jax.checkpoint_policies name
            scan=False,  # nn.scan over layers (params get a 'layers' axis)
            attention_impl=None,  # None | 'xla' | 'cudnn'
            image=dict(
                variant="B/16",
                width=None,
                depth=None,
                mlp_dim=None,
                num_heads=None,
                patch_size=None,
                posemb="learn",
                pool="tok",
                pre_norm=True,
                head=True,
                head_bias=False,
                # FLIP: fraction of patch tokens dropped per example in training (0: off).
                patch_dropout=0.0,
            ),
            text=dict(
                variant=None,
                width=512,
                depth=12,
                mlp_dim=2048,
                num_heads=8,
                vocab_size=49408,
                context_length=77,
                convention="clip",
                pad_id=0,
                head=True,
                head_bias=False,
            ),
        )
    )


_SIZE_KEYS = {"image": SIZE_FIELDS + ("patch_size",), "text": SIZE_FIELDS}


def _to_dict(cfg: Any) -> dict:
    if isinstance(cfg, ml_collections.ConfigDict):
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {
            k: _to_dict(v) if isinstance(v, (Mapping, ml_collections.ConfigDict)) else v
            for k, v in cfg.items()
        }
    raise ValueError(f"Model config must be a ConfigDict or dict, got {type(cfg).__name__}.")


def _merge_with_defaults(config: Any) -> dict:
    """Validates field names and fills in defaults.

    A tower's size spec (variant + explicit sizes) is taken as a whole from the user's
    config when it mentions any of those fields, else from the defaults; so
    ``text=dict(variant='B')`` does not collide with the default explicit text sizes, and
    ``image=dict(width=64, ...)`` does not collide with the default ``variant='B/16'``.
    """
    defaults = default_model_config().to_dict()
    user = _to_dict(config)
    validation.check_fields(user, defaults, "model")
    merged = copy.deepcopy(defaults)
    for k, v in user.items():
        if k in ("image", "text"):
            if not isinstance(v, Mapping):
                raise ValueError(f"Model config field {k!r} must be a dict, got {v!r}.")
            validation.check_fields(v, defaults[k], f"model.{k}")
            size_keys = ("variant",) + _SIZE_KEYS[k]
            if any(s in v for s in size_keys):
                for s in size_keys:
                    merged[k][s] = None
            merged[k].update(v)
        else:
            merged[k] = v
    return merged


def _resolve_sizes(tower: str, cfg: dict) -> dict:
    """Replaces ``variant`` by explicit sizes; errors on conflicts or missing sizes."""
    cfg = dict(cfg)
    variant = cfg.pop("variant")
    keys = _SIZE_KEYS[tower]
    if variant is not None:
        sizes = parse_vit_variant(variant)
        if tower == "text" and "patch_size" in sizes:
            raise ValueError(
                f"text.variant={variant!r} has a patch size; text towers take a bare size "
                f"name, e.g. {variant.split('/')[0]!r}."
            )
        clash = {k: cfg[k] for k in keys if cfg.get(k) is not None and k in sizes}
        if clash:
            raise ValueError(
                f"{tower}.variant={variant!r} already sets "
                f"{', '.join(f'{k}={sizes[k]}' for k in clash)}, but the config also gives "
                f"{', '.join(f'{tower}.{k}={v}' for k, v in clash.items())}. Use either the "
                f"variant (and set those fields to None) or explicit sizes with "
                f"{tower}.variant=None."
            )
        cfg.update(sizes)
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise ValueError(
            f"{tower} tower size is incomplete: {', '.join(f'{tower}.{k}' for k in missing)} "
            f"is None. Set {tower}.variant (e.g. {'B/16' if tower == 'image' else 'B'!r}) "
            f"or all of {', '.join(keys)}."
        )
    return cfg


def resolve_model_config(config: Any) -> dict:
    """Merged, validated, variant-resolved model config as a plain dict (what ``build`` uses)."""
    cfg = _merge_with_defaults(config)
    cfg["image"] = _resolve_sizes("image", cfg["image"])
    cfg["text"] = _resolve_sizes("text", cfg["text"])
    validation.check_choice(cfg["dtype"], ("float32", "bfloat16"), "model.dtype")
    validation.check_choice(cfg["param_dtype"], ("float32",), "model.param_dtype")
    validation.check_choice(cfg["remat"], (None,) + layers.REMAT_POLICIES, "model.remat")
    validation.check_choice(cfg["attention_impl"], layers.ATTENTION_IMPLS, "model.attention_impl")
    if cfg["attention_impl"] == "cudnn" and cfg["dtype"] != "bfloat16":
        raise ValueError(
            f"attention_impl='cudnn' needs dtype='bfloat16' (cuDNN fused attention has no "
            f"float32 kernel), got dtype={cfg['dtype']!r}."
        )
    validation.check_choice(cfg["image"]["posemb"], POSEMBS, "model.image.posemb")
    validation.check_choice(cfg["image"]["pool"], POOLS, "model.image.pool")
    validation.check_choice(cfg["text"]["convention"], CONVENTIONS, "model.text.convention")
    for k in ("quick_gelu", "scan"):
        validation.check_choice(cfg[k], (True, False), f"model.{k}")
    validation.check_choice(cfg["act"], (None,) + layers.ACTIVATIONS, "model.act")
    if cfg["quick_gelu"] and cfg["act"] not in (None, "quick_gelu"):
        raise ValueError(
            f"Model config quick_gelu=True conflicts with act={cfg['act']!r}; set one of them "
            "(act=None keeps quick_gelu in charge)."
        )
    if not (isinstance(cfg["ln_eps"], (int, float)) and cfg["ln_eps"] > 0):
        raise ValueError(f"Model config ln_eps must be a positive float, got {cfg['ln_eps']!r}.")
    for tower in ("image", "text"):
        _tower_kwargs(tower, cfg[tower], cfg["embed_dim"])  # head/width check, eagerly
    return cfg


def build(config: Any = None) -> TwoTower:
    """Builds a :class:`TwoTower` from a (possibly partial) model config.

    Args:
      config: ``ml_collections.ConfigDict`` or nested dict with fields of
        :func:`default_model_config`; missing fields take the defaults. None: all defaults.

    Raises:
      ValueError: unknown field (naming the closest valid one), variant/size conflicts,
        invalid choices, or ``head=False`` with a tower width != embed_dim.
    """
    cfg = resolve_model_config({} if config is None else config)
    act = cfg["act"] or ("quick_gelu" if cfg["quick_gelu"] else "gelu")
    common = dict(
        act=act,
        ln_eps=float(cfg["ln_eps"]),
        remat=cfg["remat"],
        scan=cfg["scan"],
        attention_impl=cfg["attention_impl"],
        dtype=layers.canonical_dtype(cfg["dtype"]),
        param_dtype=layers.canonical_dtype(cfg["param_dtype"]),
    )
    return TwoTower(
        embed_dim=cfg["embed_dim"],
        # FrozenDicts keep the module hashable (usable as a static jit argument).
        image=flax.core.FrozenDict({**cfg["image"], **common}),
        text=flax.core.FrozenDict({**cfg["text"], **common}),
        logit_scale_init=float(cfg["logit_scale_init"]),
        logit_bias_init=None if cfg["logit_bias_init"] is None else float(cfg["logit_bias_init"]),
    )
