"""Checkpoints you can trust: async Orbax saves, exact resume, corruption fallback, preemption.

Layout: `<workdir>/checkpoints/<step>/{state,data,config}`.
  state   the sharded train state (params, optimizer state, step, rng), Orbax/OCDBT;
  data    every process's data-iterator state as JSON:
          `{'process_count': P, 'processes': [state_0, ..., state_{P-1}]}`;
  config  the resolved training config (JSON).

Guarantees (tested in tests/test_checkpoint*.py):
* Saves are asynchronous. `save` blocks the loop only for the device-to-host copy (its
  duration is `last_blocking_s`, logged as `checkpoint/blocking_s`); the write and the commit
  run in a background thread.
* A checkpoint counts only when committed: Orbax writes into `<step>.orbax-checkpoint-tmp-*`,
  writes `commit_success.txt` and renames it to `<step>`. Old checkpoints are deleted only
  after the newer one is committed (Orbax's finalize order), so a good one is never lost to
  a crash in the middle of a save.
* `restore_latest` walks the steps newest first. A step directory without the commit marker,
  with unreadable metadata, or whose arrays fail to read (a truncated file) is moved to
  `<directory>.corrupt/` with a warning naming it, and the previous step is tried. Leftover
  temporary directories are moved there too. Nothing is deleted: a wrongly quarantined
  checkpoint can be moved back. All processes agree on the step they restore.
* A checkpoint whose tree does not match the current config (another model) is a
  `ValueError` saying so, not "corruption": the good checkpoint stays where it is.

`SavedParams` reads only the parameters of one committed step (for `alignjax.init_from` and
`alignjax.export`). Preemption (SIGTERM/SIGINT) is `alignjax.preemption`; starting from
another run's parameters is `alignjax.init_from`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from alignjax.data import pipeline as data_pipeline

COMMIT_FILE = 'commit_success.txt'  # Orbax's commit marker (atomicity_types.COMMIT_SUCCESS_FILE).
TMP_MARK = '.orbax-checkpoint-tmp'  # Orbax's suffix for a checkpoint still being written.
ITEMS = ('state', 'data', 'config')

log = logging.getLogger(__name__)


def _warn(msg: str) -> None:
    """Warnings a user must see: stderr on process 0, the log elsewhere."""
    if jax.process_index() == 0:
        print(f'WARNING: {msg}', file=sys.stderr, flush=True)
    else:
        log.warning(msg)


def path_str(path) -> str:
    """'/'-joined keys of a `jax.tree_util` key path: 'params/img/embedding/kernel'."""
    parts = []
    for k in path:
        for attr in ('key', 'name', 'idx'):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return '/'.join(parts)


def flat_by_path(tree: Any) -> dict[str, Any]:
    """{'params/img/embedding/kernel': leaf, ...} for any pytree."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_str(p): x for p, x in flat}


def all_processes_agree(ok: bool) -> bool:
    """True only if `ok` on every process (one tiny all-gather; free with one process).

    Call on every process: it is a collective.
    """
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array(ok, np.int32))))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able `obj`, in process order (each process gets the list)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([raw.size], np.int32)).reshape(-1)
    padded = np.zeros((int(lengths.max()),), np.uint8)
    padded[: raw.size] = raw
    everything = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(everything, lengths)]


def checkpoint_problem(directory: str, step: int) -> str | None:
    """Why `directory/step` is not a committed checkpoint (cheap file checks), or None."""
    path = os.path.join(directory, str(step))
    if not os.path.isfile(os.path.join(path, COMMIT_FILE)):
        return f'no commit marker ({COMMIT_FILE}): the save never finished'
    if not os.path.isfile(os.path.join(path, 'state', '_METADATA')):
        return "the 'state' item has no _METADATA"
    return None


class CheckpointMismatchError(ValueError):
    """The checkpoint is intact but holds another tree than the current config builds."""


class Checkpointer:
    """Saves and restores (train state, data iterators, config) under `directory`.

    Args:
      directory: where the step directories live (`<workdir>/checkpoints`).
      keep: the newest `keep` checkpoints are kept.
      keep_every: also keep every checkpoint whose step is a multiple of this (0: none).
      async_save: write in a background thread (the loop waits only for the host copy).
    """

    def __init__(self, directory: str, keep: int = 3, keep_every: int = 0, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.quarantine_dir = self.directory + '.corrupt'
        if keep < 1:
            raise ValueError(f'keep={keep}: at least one checkpoint must be kept.')
        policies = [pp.LatestN(n=keep)]
        if keep_every:
            policies.append(pp.EveryNSteps(interval_steps=int(keep_every)))
        options = ocp.CheckpointManagerOptions(
            create=True,
            enable_async_checkpointing=async_save,
            preservation_policy=pp.AnyPreservationPolicy(policies),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self.last_blocking_s = float('nan')  # Loop blocked by the last save (host copy).
        self.last_wait_s = float('nan')  # Waiting for the previous async save to commit.
        self.quarantined: list[str] = []  # Bad checkpoints moved aside by this object.

    # -- listing ---------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        """Newest step with a commit marker (file checks only: `restore_latest` also reads
        the arrays and falls back past a corrupt one)."""
        steps, _ = self._entries()
        return next((s for s in reversed(steps) if self.problem(s) is None), None)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def _entries(self) -> tuple[list[int], list[str]]:
        """(step directories, temporary directories) found on disk, sorted."""
        if not os.path.isdir(self.directory):
            return [], []
        steps, tmps = [], []
        for name in os.listdir(self.directory):
            if TMP_MARK in name:
                tmps.append(name)
            elif name.isdigit() and os.path.isdir(os.path.join(self.directory, name)):
                steps.append(int(name))
        return sorted(steps), sorted(tmps)

    def problem(self, step: int) -> str | None:
        """Why step `step` is not a committed checkpoint (cheap file checks), or None."""
        return checkpoint_problem(self.directory, step)

    # -- saving ----------------------------------------------------------------------------
    def save(
        self, step: int, state: Any, data_iterator: Any | None, config: Any | None = None
    ) -> None:
        """Starts an asynchronous save of `state`, every process's iterator and `config`.

        Returns once the arrays are copied to host memory (`last_blocking_s`); the previous
        save's commit is waited for first (`last_wait_s`). Call on every process.
        """
        t0 = time.perf_counter()
        self._manager.wait_until_finished()
        t1 = time.perf_counter()
        items = {'state': ocp.args.StandardSave(state)}
        if data_iterator is not None:
            states = gather_json(data_iterator.get_state())
            items['data'] = ocp.args.JsonSave({'process_count': len(states), 'processes': states})
        if config is not None:
            cfg = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
            items['config'] = ocp.args.JsonSave(json.loads(json.dumps(cfg, default=str)))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.last_wait_s, self.last_blocking_s = t1 - t0, time.perf_counter() - t1

    # -- restoring -------------------------------------------------------------------------
    def check_matches(self, step: int, abstract_state: Any) -> None:
        """Raises CheckpointMismatchError if step's tree differs from `abstract_state`'s."""
        path = epath.Path(self.directory) / str(step) / 'state'
        meta = ocp.PyTreeCheckpointHandler().metadata(path)
        tree = getattr(meta, 'tree', meta)
        saved = {k: tuple(v.shape) for k, v in flat_by_path(tree).items()}
        wanted = {k: tuple(v.shape) for k, v in flat_by_path(abstract_state).items()}
        missing = sorted(set(wanted) - set(saved))
        extra = sorted(set(saved) - set(wanted))
        shapes = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
        if missing or extra or shapes:
            parts = []
            if missing:
                parts.append(f'not in the checkpoint: {missing[:5]}')
            if extra:
                parts.append(f'only in the checkpoint: {extra[:5]}')
            if shapes:
                parts.append(
                    'shape (checkpoint vs config): '
                    + ', '.join(f'{k} {saved[k]} vs {wanted[k]}' for k in shapes[:5])
                )
            raise CheckpointMismatchError(
                f'Checkpoint {step} in {self.directory} does not match the train state this '
                f'config builds ({"; ".join(parts)}). Resume with the config it was written '
                f'with (config.json in the workdir) or use a new workdir; to start from it '
                f'with another model, use config.init_from.'
            )

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None) -> Any:
        """Restores the state (with the shardings of `abstract_state`) and the iterator.

        `abstract_state` is a tree of `jax.ShapeDtypeStruct`s carrying target shardings, so a
        checkpoint written on one mesh restores onto another.
        """
        items = {'state': ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items['data'] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if data_iterator is not None:
            data_iterator.set_state(self._own_data_state(restored['data']))
        log.info('Restored checkpoint %d from %s', step, self.directory)
        return restored['state']

    @staticmethod
    def _own_data_state(saved: dict[str, Any]) -> dict[str, Any]:
        if 'processes' not in saved:  # A single state (older layout).
            return saved
        states = saved['processes']
        if len(states) == jax.process_count():
            return states[jax.process_index()]
        # Another number of processes: the position (global batches consumed) is the same in
        # every process's state and serves all; the skip counts are summed into process 0's.
        log.info(
            'Data state saved by %d processes, restoring on %d: using process 0 position.',
            len(states),
            jax.process_count(),
        )
        return data_pipeline.process_state(states, jax.process_index(), jax.process_count())

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Restores only `params` (cheaper than the whole state: no optimizer moments).

        `abstract_params`: ShapeDtypeStructs (with shardings, or None for host numpy arrays).
        """
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
        args = ocp.args.PyTreeRestore(
            item={'params': abstract_params},
            restore_args={'params': restore_args},
            partial_restore=True,
        )
        # The 'state' item is registered with the Standard handler, which cannot restore a
        # subtree; the PyTree handler reads the same format.
        path = os.path.join(self.directory, str(step), 'state')
        with ocp.PyTreeCheckpointer() as reader:
            return reader.restore(path, args=args)['params']

    def saved_config(self, step: int) -> dict[str, Any] | None:
        """The resolved config saved with step `step` (None for checkpoints without one)."""
        path = os.path.join(self.directory, str(step), 'config', 'metadata')
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def restore_latest(
        self, abstract_state: Any, data_iterator: Any | None
    ) -> tuple[int | None, Any]:
        """(step, state) of the newest good checkpoint, or (None, None) if there is none.

        Bad checkpoints (see module docstring) are moved to `quarantine_dir` with a warning
        naming each, and the previous one is tried. Call on every process, before any save.
        """
        steps, tmps = self._entries()
        for name in tmps:
            self._quarantine(name, 'a half-written temporary directory (the save never committed)')
        for step in reversed(steps):
            reason = self.problem(step)
            state = None
            if reason is None:
                try:
                    self.check_matches(step, abstract_state)
                except CheckpointMismatchError:
                    raise
                except Exception as e:  # noqa: BLE001 -- any failure to read metadata: corrupt.
                    reason = f'unreadable metadata ({type(e).__name__}: {_short(e)})'
            if reason is None:
                try:
                    state = self.restore(step, abstract_state, None)
                    jax.block_until_ready(state)
                except Exception as e:  # noqa: BLE001 -- a truncated or missing array file, ...
                    reason = f'its arrays failed to load ({type(e).__name__}: {_short(e)})'
            if not all_processes_agree(reason is None):
                self._quarantine(str(step), reason or 'failed to load on another process')
                continue
            if data_iterator is not None:  # Mismatches here are config errors: raise.
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(data=ocp.args.JsonRestore())
                )
                data_iterator.set_state(self._own_data_state(restored['data']))
            return step, state
        return None, None

    def _quarantine(self, name: str, reason: str) -> None:
        """Moves `directory/name` to `quarantine_dir/name` (process 0) and warns."""
        src = os.path.join(self.directory, name)
        dst = os.path.join(self.quarantine_dir, name)
        if os.path.exists(dst):
            dst = f'{dst}.{time.strftime("%Y%m%d-%H%M%S")}'
        _warn(
            f'Checkpoint {src} is bad: {reason}. Falling back to the previous checkpoint; '
            f'the bad one is moved to {dst} (not deleted).'
        )
        if jax.process_index() == 0:
            os.makedirs(self.quarantine_dir, exist_ok=True)
            os.replace(src, dst)
        _barrier(f'alignjax_quarantine_{name}')
        self.quarantined.append(src)
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until the pending asynchronous save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _short(e: Exception, n: int = 200) -> str:
    s = str(e).replace('\n', ' ')
    return s if len(s) <= n else s[:n] + '...'


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or abstract) carrying `shardings`."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
    return jax.numpy.stack([jax.numpy.isfinite(x).all() for x in leaves]).all()


def is_finite_tree(tree: Any) -> bool:
    """True if every floating leaf of `tree` is finite (one fused device reduction)."""
    leaves = [
        x for x in jax.tree_util.tree_leaves(tree) if jax.numpy.issubdtype(x.dtype, np.inexact)
    ]
    return bool(_all_finite(leaves)) if leaves else True


# --------------------------------------------------------------------------------------
# The parameters of one committed step, without the rest of the train state.


def find_checkpoint_dir(path: str, step: int | None = -1) -> tuple[str, int | None]:
    """(checkpoints directory, step) for a workdir, its checkpoints dir or one step dir.

    The step: a step directory's own (`<workdir>/checkpoints/<step>`), else `step` when it
    is >= 0, else the newest committed step (`newest_committed_step`); None when there is
    none.
    """
    path = os.path.abspath(path)
    directory, fixed = path, None
    if os.path.isdir(os.path.join(path, 'checkpoints')):
        directory = os.path.join(path, 'checkpoints')
    elif os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, 'state')):
        directory, fixed = os.path.dirname(path), int(os.path.basename(path))
    if fixed is None and step is not None and step >= 0:
        fixed = step
    if fixed is None:
        fixed = newest_committed_step(directory)
    return directory, fixed


def newest_committed_step(directory: str) -> int | None:
    """The newest step of `directory` that passes `checkpoint_problem`, or None.

    File checks only (no arrays are read), and nothing is quarantined: for reading another
    run's parameters, not for resuming (that is `Checkpointer.restore_latest`).
    """
    names = os.listdir(directory) if os.path.isdir(directory) else []
    steps = sorted((int(n) for n in names if n.isdigit()), reverse=True)
    return next((s for s in steps if checkpoint_problem(directory, s) is None), None)


def unflatten_paths(flat: dict[str, Any]) -> dict[str, Any]:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}: the inverse of `flat_by_path` for dicts."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split('/')
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


class SavedParams:
    """The `params` of step `step` in checkpoints `directory`, read lazily.

    Attributes:
      directory, step: where the checkpoint is (`directory/step`).
      shapes: {'/'-joined parameter path: (shape, numpy dtype)}, from the Orbax metadata.
      model_config: the `model` part of the config saved with the step (or of `config.json`
        in the workdir beside `directory`), None when neither exists.
      description: 'checkpoint <directory>/<step>', for messages.
    """

    def __init__(self, directory: str, step: int):
        self.directory, self.step = directory, int(step)
        self.state_dir = os.path.join(directory, str(step), 'state')
        meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.state_dir))
        flat = flat_by_path(getattr(meta, 'tree', meta))
        self.shapes = {
            k[len('params/') :]: (tuple(v.shape), np.dtype(v.dtype))
            for k, v in flat.items()
            if k.startswith('params/')
        }
        self.description = f'checkpoint {os.path.join(directory, str(step))}'
        self.model_config: dict[str, Any] | None = None
        config_file = os.path.join(directory, str(step), 'config', 'metadata')
        workdir_config = os.path.join(os.path.dirname(directory), 'config.json')
        for candidate in (config_file, workdir_config):
            if os.path.isfile(candidate):
                with open(candidate) as f:
                    self.model_config = json.load(f).get('model')
                break

    def read(self, targets: dict[str, tuple[str, jax.ShapeDtypeStruct]]) -> dict[str, jax.Array]:
        """{dst: (src, abstract dst with sharding)} -> {dst: array with that sharding/dtype}.

        Only the needed source leaves are restored, straight into the target sharding; a
        source read by several targets is restored once and copied for the others.
        """
        first: dict[str, str] = {}
        for dst, (src, _) in targets.items():
            first.setdefault(src, dst)
        item = unflatten_paths({src: targets[dst][1] for src, dst in first.items()})
        args = ocp.args.PyTreeRestore(
            item={'params': item},
            restore_args={'params': ocp.checkpoint_utils.construct_restore_args(item)},
            partial_restore=True,
        )
        with ocp.PyTreeCheckpointer() as reader:
            restored = flat_by_path(reader.restore(self.state_dir, args=args)['params'])
        out: dict[str, jax.Array] = {}
        for dst, (src, abstract) in targets.items():
            x = restored[src]
            out[dst] = x if first[src] == dst else jax.device_put(x, abstract.sharding)
        return out

    def read_host(self) -> dict[str, np.ndarray]:
        """Every parameter as host numpy arrays, {'/'-joined path: array}."""
        item = unflatten_paths({k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in self.shapes.items()})
        args = ocp.args.PyTreeRestore(
            item={'params': item},
            restore_args={
                'params': jax.tree_util.tree_map(
                    lambda x: ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype), item
                )
            },
            partial_restore=True,
        )
        with ocp.PyTreeCheckpointer() as reader:
            return flat_by_path(reader.restore(self.state_dir, args=args)['params'])
