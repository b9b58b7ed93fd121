"""Run-folder checks and atomic writes."""

import json
import os

import pytest

import rundir


def test_empty_or_missing_folder_is_fine(tmp_path):
    rundir.check_out_dir(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    rundir.check_out_dir(tmp_path)


def test_non_empty_folder_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(rundir.RunDirError, match="not empty; pass --resume .* or --overwrite"):
        rundir.check_out_dir(tmp_path)
    rundir.check_out_dir(tmp_path, overwrite=True)


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(rundir.RunDirError, match="no run to resume"):
        rundir.check_out_dir(tmp_path, resume=True)
    (tmp_path / rundir.CONFIG_FILE).write_text("{}")
    rundir.check_out_dir(tmp_path, resume=True)


def test_file_in_the_way_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(rundir.RunDirError, match="exists and is not a folder"):
        rundir.check_out_dir(blocker)
    with pytest.raises(rundir.RunDirError, match="not writable"):
        rundir.check_out_dir(blocker / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(rundir.RunDirError, match="not writable"):
            rundir.check_out_dir(tmp_path / "run")
    finally:
        tmp_path.chmod(0o700)


def test_atomic_path_leaves_nothing_on_failure_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with rundir.atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]


def test_atomic_path_keeps_the_suffix_and_replaces(tmp_path):
    target = tmp_path / "model.keras"
    with rundir.atomic_path(target) as temporary:
        assert temporary.suffix == ".keras" and temporary.parent == tmp_path
        temporary.write_text("new")
    assert target.read_text() == "new"
    rundir.write_json(tmp_path / "c.json", {"a": 1})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": 1}


def test_clear_run_removes_only_run_files(tmp_path):
    for name in (*rundir.RUN_FILES, "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / rundir.BACKUP_DIR).mkdir()
    rundir.clear_run(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_provenance_names_versions_and_commit():
    facts = rundir.provenance()
    assert facts["backend"] in {"tensorflow", "jax", "torch", "numpy"}
    assert facts["keras_version"] and facts["project_version"] == rundir.PROJECT_VERSION
    assert "git_commit" in facts
