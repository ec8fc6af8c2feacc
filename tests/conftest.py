"""Test setup: 8 forced CPU devices, set before jax is imported anywhere.

Sharding tests run on these 8 devices so that mesh and partitioning bugs show up on
a laptop (DESIGN.md, "Sharded from day one").

XLA:CPU generates machine code without LLVM optimisation (`-O0`): the tests compile
hundreds of tiny programs and run each a few times, so compiling dominates the suite, and
LLVM's optimisation is about half of each compile. The programs are the same (XLA's HLO
passes and the SPMD partitioner still run) and so are the results up to float rounding (3
steps of the tiny model end with some parameters ~5e-7 apart), well inside the tests'
tolerances; every comparison that must be bit-exact compares runs made with these flags. Subprocesses inherit them through XLA_FLAGS (`xla_flags(devices)` for tests that
set their own device count).
"""

import os

FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess with `devices` forced CPU devices and the suite's flags."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
