"""Compiled memory of the FILIP loss (value and gradient) on 8 CPU devices: dense vs chunked.

  python experiments/filip_memory.py [--batches 64 256 1024] [--chunk 64] [--out DIR]

The global batch is sharded over 8 forced host devices (``data`` axis); the loss is the
token-wise FILIP loss over the global batch, so each device computes its rows against the
whole gallery. ``temp`` is XLA's per-device scratch (``memory_analysis().temp_size_in_bytes``)
of the jitted ``value_and_grad``: the dense version holds ``[B/8, B, n1, n2]`` similarity
blocks (and their gradients), the chunked one ``[B/8, chunk, n1, n2]``. Nothing is executed;
only compiled. Prints a markdown table and writes ``filip_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alignjax.losses.tokenwise import filip_loss

MB = 1024.0 * 1024.0


def measure(batch: int, chunk: int | None, n1: int, n2: int, dim: int, mesh) -> dict:
    sh = NamedSharding(mesh, P("data"))
    rep = NamedSharding(mesh, P())
    args = (
        jax.ShapeDtypeStruct((batch, n1, dim), jnp.float32, sharding=sh),
        jax.ShapeDtypeStruct((batch, n2, dim), jnp.float32, sharding=sh),
        jax.ShapeDtypeStruct((batch, n2), jnp.bool_, sharding=sh),
        jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
    )

    def loss(img, txt, mask, t):
        return filip_loss(img, txt, mask, t, chunk_size=chunk)[0]

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 3)))
    with jax.set_mesh(mesh):
        mem = fn.lower(*args).compile().memory_analysis()
    return {
        "batch": batch,
        "impl": "dense" if chunk is None else f"chunk {chunk}",
        "temp_mb": mem.temp_size_in_bytes / MB,
        "args_mb": mem.argument_size_in_bytes / MB,
        "out_mb": mem.output_size_in_bytes / MB,
        "block_mb": batch
        / mesh.size
        * (batch if chunk is None else min(chunk, batch))
        * n1
        * n2
        * 4
        / MB,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--n1", type=int, default=49, help="image tokens (ViT-B/32 at 224 px)")
    p.add_argument("--n2", type=int, default=32, help="text tokens")
    p.add_argument("--dim", type=int, default=256, help="FILIP's reduced joint dimension")
    p.add_argument("--out", default="runs/filip_memory")
    a = p.parse_args(argv)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = []
    for b in a.batches:
        for chunk in (None, a.chunk):
            rows.append(measure(b, chunk, a.n1, a.n2, a.dim, mesh))
            print(rows[-1], flush=True)
    lines = [
        f"FILIP value+grad, 8 CPU devices, n1={a.n1}, n2={a.n2}, D={a.dim} (per device, MiB)",
        "",
        "| global batch | impl | temp | one [B/8, cols, n1, n2] block | arguments |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['impl']} | {r['temp_mb']:.1f} | {r['block_mb']:.1f} | "
            f"{r['args_mb']:.1f} |"
        )
    print("\n".join(lines))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "filip_memory.json"), "w") as f:
        json.dump({"config": vars(a), "rows": rows}, f, indent=1)
    with open(os.path.join(a.out, "filip_memory.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
