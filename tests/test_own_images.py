"""Tests for own_images.py: folder: and list: data in any size and mode, unreadable images, their errors and cache."""

import io
import os

import numpy as np
import pytest
from PIL import Image

import cache
import data
import offline
import own_images
from tiny_sources import fail_to_decode, tiny_image, write_class_folders, write_tar

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


# --- the users' own data: folder:PATH ---------------------------------------------------------------------


def own_image(mode, size, value):
    """A uniform image in `mode` of `size` (width, height) whose RGB conversion should be `value` everywhere."""
    if mode == "I;16":  # 16-bit grey: value * 257 scales back to value
        return Image.fromarray(np.full(size[::-1], value[0] * 257, np.uint16))
    if mode == "CMYK":
        return Image.new("RGB", size, value).convert("CMYK")
    return tiny_image(mode, value, size)


# (split, class, file, mode, (width, height), RGB value): every mode, sizes larger and smaller than 16, not square.
OWN_IMAGES = [
    ("train", "apple", "a.png", "L", (40, 24), (40, 40, 40)),
    ("train", "apple", "b.png", "RGBA", (9, 13), (10, 20, 30)),
    ("train", "apple", "c.gif", "P", (50, 50), (200, 0, 100)),
    ("train", "pear", "d.tif", "CMYK", (16, 70), (0, 255, 0)),
    ("train", "pear", "e.png", "I;16", (33, 17), (100, 100, 100)),
    ("test", "apple", "f.jpg", "RGB", (64, 48), (250, 250, 250)),
    ("test", "pear", "g.png", "I;16", (20, 20), (255, 255, 255)),
]


def write_own_images(root, images=OWN_IMAGES):
    for split, class_name, file, mode, size, value in images:
        folder = root / split / class_name if split else root / class_name
        folder.mkdir(parents=True, exist_ok=True)
        own_image(mode, size, value).save(folder / file)
    return root


def test_folder_with_splits_any_mode_and_size_to_rgb(tmp_path):
    dataset = data.load_dataset(f"folder:{write_own_images(tmp_path / 'fruit')}", image_size=16)
    assert dataset.class_names == ("apple", "pear") and not dataset.multi_label and dataset.x_db is None
    assert dataset.x_train.shape == (5, 16, 16, 3) and dataset.x_test.shape == (2, 16, 16, 3)
    for split in ("train", "test"):
        rows = [(class_name, value) for row_split, class_name, _, _, _, value in OWN_IMAGES if row_split == split]
        expected = np.array([np.broadcast_to(np.array(value, np.uint8), (16, 16, 3)) for _, value in rows])
        # JPEG is lossy; the other formats are exact, and resizing a uniform image keeps its value.
        np.testing.assert_allclose(getattr(dataset, f"x_{split}"), expected, atol=3 if split == "test" else 0)
        np.testing.assert_array_equal(getattr(dataset, f"y_{split}"), [("apple", "pear").index(name) for name, _ in rows])
    assert dataset.y_train.dtype == np.int64 and dataset.skipped == ()
    assert data.load_dataset(f"folder:{tmp_path / 'fruit'}").x_train.shape[1:] == (32, 32, 3)  # the default size


def test_shorter_side_resized_then_centre_cropped():
    stripes = np.zeros((20, 60, 3), np.uint8)  # wide: red, green, blue thirds
    stripes[:, :20, 0] = stripes[:, 20:40, 1] = stripes[:, 40:, 2] = 255
    fitted = own_images._fit_image(png_bytes(Image.fromarray(stripes)), 10)
    assert fitted.shape == (10, 10, 3) and fitted.dtype == np.uint8
    np.testing.assert_array_equal(fitted[:, 1:-1], np.broadcast_to([0, 255, 0], (10, 8, 3)))  # the green middle
    tall = own_images._fit_image(png_bytes(Image.fromarray(np.ascontiguousarray(stripes.transpose(1, 0, 2)))), 10)
    np.testing.assert_array_equal(tall[1:-1, :], np.broadcast_to([0, 255, 0], (8, 10, 3)))


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    fitted = own_images._fit_image(buffer.getvalue(), 20)  # upright it is 20 wide, 40 tall: red on top
    assert fitted[2, 10, 0] > 200 and fitted[-3, 10, 2] > 200


def test_folder_without_splits_is_split_stratified_and_seeded(tmp_path):
    root = write_class_folders(tmp_path / "shapes", {"circle": 5, "square": 6, "star": 10})
    dataset = data.load_dataset(f"folder:{root}", seed=3, image_size=8)
    assert dataset.class_names == ("circle", "square", "star")
    np.testing.assert_array_equal(np.bincount(dataset.y_test), [1, 1, 2])  # round(0.2 * n), at least 1
    np.testing.assert_array_equal(np.bincount(dataset.y_train), [4, 5, 8])
    grey = lambda images: sorted(images[:, 0, 0, 0].tolist())
    assert sorted(grey(dataset.x_train) + grey(dataset.x_test)) == sorted(
        [10 * c + i for c, count in enumerate((5, 6, 10)) for i in range(count)])  # every image exactly once
    again = data.load_dataset(f"folder:{root}", seed=3, image_size=8)
    np.testing.assert_array_equal(again.x_test, dataset.x_test)
    other_seeds = [grey(data.load_dataset(f"folder:{root}", seed=seed, image_size=8).x_test) for seed in range(4, 9)]
    assert any(test != grey(dataset.x_test) for test in other_seeds)
    half = data.load_dataset(f"folder:{root}", test_fraction=0.5, image_size=8)
    np.testing.assert_array_equal(np.bincount(half.y_test), [3, 3, 5])  # 2.5 rounds half up


def test_folder_broken_images_are_skipped_with_warnings_and_a_count(tmp_path, cache_in_tmp):
    root = write_class_folders(tmp_path / "shapes", {"circle": 3, "square": 3})
    (root / "circle/broken.jpg").write_bytes(b"not a jpeg")
    whole = png_bytes(Image.new("RGB", (40, 40), (1, 2, 3)))
    (root / "square/truncated.png").write_bytes(whole[: len(whole) // 2])
    with pytest.warns(data.UnreadableImageWarning) as records:
        dataset = data.load_dataset(f"folder:{root}")
    messages = [str(record.message) for record in records]
    assert messages[0] == "Skipping unreadable image circle/broken.jpg: not an image format Pillow can read"
    assert messages[1].startswith("Skipping unreadable image square/truncated.png: cannot decode it")
    assert messages[2] == "skipped 2 unreadable images of 8"
    assert len(dataset.y_train) + len(dataset.y_test) == 6 and len(dataset.skipped) == 2
    with pytest.warns(data.UnreadableImageWarning) as records:
        cached = data.load_dataset(f"folder:{root}")  # a cache hit says so again
    assert [str(record.message) for record in records][:2] == messages[:2]
    assert str(records[2].message).startswith("skipped 2 unreadable images of 8 (found when the data was decoded")
    assert cached.skipped == dataset.skipped


def test_many_unreadable_images_are_named_up_to_a_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(own_images, "MAX_NAMED_UNREADABLE", 2)
    root = write_class_folders(tmp_path / "shapes", {"circle": 2, "square": 2})
    for item in range(3):
        (root / f"circle/broken{item}.png").write_bytes(b"x")
    with pytest.warns(data.UnreadableImageWarning) as records:
        data.load_dataset(f"folder:{root}")
    assert [str(record.message) for record in records][-1] == "skipped 3 unreadable images of 7; the first 2 are named above"
    assert len(records) == 3


def test_folder_empty_class_is_an_error(tmp_path):
    root = write_class_folders(tmp_path / "shapes", {"circle": 3, "square": 3})
    (root / "empty").mkdir()
    with pytest.raises(data.DataError, match="Class folder empty holds no images .*Received: dataset='folder:"):
        data.load_dataset(f"folder:{root}")
    with pytest.raises(data.DataError, match="Class folder empty holds no images"):
        data.check_dataset(f"folder:{root}")
    (root / "empty/notes.txt").write_text("not an image")
    with pytest.raises(data.DataError, match="Class folder empty holds no images"):
        data.load_dataset(f"folder:{root}")


def test_folder_without_a_readable_image_is_an_error(tmp_path, cache_in_tmp):
    root = tmp_path / "broken"
    for class_name in ("a", "b"):
        (root / class_name).mkdir(parents=True)
        for item in range(2):
            (root / class_name / f"{item}.png").write_bytes(b"garbage")
    with pytest.warns(data.UnreadableImageWarning), pytest.raises(
            data.DataError, match="No image of the folder could be read \\(4 tried; the first: a/0.png: not an image"):
        data.load_dataset(f"folder:{root}")
    assert not list(cache_in_tmp.glob("*.npz"))  # nothing cached from a failed load


def test_folder_class_left_with_too_few_readable_images(tmp_path):
    root = write_class_folders(tmp_path / "shapes", {"circle": 3, "square": 1})
    (root / "square/broken.png").write_bytes(b"garbage")
    with pytest.warns(data.UnreadableImageWarning), pytest.raises(
            data.DataError, match="Class folder square has 1 readable image .*splitting it into train and test needs at least 2"):
        data.load_dataset(f"folder:{root}")
    split_tree = write_own_images(tmp_path / "fruit")
    (split_tree / "test/pear/g.png").write_bytes(b"garbage")
    with pytest.warns(data.UnreadableImageWarning), pytest.raises(
            data.DataError, match="Class folder test/pear has 0 readable images"):
        data.load_dataset(f"folder:{split_tree}")


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"circle": 3}, "The folder has 1 class folder \\(circle\\); a dataset needs at least 2"),
        ({"circle": 3, "square": 1}, "Class folder square holds only 1 image; splitting each class into train and test needs at least 2"),
        ({"train/circle": 2, "train/square": 2}, "The folder has train/ but no test/: give it both, or neither"),
    ],
)
def test_folder_layout_errors(tmp_path, layout, message):
    root = write_class_folders(tmp_path / "data", layout)
    with pytest.raises(data.DataError, match=message):
        data.check_dataset(f"folder:{root}")


def test_folder_test_fraction_with_train_and_test_is_an_error(tmp_path):
    root = write_own_images(tmp_path / "fruit")
    assert data.check_dataset(f"folder:{root}") == data.IMAGE_FOLDERS
    with pytest.raises(data.DataError, match="has train/ and test/ folders, so test_fraction .* does not apply"):
        data.load_dataset(f"folder:{root}", test_fraction=0.3)


def test_folder_under_one_top_folder_and_in_an_archive(tmp_path):
    write_class_folders(tmp_path / "download/shapes", {"circle": 2, "square": 3})
    dataset = data.load_dataset(f"folder:{tmp_path / 'download'}", image_size=8)
    assert dataset.class_names == ("circle", "square")
    archive = write_tar(tmp_path / "shapes.tgz", tmp_path / "download/shapes", "shapes")
    from_archive = data.load_dataset(f"folder:{archive}", image_size=8)
    np.testing.assert_array_equal(from_archive.x_test, dataset.x_test)


def test_folder_missing(tmp_path):
    with pytest.raises(data.DataError, match="The path does not exist. Received: dataset='folder:.*nowhere'"):
        data.check_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_folder_cache_is_per_image_size(tmp_path, monkeypatch, cache_in_tmp):
    root = write_class_folders(tmp_path / "shapes", {"circle": 2, "square": 2})
    small = data.load_dataset(f"folder:{root}", image_size=8)
    large = data.load_dataset(f"folder:{root}", image_size=12)
    assert small.x_train.shape[1] == 8 and large.x_train.shape[1] == 12
    assert sorted(path.name[:14] for path in cache_in_tmp.glob("*.npz")) == ["folder-shapes-"] * 2
    monkeypatch.setattr(offline, "decode_image_tree", fail_to_decode)
    np.testing.assert_array_equal(data.load_dataset(f"folder:{root}", image_size=8, seed=5).x_train.shape, (2, 8, 8, 3))


def test_check_dataset_decodes_no_image(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "shapes", {"circle": 2, "square": 2})
    monkeypatch.setattr(own_images, "_fit_image", pytest.fail)
    assert data.check_dataset(f"folder:{root}") == data.CLASS_FOLDERS


# --- the users' own data: list:DIR ------------------------------------------------------------------------


def write_lists(folder, lists, images_in=None, size=(24, 18)):
    """Writes `<split>.txt` files from `{file: [(path, labels), ...]}` (or raw text) and the images they name.

    Image `i` (in order of first mention) is grey `10 * i`; a path with "missing" in it gets no image.
    """
    images_in = images_in or folder
    folder.mkdir(parents=True, exist_ok=True)
    seen = {}
    for file, rows in lists.items():
        if isinstance(rows, str):
            (folder / file).write_text(rows)
            continue
        (folder / file).write_text("".join(f"{path} {' '.join(map(str, labels))}\n" for path, labels in rows))
        for path, _ in rows:
            if path not in seen and "missing" not in path:
                seen[path] = len(seen)
                (images_in / path).parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", size, 10 * seen[path]).save(images_in / path)
    return folder


TRAIN_LIST = [("images/a.jpg", [1, 0, 1]), ("images/b.png", [0, 1, 0]), ("images/sub/c.png", [0, 0, 1])]
TEST_LIST = [("images/d.png", [1, 1, 0])]
DATABASE_LIST = [("images/e.png", [0, 1, 1]), ("images/a.jpg", [1, 0, 1])]


def test_lists_multi_hot_labels_without_database(tmp_path):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST, "test.txt": TEST_LIST})
    dataset = data.load_dataset(f"list:{folder}", image_size=8)
    assert dataset.multi_label and dataset.x_db is None and dataset.y_db is None
    assert dataset.x_train.shape == (3, 8, 8, 3) and dataset.x_test.shape == (1, 8, 8, 3)
    assert dataset.y_train.dtype == np.int64
    np.testing.assert_array_equal(dataset.y_train, [labels for _, labels in TRAIN_LIST])
    np.testing.assert_array_equal(dataset.x_train[:, 0, 0, 0], [0, 10, 20])  # the lists' order
    assert dataset.class_names == ("label0", "label1", "label2")
    assert data.check_dataset(f"list:{folder}") == data.IMAGE_LISTS


def test_lists_with_database_class_names_and_another_image_root(tmp_path):
    lists = {"train.txt": TRAIN_LIST, "test.txt": TEST_LIST, "database.txt": DATABASE_LIST}
    folder = write_lists(tmp_path / "lists", lists, images_in=tmp_path / "pictures")
    (folder / "classes.txt").write_text("sky\nwater\n\nperson\n")
    dataset = data.load_dataset(f"list:{folder}", image_root=tmp_path / "pictures", image_size=8)
    assert dataset.x_db.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(dataset.y_db, [[0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(dataset.x_db[:, 0, 0, 0], [40, 0])  # e.png is the fifth image written
    assert dataset.class_names == ("sky", "water", "person")
    (folder / "classes.txt").write_text("sky\nwater\n")
    with pytest.raises(data.DataError, match="classes.txt names 2 classes; the list files have 3 labels"):
        data.check_dataset(f"list:{folder}", image_root=tmp_path / "pictures")


@pytest.mark.parametrize(
    "test_text, message",
    [
        ("images/d.png 1 1 0\n\nimages/a.jpg 1 0\n", "test.txt line 3 has 2 labels; expected 3, as train.txt line 1 has"),
        ("images/d.png 1 2 0\n", "test.txt line 1: label 2 is '2'; labels must be 0 or 1"),
        ("images/d.png 1 x 0\n", "test.txt line 1: label 2 is 'x'"),
        ("images/d.png\n", "test.txt line 1 has an image path but no labels"),
        ("images/d.png 1 0 1\n0 1 0\n", "test.txt line 2 starts with '0', a label, not an image path"),
        ("my photo.png 1 0 1\n", "test.txt line 1: label 1 is 'photo.png'; labels must be 0 or 1 \\(a path may not contain spaces\\)"),
        ("../outside.png 1 0 1\n", "test.txt line 1: '../outside.png' leads outside the image root"),
        ("images/../../outside.png 1 0 1\n", "leads outside the image root"),
        ("/etc/passwd 1 0 1\n", "test.txt line 1: '/etc/passwd' is an absolute path"),
        ("", "test.txt lists no images"),
    ],
)
def test_malformed_list_lines(tmp_path, test_text, message):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST, "test.txt": test_text})
    with pytest.raises(data.DataError, match=message):
        data.check_dataset(f"list:{folder}")
    with pytest.raises(data.DataError, match=message):
        data.load_dataset(f"list:{folder}")


def test_list_symlink_out_of_the_root_is_an_error(tmp_path):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST, "test.txt": "images/link.png 1 0 0\n"})
    Image.new("L", (8, 8)).save(tmp_path / "secret.png")
    (folder / "images/link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(data.DataError, match="test.txt line 1: 'images/link.png' leads outside the image root .*symbolic link"):
        data.load_dataset(f"list:{folder}")
    inside = folder / "images/inside.png"
    inside.symlink_to(folder / "images/b.png")  # a link that stays inside is fine
    (folder / "test.txt").write_text("images/inside.png 1 0 0\n")
    assert data.load_dataset(f"list:{folder}", image_size=8).x_test[0, 0, 0, 0] == 10


def test_list_unreadable_images_are_skipped(tmp_path):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST + [("images/missing.png", [1, 0, 0])],
                                            "test.txt": TEST_LIST})
    with pytest.warns(data.UnreadableImageWarning) as records:
        dataset = data.load_dataset(f"list:{folder}", image_size=8)
    assert str(records[0].message).startswith("Skipping unreadable image images/missing.png (train.txt line 4): cannot read it")
    assert str(records[-1].message) == "skipped 1 unreadable image of 5"
    assert len(dataset.y_train) == 3
    (folder / "test.txt").write_text("images/missing.png 1 0 0\n")
    with pytest.warns(data.UnreadableImageWarning), pytest.raises(data.DataError, match="No image listed in test.txt could be read"):
        data.load_dataset(f"list:{folder}", image_size=8)


def test_list_files_missing(tmp_path):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST})
    with pytest.raises(data.DataError, match="The list folder has no test.txt; a list: dataset needs train.txt and test.txt"):
        data.check_dataset(f"list:{folder}")
    with pytest.raises(data.DataError, match="The list folder does not exist. Received: dataset='list:"):
        data.check_dataset(f"list:{tmp_path / 'nowhere'}")
    with pytest.raises(data.DataError, match="The image root .*nowhere' does not exist"):
        data.check_dataset(f"list:{folder}", image_root=tmp_path / "nowhere")


def test_list_cache_follows_the_list_contents(tmp_path, monkeypatch, cache_in_tmp):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST, "test.txt": TEST_LIST})
    first = data.load_dataset(f"list:{folder}", image_size=8)
    monkeypatch.setattr(own_images, "_decode_lists", fail_to_decode)
    np.testing.assert_array_equal(data.load_dataset(f"list:{folder}", image_size=8).y_train, first.y_train)
    monkeypatch.undo()
    monkeypatch.setenv(cache.CACHE_ENV, str(cache_in_tmp))
    stat = (folder / "train.txt").stat()
    (folder / "train.txt").write_text((folder / "train.txt").read_text().replace("1 0 1", "1 1 1"))
    os.utime(folder / "train.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: contents still count
    assert data.load_dataset(f"list:{folder}", image_size=8).y_train[0].tolist() == [1, 1, 1]
    assert len(list(cache_in_tmp.glob("list-nus-*.npz"))) == 2
