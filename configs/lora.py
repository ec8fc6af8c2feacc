"""LoRA fine-tuning (Hu et al. 2022) of a trained demo model on 16 shots of shape.

  python -m alignjax.train --config configs/demo.py --workdir runs/demo
  python -m alignjax.train --config configs/lora.py:runs/demo --workdir runs/lora
  python -m alignjax.export --workdir runs/lora --out runs/lora_export   # merged: a plain model

Starts from a trained run (its workdir, a checkpoint or an export of the demo's
architecture) given as the argument, freezes everything it loaded (both towers, the
projections, the temperature) and trains rank-4 adapters on every attention projection
and both MLP layers of both towers (`config.lora`, alignjax/lora.py: the model runs with
``W + A B``, ``B = 0`` at the start, so step 0 is the start model exactly):

* data: `fewshot:synthetic:shapes?label=shape&shots=16&pool=2000`: the 128 images CoOp
  trains on (configs/coop.py);
* loss: `classify` (alignjax/objectives/classify.py): cross-entropy of the zero-shot
  logits against the fixed prompts "a photo of a <shape>." (CLIP-LoRA's objective; CoOp's
  loss with nothing learned in the prompt);
* optimizer: AdamW at 1e-3, cosine decay, no weight decay, 200 steps at batch 32;
* evaluation: zero-shot shape accuracy on 1000 val images (`zeroshot/shapes/acc1`, the
  hand-crafted prompt, as configs/coop.py) and the demo's evaluators on the held-out
  (shape, colour) pairs of the test split (`zeroshot/heldout_*`, `retrieval/heldout/*`),
  which say what the adaptation costs elsewhere.

Arguments, comma separated after the path: `r=R` the rank (default 4), `attn` adapters on
the attention projections only, `full` the baseline without adapters: every parameter
trained, at 1e-4 with the demo's weight decay (same data, steps and batch). Without a
path the start is a placeholder: training stops with a one-line error naming it;
`--dry_run` still works (it reads no weights).
"""

import os

from alignjax import lora
from alignjax.config import load_config_file
from alignjax.data.synthetic import SHAPES
from alignjax.objectives import loss_config

DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
START = '/path/to/demo_workdir'  # Placeholder: pass the trained run as the argument.
TRAIN = 'fewshot:synthetic:shapes?label=shape&shots=16&pool=2000'
ATTENTION_ONLY = (r'(img|txt)/.*attn/(query|key|value|out)/kernel',)


def get_config(arg=None):
    path, rank, full, attn_only = START, 4, False, False
    for part in [p for p in str(arg or '').split(',') if p]:
        if part.startswith('r='):
            rank = int(part[2:])
        elif part == 'full':
            full = True
        elif part == 'attn':
            attn_only = True
        else:
            path = part
    c = load_config_file(DEMO, 'base')  # The demo's model and tokenizer.
    c.init_from.path = path
    c.total_steps = 200
    c.batch_size = 32
    c.log_every_steps = 20
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    c.data.train = TRAIN
    c.loss = loss_config('classify', classnames=SHAPES, label_key='shape')
    c.optim.warmup_steps = 20
    if full:  # Full fine-tuning: the baseline LoRA is judged against.
        c.optim.lr = 1e-4
    else:
        c.lora.rank = rank
        if attn_only:
            c.lora.targets = ATTENTION_ONLY
        c.optim.freeze = lora.FREEZE_ALL_BUT_LORA
        c.optim.lr = 1e-3
        c.optim.weight_decay = 0.0
    val = dict(data='synthetic:shapes', split='val', num_examples=1000, batch_size=250)
    heldout = dict(data='synthetic:shapes', split='test', num_examples=1000, batch_size=250)
    c.evals = dict(
        shapes=dict(
            type='zeroshot', templates=['a photo of a {}.'], classnames=list(SHAPES),
            label_key='shape', **val,
        ),
        heldout=dict(type='zeroshot', **heldout),
        heldout_retrieval=dict(type='retrieval', **heldout),
    )  # fmt: skip
    return c
