"""Vision Transformer image tower (ViT, arXiv:2010.11929) for two-tower models.

Pipeline for images ``[B, H, W, C]`` (NHWC, any value range the data pipeline chose):

1. patches: ``Conv(kernel=stride=p)`` -> ``[B, N, D]`` with ``N = (H/p)(W/p)``;
2. position embedding added (learned, or fixed 2-D sin-cos);
3. ``pool='tok'`` prepends a class token (after 2. for sincos2d; for 'learn' the class
   token has its own learned position, OpenAI/HF layout);
3b. optional visual prompts ``[P, D]`` / ``[B, P, D]`` (VPT-shallow) inserted after the class
   token and before the patch tokens, without position embedding (see ``ViT``);
4. optional ``ln_pre`` (``pre_norm=True``, OpenAI CLIP);
5. ``depth`` pre-LN blocks + final LayerNorm;
6. pooling: class token ('tok'), mean of patch tokens ('gap'), or attention-pooling probe
   ('map', SigLIP);
7. optional linear ``head`` (``out_dim``) applied to pooled and token features alike.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alignjax.models import layers

Array = jax.Array

POSEMBS = ("learn", "sincos2d")
POOLS = ("tok", "gap", "map")


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding, ``[1, h*w, width]`` float32 (row-major grid).

    With ``omega_i = temperature^(-i/(width/4 - 1))``, ``i < width/4``, position ``(y, x)``
    maps to ``[sin(x omega), cos(x omega), sin(y omega), cos(y omega)]`` (MoCo v3 /
    big_vision layout).
    """
    if width % 4:
        raise ValueError(f"sincos2d posemb needs width divisible by 4, got {width}.")
    q = width // 4
    omega = 1.0 / temperature ** (np.arange(q, dtype=np.float64) / max(q - 1, 1))
    y, x = np.mgrid[:h, :w]
    ay = y.reshape(-1)[:, None] * omega[None]
    ax = x.reshape(-1)[:, None] * omega[None]
    pe = np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)], axis=1)
    return pe[None].astype(np.float32)


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision's MAPHead, SigLIP).

    A learned probe ``q: [1, 1, D]`` attends over the tokens:
    ``y = Attn(q, x); y = y + MLP(LN(y))``; returns ``y[:, 0]``: ``[B, D]``.
    """

    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    ln_eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, _, d = x.shape
        probe = self.param(
            "probe",
            layers.partitioned(nn.initializers.xavier_uniform(), (None, None, "embed")),
            (1, 1, d),
            self.param_dtype,
        )
        q = jnp.broadcast_to(probe.astype(self.dtype), (b, 1, d))
        y = layers.Attention(
            self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            name="attn",
        )(q, x)
        z = layers.layer_norm("ln", self.dtype, self.param_dtype, self.ln_eps)(y)
        y = y + layers.Mlp(
            self.mlp_dim, act=self.act, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp"
        )(z)
        return y[:, 0]


class ViT(nn.Module):
    """Vision Transformer image tower.

    Attributes:
      width, depth, mlp_dim, num_heads, patch_size: sizes (see ``parse_vit_variant``).
      posemb: 'learn' (param ``pos_embedding``, N(0, 0.02)) or 'sincos2d' (fixed, no param).
      pool: 'tok' | 'gap' | 'map'.
      pre_norm: LayerNorm ``ln_pre`` after adding the position embedding (OpenAI CLIP).
      out_dim: if set, a linear ``head`` maps pooled and token features to this size.
      head_bias: whether ``head`` has a bias (big_vision: yes; OpenAI/HF: no).
      act: MLP activation, see ``layers.activation``.
      ln_eps: LayerNorm epsilon (1e-6 as big_vision/SigLIP; OpenAI CLIP uses 1e-5).
      remat, scan, dtype, param_dtype, attention_impl: see ``layers.Encoder``.

    ``__call__(images [B, H, W, C], prompts [P, width] | [B, P, width] | None, *, train,
    example_ids) -> (pooled [B, out_dim or width], tokens [B, N, out_dim or width])``, in
    ``dtype``. ``tokens`` are the final-normed patch tokens (the class token is not among
    them), through ``head`` when there is one.

    Patch dropout (FLIP, Li et al. 2023, arXiv:2212.00794): with ``patch_dropout = r > 0`` and
    ``train=True``, each example keeps a random ``K = max(1, round((1 - r) N))`` of its N patch
    tokens (position embedding already added, kept in their spatial order) and drops the rest
    before the encoder: the encoder runs on ``K`` (+ class token, prompts) tokens, so its cost
    falls by about the factor ``1 - r``, and ``tokens`` is ``[B, K, .]``. Example i's subset is
    the ``K`` smallest of ``u_i ~ U(0, 1)^N`` drawn from ``fold_in(rng, example_ids[i])``
    (``rng``: the ``'patch_dropout'`` stream, ``example_ids`` default ``arange(B)``), so it
    depends on the example's index in the global batch, not on how the batch is split into
    micro-batches. ``train=False`` (evaluation) or ``r = 0`` is the plain ViT.

    Visual prompts (VPT-shallow, arXiv:2203.12119): ``prompts`` are extra input tokens, the
    sequence becomes ``[cls] p_1..p_P x_1..x_N`` ('tok') or ``p_1..p_P x_1..x_N``. They are
    inserted after the position embedding was added, so they get none (their order does not
    matter), and before ``ln_pre``. They take part in every attention layer, but they are
    outputs of nothing: pooling ignores them ('tok': the class token; 'gap': mean of the N
    patch tokens; 'map': the probe attends to the N patch tokens only) and ``tokens`` stays
    ``[B, N, .]``. So prompts act only through what they do to the class and patch tokens,
    and ``prompts=None`` is the plain ViT. No parameters are added: the prompts are inputs,
    to be held (and trained) by the caller.
    """

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int
    posemb: str = "learn"
    pool: str = "tok"
    pre_norm: bool = False
    out_dim: Optional[int] = None
    head_bias: bool = True
    act: str = "gelu"
    ln_eps: float = 1e-6
    remat: Optional[str] = None
    scan: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: Optional[str] = None
    patch_dropout: float = 0.0

    @nn.compact
    def __call__(
        self,
        images: Array,
        prompts: Optional[Array] = None,
        *,
        train: bool = False,
        example_ids: Optional[Array] = None,
    ) -> tuple[Array, Array]:
        if self.posemb not in POSEMBS:
            raise ValueError(f"Unknown posemb {self.posemb!r}. Valid: {POSEMBS}.")
        if self.pool not in POOLS:
            raise ValueError(f"Unknown pool {self.pool!r}. Valid: {POOLS}.")
        if images.ndim != 4:
            raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}.")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(
                f"patch_dropout must be in [0, 1) (the fraction of patch tokens dropped in "
                f"training), got {self.patch_dropout}."
            )
        p = self.patch_size
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"Image size {images.shape[1:3]} is not divisible by patch_size={p}.")
        d = self.width
        if prompts is not None and not (
            prompts.ndim in (2, 3)
            and prompts.shape[-1] == d
            and (prompts.ndim == 2 or prompts.shape[0] == images.shape[0])
        ):
            raise ValueError(
                f"prompts must be [P, width] or [B, P, width] with width={d} and "
                f"B={images.shape[0]}, got shape {prompts.shape}."
            )

        x = nn.Conv(
            d,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=layers.partitioned(
                nn.initializers.lecun_normal(), (None, None, None, "embed")
            ),
            bias_init=layers.partitioned(nn.initializers.zeros, ("embed",)),
            name="embedding",
        )(images.astype(self.dtype))
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, d)  # [B, N, D]
        n = gh * gw
        tok = self.pool == "tok"

        if tok:
            cls = self.param(
                "cls",
                layers.partitioned(nn.initializers.zeros, (None, None, "embed")),
                (1, 1, d),
                self.param_dtype,
            )
            cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d))

        if self.posemb == "learn":
            # With a class token the table has N+1 rows, row 0 for the class token: the
            # OpenAI/HF layout. (big_vision's tok layout, class token without position,
            # converts by writing zeros into row 0.)
            pe = self.param(
                "pos_embedding",
                layers.partitioned(nn.initializers.normal(stddev=0.02), (None, None, "embed")),
                (1, n + int(tok), d),
                self.param_dtype,
            ).astype(self.dtype)
            if tok:
                x = jnp.concatenate([cls, x], axis=1) + pe
            else:
                x = x + pe
        else:
            x = x + jnp.asarray(posemb_sincos_2d(gh, gw, d), self.dtype)
            if tok:
                x = jnp.concatenate([cls, x], axis=1)

        if train and self.patch_dropout > 0:  # FLIP: before the prompts and the encoder
            cls_token, patches = x[:, : int(tok)], x[:, int(tok) :]
            x = jnp.concatenate([cls_token, self._drop_patches(patches, example_ids)], axis=1)

        n_prompts = 0
        if prompts is not None:
            n_prompts = prompts.shape[-2]
            prompts = jnp.broadcast_to(prompts.astype(self.dtype), (b, n_prompts, d))
            x = jnp.concatenate([x[:, : int(tok)], prompts, x[:, int(tok) :]], axis=1)
        first_patch = int(tok) + n_prompts  # x[:, first_patch:] are the N patch tokens

        if self.pre_norm:
            x = layers.layer_norm("ln_pre", self.dtype, self.param_dtype, self.ln_eps)(x)

        x = layers.Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            act=self.act,
            causal=False,
            ln_eps=self.ln_eps,
            remat=self.remat,
            scan=self.scan,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            name="encoder",
        )(layers.constrain(x))

        tokens = x[:, first_patch:]  # [B, N, D]: class token and prompts dropped
        if tok:
            pooled = x[:, 0]
        elif self.pool == "gap":
            # mean in float32: a bf16 sum over hundreds of tokens loses precision.
            pooled = jnp.mean(tokens.astype(jnp.float32), axis=1).astype(self.dtype)
        else:
            pooled = MAPHead(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                act=self.act,
                ln_eps=self.ln_eps,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                attention_impl=self.attention_impl,
                name="map_head",
            )(tokens)

        if self.out_dim is not None:
            head = layers.projection_head(
                self.out_dim, self.head_bias, d, self.dtype, self.param_dtype
            )
            pooled, tokens = head(pooled), head(tokens)
        return pooled, tokens

    def _drop_patches(self, patches: Array, example_ids: Optional[Array]) -> Array:
        """[B, N, D] -> [B, K, D]: each example's kept patch tokens, in spatial order."""
        b, n, _ = patches.shape
        keep = max(1, int(round((1.0 - self.patch_dropout) * n)))
        ids = jnp.arange(b) if example_ids is None else jnp.asarray(example_ids)
        if ids.shape != (b,):
            raise ValueError(f"example_ids must have shape ({b},), got {ids.shape}.")
        rng = self.make_rng("patch_dropout")
        noise = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(rng, i), (n,)))(ids)
        kept = jnp.sort(jnp.argsort(noise, axis=1)[:, :keep], axis=1)  # [B, K]
        return jnp.take_along_axis(patches, kept[:, :, None], axis=1)
