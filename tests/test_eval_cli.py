"""`python -m alignjax.evaluate` restores a checkpoint and reproduces the trainer's final
evaluation; two processes give the one-process metrics; the CLIP_benchmark adapter embeds
like the evaluators, and the real CLIP_benchmark package (its metric functions; its CLI on
a `wds/` dataset where torchvision and open_clip import) gives the evaluators' numbers."""

import importlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

import tiny_config
from conftest import xla_flags
from alignjax import cli as alignjax_cli, data as data_lib, restore, train, workdir as workdir_lib
from alignjax.evaluate import __main__ as cli, clip_benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    c = tiny_config.get_config()
    c.total_steps = 4
    c.checkpoint_every_steps = 2
    common = dict(data='synthetic:shapes', split='test', num_examples=40, batch_size=16)
    # 'size' has 2 classes: acc5 is where CLIP_benchmark (NaN) and alignjax (1.0) differ.
    c.evals.zs = dict(type='zeroshot', tasks=['shape', 'color', 'size'], **common)
    c.evals.ret = dict(type='retrieval', every_steps=2, **common)  # own period
    c.evals.lp = dict(
        type='linear_probe',
        label_key='shape',
        train_split='val',
        num_train_examples=48,
        weight_decays=(1e-3, 1e-1),
        max_iters=50,
        **common,
    )
    return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('run') / 'w')
    summary = train.train_and_evaluate(_config(), workdir)
    return workdir, summary


def test_evaluators_run_at_their_own_periods_in_training(run):
    workdir, _ = run
    records = workdir_lib.read_metrics(workdir)
    steps = lambda key: [r['step'] for r in records if key in r]  # noqa: E731
    assert steps('retrieval/ret/image_retrieval_recall@1') == [2, 4]
    assert steps('zeroshot/zs_shape/acc1') == [4]  # eval_every_steps=0: only at the end


def test_locate_checkpoint():
    assert cli.locate_checkpoint('/a/checkpoints/20', None, None) == ('/a/checkpoints', 20)
    assert cli.locate_checkpoint('/a/checkpoints', None, 5) == ('/a/checkpoints', 5)
    assert cli.locate_checkpoint(None, '/w', None) == ('/w/checkpoints', None)
    with pytest.raises(ValueError, match='contradicts'):
        cli.locate_checkpoint('/a/checkpoints/20', None, 3)
    with pytest.raises(ValueError, match='--workdir'):
        cli.locate_checkpoint(None, None, None)


def test_cli_reproduces_the_final_evaluation(run, tmp_path):
    workdir, summary = run
    config = restore.load_config(workdir)
    step, results = cli.evaluate_checkpoint(
        config, os.path.join(workdir, 'checkpoints'), None, output_dir=str(tmp_path)
    )
    assert step == 4
    saved = json.load(open(tmp_path / 'eval_4.json'))
    assert saved['step'] == 4
    metrics = {k: v for k, v in summary.items() if k != 'step'}
    assert {'zeroshot/zs_shape/acc1', 'retrieval/ret/text_retrieval_recall@5'} <= set(metrics)
    assert {'geometry/ret/modality_gap', 'linear_probe/lp/acc1', 'linear_probe/lp/wd'} <= set(
        metrics
    )
    assert set(results) == set(metrics)
    for k, v in metrics.items():
        assert results[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
        assert saved[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    # Only the named evaluators; an earlier step.
    step, results = cli.evaluate_checkpoint(
        config, os.path.join(workdir, 'checkpoints'), 2, only=['ret']
    )
    assert step == 2 and all(k.split('/')[1] == 'ret' for k in results)
    with pytest.raises(ValueError, match=r'No checkpoint for step 3 .*steps: \[2, 4\]'):
        cli.evaluate_checkpoint(config, os.path.join(workdir, 'checkpoints'), 3)
    with pytest.raises(ValueError, match='not in config.evals'):
        cli.evaluate_checkpoint(config, os.path.join(workdir, 'checkpoints'), 2, only=['nope'])


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_one_process_metrics(run, tmp_path):
    """2 local processes x 4 CPU devices, each reading and embedding its shard, through the
    CLI, == the 1-process x 8-device metrics."""
    workdir, summary = run
    port = _free_port()
    env = dict(
        os.environ,
        XLA_FLAGS=xla_flags(4),
        JAX_PLATFORMS='cpu',
        PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, 'tests')]),
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                '-m',
                'alignjax.evaluate',
                '--workdir',
                workdir,
                '--output_dir',
                str(tmp_path),
                f'--coordinator_address=localhost:{port}',
                '--num_processes=2',
                f'--process_id={i}',
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert 'Evaluation of step 4' in outs[0] and 'zeroshot/zs_shape/acc1' in outs[0]
    saved = json.load(open(tmp_path / 'eval_4.json'))
    for k, v in summary.items():
        assert saved[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k


def test_clip_benchmark_adapter_embeds_like_the_evaluators(run, monkeypatch):
    torch = pytest.importorskip('torch')
    workdir, _ = run
    model, transform, tokenizer = clip_benchmark.load_alignjax(workdir, 'latest')
    model.eval()
    config = restore.load_config(workdir)
    source = data_lib.get_source('synthetic:shapes', 'test', image_size=16, seed=config['seed'])
    examples = [source[i] for i in range(5)]
    # CLIP_benchmark's path: PIL image -> transform -> stacked NCHW tensor -> encode_image.
    images = torch.stack([transform(Image.fromarray(e['image'])) for e in examples])
    assert images.shape == (5, 3, 16, 16)
    z = model.encode_image(images)
    assert isinstance(z, torch.Tensor) and z.shape[0] == 5
    t = train.build_trainer(config)
    x = data_lib.normalize_image(np.stack([e['image'] for e in examples]), 'minus_one_one')
    restored = model._params
    ref = t.model.apply({'params': restored}, x, method=t.model.encode_image)
    np.testing.assert_allclose(z.numpy(), np.asarray(ref), atol=2e-5)
    tokens = tokenizer([e['caption'] for e in examples])
    assert tokens.dtype == torch.int64
    zt = model.encode_text(tokens).numpy()
    ref_t = t.model.apply({'params': restored}, tokens.numpy(), method=t.model.encode_text)
    np.testing.assert_allclose(zt, np.asarray(ref_t), atol=2e-5)


# ------------------------------------------------ the real CLIP_benchmark package (1.6.2)

N_EVAL = 40  # the fixture's evaluators' num_examples


def _cb_metrics(name):
    """A `clip_benchmark.metrics` module (needs torch + scikit-learn only)."""
    pytest.importorskip('torch')
    try:
        return importlib.import_module(f'clip_benchmark.metrics.{name}')
    except ImportError as e:
        pytest.skip(f'clip-benchmark not importable ({e}); the README test command installs it')


class _Items(list):
    """A map-style dataset with CLIP_benchmark's `classes` attribute."""

    classes = None


def _eval_examples(workdir):
    config = restore.load_config(workdir)
    source = data_lib.get_source('synthetic:shapes', 'test', image_size=16, seed=config['seed'])
    return source, [source[i] for i in range(N_EVAL)]


def _cb_templates(templates):
    return [t.replace('{}', '{c}') for t in templates]  # CLIP_benchmark formats with c=


def test_clip_benchmark_zero_shot_gives_the_evaluator_numbers(run):
    """CLIP_benchmark's own zero-shot code (classifier from templates, 100 * cosine logits,
    its accuracy and sklearn's balanced accuracy) on the adapter == the evaluator's metrics;
    with fewer than 5 classes CLIP_benchmark reports acc5 as NaN, alignjax as 1.0."""
    zsc = _cb_metrics('zeroshot_classification')
    import torch

    workdir, summary = run
    model, transform, tokenizer = clip_benchmark.load_alignjax(workdir, 'latest')
    source, examples = _eval_examples(workdir)
    tasks = source.zero_shot_tasks()
    # Not 'shape': its singular and plural prototype groups have no CLIP_benchmark form.
    for task in ('color', 'size'):
        spec = tasks[task]
        assert not spec.get('prototypes')
        items = _Items(
            (transform(Image.fromarray(e['image'])), int(e['labels'][task])) for e in examples
        )
        items.classes = spec['classnames']
        loader = torch.utils.data.DataLoader(items, batch_size=16)
        cb = zsc.evaluate(
            model,
            loader,
            tokenizer,
            spec['classnames'],
            _cb_templates(spec['templates']),
            device='cpu',
            amp=False,
        )
        ours = {k: summary[f'zeroshot/zs_{task}/{k}'] for k in cb}
        assert cb['acc1'] == pytest.approx(ours['acc1'], abs=1e-9), task
        assert cb['mean_per_class_recall'] == pytest.approx(
            ours['mean_per_class_recall'], abs=1e-6
        ), task
        if len(spec['classnames']) >= 5:
            assert cb['acc5'] == pytest.approx(ours['acc5'], abs=1e-9), task
        else:  # the documented difference (docs/EVALUATION.md, "Metric semantics")
            assert math.isnan(cb['acc5']) and ours['acc5'] == 1.0, task


def test_clip_benchmark_retrieval_gives_the_evaluator_numbers(run):
    zsr = _cb_metrics('zeroshot_retrieval')
    import torch

    workdir, summary = run
    model, transform, tokenizer = clip_benchmark.load_alignjax(workdir, 'latest')
    _, examples = _eval_examples(workdir)
    items = [(transform(Image.fromarray(e['image'])), [e['caption']]) for e in examples]
    loader = torch.utils.data.DataLoader(
        items,
        batch_size=16,
        collate_fn=lambda b: (torch.stack([x for x, _ in b]), [t for _, t in b]),
    )
    cb = zsr.evaluate(model, loader, tokenizer, device='cpu', amp=False, recall_k_list=[1, 5])
    assert len(cb) == 4
    for k, v in cb.items():
        assert v == pytest.approx(summary[f'retrieval/ret/{k}'], abs=1e-6), k  # float32 mean


def test_clip_benchmark_registry_and_missing_dependencies(monkeypatch):
    """`register` adds the model type to the real registry; a package CLIP_benchmark's CLI
    imports that is missing is named as such, never as 'CLIP_benchmark is not installed'."""
    _cb_metrics('zeroshot_retrieval')
    try:
        cb_models = importlib.import_module('clip_benchmark.models')
    except Exception:  # noqa: BLE001 -- its registry imports open_clip: missing or broken here
        cb_models = None
    if cb_models is not None:
        clip_benchmark.register()
        assert cb_models.TYPE2FUNC['alignjax'] is clip_benchmark.load_alignjax
        assert 'alignjax' in cb_models.MODEL_TYPES
    # open_clip (imported by clip_benchmark.models) made unimportable:
    for name in [m for m in sys.modules if m.startswith('clip_benchmark.models')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'open_clip', None)
    with pytest.raises(SystemExit) as e:
        clip_benchmark.import_cli()
    msg = str(e.value)
    assert "'open_clip'" in msg and 'not installed' not in msg and '\n' not in msg


def _write_wds(root, examples, kind, task=None, classnames=None, templates=None, shards=2):
    """CLIP_benchmark's `wds/` layout: test/{0..S-1}.tar + nshards.txt, classnames.txt and
    zeroshot_classification_templates.txt (classification) or dataset_type.txt (retrieval)."""
    os.makedirs(os.path.join(root, 'test'))
    per = -(-len(examples) // shards)
    for s in range(shards):
        with tarfile.open(os.path.join(root, 'test', f'{s}.tar'), 'w') as tar:
            for i, e in enumerate(examples[s * per : (s + 1) * per], start=s * per):
                buf = io.BytesIO()
                Image.fromarray(e['image']).save(buf, format='PNG')  # lossless
                if kind == 'classification':
                    label = str(int(e['labels'][task]))
                else:
                    label = e['caption']
                ext = 'cls' if kind == 'classification' else 'txt'
                for suffix, data in (('png', buf.getvalue()), (ext, label.encode())):
                    info = tarfile.TarInfo(f'{i:06d}.{suffix}')
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    with open(os.path.join(root, 'test', 'nshards.txt'), 'w') as f:
        f.write(str(shards))
    if kind == 'retrieval':
        with open(os.path.join(root, 'dataset_type.txt'), 'w') as f:
            f.write('retrieval')
    else:
        for name, lines in (
            ('classnames.txt', classnames),
            ('zeroshot_classification_templates.txt', templates),
        ):
            with open(os.path.join(root, name), 'w') as f:
                f.write('\n'.join(lines))


def test_clip_benchmark_cli_on_a_wds_dataset(run, tmp_path):
    """CLIP_benchmark's own CLI, offline, on `wds/` shards written here: the same numbers as
    the evaluators. Runs where its CLI imports (torchvision and open_clip built for the
    installed torch; CI's CPU torch 2.13.0 has no matching torchvision wheel)."""
    _cb_metrics('zeroshot_retrieval')
    try:
        clip_benchmark.import_cli()
    except SystemExit as e:
        pytest.skip(f'CLIP_benchmark CLI not importable here: {e}')
    workdir, summary = run
    source, examples = _eval_examples(workdir)
    spec = source.zero_shot_tasks()['color']
    cls_root, ret_root = str(tmp_path / 'shapes_cls'), str(tmp_path / 'shapes_ret')
    _write_wds(
        cls_root,
        examples,
        'classification',
        'color',
        spec['classnames'],
        _cb_templates(spec['templates']),
    )
    _write_wds(ret_root, examples, 'retrieval')
    env = dict(os.environ, HF_HUB_OFFLINE='1', PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
    common = ['--model_type', 'alignjax', '--model', workdir, '--pretrained', 'latest']
    common += ['--no_amp', '--num_workers', '2', '--batch_size', '16', '--quiet']
    for task, root, name in (
        ('zeroshot_classification', cls_root, 'cls.json'),
        ('zeroshot_retrieval', ret_root, 'ret.json'),
    ):
        out = str(tmp_path / name)
        cmd = [sys.executable, '-m', 'alignjax.evaluate.clip_benchmark', 'eval', *common]
        cmd += ['--dataset', 'wds/shapes', '--dataset_root', root, '--task', task]
        cmd += ['--recall_k', '1', '5', '--output', out]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        metrics = _read_json(out)['metrics']
        if task == 'zeroshot_classification':
            for k in ('acc1', 'acc5', 'mean_per_class_recall'):
                assert metrics[k] == pytest.approx(summary[f'zeroshot/zs_color/{k}'], abs=1e-6), k
        else:
            for k in ('image_retrieval_recall@1', 'text_retrieval_recall@5'):
                assert metrics[k] == pytest.approx(summary[f'retrieval/ret/{k}'], abs=1e-6), k


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def test_cli_adds_an_evaluator_to_the_checkpoints_own_config(run, tmp_path):
    """The documented syntax: `--checkpoint` alone (the checkpoint stores its config) and a
    new evaluator from `--config.evals.NAME.FIELD=VALUE` flags, as strings."""
    workdir, _ = run
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, 'tests')]))
    out = subprocess.run(
        [
            sys.executable,
            '-m',
            'alignjax.evaluate',
            '--checkpoint',
            os.path.join(workdir, 'checkpoints', '4'),
            '--output_dir',
            str(tmp_path),
            '--config.evals.new.type=zeroshot',
            '--config.evals.new.tasks=shape,color',
            '--config.evals.new.templates=a {}.|the {}, seen.',
            '--config.evals.new.num_examples=40',
            '--config.evals.new.batch_size',
            '16',
            '--evals=new',
        ],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'zeroshot/new_color/acc1' in out.stdout and 'zeroshot/zs_shape/acc1' not in out.stdout
    assert out.stdout.index('zeroshot/new_shape/acc1') < out.stdout.index('Wrote ')
    saved = _read_json(tmp_path / 'eval_4.json')
    assert set(saved) >= {'zeroshot/new_shape/acc1', 'zeroshot/new_color/acc5'}


def test_eval_overrides_and_the_stored_config(run, tmp_path):
    workdir, _ = run
    argv, overrides = alignjax_cli.split_overrides(
        [
            'prog',
            '--workdir=w',
            '--config.evals.a.type=zeroshot',
            '--config.evals.zs.classnames',
            'cat,dog',
            '--config.evals.a.num_examples=8',
        ]
    )
    assert argv == ['prog', '--workdir=w']
    ckpt = os.path.join(workdir, 'checkpoints')
    stored = cli.choose_config(None, None, ckpt, 2)  # Neither --config nor --workdir.
    assert sorted(stored.evals) == ['lp', 'ret', 'zs']
    config = alignjax_cli.apply_overrides(stored, overrides)
    assert config.evals.a.to_dict() == {'type': 'zeroshot', 'num_examples': 8}
    assert config.evals.zs.classnames == 'cat,dog' and 'classnames' not in stored.evals.zs
    (bad,) = alignjax_cli.split_overrides(['--config.evals.a=1'])[1]
    with pytest.raises(ValueError, match=r'--config.evals.a: set one field of an evaluator'):
        alignjax_cli.apply_overrides(stored, [bad])
    with pytest.raises(ValueError, match='none is stored with it.*pass --config'):
        cli.choose_config(None, None, str(tmp_path / 'checkpoints'), None)


def test_unwritable_output_fails_before_evaluating(run, tmp_path, monkeypatch):
    workdir, _ = run
    (tmp_path / 'file').write_text('')
    monkeypatch.setattr(restore, 'load_run', lambda *a, **k: pytest.fail('evaluated'))
    config = restore.load_config(workdir)
    with pytest.raises(ValueError, match=r'Cannot write the results to .*file/out.*--output_dir'):
        cli.evaluate_checkpoint(
            config, os.path.join(workdir, 'checkpoints'), output_dir=str(tmp_path / 'file/out')
        )


def test_results_are_never_overwritten_without_overwrite(tmp_path):
    write = lambda value, **kw: cli.write_results(
        str(tmp_path), 4, '/c', 'params', {'m': value}, **kw
    )
    assert write(1.0) == str(tmp_path / 'eval_4.json')
    assert write(2.0) == str(tmp_path / 'eval_4.2.json')
    assert write(3.0) == str(tmp_path / 'eval_4.3.json')
    assert _read_json(tmp_path / 'eval_4.json')['m'] == 1.0
    assert write(4.0, overwrite=True) == str(tmp_path / 'eval_4.json')
    assert _read_json(tmp_path / 'eval_4.json')['m'] == 4.0
    assert cli.write_results(str(tmp_path), 4, '/c', 'ema', {'m': 5.0}).endswith('eval_4_ema.json')
    assert sorted(os.listdir(tmp_path)) == [
        'eval_4.2.json',
        'eval_4.3.json',
        'eval_4.json',
        'eval_4_ema.json',
    ]
