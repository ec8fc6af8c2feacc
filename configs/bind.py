"""Binding a new modality to a frozen text tower (LanguageBind, Zhu et al., ICLR 2024).

  python -m alignjax.train --config configs/demo.py --workdir runs/demo
  python -m alignjax.train --config configs/bind.py:runs/demo --workdir runs/bind_depth

The new modality is the shapes data's depth map of each scene (`render=depth`,
alignjax/data/synthetic.py: a range camera's view, near is dark, no colour), a rendering no
tower of the demo has seen. The run trains a depth tower against the demo's text tower,
which stays frozen: the text tower, its projection and the temperature are loaded from the
trained run given as the argument (`init_from`) and frozen (`optim.freeze`, so no gradient
is computed through them), and the depth tower (the model's image slot: a ViT of the
demo's architecture, reading the grey map replicated to 3 channels) learns to land where
the frozen text tower puts each scene's caption. Since the demo's photo tower was trained
against the same text tower, depth and photos then share one space without ever having
been paired: that is the emergent retrieval the `depth_photo` evaluator measures.

* data: `synthetic:shapes?render=depth`, each depth map with its scene's caption;
* loss: CLIP's (`clip`), InfoNCE against the frozen text embeddings, LanguageBind's;
* depth tower: initialised from the run's photo tower (LanguageBind starts from CLIP's
  ViT), or from scratch with the argument `scratch`;
* optimizer: AdamW at 1e-3, cosine decay, 200 steps at batch 64;
* evaluation on 1000 test scenes: zero-shot classification of the depth maps through the
  frozen text tower's prompts (`zeroshot/depth_*`; colour is not in a depth map: its
  chance is 1/8), depth <-> caption retrieval (`retrieval/depth_text/*`), and depth <->
  photo retrieval against the run's photo tower on the same scenes' photos
  (`cross_modal/depth_photo/*`, alignjax/evaluate/cross_modal.py: recall@k both ways and
  per-attribute agreement of the top match, each with its chance level).

Arguments, comma separated: the trained run (its workdir, a checkpoint or an export of the
demo's architecture), `scratch` (the depth tower starts random), `steps=N`. Without a path
the start is a placeholder: training stops with a one-line error naming it; `--dry_run`
still works (it reads no weights). `python experiments/bind.py` runs the claim (the frozen
photo tower on depth maps vs a bound depth tower, initialised from it or from scratch;
3 seeds); its table is in docs/ADAPTATION.md.
"""

import os

from alignjax.config import load_config_file
from alignjax.objectives import loss_config

DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
START = '/path/to/demo_workdir'  # Placeholder: pass the trained run as the argument.
DEPTH = 'synthetic:shapes?render=depth'
PHOTO = 'synthetic:shapes'
#: What is loaded (and frozen) with `scratch`: the text tower, its head and the temperature.
TEXT_SIDE = ('txt', 'log_scale')
FROZEN = (r'txt/.*', r'log_scale')


def get_config(arg=None):
    path, scratch, steps = START, False, 200
    for part in [p for p in str(arg or '').split(',') if p]:
        if part == 'scratch':
            scratch = True
        elif part.startswith('steps='):
            steps = int(part[len('steps=') :])
        else:
            path = part
    c = load_config_file(DEMO, 'base')  # The demo's model, tokenizer and normalisation.
    c.init_from.path = path
    # Everything (the photo tower seeds the depth tower), or only the frozen text side.
    c.init_from.mapping = TEXT_SIDE if scratch else ()
    c.optim.freeze = FROZEN
    c.total_steps = steps
    c.batch_size = 64
    c.log_every_steps = max(1, steps // 10)
    c.eval_every_steps = steps
    c.checkpoint_every_steps = steps
    c.data.train = DEPTH
    c.loss = loss_config('clip')
    c.optim.lr = 1e-3
    c.optim.warmup_steps = max(1, steps // 10)
    common = dict(split='test', num_examples=1000, batch_size=250)
    c.evals = dict(
        depth=dict(type='zeroshot', data=DEPTH, **common),
        depth_text=dict(type='retrieval', data=DEPTH, geometry=False, **common),
        depth_photo=dict(type='cross_modal', data=DEPTH, anchor=path, anchor_data=PHOTO, **common),
    )
    return c
