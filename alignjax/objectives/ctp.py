"""CTP (Zhu et al., ICCV 2023): continual pre-training with compatible momentum and topology.

Tasks arrive one after another; each task is one run of the trainer (the sequence:
:mod:`alignjax.continual`). ``task_index`` 0 is the first task; a later task starts from
the previous task's run (``config.init_from``) and names it as ``reference``, the frozen
previous-task model. With ``t = 1 / temperature`` and the unit-norm embeddings ``x, y`` of
the trained model, ``x_m, y_m`` of the momentum model, ``x_r, y_r`` of the reference and the
queues ``Q_x, Q_y`` of earlier momentum features (:mod:`alignjax.losses.ctp`)::

    L_ita  = CLIP(x, y; t)                                     in-batch InfoNCE
    L_moco = ½ [CE(t x [y_m; Q_y]ᵀ, I) + CE(t y [x_m; Q_x]ᵀ, I)]  the diagonal of the first B
    L_tp   = cross + same (KL to the reference's similarity rows)          tasks >= 2 only
    L      = w_ita L_ita + w_moco L_moco + w_tp L_tp

Momentum model: a plain EMA ``θ_m ← m₁ θ_m + (1 - m₁) θ`` on the first task (m₁ = 0.995),
CTP's compatible momentum ``θ_m ← m θ_m + (1-m)/2 θ + (1-m)/2 θ_ref`` (m = 0.9) later.
The queues (and their pointer) are buffers of the train state, so a resumed run continues
them; they enqueue the momentum features of each step's whole batch. The paper's MLM branch
and its momentum distillation are left out: the two-tower model has no MLM head.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from alignjax.losses import clip_loss
from alignjax.losses import ctp as ctp_lib
from alignjax.objectives import base

MOMENTUM, REFERENCE = "momentum", "reference"


def _random_unit_rows(shape, key):
    """[Q, D] random unit vectors: the queue before any feature was enqueued (as MoCo)."""
    z = jax.random.normal(key, shape, jnp.float32)
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


def _compatible_update(momentum, params, decay, weights):
    """`WeightSet.update` of the momentum set on tasks >= 2 (reads the reference set)."""
    return ctp_lib.compatible_momentum(momentum, params, weights[REFERENCE], decay)


@base.register
class Ctp(base.Objective):
    """CTP: ITA + MoCo against a queue, topology KL to the previous task's model."""

    name = "ctp"
    defaults = {
        "task_index": 0,  # 0: the first task (plain EMA, no reference, no topology loss).
        "reference": "",  # Run dir of the previous task: the frozen reference (tasks >= 2).
        "queue_size": 1024,  # Q momentum features per modality; a multiple of batch_size.
        "momentum": 0.9,  # m of the compatible momentum update (tasks >= 2).
        "first_task_momentum": 0.995,  # EMA decay of the momentum model on the first task.
        "temperature": 0.07,  # Fixed tau (CTP); 0: the model's learned logit scale instead.
        "ita_weight": 1.0,
        "moco_weight": 1.0,
        "topology_weight": 1.0,
    }

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        self.later_task = int(self.cfg["task_index"]) > 0
        self._feature_dim = None  # The model's embed_dim, read in `wrap_model`.

    @classmethod
    def check(cls, config):
        c = config.loss
        if int(c.task_index) < 0:
            raise ValueError(f"config.loss.task_index must be >= 0 (0: the first task), got {c.task_index}.")
        if int(c.task_index) > 0 and not c.reference:
            raise ValueError(
                f"config.loss.task_index={c.task_index} needs config.loss.reference: the run "
                f"dir of the previous task (its frozen model). Set it, or task_index=0."
            )
        if int(c.task_index) == 0 and c.reference:
            raise ValueError(
                f"config.loss.reference={c.reference!r} is only read on later tasks; the first "
                f"task (task_index=0) has no reference. Clear it or set task_index > 0."
            )
        q, b = int(c.queue_size), int(config.batch_size)
        if q <= 0 or q % b:
            raise ValueError(
                f"config.loss.queue_size={q} must be a positive multiple of config.batch_size="
                f"{b} (each step enqueues the whole batch without wrapping); e.g. {b * max(1, q // b)}."
            )
        for field in ("momentum", "first_task_momentum"):
            if not 0.0 <= float(c[field]) < 1.0:
                raise ValueError(f"config.loss.{field} must be in [0, 1), got {c[field]}.")
        if float(c.temperature) < 0:
            raise ValueError(
                f"config.loss.temperature must be > 0 (fixed tau) or 0 (the model's logit "
                f"scale), got {c.temperature}."
            )

    # -- state --------------------------------------------------------------------------
    def wrap_model(self, model):
        self._feature_dim = int(model.embed_dim)  # The queues hold [Q, embed_dim] features.
        return super().wrap_model(model)

    def weight_sets(self):
        c = self.cfg
        if not self.later_task:
            return {MOMENTUM: base.WeightSet(kind="ema", decay=float(c["first_task_momentum"]))}
        reference = {"path": str(c["reference"]), "mapping": (), "step": -1}
        return {
            REFERENCE: base.WeightSet(kind="frozen", init="init_from", init_from=reference),
            # Starts as a copy of the starting parameters (the previous task's model).
            MOMENTUM: base.WeightSet(
                kind="ema", decay=float(c["momentum"]), update=_compatible_update
            ),
        }

    def buffers(self):
        if self._feature_dim is None:
            raise ValueError("Ctp.buffers() needs the model: call wrap_model(model) first.")
        shape = (int(self.cfg["queue_size"]), self._feature_dim)
        init = functools.partial(_random_unit_rows, shape)
        return {
            "image_queue": base.Buffer(shape, jnp.float32, init),
            "text_queue": base.Buffer(shape, jnp.float32, init),
            "queue_ptr": base.Buffer((), jnp.int32, 0),
        }

    # -- step ---------------------------------------------------------------------------
    def forward(self, apply, batch, ctx):
        images, tokens = batch["image"], batch["tokens"]
        out = {"main": apply(images, tokens, train=True)}
        # Per example and gradient-free (ctx weights are constants): exact under GradCache.
        momentum = ctx.apply_with[MOMENTUM](images, tokens, train=False)
        out["momentum"] = (momentum.zimg, momentum.ztxt)
        if self.later_task:
            ref = ctx.apply_with[REFERENCE](images, tokens, train=False)
            out["reference"] = (ref.zimg, ref.ztxt)
        return out

    def _logit_scale(self, main):
        tau = float(self.cfg["temperature"])
        return main.logit_scale if tau == 0 else 1.0 / tau

    def loss(self, out, batch, ctx):
        c = self.cfg
        main = out["main"]
        x, y = main.zimg, main.ztxt
        t = self._logit_scale(main)
        x_m, y_m = out["momentum"]
        parts = {
            "ita": clip_loss(x, y, t),
            "moco": ctp_lib.moco_loss(
                x, y, x_m, y_m, ctx.buffers["image_queue"], ctx.buffers["text_queue"], t
            ),
        }
        loss = c["ita_weight"] * parts["ita"] + c["moco_weight"] * parts["moco"]
        if self.later_task:
            cross, same = ctp_lib.topology_kl(x, y, *out["reference"], t)
            parts.update(topology_cross=cross, topology_same=same)
            loss = loss + c["topology_weight"] * (cross + same)
        return loss, self.metrics(loss, main, **parts)

    def update_buffers(self, buffers, out, batch, ctx):
        x_m, y_m = out["momentum"]
        ptr = buffers["queue_ptr"]
        image_queue, new_ptr = ctp_lib.enqueue(buffers["image_queue"], ptr, x_m)
        text_queue, _ = ctp_lib.enqueue(buffers["text_queue"], ptr, y_m)
        return {"image_queue": image_queue, "text_queue": text_queue, "queue_ptr": new_ptr}
