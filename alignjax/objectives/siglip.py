"""SigLIP (Zhai et al. 2023): the pairwise sigmoid loss, dense or as a ring over devices.

``l_ij = t <x_i, y_j> + b``, ``z_ij = ±1``; ``L = -(1/B) Σ_ij log σ(z_ij l_ij)``
(:func:`alignjax.losses.siglip_loss`). ``impl='ring'`` computes the same value and gradient
with ``shard_map`` + ``ppermute``, one ``b x b`` block per device at a time
(:func:`alignjax.losses.ring.siglip_loss_ring`), over the mesh axes ``batch_axes``.
The model needs a learnable bias (``model.logit_bias_init``, e.g. -10).
"""

from __future__ import annotations

from alignjax.losses import ring as ring_lib
from alignjax.losses.contrastive import as_f32_scalar, in_batch_accuracy, siglip_loss
from alignjax.objectives import base


@base.register
class Siglip(base.Objective):
    """SigLIP: pairwise sigmoid loss (``impl='dense'`` or ``'ring'``)."""

    name = "siglip"
    defaults = {
        "impl": "dense",  # 'ring': O((B/n)^2) memory per device instead of O(B^2 / n).
        "batch_axes": ("data", "fsdp"),  # Mesh axes the batch is sharded over (ring).
    }
    choices = {"impl": ("dense", "ring")}

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        self.batch_axes = tuple(self.cfg["batch_axes"])
        if self.cfg["impl"] == "ring" and mesh is not None:
            self.batch_axes = ring_lib.normalize_batch_axes(self.batch_axes, mesh)

    @classmethod
    def check(cls, config):
        if config.model.get("logit_bias_init") is None:
            raise ValueError(
                "config.loss.name='siglip' needs a learnable logit bias: set "
                "config.model.logit_bias_init (SigLIP: -10) and logit_scale_init (10)."
            )

    def loss(self, out, batch, ctx):
        if out.logit_bias is None:
            raise ValueError(
                "The 'siglip' loss needs out.logit_bias; build the model with a learnable "
                "bias (config.model.logit_bias_init, e.g. -10)."
            )
        if self.cfg["impl"] == "ring":
            if self.mesh is None:
                raise ValueError("impl='ring' needs the device mesh: build(loss, mesh=mesh).")
            loss, (i2t, t2i) = ring_lib.siglip_loss_ring_with_accuracy(
                out.zimg,
                out.ztxt,
                out.logit_scale,
                out.logit_bias,
                mesh=self.mesh,
                batch_axes=self.batch_axes,
            )
        else:
            loss = siglip_loss(out.zimg, out.ztxt, out.logit_scale, out.logit_bias)
            i2t, t2i = in_batch_accuracy(out.zimg, out.ztxt)
        metrics = {
            "loss": base.stop(loss),
            "logit_scale": base.stop(as_f32_scalar(out.logit_scale, "logit_scale")),
            "i2t_acc": i2t,
            "t2i_acc": t2i,
            "logit_bias": base.stop(as_f32_scalar(out.logit_bias, "logit_bias")),
        }
        return loss, metrics
