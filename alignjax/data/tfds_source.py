"""``tfds:NAME[/CONFIG][:VERSION]``: prepared TFDS datasets, read with ``tfds.data_source``.

``tfds.data_source`` reads ArrayRecord files with random access and needs no TensorFlow.
Datasets must have been prepared in ArrayRecord format (``tfds build --file_format
array_record NAME``, or ``python -m alignjax.data.write tfds ...`` for local data); a
TFRecord-only dataset fails with TFDS's own message.

Spec parameters (``tfds:coco_captions/2017?data_dir=/data/tfds``):

=================  ==========================================================================
data_dir           TFDS data directory (default: TFDS's, ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets)
image_key          image feature (default ``image``)
caption_key        caption feature, ``/`` for nested ones (``captions/text`` for coco_captions);
                   default: the first of ``caption``, ``captions``, ``captions/text``, ``text``, ``texts``
                   that exists; none: captions come from the label
label_key          label feature (default ``label`` when present) -> ``labels['label']``
template           caption for labelled datasets without text: ``template.format(classname)``
                   (default ``'a photo of a {}.'``)
=================  ==========================================================================

plus the ``transforms.Preprocess`` fields, as for ``csv:``. Images are read as encoded bytes
(``tfds.decode.SkipDecoding``) and decoded by ``alignjax.data.decode``, so bad images are
skipped and counted like everywhere else.

``ImageTextFolder`` is a TFDS builder for local data: a CSV/JSONL table (as ``csv:``) or a
folder of images with same-named ``.txt`` captions (``cat.jpg`` + ``cat.txt``), written as an
ArrayRecord TFDS dataset (encoded image bytes, caption(s), optional label). Building it needs
no TensorFlow either.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from alignjax.data import csv_source
from alignjax.data import decode as D
from alignjax.data import transforms as T

__all__ = ["IMAGE_EXTENSIONS", "ImageTextFolder", "TfdsSource", "list_image_text_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_CAPTION_KEYS = ("caption", "captions", "captions/text", "text", "texts")


def _get(example: dict[str, Any], key: str):
    value = example
    for part in key.split("/"):
        value = value[part]
    return value


def _has(features, key: str) -> bool:
    try:
        _get(features, key)
        return True
    except (KeyError, TypeError):
        return False


def _text(value) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class TfdsSource:
    """Random-access source over a prepared TFDS split (ArrayRecord).

    ``src[i]`` -> ``{'image': uint8 [h, w, 3], 'caption' | 'captions', 'labels':
    {'label': int}}`` (labels when the dataset has a label feature).
    """

    def __init__(
        self,
        name: str,
        split: str,
        *,
        data_dir: str | None = None,
        image_key: str = "image",
        caption_key: str | None = None,
        label_key: str | None = None,
        template: str = "a photo of a {}.",
        seed: int | None = None,
        **kwargs,
    ):
        del seed
        # tensorflow_datasets: optional (the `data` extra) and slow to import.
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        self.preprocess = T.Preprocess.from_kwargs(kwargs)
        if kwargs:
            raise TypeError(
                f"Unknown tfds: source parameters {sorted(kwargs)}; valid: data_dir, "
                f"image_key, caption_key, label_key, template and the Preprocess fields "
                f"{list(T.Preprocess.__dataclass_fields__)}."
            )
        self.name, self.split, self.data_dir = name, split, data_dir
        builder = tfds.builder(name, data_dir=data_dir)
        features = builder.info.features
        if not _has(features, image_key):
            raise ValueError(
                f"tfds:{name} has no image feature {image_key!r}; features: "
                f"{list(features.keys())}. Set ?image_key=NAME."
            )
        if caption_key is None:
            caption_key = next((k for k in _CAPTION_KEYS if _has(features, k)), None)
        elif not _has(features, caption_key):
            raise ValueError(
                f"tfds:{name} has no caption feature {caption_key!r}; features: "
                f"{list(features.keys())}."
            )
        if label_key is None and _has(features, "label"):
            label_key = "label"
        self.classnames = None
        if label_key is not None:
            names = getattr(_get(features, label_key), "names", None)
            self.classnames = list(names) if names else None
        if caption_key is None and self.classnames is None:
            raise ValueError(
                f"tfds:{name} has neither a caption feature ({_CAPTION_KEYS}) nor a "
                f"ClassLabel; set ?caption_key=NAME."
            )
        self.image_key, self.caption_key, self.label_key = image_key, caption_key, label_key
        self.template = template
        decoders = {image_key: tfds.decode.SkipDecoding()}
        self._ds = tfds.data_source(name, split=split, data_dir=data_dir, decoders=decoders)

    def __len__(self) -> int:
        return len(self._ds)

    def __repr__(self) -> str:
        return f"TfdsSource('tfds:{self.name}', split={self.split!r})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load_example(index)

    def load_example(self, index: int, pil: bool = False) -> dict[str, Any]:
        """``src[index]``; ``pil=True``: the image may stay a PIL image (see TableSource)."""
        record = self._ds[int(index)]
        ex: dict[str, Any] = {}
        if self.label_key is not None:
            label = int(np.asarray(_get(record, self.label_key)))
            ex["labels"] = {"label": label}
        if self.caption_key is not None:
            value = _get(record, self.caption_key)
            if isinstance(value, dict) and "text" in value:  # e.g. coco_captions' captions
                value = value["text"]
            if isinstance(value, (list, tuple)) or (
                isinstance(value, np.ndarray) and value.ndim > 0
            ):
                ex["captions"] = [_text(v) for v in value]
            else:
                ex["caption"] = _text(value)
        else:
            ex["caption"] = self.template.format(self.classnames[ex["labels"]["label"]])
        data = _get(record, self.image_key)
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3:
            ex["image"] = data if data.shape[-1] == 3 else np.repeat(data[..., :1], 3, -1)
        else:
            ex["image"] = csv_source.load_image(
                bytes(np.asarray(data).item()) if isinstance(data, np.ndarray) else data,
                self.preprocess,
            )
        return ex


def list_image_text_folder(folder: str) -> list[dict[str, Any]]:
    """Rows ``{'filepath', 'title'}`` for every image in ``folder`` (recursive) that has a
    same-named ``.txt`` caption; the label is the image's subfolder name when every image
    sits in a subfolder (ImageNet-style class folders), else absent."""
    rows = []
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            row = {"filepath": os.path.join(dirpath, f)}
            txt = os.path.join(dirpath, stem + ".txt")
            if os.path.exists(txt):
                with open(txt, encoding="utf-8", errors="replace") as fh:
                    row["title"] = fh.read()
            rel = os.path.relpath(dirpath, folder)
            if rel != ".":
                row["label"] = rel.split(os.sep)[0]
            rows.append(row)
    if rows and not all("label" in r for r in rows):
        for r in rows:
            r.pop("label", None)
    return rows


def _builder_class():
    """Defines the TFDS builder lazily (importing tensorflow_datasets takes seconds)."""
    # tensorflow_datasets: optional (the `data` extra) and slow to import.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    class ImageTextFolderBuilder(tfds.core.GeneratorBasedBuilder):
        """Local image-text data -> an ArrayRecord TFDS dataset (no TensorFlow needed).

        ``ImageTextFolder(rows_by_split={'train': rows}, name='my_data', data_dir=D)`` where
        rows are ``{'filepath': path, 'title': caption | [captions], 'label': int|str}``
        (``csv_source.read_table`` or ``list_image_text_folder`` make them).
        """

        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, *, rows_by_split, classnames=None, **kwargs):
            self._rows_by_split = rows_by_split
            self._classnames = classnames
            super().__init__(**kwargs)

        def _info(self):
            features = {
                "image": tfds.features.Image(encoding_format=None),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "filepath": tfds.features.Text(),
            }
            if self._classnames:
                features["label"] = tfds.features.ClassLabel(names=self._classnames)
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {s: self._generate_examples(rows) for s, rows in self._rows_by_split.items()}

        def _generate_examples(self, rows):
            for i, row in enumerate(rows):
                # Encoded bytes go in as they are (no TensorFlow encoder is needed);
                # missing and undecodable files are left out.
                try:
                    data = D.read_bytes(row["filepath"])
                    D.decode_image(data)
                except D.SkipExample:
                    continue
                caps = row.get("title")
                caps = list(caps) if isinstance(caps, (list, tuple)) else [caps or ""]
                ex = {
                    "image": data,
                    "captions": [str(c) for c in caps],
                    "filepath": row["filepath"],
                }
                if self._classnames:
                    ex["label"] = row["label"]
                yield str(i), ex

    return ImageTextFolderBuilder


def ImageTextFolder(*, name: str, rows_by_split, classnames=None, data_dir=None):
    """A TFDS builder named ``name`` over local rows (see ``_builder_class``); call
    ``.download_and_prepare()`` on it. Then ``tfds:NAME?data_dir=DATA_DIR`` reads it."""
    # tensorflow_datasets: optional (the `data` extra) and slow to import.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    base = _builder_class()
    with tfds.core.registered.skip_registration():
        cls = type("ImageTextFolder", (base,), {"name": name})
    return cls(
        rows_by_split=rows_by_split,
        classnames=classnames,
        data_dir=data_dir,
        file_format="array_record",
    )
