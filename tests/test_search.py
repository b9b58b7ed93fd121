"""search.py end to end on the tiny image tree: encode, query by image and by id, JSON, grid, radius,
re-ranking, append, and every bad input (one line, exit 2, the index's bytes unchanged)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import engines
import evaluate
import index as index_file
import search
from cli import fails_with

BITS = 12


def _fails(capsys, argv, message):
    return fails_with(capsys, argv, message, main=search.main)


def _save_model(path, bits, seed):
    import keras

    import models

    keras.utils.set_random_seed(seed)
    models.build_encoder("dbr", (32, 32, 3), bits).save(path)
    return str(path)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """Untrained 12-bit models (two seeds: two fingerprints) and a 16-bit one, saved as model.keras files."""
    folder = tmp_path_factory.mktemp("models")
    return {
        "model": _save_model(folder / "a.keras", BITS, 0),
        "other": _save_model(folder / "b.keras", BITS, 1),
        "wide": _save_model(folder / "c.keras", 16, 0),
    }


@pytest.fixture(scope="session")
def built_index(tiny_tree, models_dir, tmp_path_factory):
    """The tiny tree's test images encoded with labels and latent features."""
    path = tmp_path_factory.mktemp("index") / "test.h5"
    assert search.main(["encode", "--model", models_dir["model"], "--images", str(tiny_tree / "test"),
                        "--out", str(path), "--folder-labels", "--features", "latent"]) == 0
    return path


def _query_json(capsys, *argv):
    capsys.readouterr()
    assert search.main(["query", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_encode_writes_the_index(built_index, models_dir):
    index = index_file.read_index(built_index)
    assert index.ntotal == 32 and index.bits == BITS and index.codes.shape == (32, 2)
    assert index.ids()[0] == "circle/000.png" and index.has_labels and index.has_features
    assert index.attrs["class_names"] == ["circle", "square", "stripes", "triangle"]
    assert index.attrs["source"] == "folder" and index.attrs["features_layer"] == "latent"
    assert len(index.model_fingerprint) == 64


def test_query_by_image_and_json_schema(capsys, built_index, models_dir, tiny_tree):
    report = _query_json(capsys, "--index", str(built_index), "--model", models_dir["model"],
                         str(tiny_tree / "test" / "square" / "003.png"), "-k", "5")
    assert set(report) == {"index", "bits", "ntotal", "engine", "k", "radius", "rerank", "queries"}
    assert report["k"] == 5 and report["bits"] == BITS and report["engine"] == "exact"
    (entry,) = report["queries"]
    assert set(entry) == {"query", "label", "results"} and len(entry["results"]) == 5
    assert set(entry["results"][0]) >= {"rank", "id", "position", "distance", "label"}
    distances = [row["distance"] for row in entry["results"]]
    assert distances == sorted(distances) and distances[0] == 0
    # The database image queried with itself is found at distance 0 (ties go to the lower id).
    zero = [row["id"] for row in entry["results"] if row["distance"] == 0]
    assert "square/003.png" in zero or len(zero) == 5


def test_query_by_id_matches_brute_force(capsys, built_index):
    index = index_file.read_index(built_index)
    report = _query_json(capsys, "--index", str(built_index), "--query-id", "stripes/002.png", "-k", "32")
    rows = report["queries"][0]["results"]
    own = index.position_of("stripes/002.png")
    expected = engines.hamming_distances(index.codes[[own]], index.codes)[0]
    order = np.lexsort((np.arange(32), expected))
    assert [row["position"] for row in rows] == order.tolist()
    assert [row["distance"] for row in rows] == expected[order].tolist()
    assert report["queries"][0]["label"] == "stripes"
    assert all(row["relevant"] == (row["label"] == "stripes") for row in rows)
    assert {"id": "stripes/002.png", "distance": 0} in [{"id": row["id"], "distance": row["distance"]} for row in rows]


def test_table_output(capsys, built_index):
    capsys.readouterr()
    assert search.main(["query", "--index", str(built_index), "--query-id", "circle/000.png", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("query circle/000.png (circle): 3 results") and len(out) == 5


def test_radius_returns_everything_within_it(capsys, built_index):
    index = index_file.read_index(built_index)
    own = index.position_of("triangle/001.png")
    expected = engines.hamming_distances(index.codes[[own]], index.codes)[0]
    for radius in (0, 2, BITS):
        report = _query_json(capsys, "--index", str(built_index), "--query-id", "triangle/001.png", "--radius", str(radius))
        rows = report["queries"][0]["results"]
        assert all(row["distance"] <= radius for row in rows)
        assert len(rows) == int((expected <= radius).sum())


def test_rerank_orders_candidates_by_feature_distance(capsys, built_index):
    report = _query_json(capsys, "--index", str(built_index), "--query-id", "circle/004.png", "-k", "4", "--rerank", "12")
    rows = report["queries"][0]["results"]
    assert len(rows) == 4 and rows[0]["id"] == "circle/004.png" and rows[0]["feature_distance"] == 0
    feature_distances = [row["feature_distance"] for row in rows]
    assert feature_distances == sorted(feature_distances)


def test_grid_png(capsys, built_index, models_dir, tiny_tree, tmp_path):
    grid = tmp_path / "grid.png"
    assert search.main(["query", "--index", str(built_index), "--query-id", "circle/001.png", "-k", "4", "--grid", str(grid)]) == 0
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]
    grid2 = tmp_path / "grid2.png"
    queries = [str(tiny_tree / "test" / "circle" / "000.png"), str(tiny_tree / "train" / "square" / "000.png")]
    assert search.main(["query", "--index", str(built_index), "--model", models_dir["model"], *queries, "--grid", str(grid2)]) == 0
    with Image.open(grid2) as image:
        assert image.format == "PNG"


def test_append_adds_images_and_refuses_other_models(capsys, tiny_tree, models_dir, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(tiny_tree / "test" / "circle", folder / "circle")
    out = tmp_path / "photos.h5"
    assert search.main(["encode", "--model", models_dir["model"], "--images", str(folder), "--out", str(out)]) == 0
    shutil.copytree(tiny_tree / "test" / "square", folder / "square")
    before = out.read_bytes()
    _fails(capsys, ["encode", "--model", models_dir["other"], "--images", str(folder), "--out", str(out), "--append"], "made by another model")
    _fails(capsys, ["encode", "--model", models_dir["wide"], "--images", str(folder), "--out", str(out), "--append"], "holds 12-bit codes; this model makes 16-bit")
    _fails(capsys, ["encode", "--model", models_dir["model"], "--images", str(folder), "--out", str(out)], "pass --append")
    _fails(capsys, ["encode", "--model", models_dir["model"], "--images", str(folder), "--out", str(out), "--append", "--tta", "flip"],
           "was encoded with --tta none; append with it too")
    assert out.read_bytes() == before
    # The folder now holds the indexed circles again: appending them twice is refused, so append a new folder.
    shutil.rmtree(folder / "circle")
    assert search.main(["encode", "--model", models_dir["model"], "--images", str(folder), "--out", str(out), "--append"]) == 0
    index = index_file.read_index(out)
    assert index.ntotal == 16 and index.ids()[8] == "square/000.png"


def test_bad_input_exits_2_and_leaves_the_index(capsys, built_index, models_dir, tmp_path):
    before = built_index.read_bytes()
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    query = ["query", "--index", str(built_index)]
    model = ["--model", models_dir["model"]]
    cases = [
        ([*query, *model, str(tmp_path / "missing.jpg")], "no such file"),
        ([*query, *model, str(not_an_image)], "not an image format"),
        ([*query, "--model", models_dir["other"], "--query-id", "circle/000.png"], "is not the model that made the index"),
        ([*query, "--model", models_dir["wide"], "--query-id", "circle/000.png"], "is not the model that made the index"),
        ([*query, "--query-id", "circle/000.png", "-k", "33"], "-k must be at most the index size, 32, got 33"),
        ([*query, "--query-id", "circle/000.png", "-k", "0"], "-k must be at least 1"),
        ([*query, "--query-id", "circle/000.png", "--radius", "13"], "--radius must be at most the code length, 12, got 13"),
        ([*query, "--query-id", "circle/000.png", "--radius", "-1"], "--radius must be 0 or more"),
        ([*query, "--query-id", "circle/000.png", "-k", "5", "--rerank", "3"], "--rerank must be between k"),
        ([*query, "--query-id", "nobody"], "is not in the index"),
        ([*query, str(not_an_image)], "need --model"),
        (["query", "--index", str(tmp_path / "none.h5"), "--query-id", "x"], "No index file"),
        ([*query, "--model", str(not_an_image), "--query-id", "circle/000.png"], "cannot load it as a Keras model"),
        ([*query, "--model", str(tmp_path / "none.keras"), "--query-id", "circle/000.png"], "--model: no file"),
        ([*query, "--query-id", "circle/000.png", "--radius", "2", "-k", "3"], "takes no -k"),
    ]
    encode = ["encode", "--model", models_dir["model"], "--out", str(tmp_path / "new.h5")]
    cases += [
        ([*encode, "--images", str(tmp_path), "--dataset", "cifar10"], "exactly one of --images FOLDER and --dataset NAME"),
        ([*encode, "--dataset", "imagenet"], "--dataset must be one of cifar10"),
        ([*encode, "--images", str(tmp_path / "nowhere")], "--images: no folder"),
        (["encode", "--model", models_dir["model"], "--out", str(built_index), "--images", str(tmp_path)], "pass --append"),
    ]
    for argv, message in cases:
        _fails(capsys, argv, message)
    assert built_index.read_bytes() == before
    assert not (tmp_path / "new.h5").exists()


def test_corrupt_index_and_rerank_without_features(capsys, built_index, models_dir, tiny_tree, tmp_path):
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(built_index.read_bytes()[:2000])
    damaged = truncated.read_bytes()
    _fails(capsys, ["query", "--index", str(truncated), "--query-id", "circle/000.png"], "corrupt or truncated")
    _fails(capsys, ["encode", "--model", models_dir["model"], "--images", str(tiny_tree / "test"), "--out", str(truncated), "--append"], "corrupt or truncated")
    assert truncated.read_bytes() == damaged
    plain = tmp_path / "plain.h5"
    assert search.main(["encode", "--model", models_dir["model"], "--images", str(tiny_tree / "test" / "circle"), "--out", str(plain)]) == 0
    _fails(capsys, ["query", "--index", str(plain), "--query-id", "000.png", "--rerank", "5"], "--rerank needs float features")


def test_encode_takes_any_size_and_mode_and_skips_unreadable_files(capsys, models_dir, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "deep" / "er").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 80), dtype=np.uint8), "L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (90, 40, 4), dtype=np.uint8), "RGBA").save(folder / "deep" / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(folder / "deep" / "er" / "big.jpg")
    (folder / "broken.png").write_text("not a picture")
    out = tmp_path / "mixed.h5"
    capsys.readouterr()
    assert search.main(["encode", "--model", models_dir["model"], "--images", str(folder), "--out", str(out)]) == 0
    assert "skipped broken.png" in capsys.readouterr().err
    index = index_file.read_index(out)
    assert index.ids() == ["deep/alpha.png", "deep/er/big.jpg", "grey.png"] and not index.has_labels
    report = _query_json(capsys, "--index", str(out), "--model", models_dir["model"], str(folder / "deep" / "er" / "big.jpg"), "-k", "3", "--grid", str(tmp_path / "g.png"))
    assert report["queries"][0]["label"] is None and "label" not in report["queries"][0]["results"][0]
    assert any(row["id"] == "deep/er/big.jpg" and row["distance"] == 0 for row in report["queries"][0]["results"])


def test_missing_slots_of_approximate_engines_are_dropped(capsys, built_index, monkeypatch):
    class HalfEngine:  # finds one neighbour, then reports "missing" as FAISS does
        def search(self, query_codes, k):
            return np.array([[0] + [2**31 - 1] * (k - 1)], np.int32), np.array([[5] + [-1] * (k - 1)], np.int64)

    monkeypatch.setattr(search, "make_engine", lambda name, codes, bits: HalfEngine())
    report = _query_json(capsys, "--index", str(built_index), "--query-id", "circle/005.png", "-k", "3", "--engine", "faiss-ivf")
    assert [row["id"] for row in report["queries"][0]["results"]] == ["circle/005.png"]


def test_tta_index_holds_augmented_codes_and_image_queries_match_them(capsys, models_dir, tiny_tree, tmp_path):
    import keras

    import models

    path = tmp_path / "tta.h5"
    assert search.main(["encode", "--model", models_dir["model"], "--images", str(tiny_tree / "test"), "--out", str(path), "--tta", "flip-shift"]) == 0
    index = index_file.read_index(path)
    assert index.attrs["tta"] == "flip-shift"
    images = np.stack([np.asarray(Image.open(tiny_tree / "test" / item)) for item in index.ids()])
    latent = models.encode(keras.saving.load_model(models_dir["model"]), images, "flip-shift", 64)
    np.testing.assert_array_equal(index.codes, evaluate.pack_bits(latent > models.BIT_THRESHOLD))
    plain = search._encode_queries(keras.saving.load_model(models_dir["model"]), None, images, tta="none")[0]
    assert not np.array_equal(plain, index.codes)  # augmenting changed some codes of this untrained model
    report = _query_json(capsys, "--index", str(path), "--model", models_dir["model"], str(tiny_tree / "test" / "circle" / "001.png"), "-k", "1")
    assert report["queries"][0]["results"][0]["distance"] == 0  # the query is encoded as the index was


def test_a_dataset_is_indexed_in_a_seeded_random_order_with_its_own_ids(capsys, models_dir, tiny_tree, tmp_path):
    import keras

    import data
    import models

    path = tmp_path / "dataset.h5"
    assert search.main(["encode", "--model", models_dir["model"], "--dataset", "cifar10", "--data-dir", str(tiny_tree), "--out", str(path)]) == 0
    index = index_file.read_index(path)
    positions = [int(item.rsplit("/", 1)[1]) for item in index.ids()]
    assert sorted(positions) == list(range(120)) and positions != sorted(positions)  # shuffled, each image once
    dataset = data.load_dataset("cifar10", data_dir=str(tiny_tree))
    np.testing.assert_array_equal(index.labels(), dataset.y_train[positions])
    latent = models.predict(keras.saving.load_model(models_dir["model"]), dataset.x_train[positions], 64)
    np.testing.assert_array_equal(index.codes, evaluate.pack_bits(latent > models.BIT_THRESHOLD))
    report = _query_json(capsys, "--index", str(path), "--query-id", index.ids()[5], "-k", "1")
    assert report["queries"][0]["results"][0]["distance"] == 0
