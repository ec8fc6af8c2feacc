"""Compiled memory per device on 8 (forced) CPU devices: what sharding choices save.

  python experiments/bench_memory.py --json runs/bench/memory.json

Nothing is executed: each function is lowered and compiled for the 8-device mesh and XLA's
`memory_analysis()` of the compiled executable gives the bytes one device needs
(arguments + outputs + temporaries - aliased buffers). Two comparisons (issue 8, point 3):

1. SigLIP loss with its gradient, dense (`siglip_loss` under jit on the sharded batch:
   each device holds a b x B slab of logits and its residuals) against the ring
   (`siglip_loss_ring`: shard_map + ppermute, one b x b block live), at global batch
   4k ... 32k, embedding dim 768.
2. The trainer's full train step (`build_trainer(...).step_fn`) for the bench-s and a
   ViT-B/16 CLIP model under pure data parallelism (mesh data=8) against FSDP (fsdp=8):
   parameters and optimizer state are sharded instead of replicated.
"""

from __future__ import annotations

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alignjax import losses, parallel, train  # noqa: E402
import bench_train_step  # noqa: E402


def device_bytes(compiled) -> int:
    ma = compiled.memory_analysis()
    return int(
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        + ma.temp_size_in_bytes
        - ma.alias_size_in_bytes
    )


def siglip_memory(batch_sizes, dim: int) -> list[dict]:
    mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def dense(zi, zt, t, b):
        return losses.siglip_loss(zi, zt, t, b)

    def ring(zi, zt, t, b):
        return losses.siglip_loss_ring(zi, zt, t, b, mesh=mesh, batch_axes=('data',))

    rows = []
    for batch in batch_sizes:
        z = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sh)
        s = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
        row = dict(global_batch=batch, embed_dim=dim)
        for name, fn in (('dense', dense), ('ring', ring)):
            grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
            t0 = time.perf_counter()
            with jax.set_mesh(mesh):
                compiled = grad.lower(z, z, s, s).compile()
            row[f'{name}_bytes'] = device_bytes(compiled)
            row[f'{name}_compile_s'] = time.perf_counter() - t0
        row['dense_over_ring'] = row['dense_bytes'] / row['ring_bytes']
        rows.append(row)
        print(
            f'  siglip B={batch}: dense {row["dense_bytes"] / 2**20:.0f} MiB, ring '
            f'{row["ring_bytes"] / 2**20:.0f} MiB per device',
            flush=True,
        )
    return rows


def step_memory(models, per_device_batch: int) -> list[dict]:
    rows = []
    for model in models:
        row = dict(model=model, global_batch=8 * per_device_batch)
        for name, mesh in (('data_parallel', (8, 1)), ('fsdp', (1, 8))):
            config = bench_train_step.bench_config(model, 8 * per_device_batch, False)
            config.mesh = dict(data=mesh[0], fsdp=mesh[1], tensor=1)
            t = train.build_trainer(config)
            batch = {
                'image': jax.ShapeDtypeStruct(
                    (config.batch_size, config.data.image_size, config.data.image_size, 3),
                    jnp.float32,
                    sharding=parallel.batch_sharding(t.mesh),
                ),
                'tokens': jax.ShapeDtypeStruct(
                    (config.batch_size, config.model.text.context_length),
                    jnp.int32,
                    sharding=parallel.batch_sharding(t.mesh),
                ),
            }
            t0 = time.perf_counter()
            compiled = t.step_fn.lower(t.abstract_state, batch).compile()
            row[f'{name}_bytes'] = device_bytes(compiled)
            row[f'{name}_compile_s'] = time.perf_counter() - t0
            n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(t.abstract_state.params))
            row['params'] = int(n_params)
        row['dp_over_fsdp'] = row['data_parallel_bytes'] / row['fsdp_bytes']
        rows.append(row)
        print(
            f'  {model}: data-parallel {row["data_parallel_bytes"] / 2**20:.0f} MiB, fsdp '
            f'{row["fsdp_bytes"] / 2**20:.0f} MiB per device',
            flush=True,
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--batch_sizes', default='4096,8192,16384,32768')
    p.add_argument('--embed_dim', type=int, default=768)
    p.add_argument('--models', default='bench-s,vit_b16_clip')
    p.add_argument('--per_device_batch', type=int, default=8)
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)

    sig = siglip_memory([int(b) for b in args.batch_sizes.split(',')], args.embed_dim)
    steps = step_memory(args.models.split(','), args.per_device_batch)

    print('\nSigLIP loss + gradient, compiled memory per device (8 CPU devices)\n')
    print('| global batch | dense MiB | ring MiB | dense / ring |')
    print('|---|---|---|---|')
    for r in sig:
        print(
            f'| {r["global_batch"]} | {r["dense_bytes"] / 2**20:.0f} | '
            f'{r["ring_bytes"] / 2**20:.0f} | {r["dense_over_ring"]:.1f}x |'
        )
    print('\nTrain step, compiled memory per device (8 CPU devices)\n')
    print('| model | params | global batch | data-parallel MiB | FSDP MiB | DP / FSDP |')
    print('|---|---|---|---|---|---|')
    for r in steps:
        print(
            f'| {r["model"]} | {r["params"] / 1e6:.1f}M | {r["global_batch"]} | '
            f'{r["data_parallel_bytes"] / 2**20:.0f} | {r["fsdp_bytes"] / 2**20:.0f} | '
            f'{r["dp_over_fsdp"]:.2f}x |'
        )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(siglip=sig, train_step=steps, jax_version=jax.__version__), f, indent=1)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
