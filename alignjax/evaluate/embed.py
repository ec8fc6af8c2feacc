"""Embedding evaluation data on the mesh: each process reads and embeds only its shard.

`EvalSplit` reads one split of a source through the grain eval pipeline
(`alignjax.data.make_eval_batches`, process `p` of `P` gets examples `p::P`), assembles the
processes' local batches into global arrays sharded over ('data', 'fsdp'), embeds them with
the model's `encode_image` / `encode_text`, and gathers the embeddings to every host in
*source order* (sorted by example index, padding dropped), so every metric computed from
them is the same whatever the number of processes or devices.

Several captions per image (COCO / Flickr30k Karpathy style): when a source's examples carry
`'captions'` (a list of str), they are tokenised to `caption_tokens` [K, L] plus
`num_captions` (K = `max_captions`; extra captions are dropped and counted) and all of them
are embedded; otherwise the one `'caption'` is.

`Embedder` embeds host arrays that every process holds whole (e.g. zero-shot prompts).

Scorers (`alignjax.scoring.Scorer`) other than the global one need their own features (e.g.
token sets): `EvalSplit.add_scorers` makes every `embed` call also compute them, from the
same device batches, into `Embeddings.features[scorer.name]`, and `Embedder.features` does
the same for host arrays. They run in a jitted function of their own, so the global
embeddings keep their exact compiled function (and values) whatever scorers are added.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from alignjax import data as data_lib
from alignjax import parallel, scoring
from alignjax.data import decode as data_decode

_log = logging.getLogger(__name__)


def global_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """`batch_size` rounded up to a multiple of the batch shards and the process count."""
    unit = math.lcm(parallel.batch_size_per_shard(mesh), jax.process_count())
    return int(math.ceil(batch_size / unit) * unit)


_ENCODERS: dict[tuple[int, Any], tuple[nn.Module, Any, Any]] = {}


def _encoders(model: nn.Module, mesh: jax.sharding.Mesh):
    """Jitted (image, text) encoders, shared by every split and evaluator of `model`."""
    key = (id(model), mesh)
    if key in _ENCODERS and _ENCODERS[key][0] is model:  # Also keeps `model` alive.
        return _ENCODERS[key][1:]
    fns = _make_encoders(model, mesh)
    _ENCODERS[key] = (model, *fns)
    return fns


def _make_encoders(model: nn.Module, mesh: jax.sharding.Mesh):
    out_sh = parallel.batch_sharding(mesh)

    def image(params, x):
        return model.apply({'params': params}, x, method=model.encode_image)

    def text(params, x):
        # [B, L] or [B, K, L] (several captions per image) -> [B, D] or [B * K, D].
        flat = x.reshape((-1, x.shape[-1]))
        return model.apply({'params': params}, flat, method=model.encode_text)

    return jax.jit(image, out_shardings=out_sh), jax.jit(text, out_shardings=out_sh)


_FEATURES: dict[tuple[int, Any, tuple], tuple[nn.Module, Any, Any]] = {}


def _feature_fns(model: nn.Module, mesh: jax.sharding.Mesh, scorers: tuple):
    """Jitted `(params, x) -> tuple of each scorer's features` for images and for texts."""
    key = (id(model), mesh, scorers)
    if key in _FEATURES and _FEATURES[key][0] is model:
        return _FEATURES[key][1:]
    out_sh = parallel.batch_sharding(mesh)

    def image(params, x):
        apply = functools.partial(model.apply, {'params': params})
        return tuple(s.image_features(apply, x) for s in scorers)

    def text(params, x):
        apply = functools.partial(model.apply, {'params': params})
        flat = x.reshape((-1, x.shape[-1]))  # [B, K, L] -> [B * K, L], as `_make_encoders`
        return tuple(s.text_features(apply, flat) for s in scorers)

    fns = jax.jit(image, out_shardings=out_sh), jax.jit(text, out_shardings=out_sh)
    _FEATURES[key] = (model, *fns)
    return fns


def global_array(x: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds whole."""
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _host(x: Any) -> Any:
    """Host copy of a (pytree of) batch-sharded global array(s), every process's rows."""
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(x, tiled=True))


def _concat(parts: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts)


class Embedder:
    """Jitted, sharded `encode_image` / `encode_text` over host arrays every process holds."""

    def __init__(self, model: nn.Module, mesh: jax.sharding.Mesh, batch_size: int):
        self.mesh = mesh
        self.model = model
        self.batch_size = global_batch_size(batch_size, mesh)
        self._image, self._text = _encoders(model, mesh)

    def _run(self, fn, params, x: np.ndarray) -> Any:
        n, bs, out = x.shape[0], self.batch_size, []
        sharding = parallel.batch_sharding(self.mesh)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(parallel.LOGICAL_RULES):
            for start in range(0, n, bs):
                chunk = x[start : start + bs]
                valid = chunk.shape[0]
                if valid < bs:  # Pad the last chunk; padded rows are dropped below.
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - valid, axis=0)])
                batch = global_array(chunk, sharding)
                out.append(jax.tree.map(lambda a, v=valid: a[:v], _host(fn(params, batch))))
        return _concat(out)

    def images(self, params, images: np.ndarray) -> np.ndarray:
        return self._run(self._image, params, images)

    def texts(self, params, tokens: np.ndarray) -> np.ndarray:
        return self._run(self._text, params, tokens)

    def features(self, params, x: np.ndarray, scorers, side: str) -> tuple[Any, ...]:
        """Each scorer's `image_features` (`side='image'`) or `text_features` ('text') of
        host images [N, H, W, C] / tokens [N, L]: a tuple of host pytrees of [N, ...]."""
        image, text = _feature_fns(self.model, self.mesh, tuple(scorers))
        return self._run({'image': image, 'text': text}[side], params, x)


@dataclasses.dataclass(frozen=True)
class CaptionTokens:
    """Source wrapper: adds `caption_tokens` int32 [K, L] and `num_captions` int32 scalar.

    Captions come from `example['captions']` (list of str) or, failing that, the single
    `example['caption']`. Picklable (module-level), so it runs in grain workers too.
    """

    source: Any
    tokenizer: Any
    max_captions: int

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load_example(index)

    def load_example(self, index: int, pil: bool = False) -> dict[str, Any]:
        # The pipeline prefers `load_example(i, pil=True)` when a source has it: forward it.
        load = getattr(self.source, 'load_example', None)
        example = dict(load(index, pil=pil) if load is not None else self.source[index])
        captions = example.get('captions')
        if captions is None or len(captions) == 0:
            captions = [example['caption']]
        captions = [c.item() if isinstance(c, np.ndarray) else str(c) for c in captions]
        pre = getattr(self.source, 'preprocess', None)
        if getattr(pre, 'clean_captions', False):  # Clean like the pipeline's own caption.
            captions = [data_decode.clean_caption(c) for c in captions]
        n = min(len(captions), self.max_captions)
        tokens = np.asarray(self.tokenizer(captions[:n]), np.int32)
        padded = np.zeros((self.max_captions, tokens.shape[-1]), np.int32)
        padded[:n] = tokens
        example['caption_tokens'] = padded
        example['num_captions'] = np.int32(n)
        example['dropped_captions'] = np.int32(len(captions) - n)
        return example

    def __getattr__(self, name: str):
        # The pipeline reads source attributes (preprocess, eval_crop, is_stream, ...).
        if name == 'source':  # Not yet set (unpickling): avoid infinite recursion.
            raise AttributeError(name)
        return getattr(self.source, name)

    def __repr__(self) -> str:
        return f'CaptionTokens({self.source!r}, max_captions={self.max_captions})'


def _has_caption_lists(source) -> bool:
    """Whether the source's first usable example carries `'captions'` (a list)."""
    for i in range(min(len(source), 8)):
        try:
            return 'captions' in source[i]
        except Exception:  # noqa: BLE001, S112 - an unusable example: try the next one.
            continue
    return True  # Unknown: keep room for several captions.


@dataclasses.dataclass
class Embeddings:
    """One split's embeddings in source order (every process holds them whole).

    image: [N, D]; text: [T, D] (all captions, image-major) or None; image_of_text: [T] int
    (row of `image` each caption belongs to) or None; labels: {'label_<name>': [N] int};
    features: {scorer name: (image features, text features or None)} for the split's added
    scorers (`EvalSplit.add_scorers`), pytrees of [N, ...] and [T, ...] host arrays in the
    same row order as `image` and `text`.
    """

    image: np.ndarray
    text: np.ndarray | None
    image_of_text: np.ndarray | None
    labels: dict[str, np.ndarray]
    features: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)


class EvalSplit:
    """One split of a source, read shard-wise per process and embedded on the mesh.

    `cache=True` keeps this process's decoded shard in host memory between evaluations
    (fine for small sets; set False for ImageNet-sized ones, which are then re-read).
    """

    def __init__(
        self,
        spec: str,
        split: str,
        *,
        model: nn.Module,
        mesh: jax.sharding.Mesh,
        tokenizer,
        image_size: int,
        normalize: str,
        seed: int,
        batch_size: int,
        num_examples: int | None = None,
        max_captions: int = 5,
        cache: bool = True,
    ):
        self.mesh = mesh
        self.batch_size = global_batch_size(batch_size, mesh)
        self.source = data_lib.get_source(spec, split, image_size=image_size, seed=seed)
        # Sources with one caption per example need one token row, not `max_captions`.
        k = int(max_captions) if _has_caption_lists(self.source) else 1
        wrapped = CaptionTokens(self.source, tokenizer, k)
        self.batches = data_lib.make_eval_batches(
            wrapped,
            tokenizer=tokenizer,
            batch_size=self.batch_size // jax.process_count(),
            num_examples=num_examples,
            normalize=normalize,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        self.num_examples = self.batches.num_examples
        self.cache = cache
        self._cached: list[dict[str, np.ndarray]] | None = None
        self._image, self._text = _encoders(model, mesh)
        self.model = model
        self._memo: tuple[Any, bool, tuple, Embeddings] | None = None
        # Set by evaluators that need caption embeddings: then every `embed` call computes
        # them, so evaluators sharing this split embed the images once per round.
        self.needs_text = False
        # Scorers whose features every `embed` call computes (same reason); not the global
        # one, whose features are `Embeddings.image` / `.text`.
        self.scorers: tuple[scoring.Scorer, ...] = ()

    def add_scorers(self, scorers) -> None:
        """Every later `embed` also computes these scorers' features (`Embeddings.features`)."""
        for s in scorers:
            if s is not scoring.GLOBAL and s not in self.scorers:
                if any(t.name == s.name for t in self.scorers):
                    raise ValueError(f'Two different scorers named {s.name!r} on one split.')
                self.scorers += (s,)

    def _local_batches(self):
        if self._cached is not None:
            return self._cached
        if self.cache:
            self._cached = list(self.batches)
            return self._cached
        return iter(self.batches)

    def embed(self, params, with_text: bool = True) -> Embeddings:
        """Embeddings of the whole split for `params` (memoised for the same `params`)."""
        with_text = with_text or self.needs_text
        scorers = self.scorers
        if self._memo is not None:
            p, had_text, had_scorers, emb = self._memo
            if p is params and (had_text or not with_text) and had_scorers == scorers:
                return emb
        cols: dict[str, list[np.ndarray]] = {}
        feats: dict[str, list[Any]] = {'image': [], 'text': []}
        if scorers:
            image_feats, text_feats = _feature_fns(self.model, self.mesh, scorers)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(parallel.LOGICAL_RULES):
            for local in self._local_batches():
                meta = {k: v for k, v in local.items() if k not in ('image', 'tokens')}
                meta.pop('caption_tokens', None)
                glob = parallel.make_global_batch(
                    {
                        'image': local['image'],
                        **({'text': local['caption_tokens']} if with_text else {}),
                    },
                    self.mesh,
                )
                cols.setdefault('image', []).append(_host(self._image(params, glob['image'])))
                if scorers:
                    feats['image'].append(_host(image_feats(params, glob['image'])))
                if with_text:
                    k = local['caption_tokens'].shape[1]
                    z = _host(self._text(params, glob['text']))
                    cols.setdefault('text', []).append(z.reshape(-1, k, z.shape[-1]))
                    if scorers:  # [B * K, ...] -> [B, K, ...], as the embeddings.
                        f = _host(text_feats(params, glob['text']))
                        f = jax.tree.map(lambda a, k=k: a.reshape((-1, k) + a.shape[1:]), f)
                        feats['text'].append(f)
                # Per-example metadata of every process, in the same global row order.
                for key, value in multihost_utils.process_allgather(meta, tiled=True).items():
                    cols.setdefault(key, []).append(np.asarray(value))
        arrays = {k: np.concatenate(v) for k, v in cols.items()}
        keep = arrays['mask'].astype(bool)
        order = np.argsort(arrays['index'][keep], kind='stable')
        arrays = {k: v[keep][order] for k, v in arrays.items()}
        feats = {
            side: jax.tree.map(lambda a: a[keep][order], _concat(parts)) if parts else None
            for side, parts in feats.items()
        }

        dropped = int(arrays['dropped_captions'].sum())
        if dropped and with_text:
            _log.warning(
                'Dropped %d captions beyond max_captions=%d per image; raise the evaluator\'s '
                'max_captions to use them.',
                dropped,
                self.batches.source.max_captions,
            )
        text = image_of_text = None
        if with_text:
            n_cap = arrays['num_captions']
            valid = np.arange(arrays['text'].shape[1])[None, :] < n_cap[:, None]  # [N, K]
            text = arrays['text'][valid]  # image-major order
            image_of_text = np.nonzero(valid)[0].astype(np.int32)
            if feats['text'] is not None:
                feats['text'] = jax.tree.map(lambda a: a[valid], feats['text'])
        features = {
            s.name: (
                feats['image'][i],
                feats['text'][i] if feats['text'] is not None else None,
            )
            for i, s in enumerate(scorers)
        }
        labels = {k: v.astype(np.int64) for k, v in arrays.items() if k.startswith('label_')}
        emb = Embeddings(arrays['image'], text, image_of_text, labels, features)
        self._memo = (params, with_text, scorers, emb)
        return emb
