"""Checkpoints you can trust: async Orbax saves, exact resume, corruption fallback, checksums.

Layout: `<workdir>/checkpoints/<step>/{state,data,config,checksums.json}`.
  state   the sharded train state (params, optimizer state, step, rng), Orbax/OCDBT;
  data    every process's data-iterator state as JSON:
          `{'process_count': P, 'processes': [state_0, ..., state_{P-1}]}`;
  config  the resolved training config (JSON);
  checksums.json  the SHA-256 of every other file (`alignjax.checksums`), written in the
          background thread after the arrays and before the commit.

Guarantees (tested in tests/test_checkpoint*.py):
* Saves are asynchronous. `save` blocks the loop only for the device-to-host copy (its
  duration is `last_blocking_s`, logged as `checkpoint/blocking_s`); the write, the
  checksums (`last_checksum_s`) and the commit run in a background thread.
* A checkpoint counts only when committed: Orbax writes into `<step>.orbax-checkpoint-tmp`,
  writes `commit_success.txt` and renames it to `<step>`. Old checkpoints are deleted only
  after the newer one is committed (Orbax's finalize order), so a good one is never lost to
  a crash in the middle of a save.
* One rule for every reader: validate the step (`step_problem`: commit marker, checksums
  of every file, the JSON items, the tree metadata; then the arrays as they are read), name
  the bad file, fall back to the newest good step with a one-line warning, never delete.
  An explicitly requested step (`step=N`) that is bad is an error naming the file and the
  other steps; it is never silently replaced. `Checkpointer.restore_latest` (the training
  resume) moves a bad step to `<directory>.corrupt/` (the run will write that step number
  again); the readers (`read_good_step`: evaluation, export, init_from) leave it in place.
* A checkpoint whose tree does not match the current config (another model) is a
  `CheckpointMismatchError` (a ValueError) saying so, not "corruption": it stays put.
* Checkpoints written before checksums existed load without byte-level verification.

`SavedParams` reads only the parameters of one committed step (for `alignjax.init_from` and
`alignjax.export`; `read_params_host` reads them all with fallback); `restore_subtree` reads any part of the state (the evaluation reads the
parameters, not the optimizer state). Preemption (SIGTERM/SIGINT) is `alignjax.preemption`;
starting from another run's parameters is `alignjax.init_from`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from alignjax import checksums
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


# --------------------------------------------------------------------------------------
# What a step holds, and whether it can be trusted. File reads only: no collectives.


class CheckpointCorruptError(ValueError):
    """A checkpoint step is damaged. `reason` names the bad file (relative to `path`)."""

    def __init__(self, path: str, reason: str, hint: str = ''):
        self.path, self.reason = path, reason
        super().__init__(f'Checkpoint {path} is bad: {reason}.' + (f' {hint}' if hint else ''))


class CheckpointMismatchError(ValueError):
    """The checkpoint is intact but holds another tree than the current config builds."""


def step_dir(directory: str, step: int) -> str:
    return os.path.join(directory, str(step))


def step_dirs(directory: str) -> list[int]:
    """The steps of `directory` that have a directory (committed or not), sorted."""
    if not os.path.isdir(directory):
        return []
    names = os.listdir(directory)
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(step_dir(directory, n)))


def checkpoint_problem(directory: str, step: int) -> str | None:
    """Why `directory/step` is not a committed checkpoint (cheap file checks), or None."""
    path = step_dir(directory, step)
    if not os.path.isfile(os.path.join(path, COMMIT_FILE)):
        return f'no commit marker ({COMMIT_FILE}): the save never finished'
    if not os.path.isfile(os.path.join(path, 'state', '_METADATA')):
        return 'state/_METADATA is missing'
    return None


def read_json_item(directory: str, step: int, item: str) -> Any | None:
    """The JSON item `item` ('data', 'config') of a step; None if the step has none."""
    path = os.path.join(step_dir(directory, step), item, 'metadata')
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError.
        raise CheckpointCorruptError(
            step_dir(directory, step), f'{item}/metadata is not valid JSON ({e})'
        ) from e


def stored_config(directory: str, step: int) -> dict[str, Any] | None:
    """The resolved config saved with step `step` (None for checkpoints without one)."""
    config = read_json_item(directory, step, 'config')
    if config is not None and not isinstance(config, dict):
        raise CheckpointCorruptError(
            step_dir(directory, step), 'config/metadata does not hold a config (a JSON object)'
        )
    return config


def read_data_state(directory: str, step: int) -> dict[str, Any]:
    """The saved data-iterator states of a step: `{'process_count': P, 'processes': [...]}`.

    Missing or malformed is corruption: without it a resume cannot continue exactly.
    """
    path = step_dir(directory, step)
    saved = read_json_item(directory, step, 'data')
    if saved is None:
        raise CheckpointCorruptError(
            path, 'data/metadata is missing (the data-iterator position a resume needs)'
        )
    states = saved.get('processes') if isinstance(saved, dict) else None
    if not isinstance(saved, dict) or (
        'processes' in saved
        and not (isinstance(states, list) and states and all(isinstance(x, dict) for x in states))
    ):
        raise CheckpointCorruptError(
            path,
            'data/metadata does not hold data-iterator states '
            '({"process_count": P, "processes": [...]})',
        )
    return saved


def tree_metadata(directory: str, step: int) -> Any:
    """The tree of ShapeDtype-like metadata of a step's `state` (no array is read)."""
    path = epath.Path(step_dir(directory, step)) / 'state'
    try:
        meta = ocp.PyTreeCheckpointHandler().metadata(path)
    except Exception as e:  # Whatever Orbax raises on a damaged _METADATA.
        raise CheckpointCorruptError(
            str(path.parent), f'state/_METADATA is unreadable ({type(e).__name__}: {_short(e)})'
        ) from e
    return getattr(meta, 'tree', meta)


def step_problem(
    directory: str, step: int, *, data: bool = False, shard: tuple[int, int] = (0, 1)
) -> str | None:
    """Why step `step` of `directory` cannot be trusted, naming the file; None if it can.

    Cheapest first: the commit marker and `state/_METADATA`; the checksums of every file
    (`alignjax.checksums`; `shard=(i, n)`: only this process's share, see
    `checksums.verify`); the JSON items (`data` only when `data`: a resume needs it); the
    tree metadata. The arrays themselves are checked as they are read (`_reading_arrays`).
    """
    reason = checkpoint_problem(directory, step)
    if reason is None:
        reason = checksums.verify(step_dir(directory, step), shard)
    if reason is None:
        try:
            stored_config(directory, step)
            if data:
                read_data_state(directory, step)
            tree_metadata(directory, step)
        except CheckpointCorruptError as e:
            reason = e.reason
    return reason


@contextlib.contextmanager
def _reading_arrays(directory: str, step: int):
    """Turns a failure to read a step's arrays into a CheckpointCorruptError.

    Only for steps without checksums: a step whose checksums verified holds exactly the
    bytes that were written, so a failure there is something else (out of memory, a bug)
    and must not make a good checkpoint look bad: it propagates as it is.
    """
    try:
        yield
    except (CheckpointMismatchError, CheckpointCorruptError):
        raise
    except Exception as e:  # A truncated or missing array file, ...
        path = step_dir(directory, step)
        if os.path.isfile(os.path.join(path, checksums.FILE_NAME)):
            raise
        raise CheckpointCorruptError(
            path, f'its arrays failed to load ({type(e).__name__}: {_short(e)})'
        ) from e


def check_tree(
    directory: str, step: int, abstract: Any, *, partial: bool = False, hint: str = ''
) -> None:
    """Raises CheckpointMismatchError if the step's tree differs from `abstract`'s.

    `partial`: `abstract` is a part of the saved tree (e.g. `{'params': ...}`); leaves the
    checkpoint has beyond it are fine.
    """
    saved = {k: tuple(v.shape) for k, v in flat_by_path(tree_metadata(directory, step)).items()}
    wanted = {k: tuple(v.shape) for k, v in flat_by_path(abstract).items()}
    missing = sorted(set(wanted) - set(saved))
    extra = [] if partial else sorted(set(saved) - set(wanted))
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
            f'Checkpoint {step} in {directory} does not match the train state this config '
            f'builds ({"; ".join(parts)}).' + (f' {hint}' if hint else '')
        )


def _empty_fields_absent(directory: str, step: int, abstract_state: Any) -> list[str]:
    """Fields of a dataclass state that hold no array here and are missing from the step.

    A state class that gained a field (e.g. `TrainState.buffers`) still restores steps
    written before it, as long as this run leaves that field empty.
    """
    if not dataclasses.is_dataclass(abstract_state):
        return []
    saved = tree_metadata(directory, step)
    if not isinstance(saved, dict):
        return []
    return [
        f.name
        for f in dataclasses.fields(abstract_state)
        if f.name not in saved and not jax.tree_util.tree_leaves(getattr(abstract_state, f.name))
    ]


def restore_subtree(directory: str, step: int, abstract: Any) -> Any:
    """Reads part of a step's train state, e.g. `{'params': ...}`, and nothing else.

    `abstract`: a dict of subtrees of the saved state as ShapeDtypeStructs with target
    shardings (the evaluation reads `params` or one extra weight set, not the optimizer
    state). Raises CheckpointMismatchError if the checkpoint holds other shapes, and
    CheckpointCorruptError if the arrays of a step without checksums fail to read.
    """
    check_tree(directory, step, abstract, partial=True)
    args = ocp.args.PyTreeRestore(
        item=abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True,
    )
    with _reading_arrays(directory, step):
        return jax.block_until_ready(_read_state(directory, step, args))


def _read_state(directory: str, step: int, args: Any) -> Any:
    """Reads a step's `state` item with `args` through a read-only CheckpointManager.

    Saved with `StandardSave`, whose handler cannot restore a subtree; `PyTreeRestore`
    with `partial_restore=True` reads the same format and only the leaves asked for.
    """
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(directory, options=options) as reader:
        return reader.restore(step, args=ocp.args.Composite(state=args))['state']


def _first(reasons: list[str | None]) -> str | None:
    return next((r for r in reasons if r), None)


def read_good_step(
    directory: str,
    read: Callable[[int], Any] | None = None,
    step: int | None = None,
    *,
    collective: bool = False,
    step_flag: str = '--step',
) -> tuple[int, Any]:
    """(step, read(step)) for the newest good step of `directory`, or for exactly `step`.

    The rule for every reader of checkpoints: each step is validated (`step_problem`, then
    `read`, which raises CheckpointCorruptError for damaged arrays); a bad one is skipped
    with a one-line warning naming it and the bad file, and the previous one is tried.
    Nothing is moved or deleted. An explicit `step` is never replaced by another: a bad
    one is a CheckpointCorruptError naming the file and the steps that look intact.
    Other errors of `read` (another model: CheckpointMismatchError) propagate.

    `collective`: call on every process; each hashes its share of the files and all agree.
    `step_flag`: how the user chooses a step, for the message ('--step', 'init_from.step').
    """
    steps = step_dirs(directory)
    shard = (jax.process_index(), jax.process_count()) if collective else (0, 1)

    def agreed(reason):
        return _first(gather_json(reason)) if collective else reason

    if not os.path.isdir(directory):
        raise ValueError(
            f'{directory} does not exist: expected a run\'s checkpoints directory (or workdir).'
        )
    if step is not None and step not in steps:
        raise ValueError(f'No checkpoint for step {step} in {directory}; steps: {steps}.')
    if not steps:
        raise ValueError(f'No checkpoint in {directory}.')
    skipped = []
    for s in [step] if step is not None else reversed(steps):
        reason, result = agreed(step_problem(directory, s, shard=shard)), None
        if reason is None:
            try:
                result = read(s) if read is not None else None
            except CheckpointCorruptError as e:
                reason = e.reason
            reason = agreed(reason)
        if reason is None:
            return s, result
        if step is not None:
            intact = [x for x in steps if x != s and checkpoint_problem(directory, x) is None]
            raise CheckpointCorruptError(
                step_dir(directory, s),
                reason,
                f'Steps that look intact: {intact}; choose one with {step_flag}, or leave '
                f'{step_flag} out to use the newest good one. Nothing was moved or deleted.',
            )
        _warn(
            f'Checkpoint {step_dir(directory, s)} is bad: {reason}. Falling back to the '
            'previous checkpoint (the bad one is left in place).'
        )
        skipped.append(s)
    raise ValueError(
        f'No good checkpoint in {directory}: steps {skipped[::-1]} are all bad (see the '
        'warnings above); nothing was moved or deleted.'
    )


def newest_committed_step(directory: str) -> int | None:
    """The newest step of `directory` that passes `checkpoint_problem`, or None.

    File checks only (no hashing, no arrays): for a quick look. Readers that load a step use
    `read_good_step`, the training resume `Checkpointer.restore_latest`.
    """
    return next(
        (s for s in reversed(step_dirs(directory)) if not checkpoint_problem(directory, s)), None
    )


# --------------------------------------------------------------------------------------
# The training run's checkpoints: saving, resuming.


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
        self._async = async_save
        options = ocp.CheckpointManagerOptions(
            create=True,
            enable_async_checkpointing=async_save,
            preservation_policy=pp.AnyPreservationPolicy(policies),
            # Runs on process 0 in the save thread, after every process wrote its arrays and
            # before the commit: the checksums are committed with the step, atomically.
            async_options=(
                ocp.AsyncOptions(post_finalization_callback=self._write_checksums)
                if async_save
                else None
            ),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self._saving_step: int | None = None
        self.last_blocking_s = float('nan')  # Loop blocked by the last save (host copy).
        self.last_wait_s = float('nan')  # Waiting for the previous async save to commit.
        self.last_checksum_s = float('nan')  # Hashing the last save's files (save thread).
        self.quarantined: list[str] = []  # Bad checkpoints moved aside by this object.

    # -- listing ---------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        """Newest step with a commit marker (file checks only: `restore_latest` also checks
        the checksums and reads the arrays, and falls back past a corrupt one)."""
        return newest_committed_step(self.directory)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def _entries(self) -> tuple[list[int], list[str]]:
        """(step directories, temporary directories) found on disk, sorted."""
        if not os.path.isdir(self.directory):
            return [], []
        tmps = sorted(n for n in os.listdir(self.directory) if TMP_MARK in n)
        return step_dirs(self.directory), tmps

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
        check_free_space(self.directory, step, tree_bytes(state) // jax.process_count())
        items = {'state': ocp.args.StandardSave(state)}
        if data_iterator is not None:
            states = gather_json(data_iterator.get_state())
            items['data'] = ocp.args.JsonSave({'process_count': len(states), 'processes': states})
        if config is not None:
            cfg = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
            items['config'] = ocp.args.JsonSave(json.loads(json.dumps(cfg, default=str)))
        self._saving_step = step
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        if not self._async:  # Committed already; no callback without the save thread.
            self._write_checksums()
        self.last_wait_s, self.last_blocking_s = t1 - t0, time.perf_counter() - t1

    def _write_checksums(self) -> None:
        """Writes `checksums.json` into the step being saved (process 0).

        Orbax's post-finalization callback: the save thread calls it once every process's
        files are written, before the commit marker and the rename of
        `<step>.orbax-checkpoint-tmp` to `<step>`. Costs one read of the step's files
        (about 1.4 GB/s of SHA-256 per core), off the training loop.
        """
        if jax.process_index() != 0:
            return
        step = self._saving_step
        tmps = glob.glob(os.path.join(self.directory, f'{step}{TMP_MARK}*'))
        path = max(tmps, key=os.path.getmtime) if tmps else step_dir(self.directory, step)
        t0 = time.perf_counter()
        checksums.write(path)
        self.last_checksum_s = time.perf_counter() - t0

    # -- restoring -------------------------------------------------------------------------
    def check_matches(self, step: int, abstract_state: Any) -> None:
        """Raises CheckpointMismatchError if step's tree differs from `abstract_state`'s."""
        check_tree(
            self.directory,
            step,
            abstract_state,
            hint='Resume with the config it was written with (config.json in the workdir, '
            'or config/metadata in the checkpoint) or use a new workdir; to start from it '
            'with another model, use config.init_from.',
        )

    def restore(
        self, step: int, abstract_state: Any, data_iterator: Any | None, verify: bool = True
    ) -> Any:
        """Restores the state (with the shardings of `abstract_state`) and the iterator.

        `abstract_state` is a tree of `jax.ShapeDtypeStruct`s carrying target shardings, so a
        checkpoint written on one mesh restores onto another. `verify`: check the step first
        (`step_problem`); a bad one is a CheckpointCorruptError naming the file.
        """
        path = step_dir(self.directory, step)
        if verify:
            reason = step_problem(self.directory, step, data=data_iterator is not None)
            if reason:
                raise CheckpointCorruptError(path, reason)
        data_state = None
        if data_iterator is not None:
            data_state = self._own_data_state(read_data_state(self.directory, step))
        absent = _empty_fields_absent(self.directory, step, abstract_state)
        if absent:  # Written before these (here empty) fields existed: read the others.
            present = {
                f.name: getattr(abstract_state, f.name)
                for f in dataclasses.fields(abstract_state)
                if f.name not in absent
            }
            state = abstract_state.replace(**restore_subtree(self.directory, step, present))
        else:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            with _reading_arrays(self.directory, step):
                state = jax.block_until_ready(self._manager.restore(step, args=args)['state'])
        if data_state is not None:
            data_iterator.set_state(data_state)
        log.info('Restored checkpoint %d from %s', step, self.directory)
        return state

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

    def saved_config(self, step: int) -> dict[str, Any] | None:
        """The resolved config saved with step `step` (None for checkpoints without one)."""
        return stored_config(self.directory, step)

    def restore_latest(
        self, abstract_state: Any, data_iterator: Any | None
    ) -> tuple[int | None, Any]:
        """(step, state) of the newest good checkpoint, or (None, None) if there is none.

        Each step is validated (`step_problem`, each process hashing its share of the files;
        then its arrays and data state are read); a bad one is moved to `quarantine_dir`
        with a warning naming the bad file, and the previous one is tried. All processes
        agree on every verdict. Call on every process, before any save.
        """
        steps, tmps = self._entries()
        for name in tmps:
            self._quarantine(name, 'a half-written temporary directory (the save never committed)')
        shard = (jax.process_index(), jax.process_count())
        need_data = data_iterator is not None
        for step in reversed(steps):
            reason = step_problem(self.directory, step, data=need_data, shard=shard)
            reason = _first(gather_json(reason))
            state = data_state = None
            if reason is None:
                try:
                    self.check_matches(step, abstract_state)  # Another model: raise, keep it.
                    state = self.restore(step, abstract_state, None, verify=False)
                    if need_data:
                        data_state = self._own_data_state(read_data_state(self.directory, step))
                except CheckpointCorruptError as e:
                    reason = e.reason
                reason = _first(gather_json(reason))
            if reason is not None:
                self._quarantine(str(step), reason)
                continue
            if need_data:  # A state the iterator refuses is a config error: it raises.
                data_iterator.set_state(data_state)
            return step, state
        return None, None

    def _quarantine(self, name: str, reason: str) -> None:
        """Moves `directory/name` to `quarantine_dir/name` (process 0) and warns.

        A resuming run will write this step number again, so the bad one cannot stay; moved,
        never deleted, it can be inspected or moved back.
        """
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


def tree_bytes(tree: Any) -> int:
    """Bytes of every array of `tree` (global sizes)."""
    return sum(
        int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)
    )


def check_free_space(directory: str, step: int, needed: int) -> None:
    """ValueError (on every process) unless the disk holding `directory` has room for a
    checkpoint of about `needed` bytes (this process's share), plus 5% and 1 MiB.

    Checked before Orbax writes anything: a full disk found by the write surfaces as
    hundreds of lines of tracebacks from its background threads, and a half-written step.
    """
    free = shutil.disk_usage(directory).free
    required = needed * 1.05 + (1 << 20)
    if not all_processes_agree(free >= required):
        mib = 2.0**20
        raise ValueError(
            f'Not enough disk space to save step {step}: the checkpoint needs about '
            f'{required / mib:.1f} MiB per process (headroom included) and '
            f'{free / mib:.1f} MiB are free in {directory} (on the process that is short). '
            f'Free some space (fewer keep_checkpoints) or use a --workdir on another disk, '
            f'then run the same command: it resumes from the last checkpoint.'
        )


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


def locate(path: str) -> tuple[str, int | None]:
    """(checkpoints directory, the step a step directory names or None) for a workdir, its
    checkpoints directory or one step directory (`<workdir>/checkpoints/<step>`)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, 'checkpoints')):
        return os.path.join(path, 'checkpoints'), None
    if os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, 'state')):
        return os.path.dirname(path), int(os.path.basename(path))
    return path, None


def find_checkpoint_dir(
    path: str, step: int | None = -1, step_flag: str = '--step'
) -> tuple[str, int | None]:
    """(checkpoints directory, a good step) for a workdir, its checkpoints dir or a step dir.

    The step: a step directory's own, else `step` when it is >= 0 (either must be good: a
    bad one is a CheckpointCorruptError naming the file), else the newest good step
    (`read_good_step`: bad ones skipped with a warning); None when there is no step at all.
    `step_flag` names the user's way to choose a step in messages.
    """
    directory, fixed = locate(path)
    if fixed is None and step is not None and step >= 0:
        fixed = step
    if fixed is None and not step_dirs(directory):
        return directory, None
    return directory, read_good_step(directory, None, fixed, step_flag=step_flag)[0]


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

    Validate the step first (`find_checkpoint_dir` / `read_good_step` do): this class reads
    what is there, turning read failures of steps without checksums into
    CheckpointCorruptError.

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
        flat = flat_by_path(tree_metadata(directory, step))
        self.shapes = {
            k[len('params/') :]: (tuple(v.shape), np.dtype(v.dtype))
            for k, v in flat.items()
            if k.startswith('params/')
        }
        self.description = f'checkpoint {step_dir(directory, step)}'
        config = stored_config(directory, step)
        workdir_config = os.path.join(os.path.dirname(directory), 'config.json')
        if config is None and os.path.isfile(workdir_config):
            with open(workdir_config) as f:
                try:
                    config = json.load(f)
                except ValueError as e:
                    raise ValueError(f'{workdir_config} is not valid JSON ({e}).') from e
        self.model_config: dict[str, Any] | None = None if config is None else config.get('model')

    def _restore(self, item: Any, restore_args: Any) -> dict[str, Any]:
        args = ocp.args.PyTreeRestore(
            item={'params': item}, restore_args={'params': restore_args}, partial_restore=True
        )
        with _reading_arrays(self.directory, self.step):
            restored = _read_state(self.directory, self.step, args)['params']
            return flat_by_path(jax.block_until_ready(restored))

    def read(self, targets: dict[str, tuple[str, jax.ShapeDtypeStruct]]) -> dict[str, jax.Array]:
        """{dst: (src, abstract dst with sharding)} -> {dst: array with that sharding/dtype}.

        Only the needed source leaves are restored, straight into the target sharding; a
        source read by several targets is restored once and copied for the others.
        """
        first: dict[str, str] = {}
        for dst, (src, _) in targets.items():
            first.setdefault(src, dst)
        item = unflatten_paths({src: targets[dst][1] for src, dst in first.items()})
        restored = self._restore(item, ocp.checkpoint_utils.construct_restore_args(item))
        out: dict[str, jax.Array] = {}
        for dst, (src, abstract) in targets.items():
            x = restored[src]
            out[dst] = x if first[src] == dst else jax.device_put(x, abstract.sharding)
        return out

    def read_host(self) -> dict[str, np.ndarray]:
        """Every parameter as host numpy arrays, {'/'-joined path: array}."""
        item = unflatten_paths({k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in self.shapes.items()})
        restore_args = jax.tree_util.tree_map(
            lambda x: ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype), item
        )
        return self._restore(item, restore_args)


def read_params_host(
    path: str, step: int | None = -1, step_flag: str = '--step'
) -> tuple[SavedParams, dict[str, np.ndarray]]:
    """(SavedParams, every parameter as host numpy arrays) of a good step of `path`.

    `path` and `step` as for `find_checkpoint_dir`; here reading the arrays is part of the
    validation, so a step whose arrays fail to read (a truncated file in a step saved
    without checksums) is skipped too. For `alignjax.export`.
    """
    directory, fixed = locate(path)
    if fixed is None and step is not None and step >= 0:
        fixed = step

    def read(s: int) -> tuple[SavedParams, dict[str, np.ndarray]]:
        source = SavedParams(directory, s)
        return source, source.read_host()

    return read_good_step(directory, read, fixed, step_flag=step_flag)[1]
