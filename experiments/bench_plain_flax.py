"""A plain Flax CLIP train step of bench-s's shapes: the XLA ceiling for the trainer.

  python experiments/bench_plain_flax.py [--act erf|tanh] [--json PATH]

bench-s (issue 8): ViT width 384, depth 6, patch 8 at 64 px; text width 384, depth 6,
context 32, vocabulary 49408; embedding 256; batch 64; fp32. The model is textbook Flax
(``nn.MultiHeadDotProductAttention``, ``nn.LayerNorm`` with its default fast variance, exact
or tanh GELU), CLIP loss, ``optax.adamw``, one ``jax.jit`` with the state donated; no mesh,
no clipping, no metrics. Compare its samples/s with ``bench_train_step.py --models bench-s``
in the same session: the gap is what the trainer's extras cost; the ratio of both to the
matmul peak is what XLA reaches on the machine.
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

B, S, P, W, DEPTH, L, V, E, HEADS = 64, 64, 8, 384, 6, 32, 49408, 256, 6


class Block(nn.Module):
    causal: bool = False
    approximate_gelu: bool = False

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2])) if self.causal else None
        x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS)(y, y, mask=mask)
        y = nn.gelu(nn.Dense(4 * W)(nn.LayerNorm()(x)), approximate=self.approximate_gelu)
        return x + nn.Dense(W)(y)


class PlainClip(nn.Module):
    approximate_gelu: bool = False

    @nn.compact
    def __call__(self, images, tokens):
        b = images.shape[0]
        x = nn.Conv(W, (P, P), strides=(P, P))(images).reshape(b, -1, W)
        cls = self.param('cls', nn.initializers.zeros, (1, 1, W))
        x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], 1)
        x = nn.LayerNorm()(x + self.param('pos', nn.initializers.normal(0.02), (1, x.shape[1], W)))
        for _ in range(DEPTH):
            x = Block(approximate_gelu=self.approximate_gelu)(x)
        zimg = nn.Dense(E, use_bias=False)(nn.LayerNorm()(x[:, 0]))
        t = nn.Embed(V, W)(tokens) + self.param('tpos', nn.initializers.normal(0.01), (1, L, W))
        for _ in range(DEPTH):
            t = Block(causal=True, approximate_gelu=self.approximate_gelu)(t)
        t = nn.LayerNorm()(t)[jnp.arange(b), tokens.argmax(-1)]  # EOT pooling
        ztxt = nn.Dense(E, use_bias=False)(t)
        return zimg, ztxt, self.param('log_scale', lambda *_: jnp.log(1 / 0.07))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--act', default='erf', choices=('erf', 'tanh'))
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)
    model = PlainClip(approximate_gelu=args.act == 'tanh')
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((B, S, S, 3), dtype=np.float32))
    tokens = rng.integers(1, V - 1, size=(B, L)).astype(np.int32)
    tokens[:, L // 2] = V - 1
    tokens = jnp.asarray(tokens)
    params = model.init(jax.random.PRNGKey(0), images, tokens)
    opt = optax.adamw(1e-4, weight_decay=0.1)

    def loss_fn(params):
        zimg, ztxt, log_scale = model.apply(params, images, tokens)
        zimg = zimg / jnp.linalg.norm(zimg, axis=-1, keepdims=True)
        ztxt = ztxt / jnp.linalg.norm(ztxt, axis=-1, keepdims=True)
        logits = jnp.exp(log_scale) * zimg @ ztxt.T
        labels = jnp.arange(B)
        ce = optax.softmax_cross_entropy_with_integer_labels
        return 0.5 * (ce(logits, labels).mean() + ce(logits.T, labels).mean())

    def step(state):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    state = (params, opt.init(params))
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost)['flops'])
    for _ in range(3):
        state, loss = compiled(state)
        loss.block_until_ready()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, loss = compiled(state)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    row = dict(
        model='plain-flax bench-s',
        act=args.act,
        compile_s=compile_s,
        step_ms=1e3 * step_s,
        samples_per_s=B / step_s,
        flops_per_step=flops,
        flops_per_s=flops / step_s,
    )
    print('| model | act | compile s | step ms | samples/s | GFLOP/s |\n|---|---|---|---|---|---|')
    print(
        f"| {row['model']} | {args.act} | {compile_s:.1f} | {row['step_ms']:.0f} | "
        f"{row['samples_per_s']:.1f} | {row['flops_per_s'] / 1e9:.1f} |"
    )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(row, f, indent=1)
    return row


if __name__ == '__main__':
    main()
