# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-grained alignment: where each word of a caption looks, with FILIP
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/alignjax/alignjax/blob/main/notebooks/03_fine_grained.ipynb)
#
# FILIP scores an image and a caption token by token: every word is matched to its best
# image patch (and every patch to its best word) instead of comparing two pooled vectors.
# We train a small FILIP model on the embedded shapes data, draw each caption word's
# similarity to every patch over held-out images, and compare token-wise retrieval with
# global-embedding retrieval of the same model.

# %%
# Installs alignjax when it is not installed (Colab): clones the repository (the notebooks
# use its configs/) and installs it editable. A local checkout installed with
# `pip install -e .` skips this. On a GPU or TPU runtime jax is installed with that
# accelerator's plug-in, so that alignjax's jax version floor cannot leave a CPU-only jaxlib.
import importlib.util
import os
import pathlib
import subprocess
import sys

if importlib.util.find_spec("alignjax") is None:
    clone = pathlib.Path("/content/alignjax" if os.path.isdir("/content") else "alignjax")
    if not clone.exists():
        subprocess.check_call(
            ["git", "clone", "-q", "--depth=1", "https://github.com/alignjax/alignjax", clone]
        )
    if os.path.exists("/dev/nvidia0"):
        jax_build = "jax[cuda12]"
    elif os.path.exists("/dev/accel0") or "COLAB_TPU_ADDR" in os.environ:
        jax_build = "jax[tpu]"
    else:
        jax_build = "jax"
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", jax_build, "-e", clone])
    sys.path.insert(0, str(clone.resolve()))  # This process started before the install.

import alignjax

REPO = pathlib.Path(alignjax.__file__).resolve().parents[1]  # configs/ lives here.

# %% tags=["parameters"]
# ALIGNJAX_NOTEBOOK_TINY=1 (the test suite) shrinks every run to a few steps.
TINY = os.environ.get("ALIGNJAX_NOTEBOOK_TINY") == "1"
STEPS = 3 if TINY else 400  # training steps
BATCH = 32 if TINY else 128  # global batch: a multiple of 8 (8 CPU devices in the tests)
EVAL_EXAMPLES = 64 if TINY else 1000  # held-out test images scored by the evaluators
EVAL_BATCH = 32 if TINY else 250  # a multiple of 8 as well
GALLERY = 64 if TINY else 500  # test images ranked in the retrieval comparison below
# Zero-shot tasks scored at the end (each one is ranked and drawn twice: global, token-wise).
TASKS = ("shape",) if TINY else ("shape", "color", "size", "position", "count")
DEPTH = 1 if TINY else None  # TINY: 1-layer towers compile faster; None keeps the config's

# %% [markdown]
# ## 1. The FILIP config
#
# `configs/filip.py` is the demo model (a 3-layer ViT with 6 px patches on 48 px images, so
# an 8 x 8 grid of 64 patch tokens, and a 2-layer text transformer) with only the loss
# swapped for FILIP's token-wise one. We load it as the tests do
# (`alignjax.config.load_config_file`) and change only the run length, the batch and the
# evaluation size. The run goes to a temporary directory (nothing is left in the checkout);
# set `WORKDIR` to a path of your own to keep it.

# %%
import glob
import tempfile

from alignjax.config import load_config_file

config = load_config_file(str(REPO / "configs" / "filip.py"))
config.total_steps = STEPS
config.batch_size = BATCH
config.optim.warmup_steps = min(config.optim.warmup_steps, STEPS // 4)  # < total_steps
config.log_every_steps = max(1, STEPS // 8)
config.eval_every_steps = STEPS  # evaluate once, at the end
config.checkpoint_every_steps = STEPS
for ev in config.evals.values():
    ev.num_examples = EVAL_EXAMPLES
    ev.batch_size = EVAL_BATCH
config.evals.shapes.tasks = TASKS
if DEPTH:
    config.model.image.depth = config.model.text.depth = DEPTH
print(config.loss)
print({name: dict(ev) for name, ev in config.evals.items()})

WORKDIR = tempfile.mkdtemp(prefix="alignjax_filip_")

# %% [markdown]
# ## 2. Train
#
# `train_and_evaluate` runs the trainer and, at the end, the config's two evaluators on the
# held-out (shape, colour) pairs of the test split: zero-shot classification and image <->
# text retrieval. Because FILIP's objective declares two scorers, every evaluator ranks
# twice: with the global embeddings (the pooled, projected vectors) and with the token-wise
# similarity it was trained on; the second set of metrics is named `...@tokenwise/...`.

# %%
from alignjax import train

metrics = train.train_and_evaluate(config, WORKDIR)

# %% [markdown]
# The training curves the trainer drew (`<workdir>/pictures/curves.png`):

# %%
from IPython.display import Image, display

display(Image(os.path.join(WORKDIR, "pictures", "curves.png")))

# %% [markdown]
# ## 3. Word-to-patch heat maps drawn by the evaluator
#
# With a token-wise scorer the retrieval evaluator also draws
# `retrieval_<name>@tokenwise_words.png`: the first test images, then one panel per word
# of their caption, coloured by that word token's similarity to each patch token (red:
# high, blue: low; each panel on its own scale). After the full run the shape, colour, size
# and count words light up the object; small words ("a", "one") settle on the background,
# and most position words light up the object too rather than a side of the image.

# %%
pictures = sorted(glob.glob(os.path.join(WORKDIR, "pictures", "step_*")))[-1]
print(sorted(os.listdir(pictures)))
display(Image(os.path.join(pictures, "retrieval_shapes_retrieval@tokenwise_words.png")))

# %% [markdown]
# ## 4. Your own images and captions
#
# The same maps for any image and text. `load_pretrained(WORKDIR)` reads the run back with
# its preprocessing and tokenizer; the token features come from FILIP's own scorer
# (`scoring.tokenwise_scorer()`: the towers' unit-norm patch and word tokens, with the
# mask of valid words), the word names from the evaluator's `token_names`, and the maps
# and the figure from `alignjax.plots`. Here: held-out test images (pairs of shape and
# colour never seen in training), each with its own caption and with a caption we type.

# %%
import jax
import numpy as np

from alignjax import plots, scoring
from alignjax.data.synthetic import ShapesDataset
from alignjax.evaluate.retrieval import token_names

clip = alignjax.load_pretrained(WORKDIR)
tokenwise = scoring.tokenwise_scorer()


def apply(*args, **kwargs):
    return clip.model.apply({"params": clip.params}, *args, **kwargs)


# Jitted once per input shape: each tower runs as one compiled program.
image_tokens = jax.jit(lambda x: tokenwise.image_features(apply, x))
text_tokens = jax.jit(lambda t: tokenwise.text_features(apply, t))

test = ShapesDataset("test", image_size=config.data.image_size, seed=config.seed)


def word_maps(images, captions):
    """(words, [n_words, 8, 8] maps) per (image, caption): every word token but the specials."""
    ids = np.asarray(clip.tokenizer(list(captions)))
    img = jax.device_get(image_tokens(clip.preprocess(list(images))))
    txt = jax.device_get(text_tokens(ids))
    words, maps = [], []
    for i, caption in enumerate(captions):
        keep, names = token_names(clip.tokenizer, caption, ids[i])
        keep = [t for t in keep if txt["mask"][i, t]]  # words cut by the context length
        words.append([names[t] for t in keep])
        maps.append(plots.token_maps(img["tokens"][i], txt["tokens"][i, keep]))
    return words, maps


def show_maps(images, captions, title):
    words, maps = word_maps(images, captions)
    path = os.path.join(WORKDIR, "my_words.png")
    display(Image(plots.plot_token_maps(images, words, maps, path, title, max_words=8)))


# A few test images with one or two objects at different positions.
picked = [test[i] for i in (4, 5, 6, 7)]
show_maps(
    [ex["image"] for ex in picked],
    [ex["caption"] for ex in picked],
    "held-out images, their own captions",
)

# %% [markdown]
# The same images with captions we write: the right shape and colour word, and a position
# and a count word. Look at whether the shape and colour words still find the object, and
# where a position word that is wrong for the image goes (in the full run, "left" on an
# object on the right lights up the empty left side).

# %%
from alignjax.data.synthetic import ATTRIBUTES

typed = [
    "{} {} {}".format(
        ATTRIBUTES["color"][ex["labels"]["color"]],
        ATTRIBUTES["shape"][ex["labels"]["shape"]],
        "on the left",
    )
    for ex in picked
]
print(typed)
show_maps([ex["image"] for ex in picked], typed, "held-out images, typed captions")

# %% [markdown]
# ## 5. Token-wise against global retrieval, same model
#
# The evaluators' numbers: each metric scored with the global cosine of the pooled
# embeddings and with FILIP's token-wise similarity (`s_i2t = mean over patches of the
# best word`, `s_t2i = mean over words of the best patch`). Chance recall@1 is 1 / N; many
# test images share every attribute, so recall@1 is bounded well below 1.
#
# Expect the global column near chance: FILIP's loss (`alignjax/objectives/filip.py`) is
# computed from the patch and word tokens only, so the pooled embedding is never trained.
# That is why alignjax scores a FILIP model with its token-wise similarity, and why
# `load_pretrained(...).encode_image` (the pooled embedding) is not the way to use one.

# %%
rows = [
    ("text -> image R@1", "image_retrieval_recall@1"),
    ("text -> image R@5", "image_retrieval_recall@5"),
    ("image -> text R@1", "text_retrieval_recall@1"),
    ("image -> text R@5", "text_retrieval_recall@5"),
]
print(f"{'metric':24s} {'global':>8s} {'tokenwise':>10s}")
for label, key in rows:
    g = metrics[f"retrieval/shapes_retrieval/{key}"]
    t = metrics[f"retrieval/shapes_retrieval@tokenwise/{key}"]
    print(f"{label:24s} {g:8.3f} {t:10.3f}")
for task in TASKS:
    g = metrics[f"zeroshot/shapes_{task}/acc1"]
    t = metrics[f"zeroshot/shapes_{task}@tokenwise/acc1"]
    print(f"{'zero-shot ' + task + ' acc1':24s} {g:8.3f} {t:10.3f}")

# %% [markdown]
# One query, both rankings: the top 5 of `GALLERY` test images for one caption, by the
# global cosine (`scoring.GLOBAL`) and by the token-wise score (`tokenwise.t2i`). Green
# frame: the image the caption was written for.

# %%
import matplotlib.pyplot as plt

gallery = [test[i] for i in range(GALLERY)]
x = clip.preprocess([ex["image"] for ex in gallery])
query_index = 3
query = gallery[query_index]["caption"]
ids = np.asarray(clip.tokenizer([query]))

global_img = jax.jit(lambda x: scoring.GLOBAL.image_features(apply, x))(x)
global_txt = jax.jit(lambda t: scoring.GLOBAL.text_features(apply, t))(ids)
ranked = {
    "global": np.asarray(scoring.GLOBAL.t2i(global_txt, global_img))[0],
    "tokenwise": np.asarray(tokenwise.t2i(text_tokens(ids), image_tokens(x)))[0],
}
fig, axes = plt.subplots(2, 5, figsize=(8, 3.6))
for row, (name, scores) in enumerate(ranked.items()):
    for col, i in enumerate(np.argsort(-scores)[:5]):
        ax = axes[row, col]
        ax.imshow(gallery[i]["image"])
        ax.set_xticks([]), ax.set_yticks([])
        color = "green" if i == query_index else "lightgray"
        for spine in ax.spines.values():
            spine.set_color(color), spine.set_linewidth(3)
        ax.set_title(f"{scores[i]:.3f}", fontsize=8)
    axes[row, 0].set_ylabel(name, fontsize=9)
fig.suptitle(f"top 5 for: {query!r}", fontsize=10)
fig.tight_layout()
plt.show()
