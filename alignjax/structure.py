"""STRUCTURE (Gröger et al., NeurIPS 2025): align two frozen unimodal encoders on few pairs.

An image tower trained without text and a text tower trained without images (both by the
one trainer: :func:`unimodal_config` with the ``attributes`` and ``mlm`` objectives) stay
frozen. Their per-layer features are extracted once (:func:`extract_features`), the pair of
layers whose representations are most alike is selected on the training pairs
(:func:`alignjax.evaluate.similarity.select_layer_pair`, mutual k-NN with Rice's k, or
CKA), and two small alignment layers ``f`` (image) and ``g`` (text) are trained on the
pairs with STRUCTURE's loss (:func:`alignjax.losses.structure.structure_loss`)::

    x = s_img(X_i)  [n, d_i],  y = s_txt(Y_j)  [n, d_t]       frozen layer features, z-scored
    x' = f(x), y' = g(y)        [n, D]                       linear or 2-layer MLP to D
    loss = CLIP(l2n(x'), l2n(y'); 1/τ) + λ(step) · ½ (R(x, x') + R(y, y'))

``s`` standardises every dimension with the training pairs' mean and std (a fixed affine
map, so the towers' very different feature scales need no tuning of the learning rate).
``λ_max = 0`` is the plain alignment-layer baseline (the CLIP loss only, tested).
Evaluation in the aligned space (:func:`evaluate`): zero-shot classification of each shapes
attribute on the test split (class prompts through the frozen text tower at the selected
layer and ``g``; a class's prototype is the normalised mean over its templates, the best
prototype scores a class) and image<->text retrieval recall@1 against each image's caption.

Layer features (:func:`image_layer_features`, :func:`text_layer_features`): layer ``l <
depth`` is the output of transformer block ``l`` (captured with flax's
``capture_intermediates``; the towers are unchanged), mean-pooled over the patch tokens
(image; the class token left out) or over the valid tokens (text); the last entry,
``depth``, is the tower's own output: the pooled image feature (its ``pool`` and ``head``)
or the mean of the text tower's final token features over the valid tokens. "Last layers"
means ``(depth_img, depth_txt)``.

Python API: :func:`unimodal_config`, :func:`extract_features`, :func:`split_pool`,
:func:`select`, :func:`train_alignment`, :func:`evaluate`, :func:`run`. Command line::

  python -m alignjax.structure --image-run RUN_IMG --text-run RUN_TXT \
      [--fraction 0.05] [--pool 5000] [--lambda-max 10] [--metric mutual_knn] [--seed 0]

Reference: F. Gröger, S. Wen, H. Le, M. Brbić, "With Limited Data for Multimodal
Alignment, Let the STRUCTURE Guide You", NeurIPS 2025 (arXiv:2506.16895).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alignjax import data as data_lib
from alignjax import restore
from alignjax.data.synthetic import ShapesDataset
from alignjax.evaluate import similarity
from alignjax.losses import structure as structure_lib
from alignjax.models import layers as layers_lib
from alignjax.objectives import loss_config

__all__ = [
    "AlignConfig",
    "Aligner",
    "Features",
    "evaluate",
    "extract_features",
    "image_layer_features",
    "select",
    "split_pool",
    "text_layer_features",
    "train_alignment",
    "unimodal_config",
]

TOWERS = ("image", "text")
KINDS = ("linear", "mlp")


# ----------------------------------------------------------------------------------------
# Unimodal pre-training configs.
# ----------------------------------------------------------------------------------------
def unimodal_config(config: ml_collections.ConfigDict, tower: str) -> ml_collections.ConfigDict:
    """A copy of a two-tower ``config`` that pre-trains one tower without the other modality.

    ``'image'``: ``loss.name='attributes'`` (one linear head per attribute label,
    cross-entropy; the captions are not used). ``'text'``: ``loss.name='mlm'``
    (masked-token prediction; the images are not used) with a bidirectional text tower
    (``model.text.convention='big_vision'``). The evaluators are dropped: zero-shot and
    retrieval need both towers trained together.
    """
    if tower not in TOWERS:
        raise ValueError(f"unimodal_config: tower must be one of {TOWERS}, got {tower!r}.")
    c = ml_collections.ConfigDict(config.to_dict())
    if tower == "image":
        c.loss = loss_config("attributes")
    else:
        c.loss = loss_config("mlm")
        c.model.text.convention = "big_vision"
    c.evals = ml_collections.ConfigDict()
    c.eval_every_steps = 0
    return c


# ----------------------------------------------------------------------------------------
# Per-layer features of the frozen towers.
# ----------------------------------------------------------------------------------------
def _is_block(module: nn.Module, method_name: str) -> bool:
    return isinstance(module, layers_lib.EncoderBlock) and method_name == "__call__"


def _block_outputs(state: Mapping[str, Any], tower: str) -> list[jax.Array]:
    """The captured block outputs [B, T, W] of ``tower`` ('img' / 'txt'), in layer order."""
    encoder = state["intermediates"][tower]["encoder"]
    names = sorted((k for k in encoder if k.startswith("block_")), key=lambda k: int(k[6:]))
    return [encoder[k]["__call__"][0][0] for k in names]


def _check_unscanned(model: nn.Module, tower: str) -> None:
    cfg = model.image if tower == "image" else model.text
    if cfg.get("scan"):
        raise ValueError(
            f"Layer features need the {tower} tower's blocks as separate modules: it was built "
            "with model.scan=True; restore it with scan=False (same weights, unstacked)."
        )


@functools.partial(jax.jit, static_argnums=0)
def _image_layers(model, params, images):
    def fn(m, x):
        return m.img(x)[0]

    pooled, state = model.apply(
        {"params": params}, images, method=fn, capture_intermediates=_is_block
    )
    skip = 1 if model.image["pool"] == "tok" else 0  # the class token is not a patch
    means = [b[:, skip:].astype(jnp.float32).mean(1) for b in _block_outputs(state, "img")]
    return means + [pooled.astype(jnp.float32)]


@functools.partial(jax.jit, static_argnums=0)
def _text_layers(model, params, tokens):
    def fn(m, t):
        return m.txt(t)

    (_, final, mask), state = model.apply(
        {"params": params}, tokens, method=fn, capture_intermediates=_is_block
    )
    w = mask.astype(jnp.float32)[..., None]  # [B, L, 1]
    count = jnp.maximum(w.sum(1), 1.0)

    def mean(x):
        return (x.astype(jnp.float32) * w).sum(1) / count

    return [mean(b) for b in _block_outputs(state, "txt")] + [mean(final)]


def image_layer_features(model: nn.Module, params, images) -> list[jax.Array]:
    """Per-layer image features: ``depth + 1`` float32 arrays [B, d_l].

    Block ``l``'s output averaged over the patch tokens (``d_l`` = width), then the tower's
    pooled output (``d`` = embed_dim with a head). ``images`` [B, H, W, C] as the tower
    was trained on (normalised).
    """
    _check_unscanned(model, "image")
    return _image_layers(model, params, jnp.asarray(images))


def text_layer_features(model: nn.Module, params, tokens) -> list[jax.Array]:
    """Per-layer text features: ``depth + 1`` float32 arrays [B, d_l].

    Block ``l``'s output averaged over the valid tokens (the tower's mask: up to EOT for
    'clip', not padding for 'big_vision'), then the mean of the final token features.
    ``tokens`` [B, L] int.
    """
    _check_unscanned(model, "text")
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"text_layer_features: tokens must be [B, L] ints, got {tokens.shape}.")
    return _text_layers(model, params, tokens)


@dataclasses.dataclass
class Features:
    """Frozen features of ``n`` image-caption pairs.

    ``image``: per image layer [n, d_l] float32; ``text``: per text layer [n, d_l] for
    each image's caption; ``labels``: attribute -> int32 [n].
    """

    image: list[np.ndarray]
    text: list[np.ndarray]
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.image[0].shape[0])

    def take(self, index: np.ndarray) -> Features:
        """The pairs at ``index`` (int array)."""
        return Features(
            [x[index] for x in self.image],
            [y[index] for y in self.text],
            {k: v[index] for k, v in self.labels.items()},
        )


def extract_features(
    image_run: restore.LoadedRun,
    text_run: restore.LoadedRun,
    spec: str = "synthetic:shapes",
    split: str = "val",
    num_examples: int | None = None,
    batch_size: int = 250,
) -> Features:
    """Every layer's features of the frozen towers over ``num_examples`` pairs of a split.

    Batched (``batch_size`` examples at a time, padding dropped); images are prepared as
    the image run's evaluators prepare them (its image size and normalisation), captions
    tokenised by the text run's tokenizer (the first caption of each example).
    """
    data_cfg = image_run.config.data
    source = data_lib.get_source(spec, split, image_size=int(data_cfg.image_size))
    batches = data_lib.make_eval_batches(
        source,
        tokenizer=text_run.tokenizer,
        batch_size=batch_size,
        num_examples=num_examples,
        normalize=str(data_cfg.normalize),
        process_index=0,
        process_count=1,
    )
    image, text, labels = [], [], {}
    for batch in batches:
        keep = np.asarray(batch["mask"], bool)
        xs = image_layer_features(image_run.model, image_run.params, batch["image"])
        ys = text_layer_features(text_run.model, text_run.params, batch["tokens"])
        image.append([np.asarray(x)[keep] for x in xs])
        text.append([np.asarray(y)[keep] for y in ys])
        for k, v in batch.items():
            if k.startswith("label_"):
                labels.setdefault(k[len("label_") :], []).append(np.asarray(v)[keep])
    return Features(
        [np.concatenate(p) for p in zip(*image)],
        [np.concatenate(p) for p in zip(*text)],
        {k: np.concatenate(v).astype(np.int32) for k, v in labels.items()},
    )


def prompt_features(text_run: restore.LoadedRun, texts: Sequence[str]) -> list[np.ndarray]:
    """Per-layer text features [len(texts), d_l] of arbitrary texts (class prompts)."""
    tokens = np.asarray(text_run.tokenizer(list(texts)), np.int32)
    return [np.asarray(y) for y in text_layer_features(text_run.model, text_run.params, tokens)]


def split_pool(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``round(fraction * n)`` (at least 4) training pairs of a pool of
    ``n``, drawn by ``seed``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"split_pool: fraction must be in (0, 1], got {fraction}.")
    m = max(4, int(round(fraction * n)))
    if m > n:
        raise ValueError(f"split_pool: {m} training pairs asked of a pool of {n}; grow the pool.")
    return np.sort(np.random.default_rng(seed).permutation(n)[:m])


def select(train: Features, metric: str = "mutual_knn", k: Any = None):
    """``((i, j), scores)``: the layer pair of highest similarity on the training pairs
    (:func:`~alignjax.evaluate.similarity.select_layer_pair`; Rice's k by default)."""
    return similarity.select_layer_pair(train.image, train.text, metric=metric, k=k)


# ----------------------------------------------------------------------------------------
# Alignment layers.
# ----------------------------------------------------------------------------------------
class Aligner(nn.Module):
    """``f(x) = W x + b`` (``'linear'``) or ``W_2 gelu(W_1 x + b_1) + b_2`` (``'mlp'``),
    [n, d] -> [n, dim]."""

    dim: int
    kind: str = "linear"
    hidden: int = 256

    @nn.compact
    def __call__(self, x):
        if self.kind == "mlp":
            x = nn.gelu(nn.Dense(self.hidden, name="hidden")(x))
        return nn.Dense(self.dim, name="out")(x)


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    """Alignment training (STRUCTURE's defaults, the schedule scaled for short runs).

    ``lambda_max=0``: plain alignment layers (CLIP loss only). ``batch_size`` is capped at
    the number of training pairs (each step: a batch without repeats).
    """

    dim: int = 64
    kind: str = "linear"
    hidden: int = 256
    steps: int = 500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    lambda_max: float = 10.0
    warmup_steps: int = 100
    temperature: float = 0.05
    levels: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"AlignConfig.kind must be one of {KINDS}, got {self.kind!r}.")
        if self.steps < 1 or self.batch_size < 2 or self.dim < 1:
            raise ValueError(
                f"AlignConfig needs steps >= 1, batch_size >= 2, dim >= 1; got steps="
                f"{self.steps}, batch_size={self.batch_size}, dim={self.dim}."
            )


@dataclasses.dataclass
class Alignment:
    """Trained alignment layers with the standardisation of their inputs.

    ``layers``: the (image, text) layer indices; ``stats``: (mean, std) per side;
    ``params``: {'image': ..., 'text': ...}; ``losses``: float32 [steps] training losses.
    """

    layers: tuple[int, int]
    stats: dict[str, tuple[np.ndarray, np.ndarray]]
    params: dict[str, Any]
    config: AlignConfig
    losses: np.ndarray
    metrics: dict[str, np.ndarray]

    def embed(self, side: str, x: np.ndarray) -> np.ndarray:
        """Unit-norm aligned embeddings [n, dim] of frozen layer features [n, d]."""
        mean, std = self.stats[side]
        module = Aligner(self.config.dim, self.config.kind, self.config.hidden)
        z = module.apply({"params": self.params[side]}, (jnp.asarray(x) - mean) / std)
        return np.asarray(z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12))


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float32)
    return x.mean(0), np.maximum(x.std(0), 1e-6)  # a constant dimension stays finite


@functools.partial(jax.jit, static_argnames=("cfg",))
def _train(x, y, x_orig, y_orig, key, cfg: AlignConfig):
    n = x.shape[0]
    b = min(cfg.batch_size, n)
    k_img, k_txt, k_steps = jax.random.split(key, 3)
    f = Aligner(cfg.dim, cfg.kind, cfg.hidden)
    params = {"image": f.init(k_img, x[:1])["params"], "text": f.init(k_txt, y[:1])["params"]}
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(cfg.lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay),
    )
    opt = tx.init(params)

    def loss_fn(p, xb, yb, xo, yo, step):
        xa = f.apply({"params": p["image"]}, xb)
        ya = f.apply({"params": p["text"]}, yb)
        return structure_lib.structure_loss(
            xa,
            ya,
            xo,
            yo,
            step=step,
            lambda_max=cfg.lambda_max,
            warmup_steps=cfg.warmup_steps,
            temperature=cfg.temperature,
            levels=cfg.levels,
        )

    def body(carry, step):
        p, o = carry
        idx = jax.random.permutation(jax.random.fold_in(k_steps, step), n)[:b]
        (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(
            p, x[idx], y[idx], x_orig[idx], y_orig[idx], step
        )
        updates, o = tx.update(g, o, p)
        return (optax.apply_updates(p, updates), o), (loss, m)

    (params, _), (losses, metrics) = jax.lax.scan(body, (params, opt), jnp.arange(cfg.steps))
    return params, losses, metrics


def train_alignment(
    train: Features, layers: tuple[int, int], cfg: AlignConfig = AlignConfig(), seed: int = 0
) -> Alignment:
    """Trains the two alignment layers on the frozen features of ``layers`` (jitted, one
    compiled scan over the steps; the same ``seed`` gives the same result)."""
    i, j = layers
    if not (0 <= i < len(train.image) and 0 <= j < len(train.text)):
        raise ValueError(
            f"train_alignment: layers {layers} out of range: {len(train.image)} image and "
            f"{len(train.text)} text layers."
        )
    if len(train) < 2:
        raise ValueError("train_alignment: needs at least 2 training pairs.")
    stats = {"image": _stats(train.image[i]), "text": _stats(train.text[j])}
    x = (train.image[i] - stats["image"][0]) / stats["image"][1]
    y = (train.text[j] - stats["text"][0]) / stats["text"][1]
    # The regulariser compares with the frozen features as they are (not standardised).
    params, losses, metrics = _train(
        jnp.asarray(x),
        jnp.asarray(y),
        jnp.asarray(train.image[i]),
        jnp.asarray(train.text[j]),
        jax.random.PRNGKey(seed),
        cfg,
    )
    return Alignment(
        (i, j),
        stats,
        jax.device_get(params),
        cfg,
        np.asarray(losses),
        {k: np.asarray(v) for k, v in metrics.items()},
    )


# ----------------------------------------------------------------------------------------
# Evaluation in the aligned space.
# ----------------------------------------------------------------------------------------
def class_embeddings(
    alignment: Alignment, prompt_layers: Sequence[np.ndarray], n_classes: int, n_templates: int
) -> np.ndarray:
    """[C, dim] unit-norm class prototypes: aligned prompts (class-major, ``C * T`` rows of
    the text layer features) averaged over the templates and renormalised."""
    z = alignment.embed("text", prompt_layers[alignment.layers[1]])
    w = z.reshape(n_classes, n_templates, -1).mean(1)
    return w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


def recall_at_1(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows i of ``a`` whose most similar row of ``b`` is row i."""
    return float(np.mean(np.argmax(a @ b.T, axis=1) == np.arange(len(a))))


def evaluate(alignment: Alignment, test: Features, prompts: Mapping[str, Any]) -> dict[str, float]:
    """Zero-shot top-1 per task (``zeroshot/<task>``, their mean ``zeroshot/mean``) and
    retrieval recall@1 (``i2t_r1``, ``t2i_r1``) on ``test``.

    ``prompts``: task -> dict(attribute, prototypes=[(layers, C, T), ...]) as built by
    :func:`task_prompts`.
    """
    i, j = alignment.layers
    zimg = alignment.embed("image", test.image[i])
    ztxt = alignment.embed("text", test.text[j])
    out = {}
    for task, spec in prompts.items():
        scores = np.max(
            [zimg @ class_embeddings(alignment, *p).T for p in spec["prototypes"]], axis=0
        )
        labels = test.labels[spec["attribute"]]
        out[f"zeroshot/{task}"] = float(np.mean(np.argmax(scores, 1) == labels))
    out["zeroshot/mean"] = float(np.mean([out[f"zeroshot/{t}"] for t in prompts]))
    out["i2t_r1"] = recall_at_1(zimg, ztxt)
    out["t2i_r1"] = recall_at_1(ztxt, zimg)
    return out


def task_prompts(text_run: restore.LoadedRun, tasks: Mapping[str, Any] | None = None):
    """The zero-shot tasks (default ``ShapesDataset.zero_shot_tasks()``) with every
    prototype's prompts embedded per text layer: task -> dict(attribute, prototypes)."""
    tasks = ShapesDataset.zero_shot_tasks() if tasks is None else tasks
    out = {}
    for name, t in tasks.items():
        protos = [dict(classnames=t["classnames"], templates=t["templates"])]
        protos += list(t.get("prototypes", ()))
        built = []
        for p in protos:
            texts = [tpl.format(c) for c in p["classnames"] for tpl in p["templates"]]
            built.append(
                (prompt_features(text_run, texts), len(p["classnames"]), len(p["templates"]))
            )
        out[name] = dict(attribute=t["attribute"], prototypes=built)
    return out


# ----------------------------------------------------------------------------------------
# One run, and the command line.
# ----------------------------------------------------------------------------------------
def run(
    pool: Features,
    test: Features,
    prompts: Mapping[str, Any],
    fraction: float,
    seed: int = 0,
    cfg: AlignConfig = AlignConfig(),
    layers: str | tuple[int, int] = "select",
    metric: str = "mutual_knn",
) -> dict[str, Any]:
    """Draws ``fraction`` of the pool's pairs (by ``seed``), picks the layer pair
    (``'select'``: by ``metric`` on those pairs; ``'last'``; or an explicit pair), trains
    the alignment layers and evaluates them. Returns the metrics, the pair and the pairs'
    count."""
    train = pool.take(split_pool(len(pool), fraction, seed))
    scores = None
    if layers == "select":
        pair, scores = select(train, metric)
    elif layers == "last":
        pair = (len(train.image) - 1, len(train.text) - 1)
    else:
        pair = tuple(int(v) for v in layers)
    alignment = train_alignment(train, pair, cfg, seed)
    result = evaluate(alignment, test, prompts)
    result.update(
        layers=list(pair),
        pairs=len(train),
        final_loss=float(alignment.losses[-10:].mean()),
        scores=None if scores is None else np.round(scores, 4).tolist(),
    )
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m alignjax.structure",
        description="Align two frozen unimodal towers with STRUCTURE on a fraction of pairs.",
    )
    p.add_argument("--image-run", required=True, help="workdir of the image-only run")
    p.add_argument("--text-run", required=True, help="workdir of the text-only run")
    p.add_argument("--pool", type=int, default=5000, help="pairs of the val split to draw from")
    p.add_argument("--test", type=int, default=1000, help="test-split examples to score")
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--lambda-max", type=float, default=10.0, help="0: plain alignment")
    p.add_argument("--layers", default="select", help="'select', 'last' or 'I,J'")
    p.add_argument("--metric", default="mutual_knn", choices=similarity.METRICS)
    p.add_argument("--kind", default="linear", choices=KINDS)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    layers = a.layers if a.layers in ("select", "last") else tuple(a.layers.split(","))
    image_run = restore.load_run(None, a.image_run)
    text_run = restore.load_run(None, a.text_run)
    pool = extract_features(
        image_run,
        text_run,
        split="val",
        num_examples=None,
        spec=(f"synthetic:shapes?num_examples={a.pool}"),
    )
    test = extract_features(image_run, text_run, split="test", num_examples=a.test)
    cfg = AlignConfig(
        kind=a.kind, steps=a.steps, warmup_steps=a.warmup_steps, lambda_max=a.lambda_max
    )
    result = run(pool, test, task_prompts(text_run), a.fraction, a.seed, cfg, layers, a.metric)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
