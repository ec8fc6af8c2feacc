"""An embedded, procedural image-text dataset: coloured shapes with captions.

``ShapesDataset`` is the default data of the demos and tests: nothing to download, every
example rendered on the fly in numpy (about 0.1 ms for a 32 px image), deterministic in
``(seed, split, index)``.

Each image shows one object, or two identical objects stacked vertically, on a dark, lightly
noisy grey background. The attributes (``ATTRIBUTES`` holds the class names, in label order):

=========  ===========================================================================
shape      circle, square, triangle, star, cross, diamond, ring, crescent
color      red, orange, yellow, green, cyan, blue, purple, white
size       small (radius ~0.13 * image_size), large (~0.21 * image_size)
position   left, center, right (horizontal position of the object column)
count      one, two (a pair is stacked at 1/4 and 3/4 height, drawn 8% smaller)
=========  ===========================================================================

Held-out compositions: the (shape, color) pair ``(s, c)`` is held out iff
``(c - s) % 8 in (2, 5)`` -- 16 of the 64 pairs (25%). Every shape is held out with exactly
two colours and every colour with exactly two shapes, so each shape and each colour is still
seen with six partners in training. Split ``'train'`` never contains a held-out pair;
split ``'test'`` contains only held-out pairs (compositional generalisation);
split ``'val'`` (a bonus) is an independent in-distribution sample of the seen pairs.

Captions come from several templates with synonyms, e.g.::

    "a large red circle on the left"
    "there are two tiny cobalt boxes at the right side"
    "a photo of a big violet crescent in the middle"
    "in the center there is a little emerald hoop"
    "two triangles that are golden and small, to the right"

Size and position are each omitted in ~15% of captions, colour and shape in ~5% (shape then
reads "object"/"shape"), so a text model has to read words, not slot positions. Options for
studies (spec ``synthetic:shapes?color_mention=0.5&object_scale=1.15``): ``color_mention``,
the probability that a caption names the colour (default 0.95; images are unchanged), and
``object_scale``, a factor on every object's radius (default 1.0; labels are unchanged).
Noisy pairs (``synthetic:shapes?caption_noise=0.3``, for data curation and soft-negative
studies): each example's texts (caption, and the extra and hard-negative captions when
asked for) are, with that probability, those of another random example of the split, from
a random stream of their own (seeded by ``(seed, split, index)``); images, labels and the
other examples' captions are unchanged, and ``labels['noisy_caption']`` (1 if swapped, 0
if not; only with ``caption_noise > 0``) says which pairs are noisy.
For task splits (continual learning, ``alignjax.continual``), ``shapes`` and ``colors``
keep only the (shape, color) pairs of the listed classes
(``synthetic:shapes?shapes=circle,square&colors=red,blue``); labels still index
``ATTRIBUTES`` and the zero-shot tasks keep every class.

Example format: ``{'image': uint8 [H, W, 3], 'caption': str, 'labels': {attr: int}}``.
With ``extra_captions=True`` (spec ``synthetic:shapes?extra_captions=true``) examples also
carry ``'summary'`` (e.g. "a crimson circle") and ``'long_caption'``, four sentences that
each state some attributes (e.g. "there is a disk. a disk that is red. a large disk. a
circle on the left."), for PyramidCLIP summaries and DreamLIP sub-captions; they are drawn
from a separate random stream, so images and captions are the same as without them.
With ``hard_negatives=True`` (``synthetic:shapes?hard_negatives=true``) examples also carry
``'neg_caption'``: the caption with one attribute swapped (the shape, else the first other
mentioned attribute; same template and synonyms), for NegCLIP-style hard negatives
(``loss.name='negclip'``); swapped (shape, colour) pairs stay among the split's pairs.
The grain pipelines (``alignjax.data.pipeline``) flatten ``labels`` into ``label_<attr>``
int32 keys.

A second modality of the same scenes: ``render='depth'`` (spec
``synthetic:shapes?render=depth``) replaces the RGB photo with a depth map of the same
scene, as a range camera looking down would record it: a ground plane at a random tilt
(far, bright) with the objects raised towards the camera (near, dark), chamfered edges, a
random object height and sensor noise; grey, replicated to 3 channels (``uint8 [S, S, 3]``)
so the image pipeline and an RGB-initialised tower read it unchanged. Shape, size,
position and count are in it; colour is not. Example ``i`` of a depth source and of the RGB
source with the same ``(seed, split)`` show the same scene with the same caption and labels
(the depth map is drawn from its own random stream), which is what binding a new modality
to a frozen tower (``configs/bind.py``) and its emergent depth <-> photo retrieval
(``alignjax.evaluate.cross_modal``) rely on.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = [
    "ShapesDataset",
    "ATTRIBUTES",
    "COLOR_RGB",
    "RENDERS",
]

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "crescent")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SIZES = ("small", "large")
POSITIONS = ("left", "center", "right")
COUNTS = ("one", "two")

#: Class names of every attribute, in label order.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "position": POSITIONS,
    "count": COUNTS,
}

#: Nominal RGB of each colour (a per-image jitter of +-10 is added).
COLOR_RGB = np.array(
    [
        (225, 30, 30),  # red
        (250, 140, 10),  # orange
        (245, 230, 30),  # yellow
        (30, 180, 40),  # green
        (30, 215, 225),  # cyan
        (35, 70, 235),  # blue
        (150, 50, 205),  # purple
        (240, 240, 240),  # white
    ],
    dtype=np.float32,
)

# --- words -----------------------------------------------------------------------------
_SHAPE_WORDS = {  # (singular, plural) synonyms
    "circle": [("circle", "circles"), ("disk", "disks")],
    "square": [("square", "squares"), ("box", "boxes")],
    "triangle": [("triangle", "triangles")],
    "star": [("star", "stars")],
    "cross": [("cross", "crosses"), ("plus sign", "plus signs")],
    "diamond": [("diamond", "diamonds"), ("rhombus", "rhombuses")],
    "ring": [("ring", "rings"), ("hoop", "hoops")],
    "crescent": [("crescent", "crescents"), ("moon", "moons")],
}
_GENERIC_NOUNS = [("object", "objects"), ("shape", "shapes")]
_COLOR_WORDS = {
    "red": ["red", "crimson", "scarlet"],
    "orange": ["orange", "tangerine"],
    "yellow": ["yellow", "golden"],
    "green": ["green", "emerald"],
    "cyan": ["cyan", "turquoise", "aqua"],
    "blue": ["blue", "cobalt"],
    "purple": ["purple", "violet"],
    "white": ["white", "ivory"],
}
_SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
_POSITION_WORDS = {
    "left": ["on the left", "at the left side", "to the left", "on the left side"],
    "center": ["in the center", "in the middle", "at the center"],
    "right": ["on the right", "at the right side", "to the right", "on the right side"],
}
_COUNT_WORDS = {"one": ["a", "one", "a single"], "two": ["two", "a pair of"]}

# Templates: {np} noun phrase (count + adjectives + noun), {pos} position phrase (may be
# empty), {be} is/are, {det} count word, {noun} noun, {adjs} "red and large".
_TEMPLATES = (
    "{np} {pos}",
    "{np} {pos}",
    "there {be} {np} {pos}",
    "a photo of {np} {pos}",
    "an image with {np} {pos}",
    "a drawing of {np} {pos}",
    "{pos} there {be} {np}",
    "{det} {noun} that {be} {adjs}, {pos}",
)
_ARTICLE_RE = re.compile(r"\ba ([aeiou])")
_SPACES_RE = re.compile(r"\s+")

# Probabilities that an attribute is mentioned in the caption.
_P_MENTION = {"size": 0.85, "position": 0.85, "color": 0.95, "shape": 0.95}

_SPLITS = {"train": 0, "test": 1, "val": 2}
#: What ``render=`` draws of a scene: the RGB photo, or its depth map (no colour).
RENDERS = ("rgb", "depth")
_DEFAULT_SIZES = {"train": 1_000_000, "test": 2000, "val": 2000}


def _held_out(shape: int, color: int) -> bool:
    return (color - shape) % len(COLORS) in (2, 5)


_HELD_OUT = tuple((s, c) for s in range(len(SHAPES)) for c in range(len(COLORS)) if _held_out(s, c))
_SEEN = tuple((s, c) for s in range(len(SHAPES)) for c in range(len(COLORS)) if not _held_out(s, c))


# --- geometry --------------------------------------------------------------------------
def _convex(vertices) -> tuple[np.ndarray, np.ndarray]:
    """Half-plane form (outward normals [E,2], offsets [E]) of a convex polygon."""
    v = np.asarray(vertices, np.float64)
    centroid = v.mean(0)
    normals, offsets = [], []
    for a, b in zip(v, np.roll(v, -1, axis=0)):
        e = b - a
        n = np.array([e[1], -e[0]]) / np.hypot(*e)
        if n @ (centroid - a) > 0:
            n = -n
        normals.append(n)
        offsets.append(n @ a)
    return np.array(normals, np.float32), np.array(offsets, np.float32)


def _regular(k: int, radius: float, phase_deg: float) -> np.ndarray:
    ang = np.deg2rad(phase_deg + 360.0 * np.arange(k) / k)
    return radius * np.stack([np.cos(ang), np.sin(ang)], -1)  # (x, y); y points down


_TRIANGLE = _convex(_regular(3, 1.25, -90.0) + np.array([0.0, 0.15]))


def _star_edge(outer=1.2, inner=0.5):
    """Outward normal and offset of the tip->inner-vertex edge in the folded sector."""
    tip = np.array([outer, 0.0])
    inner_v = inner * np.array([np.cos(np.pi / 5), np.sin(np.pi / 5)])
    e = inner_v - tip
    n = np.array([-e[1], e[0]]) / np.hypot(*e)
    if n @ tip < 0:
        n = -n
    return np.float32(n[0]), np.float32(n[1]), np.float32(n @ tip)


_STAR = _star_edge()


def _sdf(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) of a shape of radius r."""
    if shape == "circle":
        return np.sqrt(x * x + y * y) - r
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) - 0.85 * r
    if shape == "diamond":
        return (np.abs(x) + np.abs(y) - 1.15 * r) * np.float32(0.7071)
    if shape == "cross":
        ax, ay, w = np.abs(x), np.abs(y), 0.36 * r
        return np.minimum(np.maximum(ax - r, ay - w), np.maximum(ax - w, ay - r))
    if shape == "ring":
        return np.abs(np.sqrt(x * x + y * y) - 0.7 * r) - 0.3 * r
    if shape == "crescent":
        outer = np.sqrt(x * x + y * y) - r
        bite = np.sqrt((x - 0.5 * r) ** 2 + (y + 0.1 * r) ** 2) - 0.78 * r
        return np.maximum(outer, -bite)
    if shape == "triangle":
        normals, offsets = _TRIANGLE
        d = x[..., None] * normals[:, 0] + y[..., None] * normals[:, 1] - r * offsets
        return d.max(-1)
    if shape == "star":
        # Fold the plane into one half-spike sector (5-fold symmetry, tip pointing up),
        # where the star is the half-plane behind the tip->inner-vertex edge.
        sector = np.float32(2 * np.pi / 5)
        y = y + np.float32(0.1) * r  # centre the star's bounding box vertically
        phi = np.arctan2(y, x) + np.float32(np.pi / 2)  # 0 at the top tip
        phi = np.abs(np.mod(phi + sector / 2, sector) - sector / 2)
        rho = np.sqrt(x * x + y * y)
        nx, ny, off = _STAR
        return rho * (nx * np.cos(phi) + ny * np.sin(phi)) - r * off
    raise ValueError(f"unknown shape {shape!r}")


def _subset(names, valid: tuple[str, ...], field: str) -> frozenset[int]:
    """Indices of the comma-separated (or listed) class ``names``; None: all of ``valid``."""
    if names is None:
        return frozenset(range(len(valid)))
    listed = names.split(",") if isinstance(names, str) else list(names)
    listed = [str(n).strip() for n in listed if str(n).strip()]
    unknown = [n for n in listed if n not in valid]
    if unknown or not listed:
        raise ValueError(f"{field}={names!r}: unknown or no class names {unknown}; valid: {list(valid)}.")
    return frozenset(valid.index(n) for n in listed)


class ShapesDataset:
    """Random-access source of coloured-shape images with captions (grain compatible).

    Args:
      split: ``'train'`` (seen (shape, color) pairs; default 1_000_000 examples, rendered on
        the fly), ``'test'`` (held-out pairs only; default 2000) or ``'val'`` (seen pairs,
        an independent sample; default 2000).
      image_size: side of the square image in pixels (>= 16; attributes are designed to be
        distinguishable at 32).
      seed: dataset seed; example ``i`` is a pure function of ``(seed, split, i)``.
      num_examples: number of indices, or None for the split's default.
      shapes, colors: class names (a list or comma-separated) to keep, or None for all:
        only the split's (shape, color) pairs of those classes are drawn.
      render: ``'rgb'`` (the photo) or ``'depth'`` (the same scene's depth map; module
        docstring). Captions and labels do not depend on it.
      caption_noise: the probability, in [0, 1), that an example's texts are those of
        another example (module docstring); 0 leaves every example as it was.

    ``ds[i]`` returns ``{'image': uint8 [S, S, 3], 'caption': str, 'labels': {attr: int}}``
    with labels indexing ``ATTRIBUTES[attr]``.
    """

    attributes = ATTRIBUTES

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        seed: int = 0,
        num_examples: int | None = None,
        extra_captions: bool = False,
        hard_negatives: bool = False,
        color_mention: float = _P_MENTION["color"],
        object_scale: float = 1.0,
        shapes: str | tuple[str, ...] | None = None,
        colors: str | tuple[str, ...] | None = None,
        render: str = "rgb",
        caption_noise: float = 0.0,
    ):
        if split not in _SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid splits: {sorted(_SPLITS)}.")
        if int(image_size) < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}.")
        if num_examples is not None and int(num_examples) <= 0:
            raise ValueError(f"num_examples must be positive, got {num_examples}.")
        if render not in RENDERS:
            raise ValueError(f"render={render!r} is not a rendering; valid: {list(RENDERS)}.")
        self.render = render
        if not 0.0 <= float(caption_noise) < 1.0:
            raise ValueError(
                f"caption_noise is the fraction of captions swapped, in [0, 1); got "
                f"{caption_noise}."
            )
        self.caption_noise = float(caption_noise)
        self.split = split
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.num_examples = int(num_examples or _DEFAULT_SIZES[split])
        self.extra_captions = bool(extra_captions)
        self.hard_negatives = bool(hard_negatives)
        if not 0.0 <= float(color_mention) <= 1.0:
            raise ValueError(f"color_mention is a probability in [0, 1], got {color_mention}.")
        if not 0.5 <= float(object_scale) <= 1.2:
            raise ValueError(
                f"object_scale must be in [0.5, 1.2] (larger pairs would overlap), got "
                f"{object_scale}."
            )
        self.color_mention = float(color_mention)
        self.object_scale = float(object_scale)
        pairs = _HELD_OUT if split == "test" else _SEEN
        keep_s, keep_c = _subset(shapes, SHAPES, "shapes"), _subset(colors, COLORS, "colors")
        self._pairs = tuple(p for p in pairs if p[0] in keep_s and p[1] in keep_c)
        if not self._pairs:
            raise ValueError(
                f"shapes={shapes!r} and colors={colors!r} leave no (shape, color) pair in split "
                f"{split!r}; list more classes."
            )
        s = self.image_size
        # Pixel-centre coordinates, shared by all examples.
        self._coords = np.arange(s, dtype=np.float32) + np.float32(0.5)

    # -- grain RandomAccessDataSource protocol ------------------------------------------
    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += self.num_examples
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self!r}")
        example = self._clean_example(index)
        if self.caption_noise:
            # Its own stream, so images, labels and clean captions do not depend on the noise.
            noise = np.random.default_rng([self.seed, _SPLITS[self.split], index, 3])
            swapped = bool(noise.random() < self.caption_noise) and self.num_examples > 1
            if swapped:  # Every text of another example of the split (never this one).
                other = (index + 1 + int(noise.integers(self.num_examples - 1))) % self.num_examples
                texts = self._clean_example(other)
                example.update({k: v for k, v in texts.items() if k not in ("image", "labels")})
            example["labels"] = dict(example["labels"], noisy_caption=int(swapped))
        return example

    def _clean_example(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        u = rng.random(12)
        labels = self._sample_labels(u)
        image = self._render(labels, u, rng)  # Always: its draws precede the caption's.
        if self.render == "depth":
            depth_rng = np.random.default_rng([self.seed, _SPLITS[self.split], index, 2])
            image = self._depth(labels, u, depth_rng)
        caption_state = rng.bit_generator.state
        caption = self._caption(labels, rng)
        example = {"image": image, "caption": caption, "labels": labels}
        if self.hard_negatives:
            example["neg_caption"] = self._hard_negative(labels, caption, caption_state, u[8])
        if self.extra_captions:
            extra_rng = np.random.default_rng([self.seed, _SPLITS[self.split], index, 1])
            example.update(self._extra_captions(labels, extra_rng))
        return example

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(split={self.split!r}, image_size={self.image_size}, "
            f"seed={self.seed}, num_examples={self.num_examples}"
            + (f", render={self.render!r}" if self.render != "rgb" else "")
            + (f", caption_noise={self.caption_noise}" if self.caption_noise else "")
            + ")"
        )

    # -- metadata -----------------------------------------------------------------------
    @staticmethod
    def held_out_pairs() -> list[tuple[str, str]]:
        """The (shape, color) pairs never in 'train' and the only ones in 'test'."""
        return [(SHAPES[s], COLORS[c]) for s, c in _HELD_OUT]

    @staticmethod
    def zero_shot_tasks() -> dict[str, dict[str, Any]]:
        """Zero-shot classification tasks (run them on split 'test').

        Returns ``{task: dict(attribute, label_key, classnames, templates)}``; class ``k`` of
        a task is label ``k`` of its attribute.
        """
        return {
            "shape": dict(
                attribute="shape",
                label_key="label_shape",
                classnames=list(SHAPES),
                templates=[
                    "a photo of a {}.",
                    "a {}.",
                    "a drawing of a {}.",
                    "there is a {}.",
                    "a {} shape.",
                ],
                # Half the images show a pair: a class also has a plural prototype, and an
                # image scores a shape by the better of the two (count-agnostic shape).
                prototypes=[
                    dict(
                        classnames=[_SHAPE_WORDS[s][0][1] for s in SHAPES],
                        templates=[
                            "a photo of two {}.",
                            "two {}.",
                            "a drawing of two {}.",
                            "there are two {}.",
                            "a pair of {}.",
                        ],
                    )
                ],
            ),
            "color": dict(
                attribute="color",
                label_key="label_color",
                classnames=list(COLORS),
                templates=[
                    "something {}.",
                    "the color {}.",
                    "{} things.",
                    "a photo of something {}.",
                    "an object that is {}.",
                ],
            ),
            "size": dict(
                attribute="size",
                label_key="label_size",
                classnames=list(SIZES),
                templates=[
                    "a {} object.",
                    "a {} shape.",
                    "something {}.",
                    "a photo of a {} thing.",
                ],
            ),
            "position": dict(
                attribute="position",
                label_key="label_position",
                classnames=["on the left", "in the center", "on the right"],
                templates=[
                    "an object {}.",
                    "something {}.",
                    "a shape {}.",
                    "a photo of a thing {}.",
                ],
            ),
            "count": dict(
                attribute="count",
                label_key="label_count",
                classnames=["a single object", "two objects"],
                templates=["a photo of {}.", "{}.", "an image with {}.", "there is {}."],
            ),
        }

    @staticmethod
    def vocabulary() -> list[str]:
        """Every word (lower case, punctuation split off) a caption or zero-shot prompt uses."""
        texts = []
        for words in (_COLOR_WORDS, _SIZE_WORDS, _POSITION_WORDS, _COUNT_WORDS):
            texts += [w for ws in words.values() for w in ws]
        texts += [w for ws in _SHAPE_WORDS.values() for pair in ws for w in pair]
        texts += [w for pair in _GENERIC_NOUNS for w in pair]
        texts += list(_TEMPLATES) + ["an is are and"]
        for task in ShapesDataset.zero_shot_tasks().values():
            for group in [task, *task.get("prototypes", ())]:
                texts += group["templates"] + group["classnames"]
        words = set()
        for t in texts:
            words.update(re.findall(r"\w+|[^\w\s]", re.sub(r"\{\w*\}", " ", t.lower())))
        return sorted(words)

    # -- internals ----------------------------------------------------------------------
    def _sample_labels(self, u: np.ndarray) -> dict[str, int]:
        s, c = self._pairs[int(u[0] * len(self._pairs))]
        return {
            "shape": s,
            "color": c,
            "size": int(u[1] * 2),
            "position": int(u[2] * 3),
            "count": int(u[3] * 2),
        }

    def _objects(self, labels: dict[str, int], u: np.ndarray):
        """The scene's geometry: yields ``(y0, y1, x0, x1, d, radius)`` per object, ``d``
        the signed distance in pixels (negative inside) over its bounding window."""
        size = self.image_size
        large = labels["size"] == 1
        radius = size * (0.21 if large else 0.13) * self.object_scale * (0.93 + 0.14 * u[5])
        cx = size * ((0.22, 0.5, 0.78)[labels["position"]] + 0.06 * (u[6] - 0.5))
        if labels["count"] == 0:
            span = 0.04 if large else 0.2
            cys = [size * (0.5 + span * (u[7] - 0.5))]
        else:  # a pair, stacked; drawn 8% smaller so that large pairs do not touch
            radius *= 0.92
            cys = [size * 0.25, size * 0.75]
        shape = SHAPES[labels["shape"]]
        ext = 1.3 * radius + 1.0  # bounding half-extent (the star reaches 1.2 r)
        for cy in cys:
            x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, size)
            y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, size)
            x = (self._coords[x0:x1] - np.float32(cx))[None, :]
            y = (self._coords[y0:y1] - np.float32(cy))[:, None]
            x, y = np.broadcast_arrays(x, y)
            yield y0, y1, x0, x1, _sdf(shape, x, y, np.float32(radius)), radius

    def _render(self, labels: dict[str, int], u: np.ndarray, rng) -> np.ndarray:
        size = self.image_size
        base = 25.0 + 50.0 * u[4]
        noise = rng.integers(-6, 7, size=(size, size, 1), dtype=np.int16)
        img = np.broadcast_to(noise.astype(np.float32) + np.float32(base), (size, size, 3)).copy()
        color = COLOR_RGB[labels["color"]] + rng.integers(-10, 11, size=3).astype(np.float32)
        for y0, y1, x0, x1, d, _ in self._objects(labels, u):
            alpha = np.clip(np.float32(0.5) - d, 0.0, 1.0)[..., None]  # 1-px antialiasing
            patch = img[y0:y1, x0:x1]
            patch += alpha * (color - patch)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    def _depth(self, labels: dict[str, int], u: np.ndarray, rng) -> np.ndarray:
        """The scene's depth map in [0, 1] as uint8 grey x 3: near is dark."""
        size = self.image_size
        t = self._coords / np.float32(size) - np.float32(0.5)  # [-0.5, 0.5]
        tilt_x, tilt_y = (0.16 * rng.random(2) - 0.08).astype(np.float32)
        depth = np.float32(0.8) + tilt_x * t[None, :] + tilt_y * t[:, None]  # the ground
        rise = np.float32(0.35 + 0.2 * rng.random())  # how far the objects stand up
        for y0, y1, x0, x1, d, radius in self._objects(labels, u):
            bevel = np.float32(max(1.0, 0.35 * radius))  # chamfered sides, flat top
            h = np.clip((np.float32(0.5) - d) / bevel, 0.0, 1.0)
            depth[y0:y1, x0:x1] -= rise * h * h * (3 - 2 * h)  # smoothstep profile
        depth += rng.normal(0.0, 0.01, size=(size, size)).astype(np.float32)  # sensor noise
        grey = np.clip(depth * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)

    def _hard_negative(self, labels: dict[str, int], caption: str, state, u: float) -> str:
        """The caption with one attribute swapped: the same template and synonym draws (the
        caption's random stream replayed), another shape, else colour, size, count or
        position, whichever the caption mentions first. A swapped shape or colour keeps the
        (shape, colour) pair among this split's pairs, so held-out pairs never appear, not
        even as negative text."""
        for attr in ("shape", "color", "size", "count", "position"):
            options = []
            for k in range(len(ATTRIBUTES[attr])):
                swapped = dict(labels, **{attr: k})
                if k != labels[attr] and (swapped["shape"], swapped["color"]) in self._pairs:
                    options.append(k)
            if not options:
                continue
            rng = np.random.default_rng()
            rng.bit_generator.state = state
            negative = self._caption(labels, rng, swap={attr: options[int(u * len(options))]})
            if negative != caption:
                return negative
        raise AssertionError(f"no hard negative for {caption!r}")  # every caption says some

    def _extra_captions(self, labels: dict[str, int], rng) -> dict[str, str]:
        """A short summary and a four-sentence long caption (only dataset words)."""

        def pick(options):
            return options[int(rng.integers(len(options)))]

        two = labels["count"] == 1
        det = pick(_COUNT_WORDS[COUNTS[labels["count"]]])
        noun = pick(_SHAPE_WORDS[SHAPES[labels["shape"]]])[int(two)]
        color = pick(_COLOR_WORDS[COLORS[labels["color"]]])
        size = pick(_SIZE_WORDS[SIZES[labels["size"]]])
        pos = pick(_POSITION_WORDS[POSITIONS[labels["position"]]])
        be = "are" if two else "is"
        sentences = [
            f"there {be} {det} {noun}",
            f"{det} {noun} that {be} {color}",
            f"{det} {size} {noun}",
            f"{det} {noun} {pos}",
        ]
        fix = [_ARTICLE_RE.sub(r"an \1", s) for s in sentences]
        return {
            "summary": _ARTICLE_RE.sub(r"an \1", f"{det} {color} {noun}"),
            "long_caption": ". ".join(fix) + ".",
        }

    def _caption(self, labels: dict[str, int], rng, swap: dict[str, int] | None = None) -> str:
        """A caption of ``labels``; with ``swap`` ({attr: other label}) the caption of the
        swapped labels that replays the same random draws (``rng`` in the same state):
        word ``k`` of a swapped attribute becomes word ``k mod n`` of the new one."""
        swap = swap or {}

        def pick(options, attr=None, table=None):
            k = int(rng.integers(len(options)))  # as many draws as for the true labels
            if attr in swap:
                new = table[ATTRIBUTES[attr][swap[attr]]]
                return new[k % len(new)]
            return options[k]

        m = rng.random(4)
        two = (swap.get("count", labels["count"])) == 1
        det = pick(_COUNT_WORDS[COUNTS[labels["count"]]], "count", _COUNT_WORDS)
        if m[3] < _P_MENTION["shape"]:
            noun = pick(_SHAPE_WORDS[SHAPES[labels["shape"]]], "shape", _SHAPE_WORDS)[int(two)]
        else:
            noun = pick(_GENERIC_NOUNS)[int(two)]
        adjs = []
        if m[0] < _P_MENTION["size"]:
            adjs.append(pick(_SIZE_WORDS[SIZES[labels["size"]]], "size", _SIZE_WORDS))
        if m[2] < self.color_mention:
            adjs.append(pick(_COLOR_WORDS[COLORS[labels["color"]]], "color", _COLOR_WORDS))
        pos = (
            pick(_POSITION_WORDS[POSITIONS[labels["position"]]], "position", _POSITION_WORDS)
            if m[1] < _P_MENTION["position"]
            else ""
        )
        template = pick(_TEMPLATES)
        if "{adjs}" in template and not adjs:
            template = _TEMPLATES[0]
        text = template.format(
            np=" ".join([det, *adjs, noun]),
            pos=pos,
            be="are" if two else "is",
            det=det,
            noun=noun,
            adjs=" and ".join(adjs[::-1]),
        )
        text = _ARTICLE_RE.sub(r"an \1", text)
        text = _SPACES_RE.sub(" ", text).strip().strip(",").strip()
        return text
