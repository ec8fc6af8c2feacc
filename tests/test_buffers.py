"""Objective buffers (a feature queue in the train state) and weight sets scored in training."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from alignjax import checkpoint as checkpoint_lib
from alignjax import evaluate as evaluate_lib
from alignjax import objectives, train
from alignjax import state as state_lib
from alignjax.losses import clip_loss

QUEUE = 32  # Two batches of 16.


@objectives.register
class _QueueObjective(objectives.Objective):
    """CLIP, plus a FIFO queue of the last image embeddings, its pointer and a counter."""

    name = 'test_queue'
    defaults = {'bad_update': ''}

    def buffers(self):
        return {
            'queue': objectives.Buffer((QUEUE, 16), init=lambda key: jax.random.normal(key, (QUEUE, 16))),
            'ptr': objectives.Buffer((), jnp.int32),
            'seen': objectives.Buffer((), jnp.float32, init=0.5),
        }

    def loss(self, out, batch, ctx):
        loss = clip_loss(out.zimg, out.ztxt, out.logit_scale)
        # The queue enters the metrics only: it must be the one before this step's update.
        metrics = self.metrics(loss, out, queue_sum=jnp.sum(ctx.buffers['queue']))
        return loss, metrics

    def update_buffers(self, buffers, out, batch, ctx):
        b = out.zimg.shape[0]
        queue = jax.lax.dynamic_update_slice(buffers['queue'], out.zimg, (buffers['ptr'], 0))
        new = {'queue': queue, 'ptr': (buffers['ptr'] + b) % QUEUE, 'seen': buffers['seen'] + b}
        if self.cfg['bad_update'] == 'shape':
            new['ptr'] = jnp.zeros((2,), jnp.int32)
        elif self.cfg['bad_update'] == 'missing':
            del new['seen']
        return new


def _config(**loss):
    c = tiny_config.get_config()
    c.loss = objectives.loss_config('test_queue', **loss)
    c.nan_policy = 'skip'
    c.total_steps, c.checkpoint_every_steps = 4, 2
    c.optim.warmup_steps = 1  # So that a run stopped at step 2 may resume to 4.
    return c


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope='module')
def trainer():
    return train.build_trainer(_config(), jax.devices()[:2])


def test_buffers_start_from_their_init_and_follow_update_buffers(trainer):
    t = trainer
    state = t.init_fn()
    b0 = _host(state.buffers)
    assert b0['ptr'] == 0 and b0['ptr'].dtype == np.int32 and b0['seen'] == 0.5
    assert b0['queue'].shape == (QUEUE, 16) and np.std(b0['queue']) > 0.5  # Random init.
    queue = b0['queue'].copy()
    for step in range(3):
        before = _host(state.buffers)
        state, metrics = t.step_fn(state, t.global_batch(tiny_config.random_batch(step)))
        # `loss` saw the buffers before the update.
        np.testing.assert_allclose(float(metrics['train/loss_queue_sum']), before['queue'].sum(), rtol=1e-5)
        after = _host(state.buffers)
        rows = slice(16 * (step % 2), 16 * (step % 2) + 16)  # This step's rows: unit zimg.
        np.testing.assert_allclose(np.linalg.norm(after['queue'][rows], axis=1), 1.0, rtol=1e-5)
        untouched = np.ones(QUEUE, bool)
        untouched[rows] = False
        np.testing.assert_array_equal(after['queue'][untouched], queue[untouched])
        queue = after['queue']
        assert after['ptr'] == (16 * (step + 1)) % QUEUE and after['seen'] == 0.5 + 16 * (step + 1)


def test_buffers_under_gradient_accumulation_equal_one_batch(trainer):
    c = _config()
    c.grad_accum_steps = 2
    start = jax.device_get(trainer.init_fn())  # One init for both: it compiles once.
    states = []
    for t in (trainer, train.build_trainer(c, jax.devices()[:2])):
        state = jax.device_put(start, t.state_shardings)
        for step in range(2):
            state, _ = t.step_fn(state, t.global_batch(tiny_config.random_batch(step)))
        states.append(_host(state.buffers))
    a, b = states
    np.testing.assert_allclose(a['queue'], b['queue'], rtol=1e-5, atol=1e-6)
    assert a['ptr'] == b['ptr'] and a['seen'] == b['seen']


def test_a_nonfinite_step_keeps_the_buffers(trainer):
    t = trainer
    state = t.init_fn()
    before = _host(state.buffers)
    bad = tiny_config.random_batch(0)
    bad['image'][0, 0, 0, 0] = np.nan
    state, metrics = t.step_fn(state, t.global_batch(bad))
    assert not bool(metrics['finite'])
    after = _host(state.buffers)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_buffers_are_checkpointed_and_restored_on_resume(tmp_path):
    devices = jax.devices()[:2]
    c = _config()
    c.total_steps = 2
    train.train_and_evaluate(c, str(tmp_path), devices)
    train.train_and_evaluate(_config(), str(tmp_path), devices)  # Resumes from step 2.
    t = train.build_trainer(_config(), devices)
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'))
    at2, at4 = (_host(ckpt.restore(s, t.abstract_state, None).buffers) for s in (2, 4))
    ckpt.close()
    # Had the resumed run restarted its buffers, it would have counted 0.5 + 32 at step 4.
    assert at2['ptr'] == 0 and at2['seen'] == 0.5 + 32
    assert at4['ptr'] == 0 and at4['seen'] == 0.5 + 64
    assert not np.array_equal(at2['queue'], at4['queue'])


@pytest.mark.parametrize(
    'bad, message',
    [
        ('shape', r"changed buffer 'ptr' from \(\) int32 to \(2,\) int32"),
        ('missing', r"returned buffers \['ptr', 'queue'\], expected \['ptr', 'queue', 'seen'\]"),
    ],
)
def test_update_buffers_must_keep_every_buffer_and_its_shape(bad, message):
    t = train.build_trainer(_config(bad_update=bad), jax.devices()[:2])
    with pytest.raises(ValueError, match=message):  # When the step is traced: no state needed.
        t.step_fn.lower(t.abstract_state, t.global_batch(tiny_config.random_batch(0)))


@flax.struct.dataclass
class _StateBeforeBuffers:
    """The train state's layout before `buffers` existed (checkpoints written then)."""

    step: jax.Array
    params: object
    opt_state: object
    rng: jax.Array
    nonfinite_steps: jax.Array
    weights: object


def test_a_checkpoint_written_before_buffers_existed_still_restores(tmp_path):
    c = tiny_config.get_config()
    t = train.build_trainer(c, jax.devices()[:2])
    state = t.init_fn()
    old = _StateBeforeBuffers(**{k: getattr(state, k) for k in _StateBeforeBuffers.__annotations__})
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'))
    ckpt.save(0, old, None, c)
    ckpt.wait()
    restored = ckpt.restore(0, t.abstract_state, None)
    ckpt.close()
    assert restored.buffers == {}
    for x, y in zip(jax.tree_util.tree_leaves(_host(state.params)), jax.tree_util.tree_leaves(_host(restored.params))):
        np.testing.assert_array_equal(x, y)


def test_buffer_init_of_the_wrong_shape_is_refused():
    buffer = objectives.Buffer((3,), init=lambda key: jnp.zeros((4,)))
    with pytest.raises(ValueError, match=r'Buffer init returned shape \(4,\), expected \(3,\)'):
        buffer.initial(jax.random.key(0))


# ----------------------------------------------------------------------------------------
# Weight sets scored next to the trained parameters during training.


def _ema_eval_config(decay, evaluate=True):
    c = tiny_config.get_config()
    c.total_steps = c.checkpoint_every_steps = 3
    c.ema.decay, c.ema.evaluate = decay, evaluate
    c.evals = {
        'shapes': dict(type='zeroshot', data='synthetic:shapes', split='test',
                       num_examples=32, batch_size=16, tasks=('color',)),
    }
    return c


def test_the_ema_is_evaluated_next_to_the_parameters(tmp_path):
    devices = jax.devices()[:2]
    summary = train.train_and_evaluate(_ema_eval_config(0.5), str(tmp_path / 'run'), devices)
    plain = sorted(k for k in summary if k.startswith('zeroshot/') and not k.endswith('/ema'))
    assert plain and all(f'{k}/ema' in summary for k in plain)
    # The EMA scores are those of the EMA weights, read back from the final checkpoint.
    t = train.build_trainer(_ema_eval_config(0.5), devices)
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'run' / 'checkpoints'))
    state = ckpt.restore(3, t.abstract_state, None)
    ckpt.close()
    (ev,) = evaluate_lib.build_evaluators(t.config, t.model, t.tokenizer, t.mesh, t.objective.scorers)
    on_ema = ev.run(state.weights['ema'])
    for k, v in on_ema.items():
        assert summary[f'{k}/ema'] == pytest.approx(float(v), abs=1e-6)

    off = _ema_eval_config(0.5, evaluate=False)
    assert not state_lib.weight_set_specs(off, t.objective)['ema'].evaluate


def test_only_weight_sets_of_the_trained_architecture_can_be_evaluated():
    with pytest.raises(ValueError, match=r'evaluate=True\) needs the trained model'):
        objectives.WeightSet(model={'embed_dim': 8}, evaluate=True)
