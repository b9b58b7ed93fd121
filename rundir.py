"""The run folder: checks before a run, atomic writes during it, provenance after it.

A run folder holds `config.json` (written first), `model.keras`, `codes.h5`,
`precision_at_k.png`, `pr_curve.png` and `metrics.json` (written last), plus `backup/` while
training is under way, and `.lock`, which the live run holds (`lock`). Every file is written
under a temporary name in the same folder and renamed into place, so a killed run never leaves
a file that looks complete, and `metrics.json` present means the run finished; the renamed file
gets the mode a plain `open()` would have given it under the process's umask.

Nothing here imports TensorFlow: the CLI checks its folder before any of that.
"""

import contextlib
import errno
import fcntl
import json
import os
import platform
import re
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
LOCK_FILE = ".lock"  # held by the live run; never removed, so two runs always lock the same file
RETRIEVED_FILE = "retrieved.png"  # a few queries and the images their codes retrieve
DISTANCES_FILE = "distances.png"  # Hamming distances of same-label and other pairs
BITS_FILE = "bits.png"  # each class's mean code
RUN_FILES = (CONFIG_FILE, METRICS_FILE, MODEL_FILE, CODES_FILE, PLOT_FILE, PR_CURVE_FILE, RETRIEVED_FILE, DISTANCES_FILE, BITS_FILE)
# The mode `open()` creates files with, before the umask takes its bits away.
NEW_FILE_MODE = 0o666
# Room asked for HDF5's own structures, beyond the arrays, before an HDF5 file is written.
HDF5_METADATA_BYTES = 2**20


class RunDirError(Exception):
    """A run folder that cannot be used as asked; the message is meant for the user."""


class WriteError(Exception):
    """A file could not be written (a full disk, a lost permission); one line naming the path and the error."""

    def __init__(self, path, error):
        super().__init__(f"cannot write {path}: {_reason(error)}")


def _reason(error):
    """The short reason of an `OSError`: its `strerror`, or HDF5's "error message" in h5py's long text."""
    if getattr(error, "strerror", None):
        return error.strerror
    text = str(error)
    hdf5_reason = re.search(r"error message = '([^']+)'", text)
    return hdf5_reason.group(1) if hdf5_reason else (text.splitlines() or [type(error).__name__])[0]


def no_space(needed_bytes, folder):
    """Raises the `OSError` a full disk gives if `folder`'s file system has under `needed_bytes` free.

    Writers whose failure half-way is messy (HDF5 leaves files it cannot flush, which crash the
    interpreter when they are freed) ask first.
    """
    if shutil.disk_usage(folder).free < needed_bytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


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
    elif out.is_dir() and any(entry.name != LOCK_FILE for entry in out.iterdir()) and not overwrite:
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
def atomic_path(path, mode=None):
    """Yields a temporary path beside `path`; renames it to `path` only if the block succeeds.

    The temporary name keeps `path`'s suffixes, since some writers insist on them (Keras's
    `model.save` on `.keras`, `save_weights` on `.weights.h5`). The file gets `mode`, by default the one `open()` would give a new file under the
    process's umask (`tempfile.mkstemp` alone would leave it 0600). An `OSError` while writing
    or renaming (a full disk, say) becomes a `WriteError` naming `path`; either way the
    temporary file is removed and `path` keeps what it held before.

    Args:
        path: the file to write.
        mode: permission bits for the finished file. Defaults to `None`: `NEW_FILE_MODE` less
            the umask.
    """
    path = Path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{''.join(path.suffixes)}")
    except OSError as error:
        raise WriteError(path, error) from None
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.chmod(temporary, NEW_FILE_MODE & ~current_umask() if mode is None else mode)
        os.replace(temporary, path)
    except OSError as error:
        raise WriteError(path, error) from None
    finally:
        Path(temporary).unlink(missing_ok=True)


def temporary_pattern(path):
    """The glob of the temporary files `atomic_path(path)` makes beside `path`."""
    path = Path(path)
    return f".{path.stem}.*.tmp{''.join(path.suffixes)}"


def remove_temporaries(folder, name=None):
    """Removes the temporary files that writers killed mid-write (SIGKILL, power loss) left in
    `folder`: those of the file `name`, or all of `atomic_path`'s. Only for the lock's holder."""
    pattern = temporary_pattern(Path(folder) / name) if name else ".*.tmp*"
    for leftover in Path(folder).glob(pattern):
        leftover.unlink(missing_ok=True)


def current_umask():
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def lock(lock_path, what):
    """Holds an exclusive lock on `lock_path` for the block, or refuses at once if a live process holds it.

    The lock is the kernel's (`fcntl.flock`): a process that dies, even by SIGKILL, lets go of it,
    so a stale lock file never blocks anyone. The holder writes its process id into the file, for
    the message of whoever is refused.

    Args:
        lock_path: the lock file; created if missing, never removed.
        what: how the message names the locked thing, e.g. `"--out runs/a"`.

    Raises:
        RunDirError: another live process holds the lock; the message names its process id.
    """
    lock_path = Path(lock_path)
    try:
        stream = open(lock_path, "a+")
    except OSError as error:
        raise WriteError(lock_path, error) from None
    with stream:
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise WriteError(lock_path, error) from None
            stream.seek(0)
            holder = stream.read().strip() or "unknown"
            raise RunDirError(f"{what} is in use by process {holder}; wait for it to finish, or choose another") from None
        stream.seek(0)
        stream.truncate()
        stream.write(f"{os.getpid()}\n")
        stream.flush()
        yield


@contextlib.contextmanager
def run_lock(out):
    """`lock` on the run folder `out`, held while a run writes it.

    A folder made here for the lock alone is removed again if the run wrote nothing into it
    (bad input found once the data was read), so a refused run leaves no trace.
    """
    out = Path(out)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with lock(out / LOCK_FILE, f"--out {out}"):
            yield
    finally:
        if made and [entry.name for entry in out.iterdir()] == [LOCK_FILE]:
            (out / LOCK_FILE).unlink(missing_ok=True)
            out.rmdir()


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
    arrays = (db_bits, query_bits, db_labels, query_labels, split.database.positions, split.queries.positions)
    with atomic_path(path) as temporary:
        # Twice the arrays' bytes: labels are stored as int64, which may be wider than they come.
        no_space(sum(np.asarray(array).nbytes * 2 for array in arrays) + HDF5_METADATA_BYTES, Path(path).parent)
        _write_codes(temporary, db_bits, query_bits, db_labels, query_labels, split)


def read_codes(path):
    """The arrays of a `codes.h5` (`write_codes`), by name: bits, labels, indices and sources of database and queries."""
    import h5py

    with h5py.File(path, "r") as codes:
        return {name: codes[name][()] for name in codes}


def _write_codes(temporary, db_bits, query_bits, db_labels, query_labels, split):
    import h5py

    import protocols

    with h5py.File(temporary, "w") as codes:
        codes["db_bits"] = db_bits
        codes["query_bits"] = query_bits
        codes["db_labels"] = db_labels.astype(np.int64)
        codes["query_labels"] = query_labels.astype(np.int64)
        for role, items in (("db", split.database), ("query", split.queries)):
            codes[f"{role}_index"] = items.positions
            codes[f"{role}_source"] = items.sources
            codes[f"{role}_source"].attrs["sources"] = list(protocols.SOURCES)
        codes.attrs["protocol"] = split.protocol
