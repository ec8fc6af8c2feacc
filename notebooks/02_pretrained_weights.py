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
# # alignjax pretrained weights: convert, check, classify, retrieve
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/alignjax/alignjax/blob/main/notebooks/02_pretrained_weights.ipynb)
#
# Loads a Hugging Face `CLIPModel` folder with `alignjax.load_pretrained`, checks that alignjax
# computes the same embeddings as `transformers`, converts it to alignjax's own format and back,
# then runs zero-shot classification and image-text retrieval with pictures. The Hugging Face
# model is a tiny random one made here (nothing to download); the real checkpoints' calls are
# shown beside it. A briefly trained demo model then shows what the same pictures look like
# when the model has learned something.

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
N_IMAGES = 64 if TINY else 400  # Held-out test images scored by zero-shot and retrieval.
N_SHOWN = 8 if TINY else 16  # Images drawn in the prediction grid and similarity matrix.
TRAIN_STEPS = 2 if TINY else 300  # The demo model's run in section 7 (configs/demo.py: 1100).
BATCH = 16 if TINY else 128  # Global batch: a multiple of 8 (one slice per device).

# %% [markdown]
# ## 1. A Hugging Face CLIP folder
#
# With a network, the real thing is two lines: download a released model into the Hugging
# Face cache, then load it by name (alignjax itself never downloads; it reads the cache
# offline):
#
# ```python
# # in a shell: pip install huggingface_hub && hf download openai/clip-vit-base-patch32
# import alignjax
# clip = alignjax.load_pretrained("hf-hub:openai/clip-vit-base-patch32")  # or a local folder
# ```
#
# Here nothing is downloaded. Instead we build a **tiny random** `transformers.CLIPModel` and
# save it in the same layout as the hub folder: `config.json` + `model.safetensors`
# (`save_pretrained`), `preprocessor_config.json` (`CLIPImageProcessor`) and the CLIP BPE
# vocabulary (`vocab.json` + `merges.txt`). The vocabulary is a character-level one in CLIP's
# file format (512 byte tokens + start/end of text; the real one adds 48,894 merges). All files
# of this notebook go to a fresh temporary directory, except the training run of section 7
# (`runs/notebooks/02_pretrained_weights/` in the full setting, so that re-running resumes it).

# %%
import json
import tempfile

import numpy as np
import torch
import transformers

from alignjax.data import clip_bpe

# Keep the output readable: no progress bars or notices from transformers (e.g. that it falls
# back to PIL for image processing where torchvision is not installed).
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

root = tempfile.mkdtemp(prefix="alignjax_pretrained_")
hf_dir = os.path.join(root, "tiny-clip-hf")
os.makedirs(hf_dir)

# CLIP's vocabulary order: the 256 byte characters, the same with the end-of-word mark, then
# the merges (none here), then the two special tokens.
chars = list(clip_bpe.bytes_to_unicode().values())
vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
with open(os.path.join(hf_dir, "vocab.json"), "w") as f:
    json.dump({tok: i for i, tok in enumerate(vocab)}, f)
with open(os.path.join(hf_dir, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n")

hf_config = transformers.CLIPConfig(
    text_config={
        "vocab_size": len(vocab), "hidden_size": 64, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 2,
        "max_position_embeddings": 40,  # 40 characters of text
        "bos_token_id": len(vocab) - 2, "eos_token_id": len(vocab) - 1, "pad_token_id": 0,
    },
    vision_config={
        "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
    },
    projection_dim=32,
)  # fmt: skip
torch.manual_seed(0)
hf_model = transformers.CLIPModel(hf_config).eval()
hf_model.save_pretrained(hf_dir)
image_processor = transformers.CLIPImageProcessor(
    size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
)
image_processor.save_pretrained(hf_dir)
print(sorted(os.listdir(hf_dir)))

# %% [markdown]
# ## 2. Load it with alignjax
#
# `alignjax.load_pretrained(path)` detects the format from the files (here `hf`), maps every
# tensor to alignjax's parameter names (a tensor it cannot map is an error, never dropped) and
# returns the model with the preprocessing and tokenizer the checkpoint records: image size,
# resize mode, interpolation and mean/std from `preprocessor_config.json`, the CLIP BPE
# tokenizer from `vocab.json` + `merges.txt`. Nothing is guessed.

# %%
import flax

import alignjax

clip = alignjax.load_pretrained(hf_dir)
print("format:", clip.source)
print("preprocess:", clip.preprocess)
print("tokenizer:", {k: v for k, v in clip.tokenizer_config.items() if not k.endswith("_path")})
flat = flax.traverse_util.flatten_dict(clip.params, sep="/")
print(f"{len(flat)} tensors, {sum(v.size for v in flat.values()):,} parameters, e.g.:")
for name in list(flat)[:6]:
    print(f"  {name:45s} {tuple(flat[name].shape)}")

# %% [markdown]
# `clip.preprocess` turns PIL images or uint8 arrays into model inputs, `clip.tokenizer`
# strings into token ids, and `clip.encode_image` / `clip.encode_text` give unit-norm
# embeddings. The images throughout are the held-out test split of alignjax's embedded shapes
# dataset (48 px; (shape, colour) pairs never seen in training), with their captions.

# %%
from alignjax.data.synthetic import ShapesDataset

test_set = ShapesDataset("test", image_size=48, num_examples=N_IMAGES)
examples = [test_set[i] for i in range(N_IMAGES)]
images = [ex["image"] for ex in examples]
captions = [ex["caption"] for ex in examples]
print(captions[:3])
print("pixels:", clip.preprocess(images[:2]).shape, " tokens:", clip.tokenizer(captions[:2]).shape)

# %% [markdown]
# ## 3. The same numbers as `transformers`
#
# The PyTorch model, fed the Hugging Face image processor's pixels and the same token ids,
# must give the same embeddings as alignjax's model (the test suite checks this to 1e-5
# relative, for every supported format). Look at the differences: float32 rounding, ~1e-6.

# %%
shown_images, shown_captions = images[:N_SHOWN], captions[:N_SHOWN]
ids = clip.tokenizer(shown_captions)
pixels = image_processor(images=shown_images, return_tensors="np")["pixel_values"]
with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels))
zimg, ztxt = clip.encode_image(shown_images), clip.encode_text(shown_captions)
ours = clip.preprocess(shown_images)  # [N, H, W, 3]; HF's pixels are [N, 3, H, W]
print("pixels     max |alignjax - HF|:", np.abs(ours - pixels.transpose(0, 2, 3, 1)).max())
print("image emb. max |alignjax - HF|:", np.abs(zimg - out.image_embeds.numpy()).max())
print("text emb.  max |alignjax - HF|:", np.abs(ztxt - out.text_embeds.numpy()).max())

# %% [markdown]
# ## 4. Convert to disk, and back to Hugging Face
#
# For training (`config.init_from.path`, `configs/finetune_clip.py`) convert once into an
# alignjax export folder. In a shell this is
# `python -m alignjax.convert --from hf DIR --out OUT`; the same from Python is
# `alignjax.convert.main([...])`. The folder holds `params.safetensors` (the model config,
# preprocessing and tokenizer in its metadata), the same as readable JSON files, and a copy of
# the vocabulary. `load_pretrained` reads it back with every tensor bit for bit equal.
# `--to hf` goes the other way: `transformers.CLIPModel.from_pretrained` loads the result.

# %%
from alignjax import convert

export_dir = os.path.join(root, "tiny-clip-alignjax")
convert.main(["--from", "hf", hf_dir, "--out", export_dir])
print(sorted(os.listdir(export_dir)))
again = alignjax.load_pretrained(export_dir)
flat_again = flax.traverse_util.flatten_dict(again.params, sep="/")
print("format:", again.source, "| every tensor equal:",
      all(np.array_equal(flat[k], flat_again[k]) for k in flat))  # fmt: skip

back_dir = os.path.join(root, "tiny-clip-hf-again")
convert.main(["--from", "alignjax", export_dir, "--to", "hf", "--out", back_dir])
hf_again = transformers.CLIPModel.from_pretrained(back_dir).eval()
with torch.no_grad():
    out_again = hf_again(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels))
print("HF -> alignjax -> HF, image emb. max difference:",
      np.abs(out_again.image_embeds.numpy() - out.image_embeds.numpy()).max())  # fmt: skip

# %% [markdown]
# ### The other formats
#
# The same call reads every format alignjax converts (`docs/PRETRAINED.md`); each needs its
# files on disk first, so these lines are not run here:
#
# ```python
# # open_clip: a hub repository (open_clip_config.json + open_clip_model.safetensors) ...
# #   hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K
# laion = alignjax.load_pretrained("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
# # ... or a bare state dict, which needs the architecture's name (the activation is not stored)
# laion = alignjax.load_pretrained("b32.safetensors", format="open_clip", model_name="ViT-B-32")
# # OpenAI's original TorchScript archive (needs torch) and its BPE vocabulary
# openai = alignjax.load_pretrained("ViT-B-32.pt", tokenizer_path="bpe_simple_vocab_16e6.txt.gz")
# # big_vision SigLIP: gsutil cp gs://big_vision/siglip/webli_en_b16_224_63724782.npz .
# # with its SentencePiece vocabulary (gs://t5-data/vocabs/cc_en.32000/sentencepiece.model)
# siglip = alignjax.load_pretrained(
#     "webli_en_b16_224_63724782.npz", tokenizer_path="sentencepiece.model"
# )
# # Hugging Face SigLIP / SigLIP 2 folders carry their tokenizer
# siglip2 = alignjax.load_pretrained("hf-hub:google/siglip2-base-patch16-224")
# ```
#
# SigLIP models add `out.logit_bias` to their logits and use a sigmoid, not a softmax; the
# zero-shot and retrieval code below only ranks cosine similarities, so it works unchanged.

# %% [markdown]
# ## 5. Zero-shot classification
#
# A zero-shot classifier needs no training: each class name is put into a few prompt templates
# ("something {}.", "the color {}.", ...), the prompts' text embeddings are averaged per class
# (CLIP's prompt ensembling, `alignjax.evaluate.zero_shot.mean_template_embedding`), and each
# image goes to the class whose embedding is most similar to its own. The classes and
# templates are the shapes dataset's own tasks (colour: 8 classes; shape: 8, each scored by the
# better of a singular and a plural prompt set, since half the images show two objects).
#
# **The tiny model is random, so its predictions are random**: expect accuracy near chance
# (1/8 = 0.125 for colour) and mostly red titles below. The point here is the code path, which
# is the same for released weights.

# %%
from IPython.display import Image, display

from alignjax import plots
from alignjax.evaluate import metrics
from alignjax.evaluate.zero_shot import mean_template_embedding

TASKS = ShapesDataset.zero_shot_tasks()


def zero_shot_logits(model, task_name, zimg):
    """[N, C] image-class cosine similarities; a class scores its best prompt set."""
    task = TASKS[task_name]
    scores = []
    for group in [task, *task.get("prototypes", [])]:  # e.g. the plural shape names
        prompts = [t.format(c) for c in group["classnames"] for t in group["templates"]]
        classes = mean_template_embedding(model.encode_text(prompts), len(group["classnames"]))
        scores.append(zimg @ classes.T)
    return np.max(scores, axis=0)


def zero_shot_report(model, name, drawn="color"):
    """acc1 of every task on the N_IMAGES test images; one task's top-3 predictions drawn."""
    zimg_all = model.encode_image(images)
    for task_name, task in TASKS.items():
        labels = np.array([ex["labels"][task["attribute"]] for ex in examples])
        logits = zero_shot_logits(model, task_name, zimg_all)
        acc1 = metrics.zero_shot_metrics(logits, labels)["acc1"]
        print(f"{task_name:9s} acc1 {acc1:.3f}   (chance {1 / len(task['classnames']):.3f})")
        if task_name == drawn:
            top = np.argsort(-logits, axis=1, kind="stable")[:N_SHOWN, :3]
            drawing = (top, labels[:N_SHOWN], task["classnames"])
    path = plots.plot_predictions(
        shown_images, *drawing, os.path.join(root, f"{name}_{drawn}.png"),
        title=f"{name}: top-3 {drawn} classes (green: right, red: wrong)",
    )  # fmt: skip
    display(Image(filename=path))


zero_shot_report(clip, "tiny random HF CLIP")

# %% [markdown]
# ## 6. Retrieval
#
# Retrieval ranks all test images for each caption (text -> image) and all captions for each
# image (image -> text) by cosine similarity; recall@k is how often the right one is in the
# top k (chance for recall@1: 1/N). The matrix below shows the similarities of the first
# images (columns) and their own captions (rows): a trained model is brightest on the
# diagonal. The random model's matrix has no such structure.


# %%
def retrieval_report(model, name):
    zimg_all, ztxt_all = model.encode_image(images), model.encode_text(captions)
    sim = zimg_all @ ztxt_all.T  # [images, captions]; caption i describes image i
    m = metrics.retrieval_metrics(sim, np.arange(len(images)))
    for direction, key in (("text->image", "image_retrieval"), ("image->text", "text_retrieval")):
        r1, r5 = m[f"{key}_recall@1"], m[f"{key}_recall@5"]
        print(f"{direction}  R@1 {r1:.3f}  R@5 {r5:.3f}   (chance R@1 {1 / len(images):.3f})")
    path = plots.plot_similarity(
        sim[:N_SHOWN, :N_SHOWN].T, shown_images, shown_captions,
        os.path.join(root, f"{name}_similarity.png"), title=f"{name}: caption-image cosine",
    )  # fmt: skip
    display(Image(filename=path))


retrieval_report(clip, "tiny random HF CLIP")

# %% [markdown]
# ## 7. The same code on a trained model
#
# To see what these pictures look like when the model has learned something, train the demo
# model (`configs/demo.py`: a 1.1M-parameter two-tower model on the shapes data) for a few
# hundred steps, and load its workdir with the **same** `load_pretrained` call: a training
# workdir is one more format (its newest checkpoint, with the run's own preprocessing and
# tokenizer). Colour is learned first; shape takes the whole 1100-step schedule (README.md).
# In tiny mode the model is shrunk and trains 2 steps, so its numbers are chance too.

# %%
from alignjax import config as config_lib
from alignjax import train

config = config_lib.load_config_file(str(REPO / "configs" / "demo.py"))
config.total_steps = TRAIN_STEPS
config.batch_size = BATCH
config.optim.warmup_steps = min(50, TRAIN_STEPS // 2)
config.log_every_steps = max(1, TRAIN_STEPS // 6)
config.eval_every_steps = 0
config.checkpoint_every_steps = TRAIN_STEPS
config.evals = {}  # scored below, by the same code as the converted model
if TINY:  # a one-layer model at 24 px: compiling is most of a tiny run's time
    config.data.image_size = 24
    for tower in (config.model.image, config.model.text):
        tower.width, tower.depth, tower.mlp_dim = 32, 1, 64
    workdir = os.path.join(root, "demo_run")
else:
    workdir = os.path.abspath("runs/notebooks/02_pretrained_weights/demo")
final = train.train_and_evaluate(config, workdir)  # prints progress; resumes a finished run

# %% [markdown]
# Its training curves (loss and learning rate against the step, from the run's
# `metrics.jsonl`, drawn by `alignjax.plots`): the loss should fall.

# %%
from alignjax import workdir as workdir_lib

path = plots.plot_curves(
    workdir_lib.read_metrics(workdir), os.path.join(root, "demo_curves.png"), title="demo run"
)
display(Image(filename=path))

# %% [markdown]
# Now the same loading call, and the same zero-shot and retrieval code as for the converted
# model. (Orbax notes that it opens the checkpoint read-only: expected.)

# %%
demo = alignjax.load_pretrained(workdir)
print("format:", demo.source, "| preprocess:", demo.preprocess)
zero_shot_report(demo, f"demo model, {TRAIN_STEPS} steps")
retrieval_report(demo, f"demo model, {TRAIN_STEPS} steps")

# %% [markdown]
# After 300 steps (the full setting) colour, count, size and position should be well above
# chance and the similarity matrix should show a bright diagonal, blurred where several test
# images share every attribute their captions name; shape lags behind (it needs the whole
# schedule).
#
# ## Next
#
# - Fine-tune converted weights: `python -m alignjax.train --config
#   configs/finetune_clip.py:lit,OUT --workdir runs/lit` (LiT: image tower locked), or `:full,OUT`;
#   notebook 04 fine-tunes from a checkpoint and mixes start and fine-tune (WiSE-FT).
# - Evaluate released weights on ImageNet / COCO with the evaluators of
#   `configs/clip_vit_b16.py`, or with CLIP_benchmark through alignjax's adapter
#   (`docs/EVALUATION.md`).
