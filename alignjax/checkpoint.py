"""Orbax checkpoints of the train state and of every process's data-iterator position.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. `state` holds the sharded train state
(params, optimizer state, step, rng); `data` holds the data iterator's position as JSON (the
number of global batches consumed, plus what identifies the stream: seed, batch size,
source), the same on every process, so a resumed run sees exactly the batches the
uninterrupted one would have, even with another number of workers or hosts.
Saves are asynchronous: the training loop is blocked only for the device-to-host copy.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores (train state, data iterator) pairs under `directory`."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=('state', 'data')
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None) -> None:
        """Starts an (asynchronous) save of `state` and the iterator position at `step`."""
        items = {'state': ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items['data'] = ocp.args.JsonSave(data_iterator.get_state())
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

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
            data_iterator.set_state(restored['data'])
        logging.info('Restored checkpoint %d from %s', step, self.directory)
        return restored['state']

    def wait(self) -> None:
        """Blocks until the pending asynchronous save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or abstract) carrying `shardings`."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
