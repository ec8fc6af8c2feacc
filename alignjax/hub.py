"""``hf-hub:ORG/NAME`` weight names, resolved from the local Hugging Face cache, offline.

``load_pretrained('hf-hub:google/siglip2-base-patch16-224')`` (and ``python -m
alignjax.convert --from hf hf-hub:...``) read a model that ``huggingface_hub`` has already
downloaded into its cache (``$HF_HUB_CACHE``, default ``$HF_HOME/hub`` =
``~/.cache/huggingface/hub``: ``models--ORG--NAME/snapshots/<commit>/``, with
``refs/<branch>`` naming the commit). alignjax never downloads: a model that is not cached
fails with one line saying how to fetch it (``hf download ORG/NAME`` on a machine with a
network, then copy the cache folder).

``huggingface_hub`` does the lookup (``snapshot_download(..., local_files_only=True)``), so
every cache setting it honours (``HF_HOME``, ``HF_HUB_CACHE``, revisions by branch, tag or
commit) works here the same way. A revision goes after ``@``:
``hf-hub:ORG/NAME@<commit or branch>``.
"""

from __future__ import annotations

import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors

from alignjax import weight_files

__all__ = ["PREFIX", "is_hub_name", "resolve"]

PREFIX = "hf-hub:"


def is_hub_name(path: str) -> bool:
    """Whether ``path`` is an ``hf-hub:ORG/NAME[@REV]`` name."""
    return isinstance(path, str) and path.startswith(PREFIX)


def parse(name: str) -> tuple[str, str | None]:
    """``'hf-hub:ORG/NAME@REV'`` -> ``('ORG/NAME', 'REV')`` (revision None: the default
    branch).

    Raises:
      ValueError: not of that form.
    """
    body = name[len(PREFIX) :] if is_hub_name(name) else name
    repo, _, revision = body.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(
            f"{name!r} is not a Hugging Face model name: expected hf-hub:ORG/NAME "
            "(optionally @REVISION), e.g. hf-hub:google/siglip2-base-patch16-224."
        )
    return repo, revision or None


def resolve(name: str, cache_dir: str | None = None) -> str:
    """The local snapshot folder of ``hf-hub:ORG/NAME[@REV]`` (no network access).

    Args:
      name: the hub name (a plain path is returned unchanged).
      cache_dir: the hub cache to read (default: ``huggingface_hub``'s, from ``HF_HUB_CACHE``
        / ``HF_HOME``).

    Raises:
      WeightFileMissing: the model (or that revision) is not in the cache.
      ValueError: a malformed name.
    """
    if not is_hub_name(name):
        return name
    repo, revision = parse(name)
    cache = cache_dir or hub_constants.HF_HUB_CACHE
    try:
        return huggingface_hub.snapshot_download(
            repo, revision=revision, cache_dir=cache_dir, local_files_only=True
        )
    except (hub_errors.LocalEntryNotFoundError, FileNotFoundError) as e:
        at = f" at revision {revision!r}" if revision else ""
        raise weight_files.WeightFileMissing(
            f"{name}: {repo}{at} is not in the local Hugging Face cache ({cache}); alignjax "
            f"reads the cache and never downloads: run `hf download {repo}` where there is a "
            "network (or set HF_HUB_CACHE / HF_HOME to the cache that holds it)."
        ) from e
