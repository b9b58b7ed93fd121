"""The run folder: checks before a run, atomic writes during it, provenance after it.

A run folder holds `config.json` (written first), `model.keras`, `codes.h5`,
`precision_at_k.png`, `pr_curve.png` and `metrics.json` (written last), plus `backup/` while
training is under way. Every file is written under a temporary name in the same
folder and renamed into place, so a killed run never leaves a file that looks
complete, and `metrics.json` present means the run finished.

Nothing here imports TensorFlow: the CLI checks its folder before any of that.
"""

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

PROJECT_VERSION = "0.1.0"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
CODES_FILE = "codes.h5"
PLOT_FILE = "precision_at_k.png"
PR_CURVE_FILE = "pr_curve.png"
BACKUP_DIR = "backup"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, MODEL_FILE, CODES_FILE, PLOT_FILE, PR_CURVE_FILE)


class RunDirError(Exception):
    """A run folder that cannot be used as asked; the message is meant for the user."""


def check_out_dir(out, resume=False, overwrite=False):
    """Checks that `out` can hold this run, without changing anything on disk.

    Args:
        out: the run folder.
        resume: continue the run already in `out`. Defaults to `False`.
        overwrite: replace the run already in `out`. Defaults to `False`.

    Raises:
        RunDirError: `out` is a file, is not writable, holds files but neither
            `resume` nor `overwrite` was asked, or `resume` was asked for a folder
            with no run in it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a folder")
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise RunDirError(f"--resume: no run to resume in {out} (it has no {CONFIG_FILE})")
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RunDirError(f"--out {out} is not empty; pass --resume to continue that run or --overwrite to replace it")
    _check_writable(out)


def clear_run(out):
    """Removes the files of an earlier run from `out` (for `--overwrite`); other files stay."""
    out = Path(out)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    remove_backup(out)


def remove_backup(out):
    """Removes the training backup, once the trained model itself is saved."""
    shutil.rmtree(Path(out) / BACKUP_DIR, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it to `path` only if the block succeeds.

    The temporary name keeps `path`'s suffix, since some writers (Keras's
    `model.save`) insist on it.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_json(path, payload):
    """Writes `payload` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def provenance():
    """Versions, device-independent platform facts and the git commit of this code, for `metrics.json`."""
    import keras

    backend = keras.backend.backend()
    return {
        "project_version": PROJECT_VERSION,
        "keras_version": keras.__version__,
        "backend": backend,
        "backend_version": _module_version(backend),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def _check_writable(out):
    """Proves a file can be made in `out`, or in its nearest existing parent; raises `RunDirError` if not.

    A real write is the only honest test: permission bits say nothing to root,
    nor about read-only file systems. The probe file is removed again and no
    folder is created, so a run refused later leaves no trace.
    """
    existing = Path(out)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise RunDirError(f"--out {out} is not writable ({error.strerror or error})") from None


def _module_version(name):
    try:
        return __import__(name).__version__
    except (ImportError, AttributeError):
        return None


def _git_commit():
    """The commit of this code's checkout, with `+dirty` when it has local changes; `None` outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def write_codes(path, db_bits, query_bits, db_labels, query_labels, split):
    """Writes `codes.h5`: the codes, labels and places of exactly the evaluated items.

    `db_index`/`query_index` are positions within the source split named, item by
    item, by `db_source`/`query_source` (indices into `protocols.SOURCES`:
    train, test, database).
    """
    import h5py

    import protocols

    with atomic_path(path) as temporary, h5py.File(temporary, "w") as codes:
        codes["db_bits"] = db_bits
        codes["query_bits"] = query_bits
        codes["db_labels"] = db_labels.astype(np.int64)
        codes["query_labels"] = query_labels.astype(np.int64)
        for role, items in (("db", split.database), ("query", split.queries)):
            codes[f"{role}_index"] = items.positions
            codes[f"{role}_source"] = items.sources
            codes[f"{role}_source"].attrs["sources"] = list(protocols.SOURCES)
        codes.attrs["protocol"] = split.protocol
