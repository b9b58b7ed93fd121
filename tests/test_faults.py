"""Faults a user meets: Ctrl-C, kills, a full disk, two writers on one folder or index, the umask.

After each fault the user sees one line (never a traceback), nothing complete is lost or
replaced by something incomplete, and `--resume` (or the same command again) ends with the
outputs an uninterrupted run writes.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import h5py
import keras
import numpy as np
import pytest

import evaluate
import index as index_file
import models
import reproduce
import retrieval
import rundir
import search
import train
from cli import tiny_argv

REPO_ROOT = os.path.dirname(retrieval.__file__)
INTERRUPTED = 130


def interrupted(capsys, main, argv):
    """Runs a CLI `main` that must stop at a Ctrl-C; returns its one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == INTERRUPTED, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr


def raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def resumes_to_the_end(out):
    """`--resume` finishes the run; its metrics are those of the stored codes."""
    assert retrieval.main(["--resume", "--out", str(out), "-s", "0"]) == 0
    metrics = rundir.read_json(out / rundir.METRICS_FILE)
    with h5py.File(out / rundir.CODES_FILE) as codes:
        scores = evaluate.evaluate_retrieval(codes["query_bits"][()], codes["query_labels"][()], codes["db_bits"][()], codes["db_labels"][()], 120)
    assert metrics["mAP@120"] == pytest.approx(scores["mAP"]) and metrics["mAP@120"] > 0.5
    assert not (out / rundir.BACKUP_DIR).exists()
    return metrics


def leftovers(folder):
    """Temporary files left in `folder` (there must be none)."""
    return [path.name for path in folder.rglob("*") if ".tmp" in path.name]


# --- Ctrl-C ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_training_says_how_to_resume_and_exits_130(tiny_tree, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "retrieval.py", *tiny_argv(tiny_tree, out), "-e", "200"]
    # SIGINT's default disposition in the child, even when the suite itself runs in the background
    # (a non-interactive shell's `&` starts it with SIGINT ignored, which the child would inherit)
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not train.checkpoints(out / rundir.BACKUP_DIR) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == INTERRUPTED, stderr[-2000:]
    assert "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line == f"retrieval.py: interrupted; the finished epochs are kept; resume with: python retrieval.py --resume --out {out}"
    assert train.resumed_epoch(out / rundir.BACKUP_DIR) >= 1 and not leftovers(out)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["encoding", "evaluation", "codes.h5"])
def test_ctrl_c_after_training_keeps_the_model_and_resume_finishes(capsys, tiny_tree, tmp_path, monkeypatch, stage):
    out = tmp_path / stage
    with monkeypatch.context() as patch:
        if stage == "encoding":
            patch.setattr(models, "encode", raise_interrupt)
        elif stage == "evaluation":
            patch.setattr(evaluate, "evaluate_retrieval", raise_interrupt)
        else:  # killed half-way through writing codes.h5

            def half_written(path, *args):
                with rundir.atomic_path(path) as temporary, h5py.File(temporary, "w") as codes:
                    codes["db_bits"] = np.zeros((3, 12), np.uint8)
                    raise KeyboardInterrupt

            patch.setattr(rundir, "write_codes", half_written)
        stderr = interrupted(capsys, retrieval.main, [*tiny_argv(tiny_tree, out), "-e", "4"])
    assert f"resume with: python retrieval.py --resume --out {out}" in stderr
    assert (out / rundir.MODEL_FILE).is_file() and not (out / rundir.METRICS_FILE).exists() and not leftovers(out)
    assert (out / rundir.CODES_FILE).exists() == (stage == "evaluation")  # written whole, or not at all
    # What a SIGKILL at that moment leaves besides: the temporary file it was writing.
    (out / ".codes.k1ll3d.tmp.h5").write_bytes(b"half an HDF5 file")
    resumes_to_the_end(out)
    assert not leftovers(out)


def test_ctrl_c_before_anything_is_saved_says_so(capsys, tiny_tree, tmp_path, monkeypatch):
    monkeypatch.setattr(retrieval, "load_arrays", raise_interrupt)
    stderr = interrupted(capsys, retrieval.main, tiny_argv(tiny_tree, tmp_path / "run"))
    assert "nothing of this run was saved" in stderr and not (tmp_path / "run" / rundir.CONFIG_FILE).exists()


def test_ctrl_c_during_reproduce_keeps_the_finished_cells(capsys, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    finished = out / "cifar10-dlbhc-dbr-12b" / rundir.METRICS_FILE
    finished.parent.mkdir(parents=True)
    finished.write_text('{"mAP@1000": 0.5}')
    monkeypatch.setattr(reproduce, "run_cell", raise_interrupt)  # Ctrl-C while the 48-bit cell trains
    stderr = interrupted(capsys, reproduce.main, ["--methods", "dbr", "--bits", "12", "48", "--out", str(out)])
    assert f"the finished cells in {out} are kept: run the same command again to go on" in stderr
    assert finished.read_text() == '{"mAP@1000": 0.5}' and not (out / reproduce.RESULTS_FILE).exists()


# --- kills and half-written checkpoints --------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_ends_with_the_same_outputs(tiny_tree, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "retrieval.py", *tiny_argv(tiny_tree, out), "-e", "6"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not train.checkpoints(out / rundir.BACKUP_DIR) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.kill()
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / rundir.METRICS_FILE).exists()
    assert rundir.LOCK_FILE in os.listdir(out)  # the dead run's lock file stays, and must not block
    metrics = resumes_to_the_end(out)
    assert metrics["epochs_trained"] == 6 and not leftovers(out)


@pytest.mark.slow
def test_a_half_written_checkpoint_is_never_loaded(capsys, monkeypatch, tiny_tree, tmp_path):
    out = tmp_path / "run"
    _interrupt_after(capsys, monkeypatch, tiny_tree, out, epochs=2)
    backup = out / rundir.BACKUP_DIR
    (epoch, complete), = train.checkpoints(backup)
    assert epoch == 2
    # What a kill in the middle of writing the third checkpoint leaves: a partial temporary file.
    (backup / ".epoch-0003.weights.abc123.tmp.weights.h5").write_bytes(complete.read_bytes()[:1000])
    assert train.resumed_epoch(backup) == 2
    assert retrieval.main(["--resume", "--out", str(out), "-s", "1"]) == 0
    assert "resuming from epoch 2 of 4" in capsys.readouterr().out


def _interrupt_after(capsys, monkeypatch, tiny_tree, out, epochs):
    """Runs `retrieval.main` and presses Ctrl-C at the end of epoch `epochs` (after its checkpoint)."""
    fit = train.fit_resumable

    def fit_then_interrupt(model, *args, callbacks=(), **kwargs):
        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == epochs:
                    raise KeyboardInterrupt

        return fit(model, *args, callbacks=[*callbacks, Interrupt()], **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train, "fit_resumable", fit_then_interrupt)
        interrupted(capsys, retrieval.main, [*tiny_argv(tiny_tree, out), "-e", "4"])


# --- a full disk -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_mid_run_is_one_line_and_resume_continues_with_the_optimizer_state(capsys, tiny_tree, tmp_path, monkeypatch):
    out = tmp_path / "full"
    replace = os.replace

    def no_space_for_the_third_checkpoint(source, destination):
        if str(destination).endswith("epoch-0003.weights.h5"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(source, destination)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", no_space_for_the_third_checkpoint)
        with pytest.raises(SystemExit) as exit_info:
            retrieval.main([*tiny_argv(tiny_tree, out), "-e", "4", "--method", "dlbhc", "-o", "adam"])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert f"cannot write {out / rundir.BACKUP_DIR / 'epoch-0003.weights.h5'}: No space left on device" in stderr
    assert [epoch for epoch, _ in train.checkpoints(out / rundir.BACKUP_DIR)] == [2] and not leftovers(out)

    with warnings.catch_warnings(record=True) as caught:  # Keras warns when it skips optimizer variables it cannot load
        warnings.simplefilter("always")
        assert retrieval.main(["--resume", "--out", str(out), "-s", "1"]) == 0
    assert not [warning for warning in caught if "Skipping variable loading" in str(warning.message)]
    assert "resuming from epoch 2 of 4" in capsys.readouterr().out


def _mount_tmpfs(folder, size):
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")


@pytest.mark.slow
def test_a_really_full_disk_ends_with_one_line_not_a_crash(tiny_tree, tmp_path):
    small = tmp_path / "small"
    _mount_tmpfs(small, "3m")
    try:
        command = [sys.executable, "retrieval.py", *tiny_argv(tiny_tree, small / "run"), "-e", "2"]
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr[-2000:]  # not 139, a segmentation fault
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"retrieval.py: error: cannot write {small / 'run'}") and "No space left on device" in last_line
        assert "Traceback" not in result.stderr and not leftovers(small)
    finally:
        subprocess.run(["umount", str(small)], check=False)


# --- one writer per folder and per index ---------------------------------------------------------


def test_a_folder_a_live_run_holds_is_refused_before_anything_is_written(capsys, tiny_tree, tmp_path):
    out = tmp_path / "busy"
    with rundir.run_lock(out):
        with pytest.raises(SystemExit) as exit_info:
            retrieval.main(tiny_argv(tiny_tree, out))
        assert os.listdir(out) == [rundir.LOCK_FILE]  # nothing written
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"--out {out} is in use by process {os.getpid()}" in stderr, stderr
    assert not out.exists()  # the holder made the folder for its lock alone, and took it away again


@pytest.mark.slow
def test_two_runs_started_at_once_on_one_folder_leave_one_consistent_run(tiny_tree, tmp_path):
    out = tmp_path / "shared"
    runs = [subprocess.Popen([sys.executable, "retrieval.py", *tiny_argv(tiny_tree, out, "--overwrite"), "-l", str(bits), "-e", "2"],
                             cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for bits in (12, 16)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    statuses = sorted(status for status, _ in results)
    if statuses == [0, 0]:  # the second started only after the first had finished: it replaced it, whole
        pass
    else:
        assert statuses == [0, 2], results
        refused = next(stderr for status, stderr in results if status == 2)
        assert "is in use by process" in refused and refused.count("\n") == 1
    config, metrics = rundir.read_json(out / rundir.CONFIG_FILE), rundir.read_json(out / rundir.METRICS_FILE)
    with h5py.File(out / rundir.CODES_FILE) as codes:
        assert config["bits"] == metrics["bits"] == codes["db_bits"].shape[1]


def test_an_index_being_written_is_refused_and_left_as_it_was(capsys, tiny_tree, tmp_path):
    model = tmp_path / "model.keras"
    models.build_encoder("dbr", (32, 32, 3), 12).save(model)
    out = tmp_path / "photos.h5"
    encode = ["encode", "--model", str(model), "--images", str(tiny_tree / "test" / "circle"), "--out", str(out)]
    assert search.main(encode) == 0
    before = out.read_bytes()
    with rundir.lock(search.index_lock_path(out), "the index"):
        with pytest.raises(SystemExit) as exit_info:
            search.main([*encode[:4], str(tiny_tree / "test" / "square"), *encode[5:], "--append"])
    assert exit_info.value.code == 2 and f"in use by process {os.getpid()}" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_ctrl_c_mid_index_append_leaves_the_index_as_it_was(capsys, tiny_tree, tmp_path, monkeypatch):
    model = tmp_path / "model.keras"
    models.build_encoder("dbr", (32, 32, 3), 12).save(model)
    out = tmp_path / "photos.h5"
    folder = tmp_path / "photos"
    shutil.copytree(tiny_tree / "test" / "circle", folder / "circle")
    assert search.main(["encode", "--model", str(model), "--images", str(folder), "--out", str(out)]) == 0
    before = out.read_bytes()
    shutil.rmtree(folder / "circle")
    shutil.copytree(tiny_tree / "test" / "square", folder / "square")
    append = ["encode", "--model", str(model), "--images", str(folder), "--out", str(out), "--append"]
    create_dataset = h5py.Group.create_dataset

    def interrupted_after_the_codes(group, name, *args, **kwargs):
        created = create_dataset(group, name, *args, **kwargs)
        if name == "ids":
            raise KeyboardInterrupt
        return created

    with monkeypatch.context() as patch:
        patch.setattr(h5py.Group, "create_dataset", interrupted_after_the_codes)
        stderr = interrupted(capsys, search.main, append)
    assert f"the index {out} is as it was" in stderr
    assert out.read_bytes() == before and not leftovers(tmp_path)
    (tmp_path / ".photos.k1ll3d.tmp.h5").write_bytes(b"half an HDF5 file")  # what a SIGKILL leaves besides
    assert search.main(append) == 0 and index_file.read_index(out).ntotal == 16
    assert not leftovers(tmp_path)


# --- file modes ------------------------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask):
    rundir.write_json(tmp_path / "a.json", {})
    with open(tmp_path / "plain.txt", "w"):
        pass
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.slow
def test_every_file_a_run_and_an_index_write_honours_the_umask(tiny_tree, tmp_path, umask):
    out = tmp_path / "run"
    assert retrieval.main([*tiny_argv(tiny_tree, out), "-e", "1"]) == 0
    expected = 0o666 & ~umask
    assert {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()} == dict.fromkeys([*rundir.RUN_FILES, rundir.LOCK_FILE], expected)
    index, folder = tmp_path / "photos.h5", tmp_path / "photos"
    shutil.copytree(tiny_tree / "test" / "circle", folder / "circle")
    encode = ["encode", "--model", str(out / rundir.MODEL_FILE), "--images", str(folder), "--out", str(index)]
    assert search.main(encode) == 0
    assert index.stat().st_mode & 0o777 == expected
    index.chmod(0o640)
    shutil.rmtree(folder / "circle")
    shutil.copytree(tiny_tree / "test" / "square", folder / "square")
    assert search.main([*encode, "--append"]) == 0
    assert index.stat().st_mode & 0o777 == 0o640  # an append keeps the index's own mode
