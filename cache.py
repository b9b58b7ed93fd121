"""The cache of decoded datasets: one `.npz` file of uint8 arrays per source, so only the first run decodes.

`offline.py` caches the offline copies of the named datasets and `own_images.py` the users' own images,
in `$DEEPHASH_CACHE`, else `~/.cache/deephash`; `offline.py` also caches the member list of each archive
it reads (`archive-listing-<hash>.npz`), so checking a copy does not decompress it every time. A file is
named `<slug>-<hash>.npz`: the hash covers `CACHE_FORMAT_VERSION` and what the caller says identifies the
source (its path, size, modification times, ...), so a changed source gets a new file. A file is written
under a temporary name and renamed when complete; an unreadable one is decoded anew, and an unwritable
cache only warns.

Example:

    python -c "import cache; print(cache.resolve_cache_dir(None))"
"""

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

import data

# Cache of decoded offline copies: `$DEEPHASH_CACHE`, else `~/.cache/deephash`.
CACHE_ENV = "DEEPHASH_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/deephash"
# Part of every cache key: bump it whenever decoding changes what the arrays hold.
CACHE_FORMAT_VERSION = 1
_CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")


def resolve_cache_dir(cache_dir):
    """The cache folder: `cache_dir` when given, else `$DEEPHASH_CACHE` when set, else `~/.cache/deephash`."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def cache_path(cache_dir, slug, key_parts):
    """`<slug>-<hash>.npz`, the hash over the format version and `key_parts` (JSON-serialisable)."""
    key = json.dumps([CACHE_FORMAT_VERSION, *key_parts])
    return cache_dir / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def read_cache(path, required=_CACHE_KEYS):
    """Every array of the cache file, or None when there is no usable cache file holding `required`.

    `required` defaults to the arrays of a named dataset: `x_train`, `y_train`, `x_test`, `y_test` and
    `class_names`. An unreadable file is ignored with a warning.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path) as cached:
            missing = set(required) - set(cached.files)
            if missing:
                raise KeyError(f"no {', '.join(sorted(missing))}")
            return {key: cached[key] for key in cached.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:  # truncated or corrupt
        warnings.warn(f"Ignoring unreadable cache file {path} ({error}); decoding again.",
                      stacklevel=data.caller_stacklevel())
        return None


def write_cache(path, arrays):
    """Writes the arrays under a temporary name, then renames: a killed run leaves no complete-looking file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temporary, "wb") as stream:
                np.savez(stream, **arrays)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as error:
        warnings.warn(f"Cannot write the data cache {path} ({error}); not caching.",
                      stacklevel=data.caller_stacklevel())
