"""CLIP-Refine (Yamaguchi et al., CVPR 2025): post-pre-training that closes the modality gap.

Starts from a pre-trained model (``config.init_from``) and trains both towers with
(:mod:`alignjax.losses.refine`; ``f`` / ``g`` the raw, un-normalised projected features)::

    L = w_rafa(t) mse(f, z) + mse(g, z)                    RaFA, z_i ~ prior, shared by pair i
      + w_hycd ½ [KL(q ‖ softmax(f g^T / T)) + KL(q' ‖ softmax(g f^T / T))] T²     HyCD
      + w_clip CLIP(zimg, ztxt)                             (0 by default, as in the paper)
    q = alpha I + (1 - alpha) softmax(f^t g^t^T / T)        f^t, g^t: the frozen teacher

The teacher is a frozen copy of the starting parameters (weight set ``'teacher'``, taken
after ``init_from``). ``z`` is drawn in ``prepare`` from the step's key, once per step on the
global batch, so gradient accumulation sees the same references; with HyCD computed in
``loss`` on the merged outputs and the teacher's forward per example, GradCache is exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.losses import refine as refine_lib
from alignjax.losses.contrastive import clip_loss
from alignjax.objectives import base

#: The frozen starting model, in ``TrainState.weights``.
TEACHER = "teacher"


def _per_dim(value, name: str, dim: int | None) -> np.ndarray:
    """A scalar or a [D] sequence of floats as a float32 array; the length is checked."""
    arr = np.asarray(value, np.float32)
    if arr.ndim > 1 or (arr.ndim == 1 and dim is not None and arr.shape[0] != dim):
        raise ValueError(
            f"config.loss.{name} must be a float or {dim} floats (one per embedding "
            f"dimension, config.model.embed_dim); got shape {arr.shape}."
        )
    return arr


def _check_fields(c, embed_dim: int | None) -> None:
    """The values of ``config.loss`` (``embed_dim``: check per-dimension prior lengths)."""
    for field in ("rafa_weight", "hycd_weight", "clip_weight"):
        if float(c[field]) < 0:
            raise ValueError(f"config.loss.{field} must be >= 0, got {c[field]}.")
    if not any(float(c[f]) for f in ("rafa_weight", "hycd_weight", "clip_weight")):
        raise ValueError(
            "config.loss: rafa_weight, hycd_weight and clip_weight are all 0; set one > 0."
        )
    if not 0.0 <= float(c["alpha"]) <= 1.0:
        raise ValueError(f"config.loss.alpha must be in [0, 1], got {c['alpha']}.")
    if not float(c["temperature"]) > 0:
        raise ValueError(f"config.loss.temperature must be > 0, got {c['temperature']}.")
    if int(c["rafa_decay_steps"]) < 0:
        raise ValueError(
            f"config.loss.rafa_decay_steps must be >= 0 (0: no decay), got "
            f"{c['rafa_decay_steps']}."
        )
    _per_dim(c["prior_mean"], "prior_mean", embed_dim)
    if np.any(_per_dim(c["prior_std"], "prior_std", embed_dim) < 0):
        raise ValueError(f"config.loss.prior_std must be >= 0, got {c['prior_std']}.")


@base.register
class ClipRefine(base.Objective):
    """CLIP-Refine: RaFA (features to random references) + HyCD (hybrid distillation)."""

    name = "clip_refine"
    defaults = {
        "rafa_weight": 1.0,  # lambda_rand.
        "hycd_weight": 1.0,  # lambda_kd.
        "clip_weight": 0.0,  # lambda_cont: the paper trains without the contrastive term.
        "alpha": 0.5,  # Weight of the ground-truth pairing in HyCD's targets.
        "temperature": 1.0,  # HyCD's T.
        "prior": "normal",  # RaFA prior: 'normal' | 'uniform' (same mean/std) | 'fixed'.
        "prior_mean": 0.0,  # A float, or embed_dim floats (e.g. feature statistics).
        "prior_std": 1.0,  # A float, or embed_dim floats.
        "rafa_decay_steps": 0,  # > 0: w_rafa decays linearly to 0 over these steps.
    }
    choices = {"prior": refine_lib.PRIORS}

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        _check_fields(self.cfg, None)
        self.prior_mean = np.asarray(self.cfg["prior_mean"], np.float32)
        self.prior_std = np.asarray(self.cfg["prior_std"], np.float32)
        self.rafa = float(self.cfg["rafa_weight"]) > 0
        self.hycd = float(self.cfg["hycd_weight"]) > 0
        self.embed_dim: int | None = None  # Set by wrap_model: RaFA's references are [B, D].

    @classmethod
    def check(cls, config):
        _check_fields(config.loss, int(config.model.embed_dim))

    def wrap_model(self, model):
        self.embed_dim = int(model.embed_dim)
        return super().wrap_model(model)

    def weight_sets(self):
        return {TEACHER: base.WeightSet(kind="frozen", init="params")} if self.hycd else {}

    def prepare(self, batch, rng, ctx):
        if not self.rafa:
            return batch
        if self.embed_dim is None:
            raise ValueError("ClipRefine.prepare needs the model: call wrap_model(model) first.")
        shape = (batch["image"].shape[0], self.embed_dim)
        z = refine_lib.sample_reference(
            rng, shape, self.cfg["prior"], self.prior_mean, self.prior_std
        )
        return {**batch, "rafa_reference": z}

    def forward(self, apply, batch, ctx):
        out = {"student": apply(batch["image"], batch["tokens"], return_raw=True, train=True)}
        if self.hycd:
            t = ctx.apply_with[TEACHER](batch["image"], batch["tokens"], return_raw=True)
            out["teacher_raw"] = jax.lax.stop_gradient((t.img_raw, t.txt_raw))
        return out

    def rafa_weight_at(self, step) -> jax.Array:
        """``w_rafa(t)``: constant, or ``w (1 - t / rafa_decay_steps)`` clipped at 0."""
        w = jnp.float32(self.cfg["rafa_weight"])
        n = int(self.cfg["rafa_decay_steps"])
        if n:
            w = w * jnp.clip(1.0 - jnp.asarray(step, jnp.float32) / n, 0.0, 1.0)
        return w

    def loss(self, out, batch, ctx):
        c = self.cfg
        s = out["student"]
        loss, parts, extra = jnp.float32(0.0), {}, {}
        if self.rafa:
            parts["rafa"] = refine_lib.rafa_loss(s.img_raw, s.txt_raw, batch["rafa_reference"])
            extra["rafa_weight"] = base.stop(self.rafa_weight_at(ctx.step))
            loss = loss + self.rafa_weight_at(ctx.step) * parts["rafa"]
        if self.hycd:
            t_img, t_txt = out["teacher_raw"]
            parts["hycd"] = refine_lib.hycd_loss(
                s.img_raw @ s.txt_raw.T, t_img @ t_txt.T, float(c["alpha"]), float(c["temperature"])
            )
            loss = loss + float(c["hycd_weight"]) * parts["hycd"]
        if float(c["clip_weight"]):
            parts["clip"] = clip_loss(s.zimg, s.ztxt, s.logit_scale)
            loss = loss + float(c["clip_weight"]) * parts["clip"]
        # The reference code's training gap: ‖mean f - mean g‖² / D on the raw features.
        extra["feature_gap_mse"] = base.stop(
            jnp.mean((jnp.mean(s.img_raw, 0) - jnp.mean(s.txt_raw, 0)) ** 2)
        )
        return loss, {**self.metrics(loss, s, **parts), **extra}
