"""A labelled source read as image-text data: each image's text is a prompt for its class.

Classification data in a contrastive run (UniCL, prefix conditioning; Saito et al., CVPR
2023): `LabelPromptSource(source, label_key, templates)` keeps the images of `source` and
replaces their captions by ``template.format(classname)`` for each template (the train
pipeline picks one at random per example, as for any multi-caption source). It adds two
int32 fields the objectives read:

* ``class_id``: the class, as a stable id of its *name* (CRC-32), so that two sources that
  name the same class agree, whatever their label order;
* ``data_type``: ``CLASSIFICATION`` (1). A caption source has no such field; the
  ``unicl`` objective gives its examples ``CAPTION`` (0) and a ``class_id`` of -1 (a
  label of their own).

Spec: ``labels:SPEC?label=KEY[&templates=T1|T2][&names=a,b,...]``. ``label`` names the
source label (``shape`` for the shapes data, ``label`` for a CSV / JSONL / TFDS column);
integer labels are class indices, named by ``names`` or by the source's own ``attributes``
(the shapes data's class names); string labels are the names. Every other query key goes
to the inner spec. Mix it with caption data as any source:
``mix:0.5*labels:synthetic:shapes?label=shape;0.5*synthetic:shapes``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignjax.data import few_shot

__all__ = [
    "CAPTION",
    "CLASSIFICATION",
    "CLASS_ID",
    "DATA_TYPE",
    "DEFAULT_TEMPLATES",
    "LabelPromptSource",
    "class_id",
]

CLASS_ID = "class_id"
DATA_TYPE = "data_type"
CAPTION, CLASSIFICATION = 0, 1
DEFAULT_TEMPLATES = ("a photo of a {}.",)


def class_id(name: str) -> int:
    """The stable non-negative id of a class name (CRC-32, 31 bits)."""
    return zlib.crc32(str(name).encode("utf-8")) & 0x7FFFFFFF


class LabelPromptSource:
    """`source` with each example's captions replaced by prompts for its class.

    Args:
      source: a random-access source whose examples carry ``labels``.
      label_key: the label turned into text.
      templates: prompts with ``{}`` for the class name.
      names: class names for integer labels (index -> name); default the source's
        ``attributes[label_key]`` when it has them.
    """

    def __init__(
        self,
        source,
        label_key: str,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        names: Sequence[str] | None = None,
    ):
        self.source = source
        self.label_key = label_key
        self.templates = tuple(str(t) for t in templates)
        bad = [t for t in self.templates if "{}" not in t]
        if not self.templates or bad:
            raise ValueError(
                f"labels: templates must be prompts with '{{}}' for the class name, got "
                f"{list(self.templates)}."
            )
        if names is None:
            names = dict(getattr(source, "attributes", None) or {}).get(label_key)
        self.names = None if names is None else tuple(str(n) for n in names)
        self.preprocess = getattr(source, "preprocess", None)

    def __len__(self) -> int:
        return len(self.source)

    def class_name(self, value: Any) -> str:
        """The name of a label value (an index into ``names``, or the name itself)."""
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, str):
            return value
        index = int(value)
        if self.names is None:
            raise ValueError(
                f"labels: {self.label_key!r} has integer labels and no class names: add "
                f"names=a,b,... to the spec (index order)."
            )
        if not 0 <= index < len(self.names):
            raise ValueError(
                f"labels: label {index} of {self.label_key!r} is outside the "
                f"{len(self.names)} names {list(self.names)}."
            )
        return self.names[index]

    def _prompted(self, example: dict[str, Any]) -> dict[str, Any]:
        ex = dict(example)
        name = self.class_name(few_shot.example_label(ex, self.label_key))
        ex.pop("caption", None)
        ex["captions"] = [t.format(name) for t in self.templates]
        ex[CLASS_ID] = np.int32(class_id(name))
        ex[DATA_TYPE] = np.int32(CLASSIFICATION)
        return ex

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._prompted(self.source[i])

    def load_example(self, i: int, pil: bool = False) -> dict[str, Any]:
        load = getattr(self.source, "load_example", None)
        return self._prompted(load(i, pil=pil) if load is not None else self.source[i])

    def __repr__(self) -> str:
        return f"LabelPromptSource({self.source!r}, label_key={self.label_key!r})"
