"""LightCLIP (Nie et al. 2023): progressive softened labels, relaxed token matching, MLM.

No public code exists, so the schedule, the weights and the fusion placement are fields::

    α(step) = α_max ramp(step / ramp_steps)     ramp: linear, cosine or constant
    L_inst  = symmetric InfoNCE with softened targets α(step)
    L_tok   = symmetric InfoNCE on s^T_ij = mean over words of max over patches
    L_mlm   = CE over masked positions of an image-fused MLM head's vocabulary logits
    L = L_inst + λ_tok L_tok + λ_mlm L_mlm

(:mod:`alignjax.losses.lightclip`). ``mlm_weight > 0`` adds the head (``mlm_head``): masked
text token features attend to the image tokens in one cross-attention block, then a linear
layer predicts the vocabulary. The paper fuses at several text-encoder stages; this head
fuses once, after the encoder, so the text tower stays a plain CLIP text tower.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignjax.losses import lightclip as lightclip_lib
from alignjax.objectives import base


class MLMFusionHead(nn.Module):
    """[B, L, D] masked-text tokens + [B, N, D] image tokens -> [B, L, V] vocabulary logits."""

    vocab_size: int
    num_heads: int = 2

    @nn.compact
    def __call__(self, txt: jax.Array, img: jax.Array) -> jax.Array:
        txt, img = txt.astype(jnp.float32), img.astype(jnp.float32)
        d = txt.shape[-1]
        heads = math.gcd(self.num_heads, d)
        y = nn.MultiHeadDotProductAttention(num_heads=heads, name="cross_attn")(
            nn.LayerNorm(name="ln_q")(txt), nn.LayerNorm(name="ln_kv")(img)
        )
        x = txt + y
        h = nn.Dense(2 * d, name="mlp_in")(nn.LayerNorm(name="ln_mlp")(x))
        x = x + nn.Dense(d, name="mlp_out")(nn.gelu(h))
        return nn.Dense(self.vocab_size, name="vocab")(nn.LayerNorm(name="ln_out")(x))


@base.register
class LightClip(base.Objective):
    """LightCLIP: progressive softened labels + relaxed token matching (+ MLM head)."""

    name = "lightclip"
    defaults = {
        "alpha_max": 0.2,  # Softening at the end of the ramp.
        "schedule": "linear",
        "neg_weighting": "uniform",
        "token_weight": 1.0,
        "mlm_weight": 0.0,  # > 0 adds the image-fused MLM head.
        "mlm_prob": 0.15,
        "mask_id": 2,  # The word-hash and byte tokenizers reserve id 2.
        "mlm_heads": 2,
        "chunk_size": 0,
        "ramp_steps": 1000,  # Steps over which α grows to alpha_max (set to total_steps).
    }
    choices = {
        "schedule": lightclip_lib.SCHEDULES,
        "neg_weighting": lightclip_lib.NEG_WEIGHTINGS,
    }
    needs_tokens = True

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        self.mlm = self.cfg["mlm_weight"] > 0

    def heads(self, model):
        if not self.mlm:
            return {}
        vocab, n_heads = int(model.text["vocab_size"]), int(self.cfg["mlm_heads"])
        return {
            "mlm_head": base.Head(
                make=lambda: MLMFusionHead(vocab_size=vocab, num_heads=n_heads),
                init_args=lambda out: (out.txt_tokens, out.img_tokens),
            )
        }

    def prepare(self, batch, rng, ctx):
        if not self.mlm:
            return batch
        c = self.cfg
        masked, labels = lightclip_lib.mask_tokens(batch["tokens"], rng, c["mlm_prob"], c["mask_id"])
        return dict(batch, mlm_tokens=masked, mlm_labels=labels)

    def forward(self, apply, batch, ctx):
        main = super().forward(apply, batch, ctx)
        if not self.mlm:
            return {"main": main}
        masked = apply(None, batch["mlm_tokens"], return_tokens=True, train=True)
        logits = apply(masked.txt_tokens, main.img_tokens, method=lambda m, t, i: m.mlm_head(t, i))
        return {"main": main, "mlm_logits": logits, "mlm_labels": batch["mlm_labels"]}

    def loss(self, out, batch, ctx):
        c = self.cfg
        main = out["main"]
        alpha = lightclip_lib.alpha_schedule(
            ctx.step, c["ramp_steps"], c["alpha_max"], c["schedule"]
        )
        inst = lightclip_lib.instance_loss(
            main.zimg, main.ztxt, main.logit_scale, alpha, c["neg_weighting"]
        )
        parts = {"inst": inst}
        loss = inst
        if c["token_weight"]:
            parts["tok"] = lightclip_lib.relaxed_token_loss(
                main.img_tokens,
                main.txt_tokens,
                main.txt_mask,
                main.logit_scale,
                chunk_size=c["chunk_size"] or None,
            )
            loss = loss + c["token_weight"] * parts["tok"]
        if self.mlm:
            parts["mlm"] = lightclip_lib.mlm_loss(out["mlm_logits"], out["mlm_labels"])
            loss = loss + c["mlm_weight"] * parts["mlm"]
        metrics = self.metrics(loss, main, **parts)
        metrics["alpha"] = base.stop(alpha)
        return loss, metrics
