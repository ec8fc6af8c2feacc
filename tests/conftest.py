"""Test setup: 8 forced CPU devices, set before jax is imported anywhere.

Sharding tests run on these 8 devices so that mesh and partitioning bugs show up on
a laptop (DESIGN.md, "Sharded from day one").

The tests compile hundreds of tiny programs and run each a few times, so compiling
dominates the suite. XLA:CPU compiles them with its element-wise IR emitters instead of the
MLIR fusion emitters (`--xla_cpu_use_fusion_emitters=false`) and without LLVM optimisation
(`-O0`): a tiny train step compiles in ~1.2 s instead of ~7.5 s. The programs are the same
(XLA's HLO passes and the SPMD partitioner still run) and so are the results up to float
rounding (3 steps of the tiny model end with some parameters ~5e-7 apart), well inside the
tests' tolerances; every comparison that must be bit-exact compares runs made with these
flags. Subprocesses inherit them through XLA_FLAGS (`xla_flags(devices)` for tests that set
their own device count).

A persistent compilation cache is not used: a train step loaded from it deadlocked in an
all-gather on the 8 CPU devices (XLA's rendezvous "stuck" termination), reproducibly.
"""

import os

import pytest

FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess with `devices` forced CPU devices and the suite's flags."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def larger_tiny_config():
    """tests/tiny_config.py with a larger model (embed 24, towers 48 wide), 2 steps: the
    teacher of another size that test_distill.py and test_weight_sets.py load."""
    import tiny_config

    c = tiny_config.get_config()
    c.model.embed_dim, c.model.image.width, c.model.text.width = 24, 48, 48
    c.total_steps = c.checkpoint_every_steps = 2
    c.optim.warmup_steps = 1
    return c


@pytest.fixture(scope="session")
def larger_tiny_run(tmp_path_factory):
    """The workdir of a `larger_tiny_config()` run, trained once for the session (its
    users only read it)."""
    from alignjax import train

    workdir = str(tmp_path_factory.mktemp("larger_tiny_run"))
    train.train_and_evaluate(larger_tiny_config(), workdir)
    return workdir
