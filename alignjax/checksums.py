"""SHA-256 of every file of a checkpoint step, written at save time, verified on restore.

Orbax and TensorStore check the structure of a checkpoint (the OCDBT manifest, B-tree nodes
and the zarr shard index carry CRC-32C), but not the array bytes themselves: a flipped bit
inside a chunk restores silently as a wrong value. So each step directory gets a manifest,
`<step>/checksums.json`::

    {"algorithm": "sha256",
     "files": {"state/ocdbt.process_0/d/3748...": {"size": 268979, "sha256": "9f2c..."}, ...}}

It names every file of the step by its path relative to the step directory, so it survives
moving or copying the step directory. Files Orbax rewrites when it commits the step
(`commit_success.txt`, `_CHECKPOINT_METADATA`) are left out. `verify` checks sizes first
(a truncated file costs no hashing), then hashes. A step without a manifest (written before
checksums existed) is not verified.

A leaf module: files and hashes only, no JAX.
"""

from __future__ import annotations

import hashlib
import json
import os

FILE_NAME = 'checksums.json'
ALGORITHM = 'sha256'
# Rewritten by Orbax after the manifest is written (commit marker, commit timestamp).
SKIPPED = frozenset({'commit_success.txt', '_CHECKPOINT_METADATA', FILE_NAME})
_CHUNK = 8 << 20


class ChecksumError(ValueError):
    """A file of a checkpoint step differs from what was written (names the file)."""


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def list_files(step_dir: str) -> list[str]:
    """Relative paths of the files of `step_dir` that the manifest covers, sorted."""
    out = []
    for root, _, files in os.walk(step_dir):
        for name in files:
            if name not in SKIPPED:
                out.append(os.path.relpath(os.path.join(root, name), step_dir))
    return sorted(out)


def compute(step_dir: str) -> dict:
    """The manifest of `step_dir` as it is on disk now."""
    files = {}
    for rel in list_files(step_dir):
        path = os.path.join(step_dir, rel)
        files[rel] = {'size': os.path.getsize(path), ALGORITHM: file_sha256(path)}
    return {'algorithm': ALGORITHM, 'files': files}


def write(step_dir: str) -> dict:
    """Computes the manifest of `step_dir` and writes it there atomically; returns it."""
    manifest = compute(step_dir)
    path = os.path.join(step_dir, FILE_NAME)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(manifest, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return manifest


def read(step_dir: str) -> dict | None:
    """The manifest of `step_dir`, None if it has none; ChecksumError if it is damaged."""
    path = os.path.join(step_dir, FILE_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        files = manifest['files']
        if manifest.get('algorithm') != ALGORITHM or not isinstance(files, dict):
            raise ValueError(f'expected algorithm {ALGORITHM!r} and a "files" mapping')
        for entry in files.values():
            int(entry['size']), str(entry[ALGORITHM])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ChecksumError(f'{FILE_NAME} is damaged ({type(e).__name__}: {e})') from e
    return manifest


def verify(step_dir: str, shard: tuple[int, int] = (0, 1)) -> str | None:
    """The first problem found in `step_dir` against its manifest, or None.

    A problem names the file relative to `step_dir`: 'state/d/ab12: 139 bytes, 279 when
    saved (truncated or overwritten)'. `shard=(i, n)` checks only every n-th file from the
    i-th (so n processes can share the work). No manifest: None (nothing to check against).
    """
    try:
        manifest = read(step_dir)
    except ChecksumError as e:
        return str(e)
    if manifest is None:
        return None
    index, count = shard
    entries = sorted(manifest['files'].items())[index::count]
    for rel, entry in entries:  # Sizes first: a truncated or missing file costs no hashing.
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            return f'{rel} is missing'
        size = os.path.getsize(path)
        if size != int(entry['size']):
            return f'{rel}: {size} bytes, {entry["size"]} when saved (truncated or overwritten)'
    for rel, entry in entries:
        if file_sha256(os.path.join(step_dir, rel)) != entry[ALGORITHM]:
            return (
                f'{rel}: its {ALGORITHM} differs from the one recorded when it was saved (the '
                'file changed on disk: storage or copy corruption)'
            )
    return None
