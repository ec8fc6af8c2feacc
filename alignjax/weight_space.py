"""Arithmetic on parameter trees of one architecture: soups, interpolation, task vectors.

Pure functions of pytrees of arrays (device arrays keep their shardings: every operation is
elementwise). Arithmetic runs in float32 and results are cast back to each leaf's dtype,
so a bfloat16 model averaged here loses nothing to bfloat16 rounding of the sums.

  uniform soup       theta = (1/K) sum_k theta_k                       (Wortsman et al. 2022)
  running average    soup_{n+1} = soup_n * n/(n+1) + theta_new/(n+1)   (the greedy soup's step;
                     computed as soup_n + (theta_new - soup_n)/(n+1))
  WiSE-FT            theta(alpha) = (1 - alpha) theta_zs + alpha theta_ft  (Wortsman et al. 2022)
  task vector        tau_i = theta_i - theta_0;  theta = theta_0 + sum_i lambda_i tau_i
                     (Ilharco et al. 2023; lambda < 0 negates a task)
  per-block          theta = theta_0 + sum_i sum_b lambda_ib tau_ib    (aTLAS, Zhang et al. 2024)

A *block* (`block_of`) is the unit that shares one learned coefficient: a transformer layer
(`.../block_<i>`; a scanned stack `.../blocks` is one block, its layers share one
coefficient), otherwise the first two path segments (`img/embedding`, `txt/head`, ...), or
the whole name of a top-level leaf (`log_scale`).

`alignjax.soup` loads ingredients, scores them and runs the greedy and learned procedures.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = Any

_LAYER = re.compile(r'^block_\d+$')


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def cast_like(tree: Params, like: Params) -> Params:
    """`tree` with each leaf cast to the dtype of the matching leaf of `like`."""
    return jax.tree.map(lambda x, ref: jnp.asarray(x).astype(ref.dtype), tree, like)


def to_float32(tree: Params) -> Params:
    """Every floating leaf as float32 (other leaves unchanged)."""
    return jax.tree.map(lambda x: _f32(x) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def interpolate(theta_a: Params, theta_b: Params, alpha: float) -> Params:
    """`(1 - alpha) theta_a + alpha theta_b` in float32, cast to `theta_a`'s dtypes.

    alpha=0 returns `theta_a`'s values and alpha=1 `theta_b`'s exactly (the endpoints are
    selected, not recomputed, so no rounding can move them)."""
    alpha = float(alpha)
    if alpha == 0.0:
        return jax.tree.map(lambda a: a, theta_a)
    if alpha == 1.0:
        return cast_like(theta_b, theta_a)
    out = jax.tree.map(lambda a, b: (1.0 - alpha) * _f32(a) + alpha * _f32(b), theta_a, theta_b)
    return cast_like(out, theta_a)


def running_average(soup: Params, n: int, theta: Params) -> Params:
    """The mean of n + 1 ingredients from the mean `soup` of n and a new one `theta`:
    `soup * n/(n+1) + theta/(n+1)`, computed in float32 as `soup + (theta - soup)/(n+1)`
    (the same value, and exactly `soup` when `theta` equals it: a soup of identical models
    is that model, bit for bit). The result is float32; `cast_like` it back for use."""
    if n < 1:
        raise ValueError(f'running_average needs n >= 1 ingredients in the soup, got {n}.')
    w = 1.0 / (n + 1)
    return jax.tree.map(lambda s, t: _f32(s) + (_f32(t) - _f32(s)) * w, soup, theta)


def uniform_soup(ingredients: Sequence[Params]) -> Params:
    """`(1/K) sum_k theta_k` as a float32 running average, cast to the first ingredient's
    dtypes."""
    if not ingredients:
        raise ValueError('A soup needs at least one ingredient.')
    soup = to_float32(ingredients[0])
    for n, theta in enumerate(ingredients[1:], start=1):
        soup = running_average(soup, n, theta)
    return cast_like(soup, ingredients[0])


def task_vector(theta: Params, theta_0: Params) -> Params:
    """`tau = theta - theta_0` in float32."""
    return jax.tree.map(lambda t, b: _f32(t) - _f32(b), theta, theta_0)


def add_task_vectors(
    theta_0: Params, vectors: Sequence[Params], lambdas: Sequence[float]
) -> Params:
    """`theta_0 + sum_i lambda_i tau_i` in float32, cast to `theta_0`'s dtypes (a negative
    lambda subtracts a task: "forgetting" by negation)."""
    if len(vectors) != len(lambdas):
        raise ValueError(f'{len(vectors)} task vectors but {len(lambdas)} coefficients.')
    out = to_float32(theta_0)
    for tau, lam in zip(vectors, lambdas):
        out = jax.tree.map(lambda o, t, lam=float(lam): o + lam * _f32(t), out, tau)
    return cast_like(out, theta_0)


# --------------------------------------------------------------------------------------
# Per-block coefficients (aTLAS).


def path_names(tree: Params) -> list[str]:
    """'/'-joined key path of every leaf, in `jax.tree.leaves` order."""
    names = []
    for path, _ in jax.tree_util.tree_leaves_with_path(tree):
        names.append('/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path))
    return names


def block_of(name: str) -> str:
    """The block a parameter (its '/'-joined path) belongs to; see the module docstring."""
    parts = name.split('/')
    for i, part in enumerate(parts):
        if _LAYER.match(part) or part == 'blocks':
            return '/'.join(parts[: i + 1])
    return '/'.join(parts[:2])


def blocks(tree: Params) -> tuple[list[str], np.ndarray]:
    """(block names in first-appearance order, [num_leaves] block index of each leaf)."""
    names: list[str] = []
    index: dict[str, int] = {}
    of_leaf = []
    for leaf_name in path_names(tree):
        b = block_of(leaf_name)
        if b not in index:
            index[b] = len(names)
            names.append(b)
        of_leaf.append(index[b])
    return names, np.asarray(of_leaf, np.int32)


def fix_blocks(
    names: Sequence[str], leaf_blocks: np.ndarray, fixed: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """`blocks`' output without the blocks named in `fixed`: their leaves get index -1,
    which `add_block_scaled` leaves at theta_0, and the others are renumbered."""
    kept = [n for n in names if n not in set(fixed)]
    new_index = {n: i for i, n in enumerate(kept)}
    remap = np.asarray([new_index.get(n, -1) for n in names], np.int32)
    return kept, remap[np.asarray(leaf_blocks)]


def add_block_scaled(
    theta_0: Params, vectors: Sequence[Params], coefficients: jax.Array, leaf_blocks: np.ndarray
) -> Params:
    """`theta_0 + sum_i coefficients[i, block(leaf)] * tau_i` per leaf, float32 math, cast to
    `theta_0`'s dtypes. `coefficients`: [num_vectors, num_blocks]; `leaf_blocks`: from
    `blocks(theta_0)` (or `fix_blocks`: a leaf of block -1 stays theta_0's). Differentiable
    in `coefficients` (what aTLAS learns)."""
    base_leaves, treedef = jax.tree.flatten(theta_0)
    vec_leaves = [jax.tree.leaves(v) for v in vectors]
    out = []
    for j, base in enumerate(base_leaves):
        if int(leaf_blocks[j]) < 0:
            out.append(base)
            continue
        acc = _f32(base)
        for i, leaves in enumerate(vec_leaves):
            acc = acc + coefficients[i, int(leaf_blocks[j])] * _f32(leaves[j])
        out.append(acc.astype(base.dtype))
    return jax.tree.unflatten(treedef, out)


def check_same_structure(reference: Params, other: Params, what: str) -> None:
    """ValueError naming the first differences if `other`'s leaves (paths, shapes) are not
    `reference`'s: ingredients of a soup must share one architecture."""
    ref = dict(zip(path_names(reference), jax.tree.leaves(reference)))
    got = dict(zip(path_names(other), jax.tree.leaves(other)))
    missing = sorted(set(ref) - set(got))
    extra = sorted(set(got) - set(ref))
    shapes = [
        f'{k}: {tuple(np.shape(got[k]))} vs {tuple(np.shape(ref[k]))}'
        for k in ref
        if k in got and tuple(np.shape(got[k])) != tuple(np.shape(ref[k]))
    ]
    problems = []
    if missing:
        problems.append(f'missing {missing[:3]}{" ..." if len(missing) > 3 else ""}')
    if extra:
        problems.append(f'unexpected {extra[:3]}{" ..." if len(extra) > 3 else ""}')
    if shapes:
        problems.append(
            f'shapes differ ({"; ".join(shapes[:3])}{" ..." if len(shapes) > 3 else ""})'
        )
    if problems:
        raise ValueError(
            f'{what} does not have the reference architecture: {", ".join(problems)}; every '
            f'ingredient must be a fine-tune of the same model (same config.model).'
        )


def coefficient_table(names: Sequence[str], coefficients: np.ndarray) -> Mapping[str, list]:
    """{block name: [coefficient of each task vector]} (JSON-friendly)."""
    c = np.asarray(coefficients)
    return {b: [float(x) for x in c[:, j]] for j, b in enumerate(names)}
