"""Contrastive image-text losses: softmax (CLIP) and pairwise sigmoid (SigLIP).

All functions here are pure functions of arrays. They work unchanged on one device and
under ``jax.jit`` on globally sharded arrays: because they are written as the loss over the
*global* batch, XLA inserts the collectives and the gradient is the exact global gradient
(unlike a per-device "local loss" whose gradients must be averaged by hand). This holds
for meshes with Auto axes and with Explicit axes (``jax.make_mesh``'s default), for which
the dense bodies run under ``jax.sharding.auto_axes``. The memory-lean multi-device sigmoid
loss lives in :mod:`alignjax.losses.ring`.

Notation (see ``reference/methods.md`` §0-2): ``B`` batch size, ``D`` embedding size,
``x_i`` / ``y_j`` the (already L2-normalised) image / text embeddings, ``s_ij = <x_i, y_j>``,
``t`` the logit scale (a multiplier, i.e. ``exp`` of the stored log-temperature) and
``b`` the SigLIP logit bias. Every loss is computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "LOSS_IMPLS",
    "LOSS_NAMES",
    "build",
    "clip_loss",
    "default_loss_config",
    "info_nce",
    "siglip_loss",
]

BASE_LOSSES = ("clip", "siglip")
METHOD_LOSSES = (
    "filip",
    "pyramid",
    "lightclip",
    "dreamlip",
    "uniter",
    "wukong",
    "clim",
    "negclip",
)
LOSS_NAMES = BASE_LOSSES + METHOD_LOSSES
LOSS_IMPLS = ("dense", "ring")
_CONFIG_FIELDS = ("name", "impl", "batch_axes", "needs_tokens") + METHOD_LOSSES


# ----------------------------------------------------------------------------------------
# Small helpers shared with ring.py.
# ----------------------------------------------------------------------------------------
def _as_f32_scalar(value: Any, what: str) -> jax.Array:
    """Returns ``value`` as a float32 scalar; accepts shape ``()`` or any one-element shape.

    Models commonly store the temperature as a ``(1,)`` parameter (big_vision); reshaping
    keeps the gradient flowing to it.
    """
    value = jnp.asarray(value, jnp.float32)
    if value.size != 1:
        raise ValueError(
            f"{what} must be a scalar (or have exactly one element); got shape {value.shape}."
        )
    return value.reshape(())


def _check_pair(zimg: jax.Array, ztxt: jax.Array, fn: str) -> None:
    if zimg.ndim != 2 or ztxt.ndim != 2:
        raise ValueError(f"{fn}: zimg and ztxt must be [B, D]; got {zimg.shape} and {ztxt.shape}.")
    if zimg.shape != ztxt.shape:
        raise ValueError(
            f"{fn}: zimg {zimg.shape} and ztxt {ztxt.shape} must have the same "
            "[B, D] shape (one caption per image, positives on the diagonal)."
        )


def _explicit_mesh(*arrays):
    """The abstract mesh of the first array whose type carries Explicit mesh axes, else None.

    ``jax.make_mesh`` creates ``AxisType.Explicit`` axes by default in recent jax. Under such
    a mesh, sharding is part of an array's type and ``x @ y.T`` with both operands sharded
    over the batch is a type error (the [B, B] result would be sharded twice over the same
    axes). The dense losses therefore run their body under ``jax.sharding.auto_axes``, which
    hands the partitioning to XLA exactly as for Auto axes; the gradient is still exact.
    """
    typeof = getattr(jax, "typeof", None)
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if typeof is None or explicit is None:
        return None
    for a in arrays:
        mesh = getattr(getattr(typeof(a), "sharding", None), "mesh", None)
        if mesh is not None and explicit in tuple(getattr(mesh, "axis_types", ())):
            return getattr(mesh, "abstract_mesh", mesh)
    return None


def _run_auto(fn: Callable, out_sharding, *args):
    """``fn(*args)``, with Explicit mesh axes (if any) switched to Auto inside ``fn``."""
    mesh = _explicit_mesh(*args[:2])
    if mesh is None:
        return fn(*args)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.sharding.auto_axes(fn, out_sharding=out_sharding)(*args)


def _sigmoid_block_sum(
    x: jax.Array, y: jax.Array, t: jax.Array, b: jax.Array, *, positives_on_diagonal: bool
) -> jax.Array:
    """Σ_ij −log σ(z_ij (t·x_i·y_j + b)) over one block of pairs (float32 scalar).

    ``z_ij = +1`` on the diagonal when ``positives_on_diagonal`` (the block of a batch with
    itself) and ``−1`` everywhere else. Uses ``−log σ(z·l) = softplus(−z·l)``, which is stable
    for large |l| and does not cancel on the positives.

    Args:
      x: [n, D] float32 image embeddings.
      y: [m, D] float32 text embeddings (``m == n`` when ``positives_on_diagonal``).
      t, b: float32 scalars.
    """
    logits = t * (x @ y.T) + b  # [n, m]
    if positives_on_diagonal:
        n, m = logits.shape
        eye = jnp.arange(n)[:, None] == jnp.arange(m)[None, :]
        logits = jnp.where(eye, -logits, logits)  # −z_ij · l_ij
    return jnp.sum(jax.nn.softplus(logits))


def _in_batch_accuracy(zimg: jax.Array, ztxt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """In-batch top-1 retrieval accuracy in both directions (float32 scalars, no gradient).

    ``i2t = mean_i [argmax_j s_ij == i]`` and ``t2i = mean_j [argmax_i s_ij == j]``; ties go
    to the lowest index (``jnp.argmax``). Uses similarities, not logits, so it is defined
    for ``t = 0`` too.
    """

    def accuracy(x, y):
        sim = x.astype(jnp.float32) @ y.astype(jnp.float32).T  # [B, B]
        idx = jnp.arange(sim.shape[0])
        i2t = jnp.mean((jnp.argmax(sim, axis=1) == idx).astype(jnp.float32))
        t2i = jnp.mean((jnp.argmax(sim, axis=0) == idx).astype(jnp.float32))
        return i2t, t2i

    replicated = jax.sharding.PartitionSpec()
    return _run_auto(
        accuracy, (replicated, replicated), jax.lax.stop_gradient(zimg), jax.lax.stop_gradient(ztxt)
    )


# ----------------------------------------------------------------------------------------
# Public losses.
# ----------------------------------------------------------------------------------------
def info_nce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax cross-entropy with (soft) target distributions, averaged over rows.

    ``L = −(1/N) Σ_i Σ_j T_ij · log softmax_j(logits_i)_j``

    Args:
      logits: [N, M] scores; entries may be ``−inf`` (masked out) as long as their target
        is 0.
      targets: [N, M] target distributions, each row non-negative and summing to 1
        (one-hot rows give the usual hard-label cross-entropy). Not normalised here.

    Returns:
      float32 scalar. Entries with ``T_ij == 0`` contribute exactly 0 even where
      ``logits_ij = −inf``, in the value and in the gradients.
    """
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"info_nce: logits and targets must both be [N, M]; got "
            f"{logits.shape} and {targets.shape}."
        )
    logp = jax.nn.log_softmax(logits, axis=-1)
    # Select before multiplying so that 0 · (−inf) never appears, in value or gradient.
    logp = jnp.where(targets > 0, logp, 0.0)
    return -jnp.mean(jnp.sum(targets * logp, axis=-1))


def clip_loss(zimg: jax.Array, ztxt: jax.Array, logit_scale: Any) -> jax.Array:
    """Symmetric InfoNCE (CLIP), the mean of the image→text and text→image directions.

    ``l_ij = t · <x_i, y_j>``;
    ``L = ½ [ −(1/B) Σ_i log softmax_j(l_i·)_i  −(1/B) Σ_j log softmax_i(l_·j)_j ]``
    which equals ``½ (info_nce(l, I) + info_nce(lᵀ, I))``.

    Args:
      zimg: [B, D] image embeddings (L2-normalised by the model; not renormalised here).
      ztxt: [B, D] text embeddings; ``ztxt[i]`` is the caption of ``zimg[i]``.
      logit_scale: the multiplier ``t = exp(t')`` (scalar or one-element array).

    Returns:
      float32 scalar; computed in float32 whatever the input dtype. ``t = 0`` gives
      ``log B``; ``B = 1`` gives 0. Under ``jax.jit`` with the batch sharded over devices the
      value and gradient are those of the global batch.
    """
    _check_pair(zimg, ztxt, "clip_loss")
    return _run_auto(
        _clip_dense,
        jax.sharding.PartitionSpec(),
        zimg,
        ztxt,
        _as_f32_scalar(logit_scale, "logit_scale"),
    )


def _clip_dense(zimg, ztxt, t):
    x = zimg.astype(jnp.float32)
    y = ztxt.astype(jnp.float32)
    logits = t * (x @ y.T)  # [B, B]
    pos = jnp.diagonal(logits)  # [B]
    i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)
    t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - pos)
    return 0.5 * (i2t + t2i)


def siglip_loss(zimg: jax.Array, ztxt: jax.Array, logit_scale: Any, logit_bias: Any) -> jax.Array:
    """Pairwise sigmoid loss (SigLIP), dense over the whole batch.

    ``l_ij = t · <x_i, y_j> + b``, ``z_ij = +1 if i == j else −1``;
    ``L = −(1/B) Σ_i Σ_j log σ(z_ij · l_ij)`` (a sum over all B² pairs divided by B, i.e.
    the mean over images of the sum over texts).

    Args:
      zimg: [B, D] image embeddings (L2-normalised).
      ztxt: [B, D] text embeddings, positives on the diagonal.
      logit_scale: the multiplier ``t`` (scalar or one-element array).
      logit_bias: the bias ``b`` (scalar or one-element array).

    Returns:
      float32 scalar. Memory is O(B²) on one device, O(B²/n) per device when the batch is
      sharded over n devices under jit; for O((B/n)²) use
      :func:`alignjax.losses.ring.siglip_loss_ring`.
    """
    _check_pair(zimg, ztxt, "siglip_loss")
    return _run_auto(
        _siglip_dense,
        jax.sharding.PartitionSpec(),
        zimg,
        ztxt,
        _as_f32_scalar(logit_scale, "logit_scale"),
        _as_f32_scalar(logit_bias, "logit_bias"),
    )


def _siglip_dense(zimg, ztxt, t, b):
    x = zimg.astype(jnp.float32)
    y = ztxt.astype(jnp.float32)
    total = _sigmoid_block_sum(x, y, t, b, positives_on_diagonal=True)
    return total / x.shape[0]


# ----------------------------------------------------------------------------------------
# Config -> loss_fn.
# ----------------------------------------------------------------------------------------
def default_loss_config():
    """Default ``config.loss``: the CLIP softmax loss, computed densely.

    Fields:
      name: ``'clip'`` (symmetric InfoNCE), ``'siglip'`` (pairwise sigmoid; the model
        must output a ``logit_bias``) or an alignment objective: ``'filip'``,
        ``'pyramid'``, ``'lightclip'``, ``'dreamlip'``, ``'uniter'``, ``'wukong'``,
        ``'clim'`` (see :mod:`alignjax.losses.objectives` and docs/OBJECTIVES.md).
      impl: ``'dense'`` (global B×B logits; exact under jit on sharded arrays) or
        ``'ring'`` (SigLIP only: shard_map + ppermute ring, O((B/n)²) per device; needs
        ``build(..., mesh=...)``).
      batch_axes: mesh axes the batch is sharded over (used by ``impl='ring'``).
      needs_tokens: force the towers to return per-token features (objectives that need
        them request them anyway).
      filip, pyramid, lightclip, dreamlip, uniter, wukong, clim: each method's settings,
        read only when ``name`` selects it.
    """
    import ml_collections  # Imported lazily: only config handling needs it.

    from alignjax.losses.objectives import method_config_defaults

    return ml_collections.ConfigDict(
        {
            "name": "clip",
            "impl": "dense",
            "batch_axes": ("data", "fsdp"),
            "needs_tokens": False,
            **method_config_defaults(),
        }
    )


def _config_to_dict(loss_config) -> dict:
    if loss_config is None:
        return dict(default_loss_config().to_dict())
    if hasattr(loss_config, "to_dict"):  # (Frozen)ConfigDict
        return dict(loss_config.to_dict())
    if isinstance(loss_config, Mapping):
        return dict(loss_config)
    raise ValueError(
        f"loss_config must be an ml_collections.ConfigDict or a dict with fields "
        f"{_CONFIG_FIELDS}; got {type(loss_config).__name__}."
    )


def _get(out: Any, field: str, default: Any = None) -> Any:
    if isinstance(out, Mapping):
        return out.get(field, default)
    return getattr(out, field, default)


def _validated(loss_config) -> dict:
    """The loss config as a dict with every field, unknown fields and values rejected."""
    cfg = _config_to_dict(loss_config)
    unknown = sorted(set(cfg) - set(_CONFIG_FIELDS))
    if unknown:
        raise ValueError(
            f"Unknown loss config field(s) {unknown}; valid fields are {list(_CONFIG_FIELDS)}."
        )
    defaults = default_loss_config().to_dict()
    out = {}
    for key, default in defaults.items():
        value = cfg.get(key, default)
        if isinstance(default, dict):
            value = dict(value or {})
            bad = sorted(set(value) - set(default))
            if bad:
                raise ValueError(
                    f"Unknown field(s) {bad} in config.loss.{key}; valid fields are "
                    f"{sorted(default)}."
                )
            value = {**default, **value}
        out[key] = value
    if out["name"] not in LOSS_NAMES:
        raise ValueError(f"Unknown loss name {out['name']!r}; valid names are {list(LOSS_NAMES)}.")
    if out["impl"] not in LOSS_IMPLS:
        raise ValueError(f"Unknown loss impl {out['impl']!r}; valid impls are {list(LOSS_IMPLS)}.")
    if out["name"] in METHOD_LOSSES and out["impl"] != "dense":
        raise ValueError(
            f"impl={out['impl']!r} is only implemented for name='siglip'; objective "
            f"{out['name']!r} runs with impl='dense'."
        )
    choices = {
        ("lightclip", "schedule"): ("linear", "cosine", "constant"),
        ("lightclip", "neg_weighting"): ("uniform", "similarity"),
        ("dreamlip", "group_norm"): ("minmax", "softmax"),
    }
    for (method, field), valid in choices.items():
        if out[method][field] not in valid:
            raise ValueError(
                f"Invalid config.loss.{method}.{field}={out[method][field]!r}; valid: "
                f"{list(valid)}."
            )
    return out


def build(loss_config=None, mesh: jax.sharding.Mesh | None = None) -> Callable[..., Any]:
    """Builds ``loss_fn(out, batch=None, step=None) -> (loss, metrics)`` from ``config.loss``.

    Args:
      loss_config: ConfigDict or dict with the fields of :func:`default_loss_config`;
        missing fields take its values. Unknown fields or values raise ``ValueError``
        naming the valid choices.
      mesh: the device mesh; required for ``impl='ring'``.

    Returns:
      ``loss_fn(out, batch=None, step=None)``. For ``'clip'``/``'siglip'``, ``out`` has
      attributes ``zimg [B, D]``, ``ztxt [B, D]``, ``logit_scale`` (the multiplier t, not
      its log) and ``logit_bias`` (SigLIP; may be absent/None for CLIP); ``batch`` and
      ``step`` are unused. For the alignment objectives ``out`` is what
      ``loss_fn.objective.forward`` returns. The metrics are float32 scalars: ``loss``,
      ``logit_scale``, ``logit_bias`` (when present), ``i2t_acc`` and ``t2i_acc``
      (in-batch top-1 retrieval accuracy over the global batch) and, for objectives, each
      term as ``loss_<term>``. ``loss_fn.objective`` is the
      :class:`alignjax.losses.objectives.Objective` the trainer consults (tokens, heads,
      batch preparation, forward, data transforms, gradient accumulation).
    """
    cfg = _validated(loss_config)
    from alignjax.losses import objectives  # Lazy: objectives imports this module.

    if cfg["name"] in METHOD_LOSSES:
        objective = objectives.build_objective(cfg)
    else:
        objective = objectives.Objective(cfg, _build_base(cfg, mesh))
    if cfg["needs_tokens"]:
        objective.needs_tokens = True

    def loss_fn(out, batch=None, step=None):
        return objective.loss(out, batch, step)

    loss_fn.objective = objective
    return loss_fn


def _build_base(cfg: dict, mesh) -> Callable[[Any], tuple[jax.Array, dict[str, jax.Array]]]:
    """``loss_fn(out)`` for the CLIP and SigLIP losses (dense or ring)."""
    name, impl, batch_axes = cfg["name"], cfg["impl"], cfg["batch_axes"]
    if impl == "ring":
        if name == "clip":
            raise ValueError(
                "impl='ring' is only implemented for name='siglip'. The softmax (CLIP) loss "
                "normalises each row over the whole batch, so a ring would need an online "
                "log-sum-exp in both directions; use impl='dense' for CLIP, which under "
                "jax.jit on sharded arrays already gives the exact global loss and gradient."
            )
        if mesh is None:
            raise ValueError(
                "impl='ring' needs the device mesh: call build(loss_config, mesh=mesh)."
            )
        from alignjax.losses import ring as ring_lib  # Lazy: ring.py imports this module.

        batch_axes = ring_lib.normalize_batch_axes(batch_axes, mesh)

    def loss_fn(out):
        zimg, ztxt = _get(out, "zimg"), _get(out, "ztxt")
        logit_scale = _get(out, "logit_scale")
        logit_bias = _get(out, "logit_bias")
        if zimg is None or ztxt is None or logit_scale is None:
            raise ValueError("loss_fn(out): out must provide zimg, ztxt and logit_scale.")
        if name == "siglip" and logit_bias is None:
            raise ValueError(
                "The 'siglip' loss needs out.logit_bias; build the model with a "
                "learnable bias (e.g. bias_init=-10)."
            )
        if name == "clip":
            loss = clip_loss(zimg, ztxt, logit_scale)
            i2t, t2i = _in_batch_accuracy(zimg, ztxt)
        elif impl == "dense":
            loss = siglip_loss(zimg, ztxt, logit_scale, logit_bias)
            i2t, t2i = _in_batch_accuracy(zimg, ztxt)
        else:
            loss, (i2t, t2i) = ring_lib.siglip_loss_ring_with_accuracy(
                zimg, ztxt, logit_scale, logit_bias, mesh=mesh, batch_axes=batch_axes
            )
        metrics = {
            "loss": jax.lax.stop_gradient(loss).astype(jnp.float32),
            "logit_scale": jax.lax.stop_gradient(_as_f32_scalar(logit_scale, "logit_scale")),
            "i2t_acc": i2t,
            "t2i_acc": t2i,
        }
        if logit_bias is not None:
            metrics["logit_bias"] = jax.lax.stop_gradient(_as_f32_scalar(logit_bias, "logit_bias"))
        return loss, metrics

    return loss_fn
