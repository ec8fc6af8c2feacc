"""Test setup: 8 forced CPU devices, set before jax is imported anywhere.

Sharding tests run on these 8 devices so that mesh and partitioning bugs show up on
a laptop (DESIGN.md, "Sharded from day one").
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
