"""Every config in configs/ builds as written, says what it is, and steps on CPU.

* As written (scale configs included): `train.dry_run` builds the trainer and lowers its
  step for the config's global batch on the 8 CPU devices (abstract: no B/16 weights are
  materialised; data files and vocabularies are not read), as `--dry_run` does.
* `:runlocal` (the scale configs' own CPU variant, as written): 2 training steps with
  evaluation, and the same conventions as the config it shrinks.
* The demo's default, `:clip` and `:siglip` resolve exactly to the configs recorded in
  tests/data/demo_configs.json (the README's measured figures were produced by them), and
  each objective config differs from the baseline it names only in its loss (and, where the
  method reads more than the caption, in its data).
"""

import importlib
import importlib.util
import json
import math
import os
import re

import pytest

from alignjax import data, train
from alignjax import workdir as workdir_lib
from alignjax.config import load_config_file, resolve
from alignjax.data import mixture
from alignjax.evaluate import classnames
from alignjax.evaluate.evaluators import EVALUATORS
from alignjax.validation import check_fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, 'configs')
CONFIGS = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith('.py'))
SCALE = ('clip_vit_b16', 'siglip_vit_b16', 'lit_vit_b16', 'finetune_clip')
# Adaptations of a trained model (binding, CoOp, LoRA): they start from a run given as the
# argument, and their baselines (the frozen start; hand-crafted prompts, the few-shot
# evaluator's class mean, cache adapter and linear probe; full fine-tuning; a tower from
# scratch) are evaluators or variants of the same config.
ADAPTERS = ('bind', 'coop', 'lora')
OBJECTIVES = sorted(set(CONFIGS) - set(SCALE) - set(ADAPTERS) - {'demo'})
VARIANTS = [
    ('demo', 'clip'),
    ('demo', 'siglip'),
    ('finetune_clip', 'full'),
    ('lora', 'full'),
    ('unicl', 'none'),
    ('unicl', 'replace_sos'),
]
RUNLOCAL = [(n, 'runlocal') for n in SCALE] + [('finetune_clip', 'full,runlocal')]

# Parameters of the scale configs as written (millions): open_clip's ViT-B-16 149.6 and
# ViT-B-32 151.3, SigLIP B/16 at 224 px 203.2; LiT's B/16 image + B text tower 196.0.
PARAMS_M = {'clip_vit_b16': 149.6, 'siglip_vit_b16': 203.2, 'lit_vit_b16': 196.0}
PARAMS_M['finetune_clip'] = 151.3

# What each objective config trains on: extra sentences only where the method reads them.
OBJECTIVE_DATA = {
    'dreamlip': 'synthetic:shapes?extra_captions=true',  # Sub-captions from long captions.
    'pyramid': 'synthetic:shapes?extra_captions=true',  # Summary captions.
    'negclip': 'synthetic:shapes?hard_negatives=true',  # A hard negative per caption.
    # Shape labels read as prompts, mixed with the captions.
    'unicl': 'mix:0.5*labels:synthetic:shapes?label=shape;0.5*synthetic:shapes',
}


def module(name):
    spec = importlib.util.spec_from_file_location(
        f'test_configs_{name}', os.path.join(CONFIG_DIR, name + '.py')
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load(name, arg=None):
    mod = module(name)
    assert mod.__doc__ and 'python -m alignjax.train' in mod.__doc__, (
        f'configs/{name}.py must give its launch command in the docstring'
    )
    return mod.get_config(arg) if arg else mod.get_config()


def as_json(config):
    """The resolved config as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(resolve(config).to_dict()))


def test_config_list():
    assert {'demo', *SCALE} <= set(CONFIGS)
    assert set(OBJECTIVE_DATA) <= set(OBJECTIVES)


def _leaf_specs(spec):
    """The source specs inside `spec`: mix: components, fewshot: / labels: wrappers removed."""
    if spec.startswith('mix:'):
        return [leaf for _, part in mixture.parse_mixture(spec[4:]) for leaf in _leaf_specs(part)]
    for wrapper in ('fewshot:', 'labels:'):
        if spec.startswith(wrapper):
            return _leaf_specs(spec[len(wrapper) :])
    return [spec]


@pytest.mark.parametrize('name, arg', [(n, None) for n in CONFIGS] + VARIANTS, ids=lambda x: str(x))
def test_config_dry_runs_as_written(name, arg):
    """What `--dry_run` does, unshrunk (B/16 included) on 8 devices: the trainer builds and
    its step lowers for the config's global batch (not compiled: that costs ~40 s of CPU
    each; the runlocal tests run real steps). No data or vocabulary file is read."""
    c = resolve(load(name, arg))
    out = train.dry_run(c, None, compile=False)
    n = out['params']['params']
    if name in PARAMS_M:
        assert round(n / 1e6, 1) == PARAMS_M[name]

    # The parts that are only read when the run starts, checked without reading them.
    assert c.tokenizer.name in data.TOKENIZERS
    assert c.tokenizer.context_length == c.model.text.context_length
    if c.tokenizer.name == 'clip_bpe':
        assert c.tokenizer.bpe_path and c.model.text.vocab_size == 49_408
    elif c.tokenizer.name == 'sentencepiece':
        assert c.tokenizer.model_path
    elif c.tokenizer.name == 'word_hash':
        assert c.tokenizer.vocab_size <= c.model.text.vocab_size
    if name in SCALE:
        assert c.tokenizer.name in ('clip_bpe', 'sentencepiece'), 'a real tokenizer'
        assert {ev.type for ev in c.evals.values()} == {'zeroshot', 'retrieval'}
    specs = [c.data.train] + [ev.get('data', 'synthetic:shapes') for ev in c.evals.values()]
    for spec in specs:
        for leaf in _leaf_specs(spec):
            assert data.parse_spec(leaf)[0] in data.SOURCES, spec
    for ev_name, ev in c.evals.items():
        check_fields(ev, EVALUATORS[ev.type].FIELDS, f'evals.{ev_name}')
        if isinstance(ev.get('classnames'), str):
            assert classnames.get_classnames(ev.classnames)


@pytest.mark.slow  # About 60 s of CPU each, mostly compiling the train step and the init.
@pytest.mark.parametrize('name, arg', RUNLOCAL[:-1], ids=lambda x: str(x))
def test_runlocal_trains_two_steps(tmp_path, name, arg):
    """The scale configs' CPU variant runs as written, for 2 of its steps."""
    c = load(name, arg)
    c.total_steps = 2
    workdir = str(tmp_path / name)
    summary = train.train_and_evaluate(c, workdir)
    assert summary['step'] == 2
    losses = [r['train/loss'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(k.startswith('zeroshot/shapes_') for k in summary)
    assert any(k.startswith('retrieval/shapes_retrieval/') for k in summary)


CONVENTIONS = (
    'model.quick_gelu', 'model.act', 'model.ln_eps', 'model.logit_scale_init',
    'model.logit_bias_init', 'model.image.pool', 'model.image.posemb', 'model.image.pre_norm',
    'model.image.head', 'model.image.head_bias', 'model.text.convention', 'model.text.head',
    'model.text.head_bias', 'tokenizer.pad', 'loss', 'optim.freeze', 'optim.clamp_logit_scale',
    'optim.name', 'optim.schedule', 'optim.lr', 'optim.weight_decay', 'data.normalize',
)  # fmt: skip


@pytest.mark.parametrize('name, arg', RUNLOCAL, ids=lambda x: str(x))
def test_runlocal_keeps_the_conventions(name, arg):
    full, local = (
        as_json(load(name, arg.replace('runlocal', '').rstrip(','))),
        as_json(load(name, arg)),
    )

    def get(c, path):
        for key in path.split('.'):
            c = c[key]
        return c

    for path in CONVENTIONS:
        assert get(local, path) == get(full, path), path
    assert local['data']['train'] == 'synthetic:shapes'
    assert local['tokenizer']['name'] in ('word_hash', 'bytes')
    assert local['init_from']['path'] == ''
    assert local['model']['image']['width'] < 100 and local['total_steps'] < 100
    if local['tokenizer']['pad'] == 'eos':  # big_vision text: the last token is the EOS.
        assert local['model']['text']['pad_id'] == local['tokenizer']['vocab_size'] - 1


def test_demo_configs_equal_the_recorded_ones():
    """The README's demo figures came from these configs (recorded at 5dcd6be; fields added
    since, such as `lora`, are recorded at their default, which leaves the run unchanged)."""
    with open(os.path.join(REPO, 'tests', 'data', 'demo_configs.json')) as f:
        recorded = json.load(f)
    for key, want in recorded.items():
        arg = key.partition(':')[2] or None
        got = as_json(load('demo', arg))
        diff = {k for k in set(want) | set(got) if want.get(k) != got.get(k)}
        assert not diff, f'{key}: fields {sorted(diff)} changed'
    assert as_json(load('demo', 'base')) == recorded['configs/demo.py:clip']


def _load_spec(spec):
    path, _, arg = spec.partition(':')
    return load_config_file(os.path.join(REPO, path), arg or None)


@pytest.mark.parametrize('name', OBJECTIVES)
def test_objective_config_names_its_baseline(name):
    """Same model, optimizer, steps and evaluators as its baseline: only the loss differs,
    and the data only where the method reads more than one caption per image."""
    mod = module(name)
    baseline = mod.BASELINE
    assert f'Baseline: `{baseline}`' in ' '.join(mod.__doc__.split())
    got, base = as_json(mod.get_config()), as_json(_load_spec(baseline))
    assert got['loss']['name'] != base['loss']['name']
    assert got['data']['train'] == OBJECTIVE_DATA.get(name, 'synthetic:shapes')
    for c in (got, base):
        del c['loss'], c['data']['train']
    assert got == base


# Repository paths and dotted alignjax names, e.g. `docs/DATA.md`, `configs/demo.py:clip`,
# `alignjax/optim.py`, `alignjax.objectives.negclip.TokenizeNegative`, README.md.
_CITED = re.compile(
    r'(?<![\w/.$])((?:alignjax|configs|docs|tests|experiments)[./][\w./]*\w|README\.md)'
)


@pytest.mark.parametrize('name', CONFIGS)
def test_docstring_cites_only_what_exists(name):
    """Files, modules and objects a config's docstring names are in the repository."""
    doc = module(name).__doc__
    assert not re.search(r'\w+\.md\b', re.sub(_CITED, '', doc)), (
        'a .md file that is not in the repository'
    )
    for cited in _CITED.findall(doc):
        if cited.startswith('alignjax.') and '/' not in cited:
            parts = cited.split('.')
            for i in range(len(parts), 0, -1):  # Longest importable prefix, then attributes.
                try:
                    obj = importlib.import_module('.'.join(parts[:i]))
                except ImportError:
                    continue
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
                break
            else:
                raise AssertionError(f'{cited} does not import')
        else:
            path = cited.split(':')[0]
            assert os.path.exists(os.path.join(REPO, path)), f'{cited} is not in the repository'


@pytest.mark.parametrize('name', ['demo', *SCALE])
def test_config_rejects_unknown_argument(name):
    with pytest.raises(ValueError, match='siglip' if name == 'demo' else 'runlocal'):
        load(name, 'sigmoid')


def test_demo_tokenizer_has_no_collisions_on_the_dataset_vocabulary():
    """A hashed-word collision silently ties two words (at vocab 1024 'hoops' == 'pair',
    which tied the ring class to every two-object image and sank shape zero-shot)."""
    from alignjax.data import ShapesDataset, build_tokenizer

    c = load('demo')
    tok = build_tokenizer(c.tokenizer)
    special = {0, tok.bos_id, tok.eos_id}
    ids = {}
    for word in ShapesDataset.vocabulary():
        body = tuple(int(x) for x in tok([word])[0] if int(x) not in special)
        assert body not in ids, f'{word!r} and {ids[body]!r} share token ids {body}'
        ids[body] = word
