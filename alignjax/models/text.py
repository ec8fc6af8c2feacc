"""Text transformer tower with the two pooling conventions that released weights need.

* ``convention='clip'`` (OpenAI CLIP, open_clip default): causal self-attention, and the
  sentence feature is the token at the EOT position. EOT has the largest id in CLIP's BPE
  vocabulary (49407), so ``eot = argmax(tokens, -1)``. Because attention is causal, nothing
  after the EOT (padding) can influence the pooled feature.
* ``convention='big_vision'`` (SigLIP, LiT): bidirectional attention without a padding mask
  and the *last* position as the sentence feature. This relies on "sticky" EOS padding in the
  tokenizer (pad with the EOS id) so the last token is always EOS.

Learned inputs (prompt learning, CoOp): ``__call__(tokens, embeddings)`` takes input
embeddings ``[B, L, W]`` in place of the token-embedding lookup. ``tokens`` still define
everything else: the EOT (pooling) position, the validity ``mask`` and the sequence length;
the position embedding is added to ``embeddings`` exactly as to looked-up ones.
``embed_tokens(tokens)`` is the lookup itself, so
``apply(v, tokens, apply(v, tokens, method='embed_tokens'))`` equals ``apply(v, tokens)``
bit for bit. ``alignjax.models.prompts`` builds such embeddings from class prompts and
learnable context vectors.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignjax.models import layers

Array = jax.Array

CONVENTIONS = ("clip", "big_vision")


class TextTransformer(nn.Module):
    """Transformer text tower.

    Attributes:
      width, depth, mlp_dim, num_heads: sizes.
      vocab_size: rows of the token embedding (logical axes ('vocab', 'embed')).
      context_length: rows of the learned position embedding; inputs may be shorter.
      convention: 'clip' or 'big_vision' (see module docstring).
      pad_id: padding id used for the big_vision validity mask.
      out_dim, head_bias: optional linear ``head`` to ``out_dim`` on pooled and token features.
      act, ln_eps, remat, scan, dtype, param_dtype, attention_impl: as in ``ViT``.

    ``__call__(tokens [B, L] int, embeddings [B, L, width] | None) -> (pooled [B, out_dim or
    width], tokens [B, L, out_dim or width], mask [B, L] bool)``. ``mask`` marks valid
    positions: 'clip': ``arange(L) <= argmax(tokens)``; 'big_vision': ``tokens != pad_id``.
    With ``embeddings`` they replace ``embed_tokens(tokens)``; pooling position and ``mask``
    still come from ``tokens``. The parameter tree does not depend on which input is used.

    ``embed_tokens(tokens [B, L] int) -> [B, L, width]`` in ``dtype``: the token-embedding
    lookup only (no position embedding).
    """

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    vocab_size: int
    context_length: int
    convention: str = "clip"
    pad_id: int = 0
    out_dim: Optional[int] = None
    head_bias: bool = True
    act: str = "gelu"
    ln_eps: float = 1e-6
    remat: Optional[str] = None
    scan: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: Optional[str] = None

    def __call__(
        self, tokens: Array, embeddings: Optional[Array] = None
    ) -> tuple[Array, Array, Array]:
        return self._forward(tokens, embeddings, embed_only=False)

    def embed_tokens(self, tokens: Array) -> Array:
        """tokens [B, L] int -> token embeddings [B, L, width] (``dtype``), no position term."""
        return self._forward(tokens, None, embed_only=True)

    @nn.compact
    def _forward(self, tokens: Array, embeddings: Optional[Array], embed_only: bool):
        # One compact method serves __call__ and embed_tokens, so both share the submodules
        # (and the parameter tree is the one the tower always had).
        if self.convention not in CONVENTIONS:
            raise ValueError(
                f"Unknown text convention {self.convention!r}. Valid: {CONVENTIONS} "
                "('clip': causal mask + EOT(argmax) pooling; 'big_vision': no mask + last "
                "token pooling)."
            )
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, L] ints, got shape {tokens.shape}.")
        b, length = tokens.shape
        if length > self.context_length:
            raise ValueError(
                f"Token sequence length {length} exceeds context_length={self.context_length}; "
                "tokenize to at most context_length tokens or raise context_length."
            )
        d = self.width
        if embeddings is not None and embeddings.shape != (b, length, d):
            raise ValueError(
                f"embeddings must be [B, L, width] = {(b, length, d)} to match tokens "
                f"{tokens.shape} and width={d}, got shape {embeddings.shape}."
            )

        embed = nn.Embed(
            self.vocab_size,
            d,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=layers.partitioned(
                nn.initializers.normal(stddev=0.02), ("vocab", "embed")
            ),
            name="token_embedding",
        )
        if embeddings is None or self.is_initializing():
            x = embed(tokens)  # [B, L, D]; at init always, so the lookup table exists
        if embed_only:
            return x
        if embeddings is not None:
            x = embeddings.astype(self.dtype)
        # std 0.01 as OpenAI CLIP's text positional embedding.
        pe = self.param(
            "pos_embedding",
            layers.partitioned(nn.initializers.normal(stddev=0.01), (None, "embed")),
            (self.context_length, d),
            self.param_dtype,
        )
        x = x + pe[:length].astype(self.dtype)[None]

        clip = self.convention == "clip"
        x = layers.Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            act=self.act,
            causal=clip,
            ln_eps=self.ln_eps,
            remat=self.remat,
            scan=self.scan,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            name="encoder",
        )(layers.constrain(x))

        if clip:
            eot = jnp.argmax(tokens, axis=-1)  # [B]
            pooled = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]  # [B, D]
            mask = jnp.arange(length)[None, :] <= eot[:, None]
        else:
            pooled = x[:, -1]
            mask = tokens != self.pad_id

        if self.out_dim is not None:
            head = layers.projection_head(
                self.out_dim, self.head_bias, d, self.dtype, self.param_dtype
            )
            pooled, x = head(pooled), head(x)
        return pooled, x, mask
