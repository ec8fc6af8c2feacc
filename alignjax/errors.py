"""User errors: one `error:` line on stderr, the traceback only when asked for (a leaf).

Every alignjax command line runs its work through `guard` (absl tools through
`alignjax.cli.run`, argparse tools directly). A user error becomes `error: <cause and fix>`
plus at most a few lines of context, and exit status 1 (130 for Ctrl-C):

  ValueError, FloatingPointError   config, data, checkpoint and weight-file problems (the
                                   library raises these with a message naming the fix);
  a missing / unreadable / unwritable file or directory, and any other OSError;
  a full disk                      ENOSPC anywhere in the exception's chain (Orbax wraps it);
  a missing optional package       names the `pip install 'alignjax[extra]'` that adds it;
  KeyboardInterrupt                Ctrl-C.

Anything else is a bug in alignjax and keeps its traceback. `--debug` (or `ALIGNJAX_DEBUG=1`)
shows the traceback of every error, for a bug report.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

DEBUG_ENV = 'ALIGNJAX_DEBUG'
#: Optional dependencies -> the extra that installs them (setup.cfg).
OPTIONAL_MODULES = {
    'tensorflow_datasets': 'data',
    'array_record': 'data',
    'torch': 'torch',
    'transformers': 'torch',
    'ftfy': 'clip',
    'wandb': 'wandb',
}
_CONTEXT_LINES = 4  # At most this many lines after the `error:` line.


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def user_message(e: BaseException) -> str | None:
    """The message to print for a user error, or None for a bug (keep the traceback)."""
    for link in _chain(e):
        # TensorStore (under Orbax) reports a full disk as a ValueError with the OS text.
        if not isinstance(link, OSError) and 'No space left on device' in str(link):
            return (
                'No space left on device. Free some space or use a --workdir on another '
                'disk, then run the same command: the last committed checkpoint is kept.'
            )
        if isinstance(link, OSError) and link.errno == errno.ENOSPC:
            where = f' writing {link.filename}' if link.filename else ''
            return (
                f'No space left on device{where}. Free some space or use a --workdir on '
                f'another disk, then run the same command: the last committed checkpoint is '
                f'kept.'
            )
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split('.')[0]
        if top in OPTIONAL_MODULES:
            return (
                f"This needs the optional package '{top}', which is not installed: "
                f"pip install 'alignjax[{OPTIONAL_MODULES[top]}]'."
            )
        return None
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        if e.filename and e.strerror:
            fix = {
                FileNotFoundError: 'check the path',
                PermissionError: 'check its permissions or use another directory',
                IsADirectoryError: 'give a file, not a directory',
                NotADirectoryError: 'a part of the path is a file: give a directory',
            }[type(e)]
            return f'{e.strerror}: {e.filename} ({fix}).'
        return str(e)
    if isinstance(e, FileExistsError) and e.filename:
        return f'{e.strerror}: {e.filename} (it exists and is not a directory).'
    if isinstance(e, (ValueError, FloatingPointError)):
        return str(e) or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        return f'{e.strerror}' + (f': {e.filename}' if e.filename else '')
    return None


def print_error(message: str, file=None) -> None:
    """`error: <first line>` plus at most a few lines of context."""
    file = file or sys.stderr
    lines = [line for line in message.strip().splitlines() if line.strip()] or ['(no message)']
    print(f'error: {lines[0]}', file=file)
    for line in lines[1 : 1 + _CONTEXT_LINES]:
        print(f'  {line}', file=file)
    if len(lines) > 1 + _CONTEXT_LINES:
        print(f'  ... ({len(lines) - 1 - _CONTEXT_LINES} more lines with --debug)', file=file)
    file.flush()


def debug_requested(argv: Sequence[str]) -> bool:
    return '--debug' in argv or os.environ.get(DEBUG_ENV, '') not in ('', '0')


def fail(message: str, status: int = 1):
    print_error(message)
    sys.exit(status)


def guard(fn: Callable[[], Any], debug: bool = False) -> Any:
    """`fn()`, with a user error printed as one line and `sys.exit(1)` (130: Ctrl-C).

    For tools with their own argument parser (argparse); `run` uses it for absl tools.
    """
    try:
        return fn()
    except KeyboardInterrupt as e:
        if debug:
            raise
        fail(f'interrupted: {e}' if str(e) else 'interrupted.', 130)
    except Exception as e:
        message = None if debug else user_message(e)
        if message is None:
            raise
        fail(message)


def run_main(main: Callable[[], Any]) -> Any:
    """`main()` of an argparse tool under `guard`, from its `if __name__ == '__main__'`;
    `--debug` is taken out of `sys.argv` before the tool's parser sees it."""
    debug = debug_requested(sys.argv)
    sys.argv = [a for a in sys.argv if a != '--debug']
    return guard(main, debug)
