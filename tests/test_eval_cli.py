"""`python -m alignjax.evaluate` restores a checkpoint and reproduces the trainer's final
evaluation; two processes give the one-process metrics; the CLIP_benchmark adapter embeds
like the evaluators."""

import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

import tiny_config
from alignjax import data as data_lib, restore, train, workdir as workdir_lib
from alignjax.evaluate import __main__ as cli, clip_benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    c = tiny_config.get_config()
    c.total_steps = 4
    c.checkpoint_every_steps = 2
    common = dict(data='synthetic:shapes', split='test', num_examples=40, batch_size=16)
    c.evals.zs = dict(type='zeroshot', tasks=['shape', 'color'], **common)
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
        XLA_FLAGS='--xla_force_host_platform_device_count=4',
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
    # Registration with CLIP_benchmark's model registry (a stand-in module: the real package
    # pulls in torchvision).
    fake = types.ModuleType('clip_benchmark.models')
    fake.TYPE2FUNC, fake.MODEL_TYPES = {'open_clip': None}, ['open_clip']
    monkeypatch.setitem(sys.modules, 'clip_benchmark', types.ModuleType('clip_benchmark'))
    monkeypatch.setitem(sys.modules, 'clip_benchmark.models', fake)
    sys.modules['clip_benchmark'].models = fake
    clip_benchmark.register()
    assert fake.TYPE2FUNC['alignjax'] is clip_benchmark.load_alignjax
    assert fake.MODEL_TYPES == ['open_clip', 'alignjax']
