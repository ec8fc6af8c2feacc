"""A method from outside the package, run by the unchanged trainer from a config naming it.

The method (tests/custom_method.py) is also the complete example of docs/OBJECTIVES.md's
"Writing a method"; the last test checks that the document shows exactly this code.
"""

import json
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tiny_config

from alignjax import optim, train

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _config(**overrides):
    c = tiny_config.get_config()
    c.imports = ('custom_method',)
    c.loss = ml_collections.ConfigDict({'name': 'self_distill_clip', 'weight': 0.5})
    c.total_steps = 3
    c.checkpoint_every_steps = 3
    for k, v in overrides.items():
        c[k] = v
    return c


def test_frozen_teacher_receives_no_update_while_the_student_trains():
    t = train.build_trainer(_config(), jax.devices()[:2])
    state = t.init_fn()
    assert set(state.weights) == {'teacher'}
    start = jax.device_get(state.params)
    rng = np.random.default_rng(0)
    batch = {
        'image': rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
        'tokens': rng.integers(1, 255, size=(16, 8)).astype(np.int32),
    }
    for _ in range(4):  # (tiny_config warms the learning rate up from 0 over 2 steps.)
        state, metrics = t.step_fn(state, t.global_batch(batch))
    # At the start the teacher is the student: the distillation term starts at 0, then grows.
    assert float(metrics['train/loss_distill']) > 0
    teacher, params = jax.device_get(state.weights['teacher']), jax.device_get(state.params)
    flat = dict(zip(jax.tree_util.tree_leaves(optim.tree_paths(start)), jax.tree_util.tree_leaves(start)))
    for path, w in zip(
        jax.tree_util.tree_leaves(optim.tree_paths(teacher)), jax.tree_util.tree_leaves(teacher)
    ):
        np.testing.assert_array_equal(w, flat[path], err_msg=path)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(start))
    )


def test_config_naming_an_unregistered_method_points_at_imports():
    c = tiny_config.get_config()
    c.loss = ml_collections.ConfigDict({'name': 'self_distil_clip'})
    with pytest.raises(ValueError, match=r"config.loss.name='self_distil_clip'"):
        train.build_trainer(c)


def test_command_line_runs_the_outside_method(tmp_path):
    """`python -m alignjax.train` with a config file that lists the method's module: the
    trainer, in a fresh process (where nothing imported the module before), runs the method
    it registers (its loss terms are logged) to the end. (This is the one full training run
    of the method; the test above runs its steps in-process.)"""
    config = tmp_path / 'my_config.py'
    config.write_text(
        'import ml_collections\n'
        'import tiny_config\n\n\n'
        'def get_config():\n'
        '    c = tiny_config.get_config()\n'
        "    c.imports = ('custom_method',)\n"
        "    c.loss = ml_collections.ConfigDict({'name': 'self_distill_clip'})\n"
        '    c.total_steps = 3\n'
        '    return c\n'
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT]))
    run = subprocess.run(
        [sys.executable, '-m', 'alignjax.train', '--config', str(config), '--workdir', str(tmp_path / 'w')],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / 'w' / 'summary.json').read_text())['step'] == 3
    lines = (tmp_path / 'w' / 'metrics.jsonl').read_text().splitlines()
    assert any('"train/loss_distill"' in line for line in lines)


def test_docs_show_exactly_this_method():
    with open(os.path.join(ROOT, 'docs', 'OBJECTIVES.md')) as f:
        doc = f.read()
    section = doc[doc.index('## Writing a method') :]
    blocks = re.findall(r'```python\n(.*?)```', section, re.S)
    with open(os.path.join(HERE, 'custom_method.py')) as f:
        code = f.read()
    assert code in blocks, 'docs/OBJECTIVES.md must show tests/custom_method.py verbatim'
