"""Image <-> text retrieval recall@k, and embedding geometry, over held-out pairs.

Several captions per image (COCO / Flickr30k Karpathy test sets): image i has captions
C_i (from the source's `'captions'`, at most `max_captions`, else its one `'caption'`).

  image_retrieval_recall@k (text -> image): fraction of captions whose image is among
      the caption's top k images;
  text_retrieval_recall@k (image -> text): fraction of images with *any* of their captions
      among the image's top k captions.

These are CLIP_benchmark's names and semantics. Both are computed on device from the rank of
each query's best positive (`alignjax.evaluate.ranks.positive_ranks`): the queries go in
chunks of `chunk_size` against the gallery sharded over the mesh, so 100k images x 500k
captions never form a matrix on the host; the module docstring of `ranks` gives the
per-device memory.

Other scorers (`alignjax.scoring`, e.g. token-wise): the same recalls under
`retrieval/<name>@<scorer>/...`, ranked on device by `ranks.scored_positive_ranks` (text
retrieval from `s_i2t`, image retrieval from `s_t2i`; queries in chunks of
`min(chunk_size, scorer.query_chunk)`, the gallery's features sharded over the mesh).

With `geometry=True` (default) the evaluator also logs, on the same embeddings,
`geometry/<name>/{modality_gap, alignment, uniformity_image, uniformity_text}`
(`alignjax.evaluate.geometry`; alignment over (image, caption) pairs, uniformity on at most
`max_uniformity` rows of each modality). `type='geometry'` logs only those.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

from alignjax import plots, scoring
from alignjax.evaluate import base, geometry, ranks
from alignjax.evaluate import metrics as metrics_lib


def geometry_of(emb, max_uniformity: int) -> dict[str, float]:
    """Geometry metrics of an `Embeddings` with text (every caption paired with its image)."""
    k = max_uniformity
    paired_img = emb.image[emb.image_of_text]
    return {
        'modality_gap': float(geometry.modality_gap(emb.image, emb.text)),
        'alignment': float(geometry.alignment(paired_img, emb.text)),
        'uniformity_image': float(geometry.uniformity(emb.image[:k])),
        'uniformity_text': float(geometry.uniformity(emb.text[:k])),
    }


class _PairedEvaluator(base.Evaluator):
    def __init__(self, *args):
        super().__init__(*args)
        cfg = self.cfg
        self.split = self.ctx.split(
            cfg.data, cfg.split, cfg.num_examples, cfg.batch_size, cfg.max_captions, cfg.cache
        )
        self.split.needs_text = True


class RetrievalEvaluator(_PairedEvaluator):
    """Metrics: `retrieval/<name>/{image,text}_retrieval_recall@k` (+ geometry, see module);
    `retrieval/<name>@<scorer>/...` for each scorer but the global one."""

    kind = 'retrieval'
    FIELDS: ClassVar[dict] = dict(
        base.COMMON_FIELDS,
        ks=(1, 5, 10),
        max_captions=5,  # captions per image kept (COCO has 5-7; Karpathy test sets use 5)
        chunk_size=1024,  # queries per device call
        geometry=True,
        max_uniformity=4096,
    )

    def __init__(self, *args):
        super().__init__(*args)
        self.scorers = self.ctx.scorers
        self.split.add_scorers(self.scorers)

    def ranks(self, emb, scorer: scoring.Scorer) -> tuple[np.ndarray, np.ndarray]:
        """(text -> image ranks [T], image -> text ranks [N]) of the best positives."""
        images = np.arange(emb.image.shape[0])
        mesh, chunk = self.ctx.mesh, self.cfg.chunk_size
        if scorer is scoring.GLOBAL:  # Embeddings ranked by their dot products.
            t2i = ranks.positive_ranks(emb.text, emb.image_of_text, emb.image, images, mesh, chunk)
            i2t = ranks.positive_ranks(emb.image, images, emb.text, emb.image_of_text, mesh, chunk)
            return t2i, i2t
        img, txt = emb.features[scorer.name]
        chunk, g_chunk = base.query_chunk(chunk, scorer), scorer.gallery_chunk
        t2i = ranks.scored_positive_ranks(
            scorer.t2i, txt, emb.image_of_text, img, images, mesh, chunk, g_chunk
        )
        i2t = ranks.scored_positive_ranks(
            scorer.i2t, img, images, txt, emb.image_of_text, mesh, chunk, g_chunk
        )
        return t2i, i2t

    def run(self, params) -> dict[str, float]:
        emb = self.split.embed(params, with_text=True)
        out = {}
        for scorer in self.scorers:
            t2i, i2t = self.ranks(emb, scorer)
            group = scorer.qualify(f'retrieval/{self.name}')
            for k, v in metrics_lib.retrieval_metrics_from_ranks(t2i, i2t, self.cfg.ks).items():
                out[f'{group}/{k}'] = v
        if self.cfg.geometry:
            geo = geometry_of(emb, self.cfg.max_uniformity)
            out.update({f'geometry/{self.name}/{k}': v for k, v in geo.items()})
        return out

    #: Images (and their first captions) in the similarity matrix.
    PICTURE_PAIRS = 12

    def pictures(self, params, out_dir: str) -> list[str]:
        """`retrieval_<name>_similarity.png`: the cosine similarities of the split's first
        images and their first captions (the diagonal holds the true pairs)."""
        emb = self.split.embed(params, with_text=True)
        n = min(self.PICTURE_PAIRS, emb.image.shape[0])
        images = base.example_images(self.split.source, range(n))
        if not base.is_writer() or images is None or n == 0:
            return []
        first = np.searchsorted(emb.image_of_text, np.arange(n))  # captions are image-major
        sim = emb.text[first] @ emb.image[:n].T  # [captions, images]
        captions = base.example_captions(self.split.source, range(n))
        path = os.path.join(out_dir, f'retrieval_{self.name}_similarity.png')
        files = [plots.plot_similarity(sim, images, captions, path, title=self.name)]
        for scorer in self.scorers:  # Token-wise scorers: where each word looks.
            feats = emb.features.get(scorer.name)
            if feats is not None and isinstance(feats[0], dict) and 'tokens' in feats[0]:
                k = min(self.PICTURE_TOKEN_IMAGES, n)
                words, maps = self.word_maps(feats, first[:k], captions[:k])
                if maps is not None:
                    path = os.path.join(out_dir, f'retrieval_{self.name}@{scorer.name}_words.png')
                    title = f'{self.name}: word-to-patch similarity ({scorer.name})'
                    files.append(plots.plot_token_maps(images[:k], words, maps, path, title))
        return files

    #: Images whose word-to-patch heat maps are drawn for a token-wise scorer.
    PICTURE_TOKEN_IMAGES = 4

    def word_maps(self, feats, text_rows, captions):
        """(words, [n_words, h, w] maps) per image for a token-wise scorer's features:
        each valid caption token but BOS and EOS, named by the tokenizer (`token_names`);
        (_, None) when the image tokens are not a square patch grid."""
        img, txt = feats
        words, maps = [], []
        for i, (row, caption) in enumerate(zip(text_rows, captions)):
            ids = np.asarray(self.ctx.tokenizer([caption]))[0]
            keep, names = token_names(self.ctx.tokenizer, caption, ids)
            if 'mask' in txt:  # the scorer's own validity mask
                keep = [t for t in keep if bool(txt['mask'][row][t])]
            m = plots.token_maps(img['tokens'][i], txt['tokens'][row][keep])
            if m is None:
                return words, None
            words.append([names[t] for t in keep])
            maps.append(m)
        return words, maps


def token_names(tokenizer, caption: str, ids: np.ndarray) -> tuple[list[int], dict[int, str]]:
    """(positions of the caption's content tokens, {position: its text}) in a token row:
    special tokens (BOS, EOS, padding) left out; names from a word tokenizer's `words`, else
    its `decode` of the one id, else the id itself."""
    special = {tokenizer.eos_id, tokenizer.pad_id} | (
        {tokenizer.bos_id} if tokenizer.bos_id is not None else set()
    )
    positions = [t for t, i in enumerate(ids) if int(i) not in special]
    pieces = tokenizer.words(caption) if hasattr(tokenizer, 'words') else None
    names = {}
    for n, t in enumerate(positions):
        if pieces is not None and n < len(pieces):
            names[t] = pieces[n]
        elif hasattr(tokenizer, 'decode'):
            names[t] = tokenizer.decode([int(ids[t])]).strip() or str(int(ids[t]))
        else:
            names[t] = str(int(ids[t]))
    return positions, names


class GeometryEvaluator(_PairedEvaluator):
    """Metrics: `geometry/<name>/{modality_gap, alignment, uniformity_image, uniformity_text}`."""

    kind = 'geometry'
    FIELDS: ClassVar[dict] = dict(base.COMMON_FIELDS, max_captions=5, max_uniformity=4096)

    def run(self, params) -> dict[str, float]:
        emb = self.split.embed(params, with_text=True)
        geo = geometry_of(emb, self.cfg.max_uniformity)
        return {f'geometry/{self.name}/{k}': v for k, v in geo.items()}
