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
# # alignjax adaptation: fine-tune from a checkpoint, then WiSE-FT
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/alignjax/alignjax/blob/main/notebooks/04_adaptation.ipynb)
#
# Trains the demo model briefly (the "zero-shot" start), fine-tunes it from that checkpoint on a
# narrower task twice (LiT-style with the image tower locked, and fully), then mixes start and
# fine-tune in weight space (WiSE-FT) and draws how in-distribution and shifted accuracy change
# with the mixing weight. On a Colab CPU the full setting takes a few minutes; nothing to download.

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
START_STEPS = 4 if TINY else 400  # The "zero-shot" model: configs/demo.py:clip, shortened.
FT_STEPS = 3 if TINY else 200  # Each fine-tune from it.
BATCH = 16 if TINY else 64  # Global batch: a multiple of 8 (one slice per device).
FT_LR = 1e-3  # experiments/wise_ft.py's fine-tuning rate (constant, weight decay 0.1).
EVAL_EXAMPLES = 32 if TINY else 500  # Images per evaluator at each alpha.
ALPHAS = [0.0, 0.5, 1.0] if TINY else [round(0.1 * i, 1) for i in range(11)]
TARGET_COLORS = "red,green,blue,yellow"  # The fine-tunes' narrow target distribution.
# Tiny mode also shrinks the model (one layer per tower at 24 px): compiling is most of a
# tiny run's time. Otherwise configs/demo.py's model and 48 px images.
IMAGE_SIZE = 24 if TINY else 48
TOWER_SIZE = {"width": 32, "depth": 1, "mlp_dim": 64} if TINY else {}

# %% [markdown]
# ## 1. The "zero-shot" start
#
# WiSE-FT needs two models of one architecture: a broadly trained one (in the paper, CLIP
# zero-shot) and its fine-tune on a narrower task. Here the broad model is the demo model
# (`configs/demo.py:clip`: plain CLIP, one caption per image) trained briefly on every seen
# (shape, colour) pair. In tiny mode the model is also shrunk and trained a few steps, so
# that the notebook runs in seconds: the numbers then mean nothing, only the steps do.
#
# The runs go to a fresh temporary directory in tiny mode and to `runs/notebooks/04_adaptation/`
# (under the notebook's folder) otherwise. Running the notebook again there finds the finished
# runs and skips their training (the trainer resumes from the last checkpoint, which is the
# end), so the curves can be redrawn, or other alphas tried, in seconds.

# %%
import tempfile

from absl import logging as absl_logging

from alignjax import config as config_lib
from alignjax import train

absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's notices on every restore.

if TINY:
    root = pathlib.Path(tempfile.mkdtemp(prefix="alignjax_adaptation_"))
else:
    root = pathlib.Path("runs/notebooks/04_adaptation").resolve()

start_config = config_lib.load_config_file(str(REPO / "configs" / "demo.py"), "clip")
start_config.total_steps = START_STEPS
start_config.batch_size = BATCH
start_config.optim.warmup_steps = max(1, START_STEPS // 10)
start_config.log_every_steps = max(1, START_STEPS // 10)
start_config.eval_every_steps = 0
start_config.checkpoint_every_steps = START_STEPS
start_config.evals = {}  # Every model is scored in step 3, once per alpha.
start_config.data.image_size = IMAGE_SIZE
for tower in (start_config.model.image, start_config.model.text):
    tower.update(TOWER_SIZE)

start = str(root / "start")
summary = train.train_and_evaluate(start_config, start)

# %% [markdown]
# Its training curves (loss and learning rate against the step), drawn by `alignjax.plots`
# from the run's `metrics.jsonl`. The loss should fall steadily: the start has learned
# something general about shapes and colours.

# %%
from IPython.display import Image, display

from alignjax import plots
from alignjax import workdir as workdir_lib

path = plots.plot_curves(
    workdir_lib.read_metrics(start),
    str(root / "start_curves.png"),
    title="the start: configs/demo.py:clip",
)
display(Image(filename=path))

# %% [markdown]
# ## 2. Fine-tune from the checkpoint: locked image tower (LiT) and full
#
# Both fine-tunes start from the start's last checkpoint (`config.init_from.path`: a workdir,
# a checkpoint or an export; every parameter is loaded) and train on a **narrower
# distribution**: only shapes in red, green, blue or yellow
# (`synthetic:shapes?colors=...`). The recipe is `configs/clip_refine.py:finetune` (the CLIP
# loss, a small constant learning rate, weight decay 0.1), as in `experiments/wise_ft.py`:
#
# - **LiT-style**: `optim.freeze = ('img/.*',)` locks the image tower (no gradient, no update,
#   no optimizer state); only the text tower and the temperature move. This is how
#   `configs/lit_vit_b16.py` and `configs/finetune_clip.py:lit` tune a pre-trained tower.
# - **Full**: both towers move.


# %%
def finetune_config(lock_image_tower):
    c = config_lib.load_config_file(str(REPO / "configs" / "clip_refine.py"), f"finetune,{start}")
    c.model = start_config.model  # init_from needs the start's architecture exactly.
    c.data.image_size = start_config.data.image_size
    c.data.train = f"synthetic:shapes?colors={TARGET_COLORS}"
    c.total_steps, c.batch_size = FT_STEPS, BATCH
    c.log_every_steps = max(1, FT_STEPS // 5)
    c.checkpoint_every_steps = FT_STEPS
    c.optim.lr = FT_LR
    c.evals = {}
    if lock_image_tower:
        c.optim.freeze = ("img/.*",)
    return c


runs = {"LiT (image tower locked)": str(root / "ft_lit"), "full fine-tune": str(root / "ft_full")}
for (name, workdir), lock in zip(runs.items(), (True, False)):
    print(f"== {name} -> {workdir}")
    train.train_and_evaluate(finetune_config(lock), workdir)

# %% [markdown]
# Each fine-tune printed, and wrote to `init_from.json`, what `init_from` did: which
# parameters it loaded from the start, which stayed freshly initialised (none here: the whole
# model comes from the checkpoint) and which are frozen (the LiT run's image tower).

# %% [markdown]
# ## 3. The WiSE-FT curve
#
# WiSE-FT (Wortsman et al., CVPR 2022) mixes the two models in weight space,
# `theta(alpha) = (1 - alpha) theta_start + alpha theta_finetuned`, and scores each mix twice:
#
# - **in-distribution**: zero-shot accuracy (mean over the five attribute tasks) on `val`
#   images of the target colours, the fine-tune's own distribution (seen pairs, never
#   trained on);
# - **shifted**: the same on `test` images, the held-out (shape, colour) pairs in every
#   colour, including colours the fine-tune never saw.
#
# The start is the **reference**: its stored config, with these two evaluators added, gives
# the model, the mesh and the evaluators (built once by `soup.Scorer`), and every fine-tune is
# restored into its shardings (`soup.load_ingredient` checks the parameter tree). First, how
# far each fine-tune moved each tower: the LiT run's image tower must not have moved at all.

# %%
import jax
import ml_collections
import numpy as np

from alignjax import restore, soup

evals = {
    "id": {"type": "zeroshot", "data": f"synthetic:shapes?colors={TARGET_COLORS}", "split": "val"},
    "shift": {"type": "zeroshot", "data": "synthetic:shapes", "split": "test"},
}
config = restore.checkpoint_config(start)
config.evals = ml_collections.ConfigDict(
    {
        k: dict(v, num_examples=EVAL_EXAMPLES, batch_size=min(250, EVAL_EXAMPLES))
        for k, v in evals.items()
    }
)
reference = soup.load_reference(start, config)
scorer = soup.Scorer(reference)

for name, workdir in runs.items():
    theta_1 = soup.load_ingredient(reference, workdir)
    for tower in ("img", "txt"):
        change = jax.tree.map(
            lambda a, b: float(np.abs(a - b).max()), theta_1[tower], reference.params[tower]
        )
        print(f"{name:26s} {tower}: largest change {max(jax.tree.leaves(change)):.2e}")

# %% [markdown]
# `soup.wise_ft` does the mixing and the scoring, one line per alpha (the same as
# `python -m alignjax.soup wise_ft --base START --ingredients FT --evals id,shift ...`).

# %%
results = {}
for name, workdir in runs.items():
    print(f"== {name}")
    results[name] = soup.wise_ft(
        reference,
        workdir,
        ALPHAS,
        scorer,
        id_metric="zeroshot/id_*/acc1",
        shift_metric="zeroshot/shift_*/acc1",
    )

# %% [markdown]
# The curve as `alignjax.soup.plot_wise_ft` draws it (the paper's Figure 1 layout): one point
# per alpha, shifted score against in-distribution score, from the start (green square,
# alpha 0) to the fine-tune (red diamond, alpha 1). What to look for: a bulge up and to the
# right of the straight line between the endpoints means an interior mix beats both models.

# %%
for name, result in results.items():
    path = soup.plot_wise_ft(
        result.record["curve"],
        str(root / f"wise_ft_{name.split()[0]}.png"),
        title=f"WiSE-FT: start vs {name}",
    )
    display(Image(filename=path))

# %% [markdown]
# Both fine-tunes against alpha, side by side: the left panel is the fine-tunes' own
# distribution, the right one the shift. The dotted line is the start (alpha 0).
#
# The full setting, measured once (2 CPU cores, 4 min 26 s for the whole notebook): the full
# fine-tune gains in-distribution (0.804 -> 0.820 at alpha 0.6) but loses on the shift at
# alpha 1 (0.796 -> 0.786), while the mix at alpha 0.5 beats both endpoints on the shift
# (0.808); the LiT fine-tune moves less (shift 0.798 at alpha 1, best 0.803 at alpha 0.7).
# `experiments/wise_ft.py` repeats the full fine-tune over 3 seeds (docs/ADAPTATION.md).

# %%
from matplotlib.figure import Figure

fig = Figure(figsize=(9, 3.4))
axes = fig.subplots(1, 2, sharey=True)
for ax, key, label in zip(axes, ("id", "shift"), ("in-distribution", "shifted")):
    for name, result in results.items():
        curve = result.record["curve"]
        ax.plot([r["alpha"] for r in curve], [r[key] for r in curve], "-o", ms=3, label=name)
    ax.axhline(curve[0][key], ls=":", color="gray")
    ax.set_xlabel("alpha (0: start, 1: fine-tuned)")
    ax.set_title(f"{label}: zero-shot acc1", fontsize=10)
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(root / "wise_ft_alpha.png", dpi=110)  # A bare Figure has no inline display.
display(Image(filename=str(root / "wise_ft_alpha.png")))

for name, result in results.items():
    curve = result.record["curve"]
    best = max(curve[1:-1] or curve, key=lambda r: r["shift"])
    print(
        f"{name}: shifted {curve[0]['shift']:.3f} at alpha 0, {curve[-1]['shift']:.3f} at "
        f"alpha 1, best interior {best['shift']:.3f} at alpha {best['alpha']:g}"
    )

# %% [markdown]
# ## 4. Keep one mix, and look at what it predicts
#
# `soup.wise_ft` returns the model at the alpha with the best in-distribution score (the
# choice one can make without shifted data; pass `alpha=` to choose another). `soup.save`
# writes it as an export with `soup.json` beside it (the whole curve);
# `alignjax.load_pretrained` reads it back like any weights (and `config.init_from.path` can
# start a run from it).
#
# Below, held-out test images in the four colours the fine-tunes never saw, with the top-3
# shapes of the start and of the kept mix (green: right, red: wrong, with the true shape).
# Shape is the demo's hardest attribute; compare the two rows image by image.

# %%
import alignjax
from alignjax.data.synthetic import COLORS, ShapesDataset

chosen = results["full fine-tune"]
export_path = soup.save(chosen, reference, str(root / "wise_ft_full"))
print(f"alpha {chosen.record['alpha']:g} written to {export_path}")

unseen = [c for c in COLORS if c not in TARGET_COLORS.split(",")]
test = ShapesDataset("test", image_size=IMAGE_SIZE, num_examples=16, colors=unseen)
examples = [test[i] for i in range(len(test))]
images = np.stack([e["image"] for e in examples])
labels = np.array([e["labels"]["shape"] for e in examples])
task = ShapesDataset.zero_shot_tasks()["shape"]
# Half the images show a pair: a class scores the better of its singular and plural prompts.
groups = [task, *task.get("prototypes", [])]

models = {
    "the start (alpha 0)": start,
    f"the kept mix (alpha {chosen.record['alpha']:g})": os.path.dirname(export_path),
}
for i, (name, path) in enumerate(models.items()):
    clip = alignjax.load_pretrained(path)
    image_emb = clip.encode_image(images)
    scores = []
    for g in groups:  # Each class: its prompts' mean embedding, renormalised.
        z = clip.encode_text([t.format(c) for c in g["classnames"] for t in g["templates"]])
        z = z.reshape(len(g["classnames"]), len(g["templates"]), -1).mean(1)
        scores.append(image_emb @ (z / np.linalg.norm(z, axis=-1, keepdims=True)).T)
    top3 = np.argsort(-np.max(scores, 0), axis=1)[:, :3]
    accuracy = np.mean(top3[:, 0] == labels)
    title = f"{name}: top-3 shapes in {', '.join(unseen)} (accuracy {accuracy:.2f})"
    png = str(root / f"predictions_{i}.png")
    display(
        Image(
            filename=plots.plot_predictions(
                images, top3, labels, task["classnames"], png, title=title
            )
        )
    )

# %% [markdown]
# ## With real pre-trained weights
#
# The same steps with a released CLIP (not run here: it needs the weights and COCO /
# ImageNet as TFDS datasets, see docs/PRETRAINED.md and docs/DATA.md). Convert the weights,
# fine-tune LiT-style or fully with `configs/finetune_clip.py`, then draw the WiSE-FT curve
# between the converted start and the fine-tune, scored by the config's two evaluators (COCO
# retrieval: the fine-tune's own distribution; ImageNet zero-shot: the shift):
#
# ```bash
# python -m alignjax.convert --from hf /ckpt/clip-vit-base-patch32 --out /ckpt/clip_b32
# python -m alignjax.train --config configs/finetune_clip.py:full,/ckpt/clip_b32 \
#     --workdir runs/clip_b32_full            # or :lit,/ckpt/clip_b32 (image tower locked)
# python -m alignjax.soup wise_ft --base /ckpt/clip_b32 \
#     --config configs/finetune_clip.py:full,/ckpt/clip_b32 \
#     --ingredients runs/clip_b32_full --alphas 0,0.25,0.5,0.75,1 \
#     --id_metric 'retrieval/coco/image_retrieval_recall@1' \
#     --shift_metric 'zeroshot/imagenet/acc1' --out runs/clip_b32_wise
# ```
