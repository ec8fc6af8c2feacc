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
# # alignjax quick start: train, look, classify, retrieve
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/alignjax/alignjax/blob/main/notebooks/01_quickstart.ipynb)
#
# Trains the demo model (a small two-tower CLIP on alignjax's embedded shapes data, nothing to
# download), shows its training curves and what it predicts for images whose (shape, colour)
# pairs it never saw, and retrieves images for a caption you type. On a Colab CPU the full
# setting (550 steps, half the demo's schedule) takes about 5 minutes; a GPU or TPU runtime is
# faster.

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
STEPS = 6 if TINY else 550  # The demo's full schedule is 1100 steps (README).
BATCH = 32 if TINY else 128
EVAL_EXAMPLES = 64 if TINY else 1000  # Held-out test images the evaluators score.

# %% [markdown]
# ## 1. The config
#
# A config is a Python file whose `get_config()` returns an `ml_collections.ConfigDict`;
# `configs/demo.py` documents every choice. Here it is loaded and shortened: fewer steps,
# evaluations at the middle and the end, one checkpoint at the end. The same run from a shell is
# `python -m alignjax.train --config configs/demo.py --workdir runs/demo --config.total_steps=550`.

# %%
import tempfile

from alignjax import config as config_lib

config = config_lib.load_config_file(str(REPO / "configs" / "demo.py"))
config.total_steps = STEPS
config.batch_size = BATCH
config.optim.warmup_steps = min(50, STEPS // 2)
config.log_every_steps = max(1, STEPS // 10)
config.eval_every_steps = STEPS if TINY else STEPS // 2  # Full: a curve of 2 points.
config.checkpoint_every_steps = STEPS
for name in config.evals:
    config.evals[name].num_examples = EVAL_EXAMPLES
    config.evals[name].batch_size = min(250, EVAL_EXAMPLES)

# A fresh directory per session: the same workdir would resume, or only re-evaluate.
workdir = tempfile.mkdtemp(prefix="alignjax_quickstart_")
print(config.model)

# %% [markdown]
# ## 2. Train
#
# The trainer prints the loss, steps/s and the ETA while it runs, evaluates at the end and
# returns the final metrics. The batch is split over every device JAX sees (one CPU on a Colab
# CPU runtime, 8 TPU cores on a TPU runtime).

# %%
from alignjax import train

metrics = train.train_and_evaluate(config, workdir)
for key in sorted(metrics):
    if key.endswith("/acc1") or "recall@5" in key:
        print(f"{key:50s} {metrics[key]:.3f}")

# %% [markdown]
# ## 3. What the run wrote
#
# Every workdir has its curves (`pictures/curves.png`: loss, learning rate, evaluation
# metrics) and, for each evaluation, pictures of what the model sees
# (`pictures/step_<N>/`). `python -m alignjax.report WORKDIR` puts them all, with the config
# and the final metrics, into one self-contained `report.html`.

# %%
from IPython.display import Image, display

from alignjax import workdir as workdir_lib

pictures = pathlib.Path(workdir) / workdir_lib.PICTURES_DIR
display(Image(filename=str(pictures / workdir_lib.CURVES_FILE)))
for png in sorted((pictures / f"step_{STEPS}").glob("*.png")):
    print(png.name)

# %%
# The evaluator's own picture: held-out images with their top-3 shapes.
display(Image(filename=str(next((pictures / f"step_{STEPS}").glob("*shape_predictions.png")))))

# %% [markdown]
# ## 4. Zero-shot classification by hand
#
# `alignjax.load_pretrained` reads the run (its newest checkpoint, preprocessing and
# tokenizer), like it reads converted Hugging Face, open_clip or big_vision weights. A class
# is the mean embedding of its prompts ("a photo of a {}.", ...); an image takes the class
# whose embedding is closest. The shape task also has plural prompts ("two {}.") because half
# the images show a pair: a class scores the better of the two.

# %%
import numpy as np

import alignjax
from alignjax import plots
from alignjax.data.synthetic import ShapesDataset
from alignjax.evaluate.zero_shot import mean_template_embedding

clip = alignjax.load_pretrained(workdir)
test = ShapesDataset("test", image_size=config.data.image_size, num_examples=EVAL_EXAMPLES)
examples = [test[i] for i in range(len(test))]
images = np.stack([e["image"] for e in examples])
image_emb = clip.encode_image(images)  # [N, D], unit norm


def class_embeddings(classnames, templates):
    """[C, D]: each class's prompt embeddings, averaged and renormalised (CLIP's ensembling)."""
    z = clip.encode_text([t.format(c) for c in classnames for t in templates])
    return mean_template_embedding(z, len(classnames))


task = ShapesDataset.zero_shot_tasks()["shape"]
groups = [task, *task.get("prototypes", [])]
scores = np.max(
    [image_emb @ class_embeddings(g["classnames"], g["templates"]).T for g in groups], 0
)
labels = np.array([e["labels"]["shape"] for e in examples])
top3 = np.argsort(-scores, axis=1)[:, :3]
print(
    f"held-out shape accuracy: {np.mean(top3[:, 0] == labels):.3f} "
    f"(chance {1 / len(task['classnames']):.3f})"
)

path = plots.plot_predictions(
    images[:16],
    top3[:16],
    labels[:16],
    task["classnames"],
    os.path.join(workdir, "my_predictions.png"),
    title="top-3 shapes (green: right, red: wrong)",
)
display(Image(filename=path))

# %% [markdown]
# ## 5. Retrieval for a typed caption
#
# Change `QUERY` and rerun the cell: the test images closest to the caption, best first.
# Words the tokenizer never saw in training carry no meaning (the demo's vocabulary is
# `ShapesDataset.vocabulary()`).

# %%
QUERY = "a small white triangle on the left"  # Test images show held-out pairs only.

query_emb = clip.encode_text([QUERY])[0]
similarity = image_emb @ query_emb
best = np.argsort(-similarity)[:8]

import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, len(best), figsize=(2 * len(best), 2.6))
for ax, i in zip(axes, best):
    ax.imshow(images[i])
    ax.set_axis_off()
    ax.set_title(f"{similarity[i]:+.2f}\n{examples[i]['caption'][:28]}", fontsize=7)
fig.suptitle(f"closest to {QUERY!r} (cosine similarity; the image's own caption)", fontsize=9)
plt.show()

# %% [markdown]
# ## Next
#
# - The full demo: `python -m alignjax.train --config configs/demo.py --workdir runs/demo`
#   (README: its figures), then `python -m alignjax.report runs/demo`.
# - `02_pretrained_weights`: the same zero-shot and retrieval with converted Hugging Face,
#   open_clip or big_vision weights. `03_fine_grained`: FILIP's word-to-patch maps.
#   `04_adaptation`: fine-tuning from a checkpoint and the WiSE-FT curve.
