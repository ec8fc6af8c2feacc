"""``csv:PATH`` and ``jsonl:PATH``: tables of image paths and captions (open_clip's format).

Spec parameters (``csv:/data/cc3m/{split}.tsv?caption_key=caption&label_key=label``):

=================  ==========================================================================
image_key          image path column (default ``filepath``, open_clip's ``--csv-img-key``)
caption_key        caption column (default ``title``, open_clip's ``--csv-caption-key``); in
                   JSONL a list value gives several captions (one is drawn per step)
label_key          optional integer (or class-name) label column -> ``labels['label']``
sep                column separator (csv only): a character or ``tab``, ``comma``,
                   ``semicolon``, ``pipe``; default: a ``sep=X`` first line (spreadsheet
                   programs write one), tab for ``.tsv`` files, else the one of tab, comma,
                   semicolon and ``|`` most frequent in the header
root               directory relative image paths are resolved against (default: the
                   table's own directory); absolute paths and URLs (``gs://``...) are kept
=================  ==========================================================================

plus the ``transforms.Preprocess`` fields (``image_size``, ``crop``, ``min_scale``,
``max_scale``, ``eval_crop``, ``interpolation``, ``caption_choice``, ``clean_captions``,
``max_caption_chars``, ``min_image_size``, ``draft``). ``{split}`` in the path is replaced by
the split; without it the same table serves every split. The table is read once, at
construction; images are read and decoded on access (in the grain workers).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

import numpy as np

from alignjax.data import decode as D
from alignjax.data import transforms as T

__all__ = ["TableSource", "read_table"]


_SEPARATORS = {"tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "\\t": "\t"}


def _open_text(path: str) -> str:
    """The file's text; a UTF-8 byte-order mark (spreadsheet programs write one) dropped."""
    try:
        if "://" in path and not path.startswith("file://"):
            import fsspec  # pylint: disable=g-import-not-at-top

            with fsspec.open(path, "rt", encoding="utf-8-sig", newline="") as f:
                return f.read()
        with open(path.removeprefix("file://"), encoding="utf-8-sig", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            f"save the table as UTF-8 (in a spreadsheet program: 'CSV UTF-8')."
        ) from None


def _sniff_sep(path: str, header: str) -> str:
    """The separator: tab for ``.tsv``, else the one of tab, comma, semicolon and ``|``
    that occurs most in the header (comma on a tie or none: a single-column table)."""
    if path.endswith(".tsv"):
        return "\t"
    counts = {c: header.count(c) for c in (",", "\t", ";", "|")}
    best = max(counts, key=lambda c: (counts[c], c == ","))
    return best if counts[best] else ","


def read_table(path: str, fmt: str, sep: str | None = None) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV (with header) or JSONL file as dicts.

    CSV: ``sep`` (a character, or ``tab``, ``comma``, ``semicolon``, ``pipe``) or, without
    it, a ``sep=X`` first line (what spreadsheet programs write) or the separator sniffed
    from the header (``_sniff_sep``). A row with more fields than the header (an unquoted
    separator inside a caption, which would cut the caption) is an error naming the line.
    """
    try:
        text = _open_text(path)
    except OSError as e:
        raise FileNotFoundError(f"Cannot read the {fmt} table {path!r}: {e}") from None
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON object: {e}") from None
        return rows
    first, _, rest = text.partition("\n")
    offset = 0
    if first.rstrip("\r").lower().startswith("sep=") and len(first.rstrip("\r")) == 5:
        sep, text, offset = sep or first[4], rest, 1
    sep = _SEPARATORS.get(sep, sep) if sep else _sniff_sep(path, text.partition("\n")[0])
    if len(sep) != 1:
        raise ValueError(
            f"{path}: sep={sep!r} must be one character (or tab, comma, semicolon, pipe)."
        )
    reader = csv.reader(io.StringIO(text), delimiter=sep, skipinitialspace=True)
    header = next(reader, None)
    if not header:
        return []
    header = [h.strip() for h in header]
    rows = []
    last_line = reader.line_num
    for fields in reader:
        start, last_line = last_line + 1, reader.line_num
        if not fields:  # a blank line
            continue
        _check_swallowed(path, fields, sep, len(header), start + offset, last_line + offset)
        while len(fields) > len(header) and not fields[-1].strip():
            fields.pop()  # a trailing separator ("a.jpg,a caption,"): nothing is cut
        if len(fields) > len(header):
            name = {"\t": "tab", ",": "comma", ";": "semicolon"}.get(sep, repr(sep))
            raise ValueError(
                f"{path}:{reader.line_num + offset}: {len(fields)} fields, but the header has "
                f"{len(header)} ({name}-separated): a value holds an unquoted {name}, which "
                f"would cut it. Quote that value (\"a{sep} b\") or choose another separator "
                f"(?sep= in the spec)."
            )
        rows.append(dict(zip(header, fields + [None] * (len(header) - len(fields)))))
    return rows


def _check_swallowed(path: str, fields, sep: str, width: int, start: int, end: int) -> None:
    """Raises when a quoted value holds lines that look like rows: a value that starts with
    a quote that never ends swallows the rows after it (silently, for the csv module)."""
    if end - start < 2:
        return
    for value in fields:
        rows = [line for line in value.split("\n")[1:] if line.count(sep) >= width - 1]
        if len(rows) >= 2:
            raise ValueError(
                f"{path}:{start}: a quoted value runs to line {end} and holds {len(rows)} "
                f"lines that look like rows: a quote that never ends (e.g. a caption "
                f"starting with '\"'). Double the quotes inside a quoted value "
                f'("a ""b"" c") or remove the stray quote.'
            )


class TableSource:
    """Random-access source over a CSV/TSV/JSONL table of image paths and captions.

    ``src[i]`` -> ``{'image': uint8 [h, w, 3] (decoded size), 'caption': str |
    'captions': list[str], 'labels': {'label': int} (with label_key)}``; raises
    ``decode.SkipExample`` for a missing or undecodable image (the pipeline replaces it).
    """

    def __init__(
        self,
        path: str,
        split: str = "train",
        *,
        fmt: str = "csv",
        image_key: str = "filepath",
        caption_key: str = "title",
        label_key: str | None = None,
        sep: str | None = None,
        root: str | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        del seed  # accepted for get_source uniformity; a table is not random
        self.preprocess = T.Preprocess.from_kwargs(kwargs)
        if kwargs:
            raise TypeError(
                f"Unknown {fmt}: source parameters {sorted(kwargs)}; valid: image_key, "
                f"caption_key, label_key, sep, root, crop, min_scale, max_scale and "
                f"{[f for f in T.Preprocess.__dataclass_fields__]}."
            )
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"fmt must be 'csv' or 'jsonl', got {fmt!r}.")
        self.path = path.replace("{split}", split)
        self.split, self.fmt = split, fmt
        rows = read_table(self.path, fmt, sep)
        if not rows:
            raise ValueError(f"The {fmt} table {self.path!r} has no rows.")
        columns = set(rows[0])
        for what, key in (("image_key", image_key), ("caption_key", caption_key)):
            if key not in columns:
                raise ValueError(
                    f"{fmt}:{self.path}: no column {key!r} ({what}); columns: "
                    f"{sorted(columns)}. Set ?{what}=NAME in the spec."
                )
        if label_key is not None and label_key not in columns:
            raise ValueError(
                f"{fmt}:{self.path}: no label column {label_key!r}; columns: {sorted(columns)}."
            )
        if root is None:
            root = os.path.dirname(self.path)
        self.root = root
        self._paths = [self._resolve(str(r.get(image_key) or "")) for r in rows]
        self._captions = [r.get(caption_key) for r in rows]
        self.classnames = None
        self._labels = None
        if label_key is not None:
            raw = [r.get(label_key) for r in rows]
            try:
                self._labels = np.asarray([int(v) for v in raw], np.int64)
            except (TypeError, ValueError):  # class names: sorted, index = label
                self.classnames = sorted({str(v) for v in raw})
                index = {c: i for i, c in enumerate(self.classnames)}
                self._labels = np.asarray([index[str(v)] for v in raw], np.int64)
        self._spec = f"{fmt}:{self.path}"

    def _resolve(self, p: str) -> str:
        if not p or "://" in p or os.path.isabs(p):
            return p
        return f"{self.root.rstrip('/')}/{p}" if "://" in self.root else os.path.join(self.root, p)

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"TableSource({self._spec!r})"

    def image_path(self, index: int) -> str:
        return self._paths[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load_example(index)

    def load_example(self, index: int, pil: bool = False) -> dict[str, Any]:
        """``src[index]``; ``pil=True`` leaves the image a PIL image (the pipeline crops it
        without a numpy round trip)."""
        index = int(index)
        path = self._paths[index]
        if not path:
            raise D.SkipExample("missing_image", f"row {index} has no image path")
        ex: dict[str, Any] = {}
        caption = self._captions[index]
        if isinstance(caption, (list, tuple)):
            ex["captions"] = [str(c) for c in caption if c is not None]
        elif caption is not None:
            ex["caption"] = caption if isinstance(caption, str) else str(caption)
        if self._labels is not None:
            ex["labels"] = {"label": int(self._labels[index])}
        ex["image"] = load_image(path, self.preprocess, pil=pil)
        return ex


def load_image(path_or_bytes, preprocess: T.Preprocess, pil: bool = False):
    """Reads (path or URL) and decodes an image to uint8 [h, w, 3] per ``preprocess``
    (a PIL RGB image with ``pil=True``).

    The JPEG draft size covers both the train and the eval crop, so the same decode
    serves either pipeline.
    """
    data = path_or_bytes
    if isinstance(path_or_bytes, str):
        data = D.read_bytes(path_or_bytes)
    sides = [s for s in (preprocess.draft_side(True), preprocess.draft_side(False)) if s]
    img = D.decode_image(
        data, min_side=max(sides) if sides else None, min_image_size=preprocess.min_image_size
    )
    return img if pil else np.asarray(img, np.uint8)
