"""The seam between a method and the one trainer: :class:`Objective` and its registry.

A method is one file: a subclass of :class:`Objective`, decorated with :func:`register`,
declaring its ``config.loss`` fields (``defaults``) and their allowed values (``choices``),
and overriding the hooks it needs. The trainer calls the hooks and knows no method by name:

=====================================  ==================================================
hook                                   called
=====================================  ==================================================
``heads(model) -> {name: Head}``        once: trainable modules added to the model
``wrap_model(model) -> model``          once: default adds ``heads`` (override for more)
``weight_sets() -> {name: WeightSet}``  once: frozen copies (a teacher) and EMA copies
``buffers() -> {name: Buffer}``         once: non-trainable state kept across steps
                                        (a feature queue and its pointer)
``bind_tokenizer(tokenizer)``           once, wherever a run is built (training,
                                        restoring): methods that tokenize fixed text
                                        (CoOp's class names)
``data_transforms(tokenizer, seed)``    once: per-example grain transforms
``prepare(batch, rng, ctx)``            each step, on the global batch, before any
                                        micro-batch split (e.g. MLM masks)
``forward(apply, batch, ctx) -> out``   each (micro-)batch: the model calls
``loss(out, batch, ctx)``               each step, on the whole batch's ``out``:
                                        ``(loss, metrics)``
``update_buffers(buffers, out, batch,   each step, after ``loss``, on the whole batch's
ctx) -> buffers``                       ``out`` (no gradient): e.g. enqueue features
``scorers``                             evaluation: the similarities to rank with
=====================================  ==================================================

``apply(*args, **kwargs)`` is ``model.apply({'params': params}, *args, **kwargs)`` with the
parameters being trained. ``ctx`` (:class:`StepContext`) carries the step, the extra weight
sets and an ``apply`` for each of them (gradients never reach those), and the buffers as
they were before this step's ``update_buffers``.

Gradient accumulation (``grad_accum_steps > 1``, GradCache) re-runs ``forward`` on
micro-batches and evaluates ``loss`` once on the merged outputs. That is exact when
``forward`` treats examples independently; an objective whose forward mixes examples sets
``supports_accumulation = False``.

``config.loss`` holds ``name`` and the chosen method's fields only; :func:`loss_config`
builds one, :func:`validate_loss_config` checks one (unknown fields name the closest valid
one). Methods from outside the package register the same way: list their module in
``config.imports`` and the trainer imports it before reading ``config.loss``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from alignjax import scoring, validation
from alignjax.losses.contrastive import as_f32_scalar, in_batch_accuracy
from alignjax.models import heads as heads_lib

__all__ = [
    "Buffer",
    "Head",
    "Objective",
    "StepContext",
    "WeightSet",
    "build",
    "default_loss_config",
    "get",
    "import_modules",
    "loss_config",
    "names",
    "register",
    "validate_loss_config",
]

_REGISTRY: dict[str, type[Objective]] = {}


# ----------------------------------------------------------------------------------------
# What an objective can ask for.
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Head:
    """A trainable module (or one parameter) added to the two-tower model by an objective.

    ``make()`` returns the Flax module (called inside the model's ``setup``, so its
    parameters live at the top level under the head's name); ``init_args(out)`` gives the
    example inputs that create its parameters at ``init`` from the model's
    :class:`~alignjax.models.two_tower.TwoTowerOutput` (tokens included). A head that is a
    single parameter gives ``param=(init_fn, shape, dtype)`` instead of ``make``.
    """

    make: Callable[[], Any] | None = None
    init_args: Callable[[Any], tuple] = lambda out: ()
    param: tuple | None = None


@dataclasses.dataclass(frozen=True)
class WeightSet:
    """An extra copy of the weights in the train state: a frozen reference or an EMA.

    Both are created sharded like the parameters, have no optimizer state, receive no
    gradient, are checkpointed with the state, and are readable in ``forward`` and ``loss``
    through ``ctx.weights[name]`` / ``ctx.apply_with[name]``.

    Fields:
      kind: ``'frozen'`` (never updated: a teacher, the starting model) or ``'ema'``
        (after every update: ``w <- d_t w + (1 - d_t) params``, or ``update`` if given).
      init: ``'params'``: a copy of the trained parameters when the run starts (after
        ``config.init_from``); ``'init_from'``: loaded from ``init_from`` (another run, an
        export or converted weights).
      init_from: ``dict(path=..., mapping=(), step=-1)`` as ``config.init_from``.
      model: the model config of a frozen set with another architecture; ``'source'`` reads
        it from the run or export in ``init_from``; None: the trained model.
      decay: EMA decay ``d`` (``kind='ema'``).
      decay_schedule: ``'constant'`` (``d_t = d``) or ``'warmup'``
        (``d_t = min(d, (1 + t) / (10 + t))``, t the number of updates before this one).
      update: custom rule ``(w, params, d_t, weights) -> new w`` (e.g. CTP's compatible
        momentum, which also mixes in another set); default the EMA formula above.
      evaluate: the trainer's evaluators also score this set whenever they score the
        trained parameters, as ``<metric>/<name>`` (e.g. ``.../top1/ema``). Only for sets
        with the trained model's architecture (``model=None``).
    """

    kind: str = "frozen"
    init: str = "params"
    init_from: Mapping[str, Any] | None = None
    model: Any = None
    decay: float = 0.999
    decay_schedule: str = "constant"
    update: Callable | None = None
    evaluate: bool = False

    KINDS: ClassVar[tuple[str, ...]] = ("frozen", "ema")
    INITS: ClassVar[tuple[str, ...]] = ("params", "init_from")
    DECAY_SCHEDULES: ClassVar[tuple[str, ...]] = ("constant", "warmup")

    def __post_init__(self):
        validation.check_choice(self.kind, self.KINDS, "WeightSet.kind")
        validation.check_choice(self.init, self.INITS, "WeightSet.init")
        validation.check_choice(
            self.decay_schedule, self.DECAY_SCHEDULES, "WeightSet.decay_schedule"
        )
        if self.init == "init_from" and not (self.init_from or {}).get("path"):
            raise ValueError("WeightSet(init='init_from') needs init_from=dict(path=...).")
        if self.model is not None and self.kind != "frozen":
            raise ValueError("Only a frozen WeightSet may have its own model (an EMA mirrors it).")
        if self.evaluate and self.model is not None:
            raise ValueError(
                "WeightSet(evaluate=True) needs the trained model's architecture (model=None): "
                "the evaluators are built for that model."
            )
        if self.kind == "ema" and not 0.0 <= float(self.decay) < 1.0:
            raise ValueError(f"WeightSet.decay must be in [0, 1), got {self.decay}.")

    def decay_at(self, step: jax.Array) -> jax.Array:
        """``d_t`` for the update after ``step`` updates (float32 scalar)."""
        d = jnp.float32(self.decay)
        if self.decay_schedule == "warmup":
            t = jnp.asarray(step, jnp.float32)
            d = jnp.minimum(d, (1.0 + t) / (10.0 + t))
        return d


@dataclasses.dataclass(frozen=True)
class Buffer:
    """Non-trainable state an objective keeps across steps: a feature queue, its pointer.

    Buffers live in the train state (``TrainState.buffers[name]``), replicated over the
    mesh, are checkpointed with it (so a resumed run continues with the same queue) and are
    read in ``prepare``/``forward``/``loss`` as ``ctx.buffers[name]``. Only
    :meth:`Objective.update_buffers` changes them, once per step after the loss, from the
    whole batch's outputs. A step whose update is dropped (a NaN under ``nan_policy``)
    keeps the old buffers too.

    Fields:
      shape: the array's shape (keep it small: every device holds all of it).
      dtype: its dtype (``jnp.float32``, ``jnp.int32`` for a pointer).
      init: the fill value at step 0, or ``fn(key) -> array`` of ``shape`` and ``dtype``
        (e.g. random unit vectors for a MoCo queue), the key derived from ``config.seed``.
    """

    shape: tuple[int, ...]
    dtype: Any = jnp.float32
    init: float | int | Callable[[jax.Array], jax.Array] = 0

    def initial(self, key: jax.Array) -> jax.Array:
        """The value at step 0 (jit-traceable)."""
        if callable(self.init):
            value = jnp.asarray(self.init(key))
            if value.shape != tuple(self.shape):
                raise ValueError(
                    f"Buffer init returned shape {value.shape}, expected {tuple(self.shape)}."
                )
            return value.astype(self.dtype)
        return jnp.full(tuple(self.shape), self.init, self.dtype)


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a train step hands to ``prepare``, ``forward`` and ``loss`` besides the batch.

    ``weights``: name -> parameters of each extra weight set (constants of the step).
    ``apply_with``: name -> ``apply`` of that set's model with those parameters.
    ``buffers``: name -> the objective's buffers before this step's update.
    """

    step: jax.Array
    weights: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    apply_with: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
    buffers: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# The base objective: CLIP's hooks, no loss.
# ----------------------------------------------------------------------------------------
class Objective:
    """Base class of every method. Subclasses set ``name`` and ``defaults`` and override hooks.

    ``self.cfg`` is the validated ``config.loss`` as a plain dict (``name`` plus the
    method's fields); ``self.mesh`` is the device mesh (None outside a trainer).
    """

    name: ClassVar[str] = ""
    #: The method's fields of ``config.loss`` with their defaults (``name`` is implicit).
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: field -> allowed values, checked by :func:`validate_loss_config`.
    choices: ClassVar[Mapping[str, tuple]] = {}
    #: The towers return per-token features in the default ``forward``.
    needs_tokens: bool = False
    #: GradCache is exact for this objective (its forward treats examples independently).
    supports_accumulation: ClassVar[bool] = True

    def __init__(self, cfg: Mapping[str, Any], mesh: jax.sharding.Mesh | None = None):
        self.cfg = dict(cfg)
        self.mesh = mesh

    # -- hooks, with CLIP's behaviour ----------------------------------------------------
    @classmethod
    def check(cls, config: ml_collections.ConfigDict) -> None:
        """Checks that need the whole config (e.g. the model has a logit bias); raises.

        Called once, by `alignjax.config.resolve`, after `config.loss` is validated.
        """
        del config

    def heads(self, model) -> dict[str, Head]:
        """Trainable modules to add to ``model``: name -> :class:`Head`."""
        del model
        return {}

    def wrap_model(self, model):
        """The model the trainer trains: ``model`` plus :meth:`heads`."""
        from_heads = self.heads(model)
        if not from_heads:
            return model
        return _with_heads(model, from_heads)

    def weight_sets(self) -> dict[str, WeightSet]:
        """Extra weight sets this method needs in the train state: name -> :class:`WeightSet`."""
        return {}

    def buffers(self) -> dict[str, Buffer]:
        """Non-trainable state this method keeps across steps: name -> :class:`Buffer`.

        Called once, after :meth:`wrap_model` (so a method may size a queue from the model
        it recorded there, e.g. ``embed_dim``).
        """
        return {}

    def update_buffers(
        self, buffers: Mapping[str, jax.Array], out, batch: dict[str, jax.Array], ctx: StepContext
    ) -> dict[str, jax.Array]:
        """The buffers after this step, from the whole batch's ``out`` (gradient-free).

        Called once per step after :meth:`loss`, also under gradient accumulation (``out``
        is then the merged micro-batch outputs). Returns every buffer, same shapes/dtypes.
        """
        del out, batch, ctx
        return dict(buffers)

    def bind_tokenizer(self, tokenizer) -> None:
        """Receives the run's tokenizer once, before any step or evaluation is traced (by
        the trainer, `restore.load_run` and the soup tool's export reference)."""
        del tokenizer

    def data_transforms(self, tokenizer, seed: int = 0) -> tuple:
        """Per-example grain transforms (picklable), run after decoding, before the crop."""
        del tokenizer, seed
        return ()

    def prepare(self, batch: dict[str, jax.Array], rng: jax.Array, ctx: StepContext):
        """jnp transforms of the global batch, once per step (before micro-batches)."""
        del rng, ctx
        return batch

    def forward(self, apply: Callable, batch: dict[str, jax.Array], ctx: StepContext):
        """The model calls; returns the pytree ``loss`` reads (here a TwoTowerOutput)."""
        del ctx
        return apply(batch["image"], batch["tokens"], return_tokens=self.needs_tokens, train=True)

    def loss(self, out, batch: dict[str, jax.Array], ctx: StepContext):
        """``(loss float32 scalar, metrics dict of float32 scalars)``."""
        raise NotImplementedError(f"Objective {type(self).__name__} defines no loss().")

    @property
    def scorers(self) -> tuple[scoring.Scorer, ...]:
        """Similarities the zero-shot and retrieval evaluators rank with (global first)."""
        return (scoring.GLOBAL,)

    # -- helpers for subclasses ----------------------------------------------------------
    @staticmethod
    def metrics(loss, main, **parts) -> dict[str, jax.Array]:
        """The common metrics: ``loss``, ``logit_scale``, in-batch ``i2t_acc`` / ``t2i_acc``
        from ``main``'s global embeddings, and ``loss_<part>`` for each named term."""
        i2t, t2i = in_batch_accuracy(main.zimg, main.ztxt)
        m = {
            "loss": stop(loss),
            "logit_scale": stop(as_f32_scalar(main.logit_scale, "logit_scale")),
            "i2t_acc": i2t,
            "t2i_acc": t2i,
        }
        m.update({f"loss_{k}": stop(v) for k, v in parts.items()})
        return m


def stop(x) -> jax.Array:
    """float32, no gradient: for metrics."""
    return jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))


def _with_heads(model, heads: dict[str, Head]):
    specs = {
        k: {f.name: getattr(h, f.name) for f in dataclasses.fields(h)} for k, h in heads.items()
    }
    return heads_lib.with_heads(model, specs)


# ----------------------------------------------------------------------------------------
# Registry.
# ----------------------------------------------------------------------------------------
def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: makes ``cls`` selectable as ``config.loss.name = cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"@register expects an Objective subclass, got {cls!r}.")
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"{cls.__name__}.name must be a non-empty identifier, got {cls.name!r}.")
    if "name" in cls.defaults:
        raise ValueError(f"{cls.__name__}.defaults must not contain 'name' (it is implicit).")
    bad = sorted(set(cls.choices) - set(cls.defaults))
    if bad:
        raise ValueError(f"{cls.__name__}.choices names fields {bad} missing from its defaults.")
    for field, valid in cls.choices.items():
        validation.check_choice(cls.defaults[field], valid, f"{cls.__name__}.defaults.{field}")
    old = _REGISTRY.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(
            f"Objective name {cls.name!r} is already registered by "
            f"{old.__module__}.{old.__qualname__}; pick another name for {cls.__qualname__}."
        )
    _REGISTRY[cls.name] = cls  # Re-registering the same class (a module reload) is fine.
    return cls


def names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> type[Objective]:
    """The registered class for ``config.loss.name``; unknown names list the valid ones."""
    if name not in _REGISTRY:
        validation.check_choice(name, names(), "config.loss.name")
    return _REGISTRY[name]


def import_modules(modules) -> None:
    """Imports each entry of ``config.imports``: a module name or a ``.py`` file path.

    Importing a module runs its ``@register`` decorators, so its methods become valid
    ``config.loss.name`` values.
    """
    for entry in tuple(modules or ()):
        entry = str(entry)
        if entry.endswith(".py"):
            path = os.path.abspath(entry)
            if not os.path.isfile(path):
                raise ValueError(f"config.imports: no file {path}.")
            name = "alignjax_user_" + os.path.splitext(os.path.basename(path))[0]
            if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(entry)
            except ImportError as e:
                raise ValueError(
                    f"config.imports: cannot import {entry!r} ({e}). Give a module on the "
                    f"Python path or the path of a .py file."
                ) from e


# ----------------------------------------------------------------------------------------
# config.loss
# ----------------------------------------------------------------------------------------
def _plain(value):
    return dict(value.to_dict()) if hasattr(value, "to_dict") else value


def loss_config(name: str = "clip", **fields) -> ml_collections.ConfigDict:
    """``config.loss`` for method ``name``: its defaults, overridden by ``fields``."""
    cls = get(name)
    validation.check_fields(fields, cls.defaults, "config.loss", f"loss {name!r}")
    return ml_collections.ConfigDict({"name": name, **dict(cls.defaults), **fields})


def default_loss_config() -> ml_collections.ConfigDict:
    """The default ``config.loss``: CLIP."""
    return loss_config("clip")


def validate_loss_config(loss: Any) -> dict[str, Any]:
    """``config.loss`` as a complete plain dict; unknown fields or values raise ValueError.

    Missing fields take the method's defaults, so changing only ``name`` (e.g. from the
    command line) selects another method with its default settings.
    """
    given = dict(_plain(loss) or {})
    name = given.pop("name", "clip")
    cls = get(name)
    validation.check_fields(given, cls.defaults, "config.loss", f"loss {name!r} (besides 'name')")
    out = {"name": name}
    for field, default in cls.defaults.items():
        value = _plain(given.get(field, default))
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        out[field] = value
    for field, valid in cls.choices.items():
        validation.check_choice(out[field], valid, f"config.loss.{field}")
    return out


def build(loss: Any, mesh: jax.sharding.Mesh | None = None) -> Objective:
    """The objective of a ``config.loss`` (validated here)."""
    cfg = validate_loss_config(loss)
    return get(cfg["name"])(cfg, mesh)


def methods_table(built_in_only: bool = True) -> str:
    """The registered methods as a Markdown table (docs/OBJECTIVES.md is generated from it).

    One row per method: ``config.loss.name``, what it is (its module's first docstring
    line), its fields with their defaults, and whether gradient accumulation is exact.
    ``built_in_only``: only the methods of this package (not those a user registered).
    """
    rows = [
        '| `loss.name` | method | fields (defaults) | GradCache |',
        '|---|---|---|---|',
    ]
    for name in sorted(_REGISTRY):
        cls = _REGISTRY[name]
        if built_in_only and not cls.__module__.startswith(__package__ + "."):
            continue
        module_doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or '').strip()
        what = module_doc.splitlines()[0].rstrip('.') if module_doc else cls.__qualname__
        fields = ', '.join(f'`{k}={v!r}`' for k, v in cls.defaults.items()) or '—'
        accum = 'exact' if cls.supports_accumulation else 'refused (forward mixes examples)'
        rows.append(f'| `{name}` | {what} | {fields} | {accum} |')
    return '\n'.join(rows) + '\n'
