"""Device mesh, sharding rules and global batches.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism whose
devices also split the large weights and their optimizer state) and `tensor` (model
parallelism inside matmuls). Batches are split over ('data', 'fsdp').

Models annotate parameters and activations with *logical* axis names ('embed', 'mlp',
'heads', ...). `LOGICAL_RULES` maps them to mesh axes. A dimension that the mapped mesh
axes do not divide evenly is replicated instead (so tiny test models and odd widths work on
any mesh), and one mesh axis is never used twice in a spec.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from alignjax import validation

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

# Logical axis name -> mesh axis (or axes, or None = replicated).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('joint', None),
    ('length', None),
    ('layers', None),
)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh. One size may be -1: it takes the remaining devices."""
    validation.check_fields(mesh_config, MESH_AXES, 'mesh')
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f'At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.')
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(
                f'{n} devices cannot be split into a mesh with fixed axes '
                f'{dict(zip(MESH_AXES, sizes))} (product {known}).'
            )
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f'Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices '
            f'but {n} are available; use -1 for one axis to take the rest.'
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def batch_size_per_shard(mesh: Mesh) -> int:
    """Number of batch shards: product of the data and fsdp axis sizes."""
    return mesh.shape['data'] * mesh.shape['fsdp']


def check_batch_size(batch_size: int, mesh: Mesh, what: str = 'config.batch_size') -> None:
    shards = batch_size_per_shard(mesh)
    if batch_size % shards:
        raise ValueError(
            f'{what}={batch_size} is not divisible by the data-parallel size {shards} '
            f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}). Use a multiple of "
            f'{shards}, e.g. {shards * max(1, round(batch_size / shards))}.'
        )
    if batch_size % jax.process_count():
        raise ValueError(
            f'{what}={batch_size} is not divisible by the number of processes '
            f'{jax.process_count()}.'
        )


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=LOGICAL_RULES
) -> P:
    """PartitionSpec for an array with logical axis `names` under `rules`.

    Falls back to replication for a dimension that the mesh axes do not divide, and never
    uses a mesh axis twice.
    """
    rule_map = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = rule_map.get(name) if name is not None else None
        if axes is None:
            spec.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings for a tree of (abstract) `nn.LogicallyPartitioned` leaves.

    Unboxed leaves (no logical names) are replicated.
    """

    def one(x):
        if isinstance(x, nn.LogicallyPartitioned):
            value = x.value
            return NamedSharding(mesh, logical_to_spec(x.names, value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map(
        one, boxed_abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


@contextlib.contextmanager
def mesh_context(mesh: Mesh):
    """The mesh and the logical axis rules, for tracing model code.

    Flax's `with_logical_constraint` is a silent no-op without rules in context, and jit
    traces at the first *call*, not at `jax.jit(...)`: code that jits a model must trace it
    inside this context, or its activation sharding constraints vanish.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        yield


class MeshJit:
    """A jitted function that is always traced (called or lowered) in `mesh_context`."""

    def __init__(self, jitted, mesh: Mesh):
        self.jitted = jitted
        self.mesh = mesh

    def __call__(self, *args, **kwargs):
        with mesh_context(self.mesh):
            return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with mesh_context(self.mesh):
            return self.jitted.lower(*args, **kwargs)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's slice of a batch into global arrays sharded over the batch.

    Every process passes its own `local_batch` (leading dim = global batch / processes); the
    result is one global `jax.Array` per key, its first axis split over ('data', 'fsdp').
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def process_slice(global_array: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a host array that every process holds whole."""
    n = global_array.shape[0]
    per = n // jax.process_count()
    i = jax.process_index()
    return global_array[i * per : (i + 1) * per]


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Starts multi-process JAX when asked to, or when a cluster launcher is detected.

    Explicit flags (a local multi-process run) win. Otherwise SLURM jobs with several tasks
    and multi-host TPU slices are auto-detected by `jax.distributed.initialize()`.
    """
    if jax.distributed.is_initialized():
        return
    if coordinator_address or (num_processes and num_processes > 1):
        if not (coordinator_address and num_processes and process_id is not None):
            raise ValueError(
                'A local multi-process run needs all of --coordinator_address, '
                '--num_processes and --process_id.'
            )
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        return
    slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1') or 1)
    tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
    if slurm_tasks > 1 or ',' in tpu_hosts or os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
        logging.info('Cluster environment detected; calling jax.distributed.initialize().')
        jax.distributed.initialize()
