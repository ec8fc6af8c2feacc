"""Objectives: a loss plus what it needs from the model, the batch and the data pipeline.

``losses.build(config.loss, mesh)`` returns ``loss_fn(out, batch=None, step=None)`` whose
``loss_fn.objective`` (an :class:`Objective`) tells the one trainer what else to do:

* ``needs_tokens``: run the towers with ``return_tokens=True``;
* ``wrap_model(model)``: add trainable heads (:mod:`alignjax.losses.heads`);
* ``prepare(batch, rng, step)``: jnp transforms of the global batch before the forward
  (MLM masking), done once per step so that gradient accumulation stays exact;
* ``forward(apply, batch, return_tokens)``: the model calls, ``apply(*a, **kw) =
  model.apply({'params': p}, *a, **kw)``; returns the pytree the loss reads;
* ``supports_accumulation``: whether GradCache (``grad_accum_steps > 1``) is exact
  (the forward must treat examples independently);
* ``data_transforms(tokenizer, seed)``: grain transforms the pipeline must apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from alignjax.losses import clim as clim_lib
from alignjax.losses import dreamlip as dreamlip_lib
from alignjax.losses import lightclip as lightclip_lib
from alignjax.losses import negclip as negclip_lib
from alignjax.losses import pyramid as pyramid_lib
from alignjax.losses import tokenwise
from alignjax.losses import uniter as uniter_lib
from alignjax.losses.contrastive import _as_f32_scalar, _in_batch_accuracy, clip_loss

__all__ = ["METHODS", "Objective", "method_config_defaults"]


def method_config_defaults() -> dict[str, dict[str, Any]]:
    """Per-method fields of ``config.loss`` (sub-dicts named after the method)."""
    return {
        "filip": {
            "chunk_size": 0,  # Gallery chunk of the token-wise similarity; 0: dense.
            "label_smoothing": 0.0,  # Huawei FILIP uses 0.1 (uniform over all classes).
            "zero_pad_floor": False,  # True: pads score 0 in the max (Huawei parity).
            "img_keep_ratio": 1.0,  # FILIP token selection (paper: 0.25 at scale); 1 = all.
            "txt_keep_ratio": 1.0,
            "group_size": 0,  # Local group for token selection; 0: the whole batch.
        },
        "pyramid": {
            "alpha": 0.2,  # Softened-negative weight (unverified, methods.md §5).
            "peer_pairs": ("global:summary", "local:original"),
            "cross_pairs": ("global:original", "local:summary"),
            "cross_weight": 1.0,
            "global_crop": (0.9, 1.0),  # Area fraction of the global view.
            "local_crop": (0.5, 1.0),  # Area fraction of the local view.
        },
        "lightclip": {
            "alpha_max": 0.2,  # Softening at the end of training (unverified, §7).
            "schedule": "linear",  # 'linear' | 'cosine' | 'constant'
            "neg_weighting": "uniform",  # 'uniform' | 'similarity'
            "token_weight": 1.0,
            "mlm_weight": 0.0,  # > 0 adds the image-fused MLM head.
            "mlm_prob": 0.15,
            "mask_id": 2,  # The word-hash and byte tokenizers reserve id 2.
            "mlm_heads": 2,
            "chunk_size": 0,
            "ramp_steps": 1000,  # Steps over which α grows to alpha_max (set to total_steps).
        },
        "dreamlip": {
            "num_sub_captions": 3,  # K sampled sentences per image (DreamLIP: 6).
            "merge_sentences": 1,  # Consecutive sentences joined into one sub-caption.
            "multipos_weight": 1.0,
            "circle_weight": 0.0,  # The released code's Circle loss (scaled 1/10 there).
            "circle_gamma": 32.0,
            "circle_margin": 0.25,
            "group_weight": 1.0,
            "group_delta": 0.0,  # < 0: 1/M.
            "group_norm": "minmax",  # 'minmax' | 'softmax'
            "group_scale_init": 1.0 / 0.07,
        },
        "uniter": {"weight": 0.1, "beta": 0.5, "iterations": 50, "inner": 1},
        "wukong": {"num_tokens": 12, "groups": 8, "chunk_size": 0, "label_smoothing": 0.0},
        "clim": {
            "grid": 2,  # s: s×s images per mosaic.
            "num_mosaics": 0,  # Mosaics per batch; 0: as many as use half the batch.
            "freeze_text": False,  # CLIM freezes the (pre-trained) text tower.
            "global_weight": 0.0,  # Extra plain CLIP loss on the whole batch.
        },
        "negclip": {
            "neg_key": "neg_caption",  # Example field holding the hard negative caption.
        },
    }


METHODS = tuple(method_config_defaults())


def _get(out, field):
    return out.get(field) if isinstance(out, dict) else getattr(out, field, None)


def _accuracy(zimg, ztxt):
    return _in_batch_accuracy(zimg, ztxt)


def _sg(x):
    return jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))


class Objective:
    """Base: the CLIP/SigLIP loss function ``core`` on one forward pass."""

    name = "clip"
    needs_tokens = False
    supports_accumulation = True

    def __init__(self, cfg: dict[str, Any], core: Callable | None = None):
        self.cfg = cfg
        self.core = core
        self.heads: dict[str, Any] = {}  # Head name -> settings (heads.with_heads).

    # -- hooks ---------------------------------------------------------------------------
    def wrap_model(self, model):
        from alignjax.losses import heads as heads_lib  # Lazy: imports the models package.

        return heads_lib.with_heads(model, self.heads)

    def prepare(self, batch, rng, step):
        del rng, step
        return batch

    def forward(self, apply, batch, return_tokens=False):
        return apply(
            batch["image"],
            batch["tokens"],
            return_tokens=bool(return_tokens or self.needs_tokens),
            train=True,
        )

    def data_transforms(self, tokenizer, seed: int = 0) -> tuple:
        del tokenizer, seed
        return ()

    def loss(self, out, batch, step):
        return self.core(out)

    def __call__(self, out, batch=None, step=None):
        return self.loss(out, batch, step)

    # -- helpers -------------------------------------------------------------------------
    def _metrics(self, loss, main, **parts):
        i2t, t2i = _accuracy(_get(main, "zimg"), _get(main, "ztxt"))
        m = {
            "loss": _sg(loss),
            "logit_scale": _sg(_as_f32_scalar(_get(main, "logit_scale"), "logit_scale")),
            "i2t_acc": i2t,
            "t2i_acc": t2i,
        }
        m.update({f"loss_{k}": _sg(v) for k, v in parts.items()})
        return m


class Filip(Objective):
    """FILIP token-wise late interaction (``tokenwise.filip_loss``)."""

    name = "filip"
    needs_tokens = True

    def _filip_kwargs(self, c):
        return {
            "chunk_size": c["chunk_size"] or None,
            "label_smoothing": c["label_smoothing"],
            "zero_pad_floor": c.get("zero_pad_floor", False),
            "img_keep_ratio": c.get("img_keep_ratio", 1.0),
            "txt_keep_ratio": c.get("txt_keep_ratio", 1.0),
            "group_size": c.get("group_size", 0) or None,
        }

    def loss(self, out, batch, step):
        loss, _ = tokenwise.filip_loss(
            out.img_tokens,
            out.txt_tokens,
            out.txt_mask,
            out.logit_scale,
            **self._filip_kwargs(self.cfg["filip"]),
        )
        return loss, self._metrics(loss, out)


class Wukong(Filip):
    """Wukong: a learned reduction to K image tokens, then FILIP's token-wise loss."""

    name = "wukong"

    def __init__(self, cfg, core=None):
        super().__init__(cfg, core)
        w = cfg["wukong"]
        self.heads = {"wukong": {"num_tokens": int(w["num_tokens"]), "groups": int(w["groups"])}}

    def forward(self, apply, batch, return_tokens=False):
        main = super().forward(apply, batch, True)
        return {"main": main, "img_reduced": apply(main.img_tokens, method="reduce_tokens")}

    def loss(self, out, batch, step):
        main = out["main"]
        w = self.cfg["wukong"]
        loss, _ = tokenwise.filip_loss(
            out["img_reduced"],
            main.txt_tokens,
            main.txt_mask,
            main.logit_scale,
            chunk_size=w["chunk_size"] or None,
            label_smoothing=w["label_smoothing"],
        )
        return loss, self._metrics(loss, main)


class Pyramid(Objective):
    """PyramidCLIP: global/local views x original/summary captions, softened targets."""

    name = "pyramid"

    def data_transforms(self, tokenizer, seed=0):
        from alignjax.data import method_transforms as mt

        p = self.cfg["pyramid"]
        return (
            mt.TwoViews(global_crop=tuple(p["global_crop"]), local_crop=tuple(p["local_crop"])),
            mt.TokenizeSummary(tokenizer),
        )

    def forward(self, apply, batch, return_tokens=False):
        main = super().forward(apply, batch, return_tokens)
        local = apply(batch["image_local"], batch["summary_tokens"], train=True)
        return {"main": main, "local": local}

    def loss(self, out, batch, step):
        p = self.cfg["pyramid"]
        main, local = out["main"], out["local"]
        views = {"global": main.zimg, "local": local.zimg}
        texts = {"original": main.ztxt, "summary": local.ztxt}
        loss, parts = pyramid_lib.pyramid_loss(
            views,
            texts,
            main.logit_scale,
            peer_pairs=pyramid_lib.parse_pairs(p["peer_pairs"]),
            cross_pairs=pyramid_lib.parse_pairs(p["cross_pairs"]),
            cross_weight=p["cross_weight"],
            alpha=p["alpha"],
        )
        parts = {k.replace(":", "_"): v for k, v in parts.items()}
        return loss, self._metrics(loss, main, **parts)


class LightClip(Objective):
    """LightCLIP: progressive softened labels + relaxed token matching (+ MLM head)."""

    name = "lightclip"
    needs_tokens = True

    def __init__(self, cfg, core=None):
        super().__init__(cfg, core)
        c = cfg["lightclip"]
        self.mlm = c["mlm_weight"] > 0
        self.heads = {"mlm": {"num_heads": int(c["mlm_heads"])}} if self.mlm else {}

    def prepare(self, batch, rng, step):
        if not self.mlm:
            return batch
        c = self.cfg["lightclip"]
        masked, labels = lightclip_lib.mask_tokens(
            batch["tokens"], rng, c["mlm_prob"], c["mask_id"]
        )
        return dict(batch, mlm_tokens=masked, mlm_labels=labels)

    def forward(self, apply, batch, return_tokens=False):
        main = super().forward(apply, batch, True)
        if not self.mlm:
            return {"main": main}
        masked = apply(None, batch["mlm_tokens"], return_tokens=True, train=True)
        logits = apply(masked.txt_tokens, main.img_tokens, method="mlm_logits")
        return {"main": main, "mlm_logits": logits, "mlm_labels": batch["mlm_labels"]}

    def loss(self, out, batch, step):
        c = self.cfg["lightclip"]
        main = out["main"]
        step = 0 if step is None else step
        alpha = lightclip_lib.alpha_schedule(step, c["ramp_steps"], c["alpha_max"], c["schedule"])
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
        metrics = self._metrics(loss, main, **parts)
        metrics["alpha"] = _sg(alpha)
        return loss, metrics


class DreamLip(Objective):
    """DreamLIP: K sub-captions per image, multi-positive + grouping (+ Circle) losses."""

    name = "dreamlip"

    def __init__(self, cfg, core=None):
        super().__init__(cfg, core)
        d = cfg["dreamlip"]
        self.group = d["group_weight"] > 0
        self.needs_tokens = self.group  # Patch tokens feed the grouping loss only.
        self.heads = {"group_scale": {"init": float(d["group_scale_init"])}} if self.group else {}

    def data_transforms(self, tokenizer, seed=0):
        from alignjax.data import method_transforms as mt

        d = self.cfg["dreamlip"]
        return (
            mt.SampleSubCaptions(
                tokenizer, num=int(d["num_sub_captions"]), merge=int(d["merge_sentences"])
            ),
        )

    def forward(self, apply, batch, return_tokens=False):
        main = super().forward(apply, batch, self.group)
        out = {"main": main}
        sub = batch.get("sub_tokens")
        if sub is not None and sub.shape[1] > 0:
            b, k, length = sub.shape
            z = apply(None, sub.reshape(b * k, length), train=True).ztxt
            out["ztxt_sub"] = z.reshape(b, k, -1)
        if self.group:
            out["group_scale"] = apply(method="group_logit_scale")
        return out

    def loss(self, out, batch, step):
        d = self.cfg["dreamlip"]
        main = out["main"]
        texts = main.ztxt[:, None, :]
        if "ztxt_sub" in out:
            texts = jnp.concatenate([texts, out["ztxt_sub"]], axis=1)  # [B, 1+K, D]
        parts = {"multipos": dreamlip_lib.multi_positive_loss(main.zimg, texts, main.logit_scale)}
        loss = d["multipos_weight"] * parts["multipos"]
        if d["circle_weight"]:
            parts["circle"] = dreamlip_lib.circle_loss(
                main.zimg, texts, d["circle_gamma"], d["circle_margin"]
            )
            loss = loss + d["circle_weight"] * parts["circle"]
        if self.group:
            parts["group"] = dreamlip_lib.grouping_loss(
                texts, main.img_tokens, out["group_scale"], d["group_delta"], d["group_norm"]
            )
            loss = loss + d["group_weight"] * parts["group"]
        return loss, self._metrics(loss, main, **parts)


class UniterWra(Objective):
    """CLIP loss + UNITER word-region alignment (IPOT) between tokens and patches."""

    name = "uniter"
    needs_tokens = True

    def loss(self, out, batch, step):
        u = self.cfg["uniter"]
        clip = clip_loss(out.zimg, out.ztxt, out.logit_scale)
        wra, (d_pos, d_neg) = uniter_lib.wra_loss(
            out.txt_tokens,
            out.txt_mask,
            out.img_tokens,
            beta=u["beta"],
            iterations=int(u["iterations"]),
            inner=int(u["inner"]),
        )
        loss = clip + u["weight"] * wra
        m = self._metrics(loss, out, clip=clip, wra=wra)
        m["ot_pos"], m["ot_neg"] = _sg(jnp.mean(d_pos)), _sg(jnp.mean(d_neg))
        return loss, m


class Clim(Objective):
    """CLIM: mosaics of batch images; tile features from the mosaic's token grid."""

    name = "clim"
    supports_accumulation = False  # Mosaics mix examples: micro-batches would differ.

    def _split(self, batch_size):
        c = self.cfg["clim"]
        s2 = int(c["grid"]) ** 2
        g = int(c["num_mosaics"]) or (batch_size // 2) // s2
        if g * s2 > batch_size:
            raise ValueError(
                f"clim.num_mosaics={g} with grid={c['grid']} needs {g * s2} images, more than "
                f"the batch of {batch_size}."
            )
        return g * s2

    def forward(self, apply, batch, return_tokens=False):
        main = super().forward(apply, batch, return_tokens)
        n = self._split(batch["image"].shape[0])
        out = {"main": main}
        if n:
            mosaics = clim_lib.make_mosaics(batch["image"][:n], int(self.cfg["clim"]["grid"]))
            out["mosaic_tokens"] = apply(mosaics, None, return_tokens=True, train=True).img_tokens
        return out

    def loss(self, out, batch, step):
        c = self.cfg["clim"]
        main = out["main"]
        ztxt = jax.lax.stop_gradient(main.ztxt) if c["freeze_text"] else main.ztxt
        zimg = main.zimg
        if "mosaic_tokens" in out:
            regions = clim_lib.region_features(out["mosaic_tokens"], int(c["grid"]))
            zimg = jnp.concatenate([regions, main.zimg[regions.shape[0] :]], axis=0)
        region = clip_loss(zimg, ztxt, main.logit_scale)
        loss = region
        parts = {"region": region}
        if c["global_weight"]:
            parts["global"] = clip_loss(main.zimg, ztxt, main.logit_scale)
            loss = loss + c["global_weight"] * parts["global"]
        return loss, self._metrics(loss, main, **parts)


class NegClip(Objective):
    """NegCLIP: each image's hard negative caption joins the image->text softmax."""

    name = "negclip"

    def data_transforms(self, tokenizer, seed=0):
        from alignjax.data import method_transforms as mt

        return (mt.TokenizeNegative(tokenizer, key=self.cfg["negclip"]["neg_key"]),)

    def forward(self, apply, batch, return_tokens=False):
        main = super().forward(apply, batch, return_tokens)
        return {"main": main, "zneg": apply(None, batch["neg_tokens"], train=True).ztxt}

    def loss(self, out, batch, step):
        main = out["main"]
        loss = negclip_lib.negclip_loss(main.zimg, main.ztxt, out["zneg"], main.logit_scale)
        clip = clip_loss(main.zimg, main.ztxt, main.logit_scale)
        return loss, self._metrics(loss, main, clip=clip)


_CLASSES = {
    cls.name: cls for cls in (Filip, Wukong, Pyramid, LightClip, DreamLip, UniterWra, Clim, NegClip)
}
assert set(_CLASSES) == set(METHODS)


def build_objective(cfg: dict[str, Any]) -> Objective:
    """The :class:`Objective` of a validated loss config (a plain dict)."""
    return _CLASSES[cfg["name"]](cfg)
