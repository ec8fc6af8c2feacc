"""Transformer building blocks shared by the image and text towers.

Conventions used throughout ``alignjax.models``:

* Shapes: ``B`` batch, ``L`` sequence length, ``D`` model width ("embed"), ``H`` heads,
  ``K`` head dim ("kv"), ``F`` MLP hidden dim ("mlp").
* ``dtype`` is the *compute* dtype (activations, matmuls), ``param_dtype`` the storage dtype
  of parameters. Parameters are cast to ``dtype`` at use, so bf16 compute keeps fp32
  master weights. LayerNorm statistics and the attention softmax are always float32.
* Every parameter is created through :func:`nn.with_logical_partitioning`, so ``init``
  returns :class:`flax.linen.LogicallyPartitioned` boxes whose ``names`` use only
  :data:`LOGICAL_AXES`. A trainer maps those names onto mesh axes with
  ``nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, rules)``.
* Activations are constrained to ``('batch', 'length', 'embed')`` at block boundaries, which
  is a no-op outside a ``nn.logical_axis_rules`` context.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Array = jax.Array

# The only logical axis names a parameter may carry (None marks small, never-sharded axes).
LOGICAL_AXES = ("embed", "mlp", "heads", "kv", "vocab", "joint", "layers")
# Activation axis names, for nn.with_logical_constraint.
ACT_AXES = ("batch", "length", "embed")

# jax.checkpoint_policies members that *are* policies (the others are factories that need
# arguments, e.g. save_only_these_names(...)), usable by name in configs.
REMAT_POLICIES = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "checkpoint_dots",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots_with_no_batch_dims",
)
ATTENTION_IMPLS = (None, "xla", "cudnn")
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


def partitioned(init: Callable, names: tuple[Optional[str], ...]) -> Callable:
    """``init`` boxed with logical axis ``names`` (one per parameter dimension)."""
    for n in names:
        if n is not None and n not in LOGICAL_AXES:
            raise ValueError(f"Logical axis {n!r} is not one of {LOGICAL_AXES} or None.")
    return nn.with_logical_partitioning(init, names)


def constrain(x: Array) -> Array:
    """Logical sharding constraint on a [B, L, D] activation."""
    return nn.with_logical_constraint(x, ACT_AXES)


def remat_policy(name: Optional[str]):
    """Maps a config string to a ``jax.checkpoint_policies`` policy (None: no remat)."""
    if name is None:
        return None
    if name not in REMAT_POLICIES:
        raise ValueError(
            f"Unknown remat policy {name!r}. Valid: None or one of {', '.join(REMAT_POLICIES)} "
            "(names from jax.checkpoint_policies)."
        )
    return getattr(jax.checkpoint_policies, name)


def check_attention_impl(impl: Optional[str]) -> None:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"Unknown attention_impl {impl!r}. Valid: {ATTENTION_IMPLS}.")


def quick_gelu(x: Array) -> Array:
    """OpenAI CLIP's activation: ``x * sigmoid(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


def activation(name: str) -> Callable[[Array], Array]:
    """``'gelu'``: exact erf GELU (torch ``nn.GELU()``, OpenAI/open_clip/HF CLIP).
    ``'gelu_tanh'``: tanh approximation (flax default, big_vision, HF SigLIP).
    ``'quick_gelu'``: ``x * sigmoid(1.702 x)`` (OpenAI CLIP weights).
    """
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)
    if name == "gelu_tanh":
        return functools.partial(jax.nn.gelu, approximate=True)
    if name == "quick_gelu":
        return quick_gelu
    raise ValueError(f"Unknown activation {name!r}. Valid: {ACTIVATIONS}.")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def normalize(x: Array, eps: float) -> Array:
    """``(x - mean) / sqrt(var + eps)`` over the last axis, two-pass variance (float32 in).

    The backward is written out, ``dx = rstd * (g - mean(g) - y * mean(g * y))`` with
    ``y`` the output, instead of left to autodiff: autodiff of the two-pass variance gives
    XLA:CPU a chain of elementwise ops that it re-fuses, from the top of the network, into
    every layer's gradient (quadratic in depth; 0.3 s of a 3.5 s bench-s step).
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mean
    return xc * jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)


def _normalize_fwd(x, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
    y = xc * rstd
    return y, (y, rstd)


def _normalize_bwd(eps, residuals, g):
    del eps
    y, rstd = residuals
    g_mean = jnp.mean(g, axis=-1, keepdims=True)
    gy_mean = jnp.mean(g * y, axis=-1, keepdims=True)
    return (rstd * (g - g_mean - y * gy_mean),)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the last (``embed``) axis: ``normalize(x) * scale + bias``.

    Statistics and the affine map in float32, output in ``dtype``. The variance is two-pass,
    ``E[(x - mean)^2]`` (not ``E[x^2] - mean^2``, which loses digits on large-mean
    activations: parity with PyTorch checkpoints). Parameters ``scale``, ``bias`` ``[D]``, as
    ``flax.linen.LayerNorm``'s (same tree, so checkpoints and converters are unchanged).
    """

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param(
            "scale", partitioned(nn.initializers.ones, ("embed",)), (d,), self.param_dtype
        )
        bias = self.param(
            "bias", partitioned(nn.initializers.zeros, ("embed",)), (d,), self.param_dtype
        )
        y = normalize(x.astype(jnp.float32), self.epsilon)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype, eps: float) -> LayerNorm:
    """:class:`LayerNorm` over the last (``embed``) axis, named ``name``."""
    return LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)


class HeadsIn(nn.Module):
    """``[.., D] -> [.., H, K]``: ``y = einsum('...d,dhk->...hk', x, W) + b``.

    Kernel ``W: [D, H, K]`` (logical ('embed', 'heads', 'kv')), bias ``b: [H, K]``. A plain
    einsum rather than ``nn.DenseGeneral``: DenseGeneral initialises a *flattened* kernel and
    unboxes it with a sharding constraint of the 3-D names, which fails under
    ``nn.logical_axis_rules`` + a mesh (rank mismatch).
    """

    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (x.shape[-1], self.num_heads, self.head_dim)
        # xavier over fan_in = D, fan_out = H*K (the fans of the equivalent [D, D] matrix).
        init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        w = self.param(
            "kernel", partitioned(init, ("embed", "heads", "kv")), shape, self.param_dtype
        )
        b = self.param(
            "bias", partitioned(nn.initializers.zeros, ("heads", "kv")), shape[1:], self.param_dtype
        )
        x, w, b = nn.dtypes.promote_dtype(x, w, b, dtype=self.dtype)
        return jnp.einsum("...d,dhk->...hk", x, w) + b


class HeadsOut(nn.Module):
    """``[.., H, K] -> [.., D]``: ``y = einsum('...hk,hkd->...d', x, W) + b``,
    ``W: [H, K, D]`` (logical ('heads', 'kv', 'embed')), ``b: [D]``."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = x.shape[-2:] + (self.features,)
        init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        w = self.param(
            "kernel", partitioned(init, ("heads", "kv", "embed")), shape, self.param_dtype
        )
        b = self.param(
            "bias",
            partitioned(nn.initializers.zeros, ("embed",)),
            (self.features,),
            self.param_dtype,
        )
        x, w, b = nn.dtypes.promote_dtype(x, w, b, dtype=self.dtype)
        return jnp.einsum("...hk,hkd->...d", x, w) + b


class Attention(nn.Module):
    """Multi-head dot-product attention with separate q/k/v projections.

    ``q = x_q W_q + b_q`` with ``W_q: [D, H, K]`` (likewise k, v from ``x_kv``),
    ``o = softmax(q k^T / sqrt(K) + mask) v`` per head, ``y = o W_o + b_o`` with
    ``W_o: [H, K, D]``. The core is ``jax.nn.dot_product_attention`` (softmax in float32);
    ``attention_impl`` selects its implementation (None: let JAX choose, 'xla', or
    'cudnn' for the fused flash kernel on NVIDIA GPUs; cuDNN needs bf16/fp16 compute and,
    for its flash kernel, a head dim that is a multiple of 8 and at most 128).

    Attributes:
      num_heads: H; the width D must be divisible by it, K = D // H.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: Optional[Array] = None,
        is_causal: bool = False,
    ) -> Array:
        """Args: inputs_q [B, T, D], inputs_kv [B, S, D]; mask bool broadcastable to
        [B, H, T, S] (True = attend); is_causal adds a lower-triangular mask (implementations
        such as cuDNN then skip the masked blocks). Returns [B, T, D] in ``dtype``."""
        check_attention_impl(self.attention_impl)
        if self.attention_impl == "cudnn" and jnp.dtype(self.dtype) not in (
            jnp.dtype(jnp.bfloat16),
            jnp.dtype(jnp.float16),
        ):
            raise ValueError(
                f"attention_impl='cudnn' needs bfloat16/float16 compute, got dtype={self.dtype}. "
                "Set dtype='bfloat16' or attention_impl=None."
            )
        width = inputs_q.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"Width {width} is not divisible by num_heads={self.num_heads}.")
        proj = functools.partial(
            HeadsIn,
            self.num_heads,
            width // self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        q = proj(name="query")(inputs_q)  # [B, T, H, K]
        k = proj(name="key")(inputs_kv)  # [B, S, H, K]
        v = proj(name="value")(inputs_kv)  # [B, S, H, K]
        o = jax.nn.dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, implementation=self.attention_impl
        )
        return HeadsOut(width, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(o)


class Mlp(nn.Module):
    """``y = act(x W_1 + b_1) W_2 + b_2`` with ``W_1: [D, F]``, ``W_2: [F, D]``."""

    mlp_dim: int
    act: str = "gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(
            self.mlp_dim,
            name="fc1",
            kernel_init=partitioned(nn.initializers.xavier_uniform(), ("embed", "mlp")),
            bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
        )(x)
        h = activation(self.act)(h)
        return dense(
            width,
            name="fc2",
            kernel_init=partitioned(nn.initializers.xavier_uniform(), ("mlp", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        )(h)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block:
    ``x = x + Attn(LN_1(x)); x = x + MLP(LN_2(x))``.

    The signature ``(x, mask) -> (x, None)`` is a scan body: x is the carry and the mask is
    broadcast to every layer.
    """

    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    causal: bool = False
    ln_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None) -> tuple[Array, None]:
        x = constrain(x)
        y = layer_norm("ln_attn", self.dtype, self.param_dtype, self.ln_eps)(x)
        y = Attention(
            self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            name="attn",
        )(y, y, mask=mask, is_causal=self.causal)
        x = constrain(x + y)
        y = layer_norm("ln_mlp", self.dtype, self.param_dtype, self.ln_eps)(x)
        y = Mlp(
            self.mlp_dim, act=self.act, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp"
        )(y)
        return constrain(x + y), None


class Encoder(nn.Module):
    """``depth`` pre-LN blocks followed by a final LayerNorm (``encoder_norm``).

    Parameter layout:
      * ``scan=False``: ``block_0/…, block_1/…, …`` (one subtree per layer);
      * ``scan=True``: one ``blocks/…`` subtree whose leaves have a leading ``[depth]`` axis
        with logical name ``'layers'`` (``nn.scan`` compiles the block once: faster compiles
        and the layer axis can be sharded or offloaded).

    ``remat`` names a ``jax.checkpoint_policies`` policy: activations inside each block are
    recomputed in the backward pass except what the policy saves (outputs are identical).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    causal: bool = False
    ln_eps: float = 1e-6
    remat: Optional[str] = None
    scan: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None) -> Array:
        """x: [B, L, D] -> [B, L, D] (normed); mask as in :class:`Attention`."""
        policy = remat_policy(self.remat)
        check_attention_impl(self.attention_impl)
        block = EncoderBlock
        if self.remat is not None:
            # Under scan, CSE across iterations cannot happen, so prevent_cse=False lets XLA
            # optimise more (flax docs); in a Python loop it must stay True.
            block = nn.remat(block, policy=policy, prevent_cse=not self.scan)
        kw = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            act=self.act,
            causal=self.causal,
            ln_eps=self.ln_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
        )
        if self.scan:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=nn.broadcast,
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(**kw, name="blocks")(x, mask)
        else:
            for i in range(self.depth):
                x, _ = block(**kw, name=f"block_{i}")(x, mask)
        return layer_norm("encoder_norm", self.dtype, self.param_dtype, self.ln_eps)(x)


def projection_head(
    out_dim: int, use_bias: bool, width: int, dtype: Dtype, param_dtype: Dtype, name: str = "head"
) -> nn.Dense:
    """Linear map [.., D] -> [.., out_dim] into the joint embedding space.

    Init ``N(0, D^-1/2)`` as OpenAI CLIP's projections (so outputs have ~unit scale).
    """
    return nn.Dense(
        out_dim,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(nn.initializers.normal(stddev=width**-0.5), ("embed", "joint")),
        bias_init=partitioned(nn.initializers.zeros, ("joint",)),
        name=name,
    )


def canonical_dtype(d: Any) -> Any:
    """'float32' | 'bfloat16' | 'float16' | a numpy/jnp dtype -> jnp dtype."""
    if isinstance(d, str):
        names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
        if d not in names:
            raise ValueError(f"Unknown dtype {d!r}. Valid: {', '.join(names)}.")
        return names[d]
    return d
