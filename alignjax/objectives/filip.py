"""FILIP (Yao et al., ICLR 2022): token-wise late interaction in both directions of InfoNCE.

For patch tokens ``x_ik`` and word tokens ``y_jr`` (unit-norm, padding masked out)::

    s^I_ij = mean_k max_r <x_ik, y_jr>      (image -> text rows)
    s^T_ij = mean_r max_k <x_ik, y_jr>      (text -> image columns)
    L = ½ (CE_rows(t s^I, T) + CE_cols(t s^T, T))

with ``T`` the identity or label-smoothed targets (:func:`alignjax.losses.tokenwise.filip_loss`).
Evaluation ranks with this token-wise similarity as well as the global cosine
(``scorers``: metrics ``...@tokenwise`` next to the plain ones).

Fields: ``chunk_size`` (gallery chunk of the interaction; 0 dense), ``label_smoothing``
(the Huawei reference uses 0.1), ``zero_pad_floor`` (pads score 0 in the max, as the
reference code does), ``img_keep_ratio`` / ``txt_keep_ratio`` (FILIP's token selection,
1.0 keeps all; the paper keeps 25% at scale), ``group_size`` (local group for the selection;
0 the whole batch).
"""

from __future__ import annotations

from alignjax import scoring
from alignjax.losses import tokenwise
from alignjax.objectives import base


@base.register
class Filip(base.Objective):
    """FILIP: token-wise max-similarity late interaction."""

    name = "filip"
    defaults = {
        "chunk_size": 0,
        "label_smoothing": 0.0,
        "zero_pad_floor": False,
        "img_keep_ratio": 1.0,
        "txt_keep_ratio": 1.0,
        "group_size": 0,
    }
    needs_tokens = True

    def loss(self, out, batch, ctx):
        c = self.cfg
        loss, _ = tokenwise.filip_loss(
            out.img_tokens,
            out.txt_tokens,
            out.txt_mask,
            out.logit_scale,
            chunk_size=c["chunk_size"] or None,
            label_smoothing=c["label_smoothing"],
            zero_pad_floor=c["zero_pad_floor"],
            img_keep_ratio=c["img_keep_ratio"],
            txt_keep_ratio=c["txt_keep_ratio"],
            group_size=c["group_size"] or None,
        )
        return loss, self.metrics(loss, out)

    @property
    def scorers(self):
        return (
            scoring.GLOBAL,
            scoring.tokenwise_scorer(zero_pad_floor=bool(self.cfg["zero_pad_floor"])),
        )
