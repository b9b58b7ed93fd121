"""The command line on the users' own images: --dataset folder:PATH and list:DIR, their flags and checks."""

import json

import numpy as np
import pytest
from PIL import Image

import data
import options
import retrieval
import rundir
from cli import fails_with
from plots import retrieved

CLASSES = ("circle", "square", "stripes")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Class folders without train/ and test/: 8 images a class in assorted sizes and modes, and one broken."""
    root = tmp_path_factory.mktemp("own") / "my photos"
    rng = np.random.default_rng(0)
    modes = ("RGB", "L", "RGBA", "P")
    for class_index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for item in range(8):
            width, height = rng.integers(20, 60, size=2)
            pixels = rng.integers(0, 60, size=(height, width, 3))
            pixels[..., class_index] += 190  # the class is the dominant colour: easy to learn
            image = Image.fromarray(pixels.astype(np.uint8)).convert(modes[item % len(modes)])
            image.save(root / name / f"{item:02d}.png")
    (root / "square" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.slow
def test_folder_dataset_end_to_end(photo_folder, tmp_path):
    out = tmp_path / "run"
    argv = ["--dataset", f"folder:{photo_folder}", "--arch", "dbr", "-e", "1", "-l", "12", "-s", "0", "--out", str(out)]
    with pytest.warns(data.UnreadableImageWarning) as records:
        assert retrieval.main(argv) == 0
    unreadable = [record for record in records if record.category is data.UnreadableImageWarning]
    assert [str(record.message) for record in unreadable] == [
        "Skipping unreadable image square/broken.jpg: not an image format Pillow can read",
        "skipped 1 unreadable image of 25",
    ]
    assert unreadable[0].filename == retrieval.__file__  # points at the caller, not into data.py
    metrics = json.loads((out / rundir.METRICS_FILE).read_text())
    assert metrics["dataset"] == f"folder:{photo_folder}" and metrics["bits"] == 12
    assert metrics["num_queries"] + metrics["num_database"] == 24  # test vs train; the broken image left out
    config = json.loads((out / rundir.CONFIG_FILE).read_text())
    assert config["image_size"] == data.DEFAULT_IMAGE_SIZE and config["test_fraction"] is None


def test_own_images_carry_their_file_names_to_the_retrieved_figure(photo_folder, tmp_path):
    config = options.resolve_args(options.build_parser().parse_args(["--dataset", f"folder:{photo_folder}", "--out", str(tmp_path / "run")]))
    arrays = retrieval.load_arrays(config)
    for images, names in ((arrays.db_x, arrays.db_names), (arrays.query_x, arrays.query_names)):
        assert len(names) == len(images) and all(name.endswith(".png") and name.split("/")[0] in CLASSES for name in names)
        for image, name in zip(images, names):  # each name is that image's file: its class folder's dominant colour
            if Image.open(photo_folder / name).mode in ("RGB", "RGBA", "P"):
                assert np.argmax(image.reshape(-1, 3).mean(axis=0)) == CLASSES.index(name.split("/")[0])
    assert "square/broken.jpg" not in set(arrays.db_names) | set(arrays.query_names)
    codes = np.eye(len(arrays.db_y), 12, dtype=np.uint8)
    figure = retrieved.plot_retrieved([0], arrays.db_x, arrays.db_y, codes, arrays.db_x, arrays.db_y, codes, tmp_path / "r.png", k=3,
                                      db_names=arrays.db_names)
    assert figure.axes[0].texts[1].get_text() == f"d=0\n{arrays.db_names[0].split('/')[-1]}"  # the query's own image first


def test_default_run_folder_is_named_safely(photo_folder):
    args = options.build_parser().parse_args(["--dataset", f"folder:{photo_folder}/", "-l", "16"])
    config = options.resolve_args(args)
    assert config["out"].startswith("runs/folder-my_photos-dlbhc-16b-")
    assert config["dataset"] == f"folder:{photo_folder}"  # absolute, so --resume works from anywhere


def write_lists(folder):
    (folder / "images").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (10, 10)).save(folder / "images" / f"{name}.png")
    (folder / "train.txt").write_text("images/a.png 1 0\n")
    (folder / "test.txt").write_text("images/b.png 1 1\n")
    return folder


def test_own_data_problems_exit_2_before_training(capsys, tmp_path, photo_folder, monkeypatch):
    monkeypatch.setattr(retrieval, "run", pytest.fail)  # every case must stop before the run starts
    out = ["--out", str(tmp_path / "run")]
    fails_with(capsys, ["--dataset", f"folder:{tmp_path / 'missing'}", *out], "The path does not exist. Received: dataset='folder:")
    fails_with(capsys, ["--dataset", "folder:", *out], "--dataset must be one of cifar10, mnist, fashion_mnist, got 'folder:'")
    fails_with(capsys, ["--image-size", "64", *out], "--image-size applies to --dataset folder: or list: only, not --dataset cifar10")
    fails_with(capsys, ["--dataset", f"folder:{photo_folder}", "--image-size", "4", *out], "--image-size must be between 8 and 1024, got 4")
    fails_with(capsys, ["--dataset", f"folder:{photo_folder}", "--test-fraction", "1", *out], "--test-fraction must be above 0 and below 1, got 1.0")
    fails_with(capsys, ["--dataset", f"folder:{photo_folder}", "--image-root", ".", *out], "--image-root applies to --dataset list: only")
    fails_with(capsys, ["--dataset", f"folder:{photo_folder}", "--data-dir", ".", *out], "--data-dir applies to --dataset cifar10")
    lists = write_lists(tmp_path / "lists")
    fails_with(capsys, ["--dataset", f"list:{lists}", *out], "--dataset list: has multi-hot labels (an image may have several), which --method dlbhc cannot learn from: use --method dhn or dnnh")


def test_malformed_list_exits_2_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(retrieval, "run", pytest.fail)
    lists = write_lists(tmp_path / "lists")
    (lists / "test.txt").write_text("images/b.png 1 1\nimages/a.png 1 1 1\n")
    argv = ["--dataset", f"list:{lists}", "--method", "dhn", "--out", str(tmp_path / "run")]
    fails_with(capsys, argv, "test.txt line 2 has 3 labels; expected 2, as train.txt line 1 has")


def test_folder_with_train_and_test_refuses_test_fraction(capsys, tmp_path):
    for split in ("train", "test"):
        for name in CLASSES[:2]:
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "tree" / split / name / "0.png")
    argv = ["--dataset", f"folder:{tmp_path / 'tree'}", "--test-fraction", "0.3", "--out", str(tmp_path / "run")]
    fails_with(capsys, argv, "so test_fraction (--test-fraction) does not apply")
