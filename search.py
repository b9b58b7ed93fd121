"""Index images with a trained hashing model, then search the index by image.

    python search.py encode --model runs/cifar/model.keras --images ~/photos --out photos.h5
    python search.py encode --model runs/cifar/model.keras --dataset cifar10 --split train --out cifar.h5
    python search.py query --index photos.h5 --model runs/cifar/model.keras cat.jpg -k 10 --grid cat.png
    python search.py query --index cifar.h5 --query-id cifar10/train/123 --radius 3 --json

`encode` runs the model's encoder over a folder of images (recursively; any size and mode, resized
and centre-cropped to the model's input like `folder:` data) or a dataset as `retrieval.py` names
it, and writes one HDF5 index (see `index.py`); `--append` adds items to an index made by the same
model. `query` prints the k nearest items by Hamming distance as a table or JSON and can draw them
as a PNG grid; `--radius R` gives every item within distance R instead; `--rerank N` re-ranks the
N nearest by Euclidean distance of the stored float features (coarse-to-fine, Lin et al. 2015).

`query --json` prints one object: `index`, `bits`, `ntotal`, `engine`, `k` (null with `--radius`),
`radius`, `rerank` (null when not asked) and `queries`, a list with per query `query` (the file or
id), `label` (null unless the query is an indexed item of a labelled index) and `results`, best
first: `rank` (from 1), `id`, `position` (row in the index), `distance` (Hamming), and where known
`label` (class name, or a list of names for multi-hot labels), `relevant` (shares the query's
label) and, with `--rerank`, `feature_distance` (Euclidean). Ties in Hamming distance go to the
lower position.

Arguments and the index are checked before Keras is imported; a mistake ends with a one-line
message and exit status 2, and never changes the index.
"""

import json
import sys
from pathlib import Path

import numpy as np

import data
import index as index_file
import options
import own_images
import quiet
import rundir
import vocabulary

FEATURE_CHOICES = ("none", "latent", "penultimate")
SPLITS = ("train", "test")
DEFAULT_K = 10
DECODE_CHUNK = 2048  # folder images decoded and encoded this many at a time, bounding memory
GRID_IMAGE_SIZE = 96  # pixels, the side of each folder image drawn in the grid
DATASET_ORDER_SEED = 0  # the seed of the order `encode --dataset` stores a dataset in
FALLBACK_INPUT_SIZE = data.DEFAULT_IMAGE_SIZE  # for a model whose input size is not fixed
TTA_ATTR = "tta"  # the index attribute holding the test-time augmentation mode of its codes


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def build_parser():
    parser = options.ArgumentParser(prog="search.py", description="Index images by binary code and search the index.")
    commands = parser.add_subparsers(dest="command", required=True)

    encode = commands.add_parser("encode", help="encode images or a dataset into an index file")
    add = encode.add_argument
    add("--model", required=True, help="a trained model.keras (retrieval.py's run folder)")
    add("--out", required=True, help="the index file to write (.h5), or with --append to extend")
    add("--images", default=None, help="a folder of images, searched recursively; ids are paths relative to it")
    add("--dataset", default=None, help=f"a named dataset: {', '.join(data.DATASETS)}; ids are <dataset>/<split>/<position>")
    add("--data-dir", default=None, help="--dataset: offline copy to read instead of downloading (as retrieval.py)")
    add("--split", default="train", choices=SPLITS, help="--dataset: the split to encode (default: %(default)s)")
    add("--folder-labels", action="store_true", help="--images: label each image by the name of its folder (enables green/red borders)")
    add("--features", default="none", choices=FEATURE_CHOICES, help="float16 features stored for --rerank: the latent activations, or the layer before them (default: %(default)s)")
    add("--tta", default=vocabulary.NO_TTA, choices=vocabulary.TTA_MODES, help="test-time augmentation, colour images only, as retrieval.py --tta: flip (each code from the mean of the image's and its mirror image's latent activations) or flip-shift (also of copies shifted by a pixel); image queries against the index then do the same (default: %(default)s)")
    add("--append", action="store_true", help="add the items to the existing index --out (same model, same source, same --tta)")

    query = commands.add_parser("query", help="search an index by image or by the id of an indexed item")
    add = query.add_argument
    add("images", nargs="*", help="query image files")
    add("--index", required=True, help="the index file made by encode")
    add("--model", default=None, help="the model.keras that made the index; required for image queries")
    add("--query-id", default=None, help="query with an indexed item's stored code, by its id")
    add("-k", "--k", type=int, default=None, help=f"number of results per query (default: {DEFAULT_K}, clipped to the index size)")
    add("--radius", type=int, default=None, help="return every item within this Hamming distance, 0..bits, instead of the top k")
    add("--rerank", type=int, default=None, help="re-rank the N nearest by Hamming by Euclidean distance of the stored features, N >= k")
    add("--engine", default="exact", choices=vocabulary.ENGINES, help="search engine (default: %(default)s)")
    add("--json", action="store_true", help="print the results as JSON (schema in the README) instead of a table")
    add("--grid", default=None, help="also draw the queries and their results into this PNG file")
    return parser


# --- encode ----------------------------------------------------------------------------------------------


def encode(args):
    """Runs `encode`; returns the number of items in the index."""
    if (args.images is None) == (args.dataset is None):
        raise UsageError("encode needs exactly one of --images FOLDER and --dataset NAME")
    if args.dataset is not None and args.dataset not in data.DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(data.DATASETS)} (use --images for a folder), got {args.dataset!r}")
    if args.images is not None and (args.data_dir is not None):
        raise UsageError("--data-dir applies to --dataset only")
    if args.folder_labels and args.images is None:
        raise UsageError("--folder-labels applies to --images only")
    _check_model_path(args.model)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no folder {out.parent}")
    with rundir.lock(index_lock_path(out), f"the index {out}"):  # one writer at a time
        return _encode_into(out, args)


def _encode_into(out, args):
    """`encode` while holding the index's lock: reads the index to extend (if any), encodes, writes."""
    rundir.remove_temporaries(out.parent, out.name)  # what a killed encode was writing
    if args.append:
        previous = index_file.read_index(out)  # a broken index is refused before any work
    else:
        previous = None
        if out.exists():
            raise UsageError(f"--out {out} exists; pass --append to add to it, or choose another file")
    if args.images is not None:
        files = _image_files(args.images)
        if previous is not None and previous.attrs.get("root") != str(Path(args.images).resolve()):
            raise UsageError(f"--append: the index holds images of {previous.attrs.get('root') or previous.attrs.get('dataset')}; --images must be that folder")
    elif args.data_dir is not None:
        data.check_data_dir(args.data_dir, args.dataset)

    encoder, fingerprint, features_model = _load_encoder(args.model, args.features)
    if args.tta != vocabulary.NO_TTA and _channels(encoder) != 3:
        raise UsageError("--tta averages each image with its mirror image: it applies to models of colour images only")
    bits = encoder.output_shape[-1]
    if previous is not None:
        if bits != previous.bits:
            raise UsageError(f"--append: the index {out} holds {previous.bits}-bit codes; this model makes {bits}-bit codes")
        if fingerprint != previous.model_fingerprint:
            raise UsageError(f"--append: the index {out} was made by another model; encode a new index instead")
        if (encoded_with := index_tta(previous)) != args.tta:
            raise UsageError(f"--append: the index {out} was encoded with --tta {encoded_with}; append with it too")
    if args.images is not None:
        ids, images, labels, attrs = _folder_items(args.images, files, _input_size(encoder), _channels(encoder), args.folder_labels)
    else:
        ids, images, labels, attrs = _dataset_items(args.dataset, args.data_dir, args.split, encoder)
    codes, features = _encode_images(encoder, features_model, images, args.tta)
    attrs.update({"features_layer": None if args.features == "none" else args.features, TTA_ATTR: args.tta})
    if previous is None:
        index_file.write_index(out, codes, ids, bits, fingerprint, labels=labels, features=features, attrs=attrs)
        total = len(ids)
    else:
        total = index_file.append_index(out, codes, ids, fingerprint, labels=labels, features=features, attrs=attrs)
    print(f"{out}: {total} items, {bits}-bit codes ({len(ids)} {'added' if previous is not None else 'encoded'})")
    return total


def _check_model_path(model):
    if not Path(model).is_file():
        raise UsageError(f"--model: no file {model}")


def _image_files(folder):
    """The image files under `folder`, recursively, hidden ones left out: relative POSIX paths, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--images: no folder {folder}")
    files = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in data.IMAGE_SUFFIXES and not data.is_hidden(path.relative_to(root).as_posix())
    )
    if not files:
        raise UsageError(f"--images: no image files ({', '.join(data.IMAGE_SUFFIXES)}) under {folder}")
    return files


def _folder_items(folder, files, size, channels, folder_labels):
    """Decodes every image (unreadable ones skipped with a warning); ids, a lazy image batch list, labels."""
    root = Path(folder).resolve()
    decoded, ids = [], []
    skipped = []
    for path, result in own_images.decode_images([root / name for name in files], size):
        name = path.relative_to(root).as_posix()
        if isinstance(result, str):
            skipped.append(f"{name}: {result}")
            continue
        ids.append(name)
        decoded.append(_as_channels(result, channels))
    for line in skipped:
        print(f"warning: skipped {line}", file=sys.stderr)
    if not ids:
        raise UsageError(f"--images: none of the {len(files)} image files under {folder} could be read")
    attrs = {"source": "folder", "root": str(root)}
    labels = None
    if folder_labels:
        names = [_parent_folder_name(item) for item in ids]
        class_names = sorted(set(names))
        labels = np.array([class_names.index(name) for name in names], dtype=np.int64)
        attrs["class_names"] = class_names
    return ids, np.stack(decoded), labels, attrs


def _parent_folder_name(relative):
    """The name of the folder holding an image, `"."` at the top."""
    parent = relative.rsplit("/", 1)[0] if "/" in relative else "."
    return parent.rsplit("/", 1)[-1]


def _dataset_items(name, data_dir, split, encoder):
    dataset = _load_dataset(name, data_dir)
    images = getattr(dataset, f"x_{split}")
    labels = getattr(dataset, f"y_{split}")
    if images.shape[1:3] != _input_size_pair(encoder) or images.shape[-1] != _channels(encoder):
        raise UsageError(f"--dataset {name}: its images are {images.shape[1:]}, the model takes {tuple(encoder.input_shape[1:])}")
    # Stored in a seeded random order, as retrieval.py's database (protocols.shuffled): equal Hamming
    # distances go to the lower position, and offline copies list their images class by class.
    order = np.random.default_rng(DATASET_ORDER_SEED).permutation(len(images))
    ids = [f"{name}/{split}/{position}" for position in order]
    attrs = {"source": "dataset", "dataset": name, "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
             "class_names": list(dataset.class_names)}
    return ids, images[order], labels[order], attrs


def _load_dataset(name, data_dir):
    try:
        return data.load_dataset(name, data_dir=data_dir)
    except data.DataError as error:
        raise UsageError(f"--dataset {name}: {error}") from None


def _encode_images(encoder, features_model, images, tta):
    """Packed codes and (optionally) float16 features of uint8 images `[n, h, w, c]`, augmented as the mode `tta` says."""
    import evaluate
    import models

    if features_model is None:
        latent, features = models.encode(encoder, images, tta), None
    else:
        latent, features = models.encode(features_model, images, tta)
        features = np.asarray(features, dtype=np.float16).reshape(len(images), -1)
    codes = evaluate.pack_bits(models.binarise(latent))
    return codes, features


# --- the model ------------------------------------------------------------------------------------------


def _load_encoder(model_path, features="none"):
    """The encoder of a saved model, its weights' fingerprint, and a model giving (latent, features)."""
    keras = quiet.import_keras()

    import methods  # noqa: F401  (registers the custom losses and layers that model.keras files name)
    import models
    import train  # noqa: F401  (registers the training model classes)

    try:
        model = keras.models.load_model(model_path, compile=False)
        encoder = models.encoder_of(model)
    except Exception as error:  # Keras raises many kinds for a file that is not a model
        raise UsageError(f"--model {model_path}: cannot load it as a Keras model with a {models.LATENT_LAYER!r} layer ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    features_model = None
    if features != "none":
        latent_layer = model.get_layer(models.LATENT_LAYER)
        extra = latent_layer.output if features == "latent" else latent_layer.input
        features_model = keras.Model(model.inputs, [latent_layer.output, extra])
    return encoder, index_file.model_fingerprint(encoder), features_model


def _input_size_pair(encoder):
    height, width = encoder.input_shape[1:3]
    return (height or FALLBACK_INPUT_SIZE, width or FALLBACK_INPUT_SIZE)


def _input_size(encoder):
    return _input_size_pair(encoder)[0]


def index_tta(index):
    """The test-time augmentation mode an index's codes were encoded with, so its image queries match them.

    Indexes written before there were several modes hold 1 or 0 (`vocabulary.tta_mode`).
    """
    return vocabulary.tta_mode(index.attrs.get(TTA_ATTR))


def _channels(encoder):
    return encoder.input_shape[-1] or 3


def _as_channels(rgb, channels):
    if channels == 1:
        from PIL import Image

        return np.asarray(Image.fromarray(rgb).convert("L"))[..., np.newaxis]
    return rgb


# --- query ----------------------------------------------------------------------------------------------


def query(args):
    """Runs `query`; returns the JSON-ready result dict (also printed)."""
    if bool(args.images) == (args.query_id is not None):
        raise UsageError("query needs query image files or --query-id ID, not both")
    if args.images and args.model is None:
        raise UsageError("image queries need --model: the model.keras that made the index")
    if args.k is not None and args.k < 1:
        raise UsageError(f"-k must be at least 1, got {args.k}")
    if args.radius is not None and args.radius < 0:
        raise UsageError(f"--radius must be 0 or more, got {args.radius}")
    if args.radius is not None and (args.k is not None or args.rerank is not None):
        raise UsageError("--radius returns every item within the radius; it takes no -k and no --rerank")
    for image in args.images:
        if not Path(image).is_file():
            raise UsageError(f"query image {image}: no such file")
        reason = own_images.decode_image(image, data.MIN_IMAGE_SIZE)
        if isinstance(reason, str):
            raise UsageError(f"query image {image}: {reason}")
    if args.model is not None:
        _check_model_path(args.model)

    index = index_file.read_index(args.index)
    k = min(DEFAULT_K, index.ntotal) if args.k is None else args.k
    if args.radius is None and k > index.ntotal:
        raise UsageError(f"-k must be at most the index size, {index.ntotal}, got {k}")
    if args.radius is not None and args.radius > index.bits:
        raise UsageError(f"--radius must be at most the code length, {index.bits}, got {args.radius}")
    if args.rerank is not None:
        if not index.has_features:
            raise UsageError(f"--rerank needs float features in the index; {args.index} has none (encode with --features latent or penultimate)")
        if not k <= args.rerank <= index.ntotal:
            raise UsageError(f"--rerank must be between k ({k}) and the index size ({index.ntotal}), got {args.rerank}")
    query_position = index.position_of(args.query_id) if args.query_id is not None else None

    encoder = None
    if args.model is not None:
        encoder, fingerprint, features_model = _load_encoder(args.model, "none" if args.rerank is None else index.attrs.get("features_layer", "latent"))
        if fingerprint != index.model_fingerprint:
            raise UsageError(f"--model {args.model} is not the model that made the index {args.index} (weights fingerprint {fingerprint[:12]} vs {index.model_fingerprint[:12]}); encode the index with this model")
    if query_position is not None:
        query_codes = index.codes[[query_position]]
        query_features = index.features([query_position]) if args.rerank is not None else None
        query_names = [args.query_id]
        query_images = None
    else:
        size, channels = _input_size(encoder), _channels(encoder)
        query_images = np.stack([_as_channels(own_images.decode_image(image, size), channels) for image in args.images])
        query_codes, query_features = _encode_queries(
            encoder, features_model if args.rerank is not None else None, query_images, index_tta(index)
        )
        query_names = list(args.images)

    engine = make_engine(args.engine, index.codes, index.bits)
    if args.radius is not None:
        results = engine.range_search(query_codes, args.radius)
    else:
        distances, ids = engine.search(query_codes, args.rerank or k)
        # Approximate engines end a row that found fewer than k with id -1: those slots are dropped.
        results = [(row_distances[row_ids >= 0], row_ids[row_ids >= 0]) for row_distances, row_ids in zip(distances, ids)]
        if args.rerank is not None:
            results = [_rerank(index, query_features[row], *results[row], k) for row in range(len(results))]
    report = _report(args, index, query_names, query_position, results)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    if args.grid:
        _draw_grid(args.grid, index, report, results, query_images, query_position)
    return report


def make_engine(name, db_codes, bits):
    """The search engine `name` (`engines.ENGINES`) over the index codes."""
    import engines

    try:
        return engines.make_engine(name, db_codes, bits)
    except ValueError as error:
        raise UsageError(f"--engine {name}: {error}") from None


def _encode_queries(encoder, features_model, images, tta):
    """Codes (and features) of a few query images, encoded as the index was (`tta`: its test-time augmentation mode)."""
    import keras

    import evaluate
    import models

    def outputs(model):
        def outputs_of(batch):
            return [np.asarray(output) for output in keras.tree.flatten(model([batch], training=False))]

        return models.average_views(outputs_of, images, models.TTA_VIEWS[tta])

    if features_model is None:
        (latent,), features = outputs(encoder), None
    else:
        latent, features = outputs(features_model)
        features = features.reshape(len(images), -1).astype(np.float16).astype(np.float32)
    return evaluate.pack_bits(models.binarise(latent)), features


def _rerank(index, query_feature, distances, ids, k):
    """The `k` of the Hamming candidates `ids` nearest to the query in Euclidean feature distance."""
    features = index.features(ids)
    euclidean = np.sqrt(((features - query_feature) ** 2).sum(axis=1))
    order = np.lexsort((ids, euclidean))[:k]
    return distances[order], ids[order], euclidean[order]


def _report(args, index, query_names, query_position, results):
    class_names = index.attrs.get("class_names")
    query_label = index.labels([query_position])[0] if query_position is not None and index.has_labels else None
    queries = []
    for name, result in zip(query_names, results):
        distances, ids = result[0], result[1]
        names = index.ids(ids) if len(ids) else []
        labels = index.labels(ids) if index.has_labels and len(ids) else None
        rows = []
        for rank, (distance, position) in enumerate(zip(distances, ids)):
            row = {"rank": rank + 1, "id": names[rank], "position": int(position), "distance": int(distance)}
            if labels is not None:
                row["label"] = _label_json(labels[rank], class_names)
                if query_label is not None:
                    row["relevant"] = _relevant(query_label, labels[rank])
            if len(result) == 3:
                row["feature_distance"] = float(result[2][rank])
            rows.append(row)
        queries.append({"query": name, "label": None if query_label is None else _label_json(query_label, class_names), "results": rows})
    return {
        "index": str(args.index), "bits": index.bits, "ntotal": index.ntotal, "engine": args.engine,
        "k": None if args.radius is not None else (args.k or min(DEFAULT_K, index.ntotal)),
        "radius": args.radius, "rerank": args.rerank, "queries": queries,
    }


def _label_json(label, class_names):
    label = np.asarray(label)
    if label.ndim == 0:
        return class_names[int(label)] if class_names else int(label)
    positions = np.flatnonzero(label)
    return [class_names[int(i)] if class_names else int(i) for i in positions]


def _relevant(query_label, label):
    query_label, label = np.asarray(query_label), np.asarray(label)
    return bool(np.any(query_label & label)) if query_label.ndim else bool(query_label == label)


def _table(report):
    lines = []
    for entry in report["queries"]:
        title = f"query {entry['query']}" + (f" ({entry['label']})" if entry["label"] is not None else "")
        lines.append(f"{title}: {len(entry['results'])} results")
        lines.append(f"{'rank':>5} {'distance':>8}  id")
        for row in entry["results"]:
            extra = []
            if "feature_distance" in row:
                extra.append(f"euclidean {row['feature_distance']:.4f}")
            if "label" in row:
                extra.append(f"label {row['label']}" + ("" if "relevant" not in row else (" (same)" if row["relevant"] else " (other)")))
            lines.append(f"{row['rank']:>5} {row['distance']:>8}  {row['id']}" + (f"  [{', '.join(extra)}]" if extra else ""))
    return "\n".join(lines)


def _draw_grid(path, index, report, results, query_images, query_position):
    from plots.result_grid import plot_result_grid

    positions = [np.asarray(result[1]) for result in results]
    images = _item_images(index, np.concatenate(positions) if positions else np.array([], np.int64))
    result_images, start = [], 0
    for rows in positions:
        result_images.append(images[start : start + len(rows)])
        start += len(rows)
    if query_images is None:
        query_images = _item_images(index, np.array([query_position]))
    relevant = [[row.get("relevant") for row in entry["results"]] if entry["label"] is not None else None for entry in report["queries"]]
    with rundir.atomic_path(path) as temporary:
        plot_result_grid(list(query_images), result_images, [r[0] for r in results], temporary, relevant=relevant,
                         query_titles=[Path(entry["query"]).name for entry in report["queries"]])


def _item_images(index, positions):
    """The images of indexed items: read from the folder the index recorded, or from its dataset."""
    ids = index.ids(positions) if len(positions) else []
    if index.attrs.get("source") == "dataset":
        dataset = _load_dataset(index.attrs["dataset"], index.attrs.get("data_dir"))
        images = []
        for item in ids:
            _, split, position = item.rsplit("/", 2)
            images.append(getattr(dataset, f"x_{split}")[int(position)])
        return images
    root = Path(index.attrs.get("root", "."))
    blank = np.full((GRID_IMAGE_SIZE, GRID_IMAGE_SIZE, 3), 128, np.uint8)  # an image since moved or deleted
    decoded = [own_images.decode_image(root / item, GRID_IMAGE_SIZE) for item in ids]
    return [blank if isinstance(image, str) else image for image in decoded]


def main(argv=None):
    """Command-line entry point; returns the exit status.

    0 done; 2 bad input, or an index another `encode` is writing (one line; the index untouched);
    1 a file that could not be written; 130 interrupted (Ctrl-C). The index is replaced only
    whole, so it is never left half-written.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    command, index_path = (encode, args.out) if args.command == "encode" else (query, args.index)
    usage_errors = (UsageError, index_file.IndexFileError, data.DataError, rundir.RunDirError)
    with parser.exit_statuses(usage_errors, kept=lambda: f"the index {index_path} is as it was"):
        command(args)
    return 0


def index_lock_path(index_path):
    """The lock file of an index, beside it: one `encode` at a time writes an index (`rundir.lock`)."""
    index_path = Path(index_path)
    return index_path.parent / f".{index_path.name}.lock"


if __name__ == "__main__":
    sys.exit(main())
