"""Tests for index.py: the HDF5 index round trip, the weights fingerprint, atomic append, bad files."""

import h5py
import numpy as np
import pytest

import index as index_file


def _write(path, n=10, bits=12, fingerprint="fp", **options):
    rng = np.random.default_rng(n)
    codes = rng.integers(0, 256, size=(n, -(-bits // 8)), dtype=np.uint8)
    ids = [f"item/{position}" for position in range(n)]
    index_file.write_index(path, codes, ids, bits, fingerprint, attrs={"source": "folder", "root": "/photos"}, **options)
    return codes, ids


def test_round_trip(tmp_path):
    path = tmp_path / "index.h5"
    labels, features = np.arange(10) % 3, np.random.default_rng(0).normal(size=(10, 4))
    codes, ids = _write(path, labels=labels, features=features)
    index = index_file.read_index(path)
    assert index.bits == 12 and index.ntotal == 10 and index.model_fingerprint == "fp"
    np.testing.assert_array_equal(index.codes, codes)
    assert index.ids() == ids and index.ids([3, 1, 3]) == ["item/3", "item/1", "item/3"]
    np.testing.assert_array_equal(index.labels([2, 0]), labels[[2, 0]])
    np.testing.assert_allclose(index.features([4]), features[[4]], atol=1e-2)
    assert index.attrs["root"] == "/photos" and index.attrs["format_version"] == index_file.FORMAT_VERSION
    with h5py.File(path) as file:
        assert file["features"].dtype == np.float16 and file["codes"].dtype == np.uint8
    assert index.position_of("item/7") == 7
    with pytest.raises(index_file.IndexFileError, match="not in the index"):
        index.position_of("nope")


@pytest.mark.parametrize("in_memory", [True, False])
def test_features_are_read_whole_once_when_small_and_row_by_row_otherwise(tmp_path, monkeypatch, in_memory):
    path = tmp_path / "index.h5"
    features = np.random.default_rng(1).normal(size=(10, 4))
    _write(path, features=features)
    monkeypatch.setattr(index_file, "FEATURES_IN_MEMORY_BYTES", 10**6 if in_memory else 0)
    index = index_file.read_index(path)
    np.testing.assert_allclose(index.features([7, 2, 7]), features[[7, 2, 7]], atol=1e-2)
    path.unlink()  # later reads come from memory, or fail on the missing file
    if in_memory:
        np.testing.assert_allclose(index.features([5]), features[[5]], atol=1e-2)
        assert index.features().shape == (10, 4)
    else:
        with pytest.raises(index_file.IndexFileError):
            index.features([5])


def test_write_rejects_codes_of_the_wrong_width(tmp_path):
    with pytest.raises(ValueError, match=r"shape \[n, 2\] for 12 bits\. Received: codes.shape=\(3, 3\)"):
        index_file.write_index(tmp_path / "i.h5", np.zeros((3, 3), np.uint8), ["a", "b", "c"], 12, "fp")
    assert not list(tmp_path.iterdir())


def test_fingerprint_hashes_weights_not_files(tmp_path):
    import keras

    import models

    keras.utils.set_random_seed(0)
    model = models.build_encoder("dbr", (32, 32, 3), 8)
    model.save(tmp_path / "a.keras")
    reloaded = keras.models.load_model(tmp_path / "a.keras")
    assert index_file.model_fingerprint(model) == index_file.model_fingerprint(reloaded)
    reloaded.get_layer(models.LATENT_LAYER).bias.assign(np.ones(8, np.float32))
    assert index_file.model_fingerprint(model) != index_file.model_fingerprint(reloaded)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_bad_files_are_refused(tmp_path, damage):
    path = tmp_path / "index.h5"
    _write(path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:800])
    elif damage == "garbage":
        path.write_bytes(b"not an index" * 100)
    else:
        path.unlink()
    with pytest.raises(index_file.IndexFileError, match="corrupt or truncated|No index file"):
        index_file.read_index(path)


def test_a_file_without_the_index_attributes_is_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["codes"] = np.zeros((2, 1), np.uint8)
    with pytest.raises(index_file.IndexFileError, match="not a search index: it lacks bits"):
        index_file.read_index(tmp_path / "other.h5")


def test_append_extends_and_checks(tmp_path):
    path = tmp_path / "index.h5"
    codes, ids = _write(path, labels=np.zeros(10, np.int64))
    extra = np.full((2, 2), 7, np.uint8)
    total = index_file.append_index(path, extra, ["new/0", "new/1"], "fp", labels=np.ones(2, np.int64), attrs={"root": "/photos"})
    index = index_file.read_index(path)
    assert total == 12 and index.ids()[-2:] == ["new/0", "new/1"]
    np.testing.assert_array_equal(index.codes[-2:], extra)
    np.testing.assert_array_equal(index.labels(), [0] * 10 + [1, 1])
    for kwargs, message in (
        ({"fingerprint": "other"}, "another model"),
        ({"ids": ["item/1", "x"]}, "already in the index"),
        ({"labels": None}, "has labels"),
        ({"attrs": {"root": "/elsewhere"}}, "has root"),
    ):
        arguments = {"codes": extra, "ids": ["a", "b"], "fingerprint": "fp", "labels": np.ones(2, np.int64), **kwargs}
        with pytest.raises(index_file.IndexFileError, match=message):
            index_file.append_index(path, **arguments)
    with pytest.raises(index_file.IndexFileError, match="12-bit codes"):
        index_file.append_index(path, np.zeros((1, 3), np.uint8), ["z"], "fp", labels=np.ones(1, np.int64))


def test_interrupted_append_leaves_the_old_index(tmp_path, monkeypatch):
    path = tmp_path / "index.h5"
    _write(path)
    before = path.read_bytes()
    real_create = h5py.Group.create_dataset

    def fail_on_ids(self, name, *args, **kwargs):
        if name == "ids":
            raise KeyboardInterrupt("killed mid-append")
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fail_on_ids)
    with pytest.raises(KeyboardInterrupt):
        index_file.append_index(path, np.zeros((1, 2), np.uint8), ["late"], "fp")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert index_file.read_index(path).ntotal == 10
    assert [entry.name for entry in tmp_path.iterdir()] == ["index.h5"]  # no temporary file left behind


def test_index_bench_reports_size_and_the_first_query_of_a_small_random_index(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("index_bench", Path(__file__).resolve().parent.parent / "bench" / "index_bench.py")
    index_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(index_bench)
    out = tmp_path / "index_bench.json"
    assert index_bench.main(["--sizes", "10000", "--command-runs", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    (row,) = results["random_index"]
    assert row["ntotal"] == 10000 and row["bits"] == 64 and row["codes_array_bytes"] == 80000
    assert 0 < row["codes_bytes"] <= row["file_bytes"]
    assert row["first_result"] == {"id": row["query_id"], "distance": 0} and row["first_result_ok"]
    assert row["command"]["first_result_ok"] and not row["command"]["imports_keras"]
    assert len(row["in_process"]["runs"]) == index_bench.IN_PROCESS_RUNS and row["in_process"]["best_s"] > 0
    assert "skipped" in results["notes"][0] and "image_queries" not in results
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[-2])["random_10000x64"]["first_result_ok"] is True
    assert not list((tmp_path / "work").glob("*.h5"))  # the random index is removed
