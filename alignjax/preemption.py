"""Preemption: SIGTERM / SIGINT end a run cleanly, on a step every process agrees on.

Ctrl-C is acknowledged at once (a line names the step being finished); a second Ctrl-C
raises KeyboardInterrupt and stops without saving that step.

The handlers only set a flag; the training loop asks `PreemptionWatcher.reached(step)`
after each step and, when it says so, saves a checkpoint and exits 0 (docs/CHECKPOINTS.md,
guarantee 2). With several processes JAX's preemption sync point makes every process save
the same step.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import jax

from alignjax.checkpoint import all_processes_agree

log = logging.getLogger(__name__)


class PreemptionWatcher:
    """SIGTERM / SIGINT -> finish the step, save, exit 0, on a step all processes agree on.

    One process: the handlers only set a flag; `reached(step)` reads it after each step.
    Several processes: JAX's preemption service (started by `jax.distributed.initialize`)
    already listens for SIGTERM and propagates the notice to every process; its
    `reached_preemption_sync_point(step)` turns True on all of them at the same step (the
    max step over processes + 1). SIGINT is forwarded to it as a SIGTERM. Without the
    service (`jax_enable_preemption_service=False`), the flags are all-gathered every
    `sync_every` steps (a tiny collective).
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), sync_every: int = 1):
        self.signal_name: str | None = None
        self.current_step: int | None = None  # Set by the loop; named when Ctrl-C comes.
        self._flag = False
        self._interrupted = False
        self._previous: dict[int, Any] = {}
        self._sync_every = max(int(sync_every), 1)
        self._service = None
        if jax.process_count() > 1:
            from jax._src import distributed

            self._service = distributed.global_state.preemption_sync_manager
        for sig in signals:
            if self._service is not None and sig == signal.SIGTERM:
                continue  # JAX's notifier owns SIGTERM.
            handler = self._forward if self._service is not None else self._set
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # Not the main thread (e.g. a notebook worker): no handler.
                log.info('Not in the main thread: no handler for %s.', signal.Signals(sig).name)

    def _interrupt(self, signum) -> bool:
        """Ctrl-C: acknowledge the first at once; a second stops now (True: handled)."""
        if signum != signal.SIGINT:
            return False
        if self._interrupted:
            raise KeyboardInterrupt('second Ctrl-C: stopped without saving this step.')
        self._interrupted = True
        at = f' step {self.current_step}' if self.current_step is not None else ' the step'
        if jax.process_index() == 0:
            print(
                f'\nCtrl-C: finishing{at}, saving a checkpoint and stopping; press Ctrl-C '
                f'again to stop now without saving.',
                file=sys.stderr,
                flush=True,
            )
        return False

    def _set(self, signum, frame) -> None:  # Only sets a flag: the loop acts after a step.
        self._interrupt(signum)
        self._flag = True
        self.signal_name = signal.Signals(signum).name

    def _forward(self, signum, frame) -> None:
        self._interrupt(signum)
        self.signal_name = signal.Signals(signum).name
        os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """Call after every step, on every process: True when all must save and stop."""
        if self._service is not None:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or 'SIGTERM'
                return True
            return False
        if jax.process_count() > 1:
            if step % self._sync_every:
                return False
            return not all_processes_agree(not self._flag)
        return self._flag

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
