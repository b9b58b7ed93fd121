"""Train a hashing network, binarise every image, retrieve by Hamming distance, evaluate.

    python retrieval.py -l 48 -e 20 -t 1000 -q 100

trains a network whose last layer has 48 sigmoid units on CIFAR-10, turns every
training image (the database) and 100 seeded test images (the queries) into
48-bit codes (`latent > 0.5`), ranks the database for each query by Hamming
distance and reports mAP@1000 and precision@k. Everything lands in one run
folder (`--out`): `config.json`, `model.keras`, `codes.h5`, `metrics.json`,
`precision_at_k.png`, `pr_curve.png`.

Arguments are checked before TensorFlow is imported, so a mistake costs a
second, not a model build; a mistake ends with a one-line message and exit
status 2, and never touches an earlier run's files.
"""

import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

import data
import devices
import options
import protocols
import quiet
import recipes
import rundir
import vocabulary as V
from options import UsageError


def run(config, verbose=1, resume=False, callbacks=()):
    """Runs (or resumes) one experiment described by a resolved `config`; returns its metrics.

    Args:
        config: the dict from `options.resolve_args` (or a resumed run's `config.json`).
        verbose: 0 silent, 1 progress bars and logs. Defaults to 1.
        resume: continue the run in `config["out"]`. Defaults to `False`.
        callbacks: extra Keras callbacks for `fit` (tests use one to simulate a
            kill). Defaults to `()`.

    Returns:
        The metrics dict that was written to `metrics.json`.
    """
    out = Path(config["out"])
    log = print if verbose else (lambda *_: None)
    if resume and (out / rundir.METRICS_FILE).is_file():
        log(f"{out} holds a finished run; its metrics are in {out / rundir.METRICS_FILE}")
        return rundir.read_json(out / rundir.METRICS_FILE)

    timings = {}
    started = time.perf_counter()
    arrays = load_arrays(config)
    split, train_x, train_y, db_x, db_y, query_x, query_y = (arrays.split, arrays.train_x, arrays.train_y, arrays.db_x, arrays.db_y,
                                                             arrays.query_x, arrays.query_y)
    top, note = protocols.resolve_top(config["top"], len(db_y), split.top)
    if note:
        log(note)
    devices.start(config)  # before Keras computes anything: joins the processes, picks the devices
    config = _resolve_class_batches(config, train_y, log)  # before the recipe, which scales its rate to them
    config = _resolve_recipe(config, colour=train_x.shape[-1] == 3, train_size=len(train_y))
    _check_batches_fit_devices(config)
    timings["data_seconds"] = time.perf_counter() - started
    for folder in (out, out / rundir.BACKUP_DIR):  # what a killed run was writing
        rundir.remove_temporaries(folder)
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        rundir.clear_run(out)
        rundir.write_json(out / rundir.CONFIG_FILE, config)
    if config.get("model_from"):
        _copy_trained_model(Path(config["model_from"]), out)

    import keras  # imported by now (devices, recipe); named here, where this function starts to use it

    import models
    import train

    keras.utils.set_random_seed(config["seed"])
    precision_policy = train.use_precision(config.get("precision"))
    method = method_for(config, len(arrays.class_names))
    log(_plan(config, arrays, train.device_description()))
    model, trained_epochs, timings["train_seconds"] = _trained_model(config, method, train_x, train_y, out, verbose, callbacks)

    started = time.perf_counter()
    db_latent, query_latent, query_accuracy = encode_split(models.scoring_model(model), db_x, query_x, query_y, config.get("tta", V.NO_TTA))
    db_bits, query_bits = models.binarise(db_latent), models.binarise(query_latent)
    timings["encode_seconds"] = time.perf_counter() - started
    rundir.write_codes(out / rundir.CODES_FILE, db_bits, query_bits, db_y, query_y, split)

    import evaluate

    started = time.perf_counter()
    scores = evaluate.evaluate_retrieval(query_bits, query_y, db_bits, db_y, top)
    # The same ranking of the float latent features the codes come from: what binarising costs.
    float_scores = evaluate.evaluate_features(query_latent, query_y, db_latent, db_y, top)
    timings["eval_seconds"] = time.perf_counter() - started

    title = f"{config['dataset']} {config['method']} {config['arch']} {config['bits']} bits"
    _save_plot(out / rundir.PLOT_FILE, scores["precision_at_k"], title)
    _save_pr_curve(out / rundir.PR_CURVE_FILE, scores["pr_curve"], title)
    _save_code_figures(out, arrays, db_bits, query_bits, top, scores["mAP"], config["seed"])
    metrics = {
        "bits": config["bits"],
        "dataset": config["dataset"],
        "method": config["method"],
        "arch": config["arch"],
        "seed": config["seed"],
        "top": top,
        f"mAP@{top}": scores["mAP"],
        f"precision@{top}": scores["precision"],
        "mAP@all": scores["mAP_all"],
        f"float_mAP@{top}": float_scores["mAP"],
        "precision@r2": scores["precision_r2"],
        "recall@r2": scores["recall_r2"],
        "precision_at_k": [float(value) for value in scores["precision_at_k"]],
        "pr_curve": {name: values.tolist() for name, values in scores["pr_curve"].items()},
        **method.summary(),
        "protocol": split.protocol,
        "split_seed": config["seed"],
        "query_source": _query_source(config),
        "class_names": list(arrays.class_names),
        "num_train": len(train_y),
        "num_queries": len(query_y),
        "num_database": len(db_y),
        "epochs_trained": trained_epochs,
        **({"query_accuracy": query_accuracy} if query_accuracy is not None else {}),
        **{key: config[key] for key in ("model_from", "model_train_seconds") if config.get("model_from")},
        "recipe": config.get("recipe"),
        "jit_compile": model.jit_compile,
        "precision_policy": precision_policy,
        "device": train.device_description(),
        "placement": devices.placement().describe(),
        **rundir.provenance(),
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }
    rundir.write_json(out / rundir.METRICS_FILE, metrics)
    log(
        f"mAP@{top} = {scores['mAP']:.4f}, precision@{top} = {scores['precision']:.4f}, "
        f"mAP@all = {scores['mAP_all']:.4f}, float mAP@{top} = {float_scores['mAP']:.4f} "
        f"({len(query_y)} {_query_source(config)} queries vs {len(db_y)} database images, {config['bits']} bits, "
        f"protocol {split.protocol}{_overrides(config)})"
    )
    log(f"results in {out}: {', '.join(name for name in rundir.RUN_FILES if (out / name).is_file())}")
    return metrics


class Arrays(NamedTuple):
    """A run's split, its class names, the images and labels of its three roles, and own images' file names (else `None`)."""

    split: protocols.Split
    class_names: tuple
    train_x: np.ndarray
    train_y: np.ndarray
    db_x: np.ndarray
    db_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    db_names: np.ndarray = None
    query_names: np.ndarray = None


def load_arrays(config):
    """Loads the config's dataset and gathers its training, database and query images and labels."""
    dataset = _load(config)
    split = protocols.select_split(config, dataset)
    if config.get("model_from"):
        _check_trained_on(split, dataset, config)
    images = (dataset.x_train, dataset.x_test, getattr(dataset, "x_db", None))
    labels = (dataset.y_train, dataset.y_test, getattr(dataset, "y_db", None))
    roles = (items.gather(source) for items in (split.train, split.database, split.queries) for source in (images, labels))
    names = (dataset.names_train, dataset.names_test, dataset.names_db)
    named = any(array is not None for array in names)
    return Arrays(split, tuple(dataset.class_names), *roles, *((split.database.gather(names), split.queries.gather(names)) if named else ()))


def _check_trained_on(split, dataset, config):
    """Refuses to evaluate `--model-from`'s model unless it trained on exactly `split`'s training images.

    Any other split could hold images the model was trained on among its queries
    (or, for a protocol whose database leaves the training images out, in its database).
    """
    trained = {**config, "protocol": config["model_protocol"], "val_size": config["model_val_size"]}
    if not protocols.select_split(trained, dataset).train.same_as(split.train):
        raise UsageError(
            f"--model-from {config['model_from']}: that model trained on other images than protocol {split.protocol}'s "
            f"training set (it trained under protocol {trained['protocol']}, --val-size {trained['val_size']}), so this "
            f"evaluation could score images it learnt from; evaluate it under a protocol with the same training images "
            f"(dhn and cifar10-1 share theirs)"
        )


def _copy_trained_model(trained_dir, out):
    """Copies `--model-from`'s `model.keras` into the run folder (once); the run then skips training."""
    if (out / rundir.MODEL_FILE).is_file():
        return
    if not (trained_dir / rundir.MODEL_FILE).is_file():
        raise UsageError(f"--model-from {trained_dir}: its {rundir.MODEL_FILE} is gone")
    with rundir.atomic_path(out / rundir.MODEL_FILE) as temporary:
        shutil.copyfile(trained_dir / rundir.MODEL_FILE, temporary)


def _load(config):
    try:
        return data.load_dataset(
            config["dataset"], data_dir=config["data_dir"], image_size=config.get("image_size"),
            test_fraction=config.get("test_fraction"), image_root=config.get("image_root"), seed=config["seed"],
        )
    except data.DataError as error:
        raise UsageError(str(error)) from None


def _plan(config, arrays, device):
    """What the run will do, in two lines: its data and sizes; its method, code length, recipe and training."""
    queries = f"{len(arrays.query_y):,} {_query_source(config)} queries"
    batches = "P x K class batches" if config["method"] in V.CLASS_BATCH_METHODS else f"batches of {config['batch_size']:,}"
    return (f"{config['dataset']}: {len(arrays.train_y):,} training images, {len(arrays.db_y):,} database images, {queries}\n"
            f"{config['method']}, {config['bits']} bits, {config['arch']} network, {config['recipe']} recipe: "
            f"{config['epochs']} epochs of {batches}, {config['optimizer']}; training on {device}")


def _query_source(config):
    return "validation" if config["val_size"] else "test"


def _overrides(config):
    """Says which of the protocol's defaults the user's flags replaced, for the printed result."""
    flags = [flag for flag, key in (("-q", "queries"), ("-t", "top"), ("-n", "train_size"), ("--val-size", "val_size")) if config[key] is not None]
    return f" with {', '.join(flags)} overriding its defaults" if flags else ""


def _resolve_recipe(config, colour, train_size):
    """Fills the training settings the flags left unset from the run's recipe (`auto`: the arch's own)."""
    if V.tta_mode(config.get("tta")) != V.NO_TTA and not colour:
        raise UsageError("--tta averages each image with its mirror image: it applies to colour images only")
    return recipes.fill(config, recipes.choose(config["recipe"], config["arch"], config["method"], train_size), colour, train_size)


def _check_batches_fit_devices(config):
    """Refuses, before the run folder is written, batches the devices cannot share (see devices.py)."""
    placement = devices.placement()
    if config["method"] in V.CLASS_BATCH_METHODS:
        placement.check_class_batches()
        placement.check_batch(config["batch_size"], "--classes-per-batch x --images-per-class")
    else:
        placement.check_batch(config["batch_size"])


def _resolve_class_batches(config, train_y, log):
    """For P x K batches (`dnnh`): P (default clipped to the classes present), K checked, batch size P*K."""
    if config["method"] not in V.CLASS_BATCH_METHODS:
        return config
    groups = train_y if train_y.ndim == 1 else np.argmax(train_y, axis=1)  # multi-hot: grouped by first label
    class_sizes = np.unique(groups, return_counts=True)[1]
    classes_per_batch, images_per_class = config["classes_per_batch"], config["images_per_class"]
    if classes_per_batch is None:
        classes_per_batch = min(V.CLASSES_PER_BATCH, len(class_sizes))
        if classes_per_batch < V.CLASSES_PER_BATCH:
            log(f"note: --classes-per-batch {V.CLASSES_PER_BATCH} clipped to the number of classes, {classes_per_batch}")
    if classes_per_batch > len(class_sizes):
        raise UsageError(f"--classes-per-batch must be at most the number of classes, {len(class_sizes)}, got {classes_per_batch}")
    if images_per_class > class_sizes.min():
        raise UsageError(f"--images-per-class must be at most the smallest class's {class_sizes.min()} training images, got {images_per_class}")
    return {**config, "classes_per_batch": int(classes_per_batch), "batch_size": int(classes_per_batch * images_per_class)}


def method_for(config, num_classes):
    """The training method `config` names, with its options; a bad option is a `UsageError`."""
    import methods

    try:
        return methods.make_method(
            config["method"], num_classes, config["bits"], config["code_type"],
            quantization_weight=config.get("lambda"), margin=config.get("margin"),
            label_smoothing=config.get("label_smoothing"),
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def compiled_model(config, method, input_shape, steps_per_epoch, jit_compile="auto"):
    """The run's training model for images of `input_shape`, compiled with its optimiser, loss and metrics.

    `steps_per_epoch` sizes the learning-rate schedule; `jit_compile` is Keras's
    (`"auto"`: XLA wherever Keras uses it). `bench/step_bench.py` times the step this compiles.
    """
    import models
    import train

    craft = {key: config[key] for key in models.SpeedrunCraft._fields if config.get(key) is not None}
    encoder = models.build_encoder(
        config["arch"], input_shape, config["bits"], config.get("extra_layer", False),
        weights=None if config.get("weights", "none") == "none" else config["weights"],
        input_size=config.get("backbone_size"), freeze_backbone=config.get("freeze_backbone", False),
        augment=config.get("augment"), width=config.get("width"), growth=config.get("growth"),
        flip=config.get("flip") or models.RANDOM_FLIP, craft=models.SpeedrunCraft(**craft) if craft else None,
    )
    model = method.training_model(encoder)
    total_steps = max(1, config["epochs"] * steps_per_epoch)
    whitening_epochs = config.get("whitening_bias_epochs")
    model.compile(
        optimizer=train.make_optimizer(
            config["optimizer"], config["lr"], config["schedule"], backbone_lr_scale=config.get("backbone_lr_scale"),
            total_steps=total_steps, weight_decay=config.get("weight_decay"), norm_bias_lr_scale=config.get("norm_bias_lr_scale"),
            filter_lr=config.get("filter_lr"), whitening_bias_steps=whitening_epochs * steps_per_epoch if whitening_epochs else None,
        ),
        loss=method.loss(),
        loss_weights=[config.get("loss_scale") or 1.0],
        metrics=method.metrics(),
        jit_compile=jit_compile,
    )
    return model


def _trained_model(config, method, x, y, out, verbose, callbacks):
    """Trains (or resumes training of) the model; returns it, the epochs trained and the training seconds.

    A resumed run's seconds count the earlier runs' finished epochs too (as their
    checkpoint recorded them). A run killed after `model.keras` was saved but
    before it finished skips training when resumed, and reports 0 seconds.
    """
    import keras

    import backbones
    import models
    import train

    model_path, backup_dir = out / rundir.MODEL_FILE, out / rundir.BACKUP_DIR
    if model_path.is_file():
        return keras.saving.load_model(model_path), config["epochs"], 0.0
    targets = method.targets(y)
    placement = devices.placement()
    start_epoch = train.resumed_epoch(backup_dir)
    if method.batch_classes:
        import batches

        training_batches = batches.ClassBalancedBatches(x, targets, y, config["classes_per_batch"], config["images_per_class"], seed=config["seed"])
        steps_per_epoch = len(training_batches)
    else:
        training_batches, steps_per_epoch = placement.training_batches(
            x, targets, config["batch_size"], config["seed"], start_epoch, alternating_flip=config.get("flip") == "alternating")
    total_steps = max(1, config["epochs"] * steps_per_epoch)
    weight_callbacks = [train.Lookahead(steps_per_epoch, total_steps)] if config.get("weight_averaging") else []
    with placement.scope():
        try:
            model = compiled_model(config, method, x.shape[1:], steps_per_epoch)
        except backbones.WeightsError as error:
            raise UsageError(str(error)) from None
        if verbose and train.gpu_count() and not model.jit_compile:
            print("warning: XLA compilation is off (a layer of this model does not support jit_compile): training will be slow")
        if not start_epoch:  # a resumed run's checkpoint holds the fitted whitening
            models.adapt_to_images(model, x)
        if start_epoch and verbose:
            print(f"resuming from epoch {start_epoch} of {config['epochs']}")
        seconds_before, started = train.checkpoint_seconds(backup_dir), time.perf_counter()
        estimate = [train.TimeEstimate(config["epochs"] - start_epoch)] if verbose else []
        train.fit_resumable(model, training_batches, epochs=config["epochs"], backup_dir=backup_dir, verbose=verbose,
                            callbacks=[*estimate, *callbacks], weight_callbacks=weight_callbacks)
        seconds = seconds_before + time.perf_counter() - started
    models.unsynchronize_batch_norm(model)
    with rundir.atomic_path(model_path) as temporary:
        rundir.no_space(train.checkpoint_bytes(model), out)
        model.save(temporary)
    rundir.remove_backup(out)
    return placement.local_model(model, model_path), config["epochs"], seconds


def encode_split(scorer, db_x, query_x, query_y, tta):
    """Latent activations of database and queries, and the queries' accuracy where the model classifies.

    `scorer` is a `models.scoring_model`; `tta`, a mode of `vocabulary.TTA_MODES`, averages each image's outputs over its views.
    """
    import models

    db_out, query_out = (models.encode(scorer, images, tta) for images in (db_x, query_x))
    if len(scorer.outputs) == 1:
        return db_out, query_out, None
    accuracy = float(np.mean(np.argmax(query_out[1], axis=1) == query_y))
    return db_out[0], query_out[0], accuracy


def _save_code_figures(out, arrays, db_bits, query_bits, top, mean_ap, seed):
    """`retrieved.png`, `distances.png` and `bits.png` from the run's codes and the images it holds."""
    from plots.bits import save_bits
    from plots.distances import save_distances
    from plots.retrieved import choose_queries, save_retrieved

    queries = choose_queries(len(query_bits), seed=seed)
    save_retrieved(out / rundir.RETRIEVED_FILE, queries, arrays.query_x, arrays.query_y, query_bits, arrays.db_x, arrays.db_y, db_bits,
                   class_names=arrays.class_names, db_names=arrays.db_names)
    codes = {"db_bits": db_bits, "query_bits": query_bits, "db_labels": arrays.db_y, "query_labels": arrays.query_y}
    save_distances(codes, {"top": top, f"mAP@{top}": mean_ap}, out / rundir.DISTANCES_FILE)
    save_bits(codes, out / rundir.BITS_FILE, arrays.class_names)


def _save_plot(path, precision_at_k, title):
    from plots.precision_at_k import plot_precision_at_k

    with rundir.atomic_path(path) as temporary:
        plot_precision_at_k(precision_at_k, temporary, title)


def _save_pr_curve(path, pr_curve, title):
    from plots.pr_curve import plot_pr_curve

    with rundir.atomic_path(path) as temporary:
        plot_pr_curve(pr_curve["precision"], pr_curve["recall"], temporary, title)


def _resumed_config(args):
    """The saved config of the run to resume; the other flags given are ignored (the run's own apply)."""
    if args.out is None:
        raise UsageError("--resume needs --out: the folder of the run to continue")
    if args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pick one")
    rundir.check_out_dir(args.out, resume=True)
    config = rundir.read_json(Path(args.out) / rundir.CONFIG_FILE)
    if config.get("num_processes", 1) > 1:
        raise UsageError(f"--resume: {args.out} was trained by {config['num_processes']} processes, which cannot be resumed; start it again")
    if "growth" not in config:  # written before the setting: its network had the one growth there was then
        config["growth"] = V.SPEEDRUN_GROWTH if config["arch"] == V.GROWTH_ARCH else None
    return config


# The errors that mean bad input: one line on stderr, exit status 2.
USAGE_ERRORS = (UsageError, rundir.RunDirError, data.DataError, devices.DeviceError, protocols.ProtocolError)


def prepare(args):
    """The config of a new run from parsed arguments, with its run folder and data checked; no Keras yet."""
    if args.model_from:
        config = options.resolve_model_from(args)
    else:
        config = devices.worker_config(options.resolve_args(args))  # process > 0: a private temporary run folder
    rundir.check_out_dir(config["out"], overwrite=args.overwrite)
    if config["data_dir"]:
        data.check_data_dir(config["data_dir"])
    elif data.parse_dataset_name(config["dataset"])[0]:
        data.check_dataset(config["dataset"], test_fraction=config["test_fraction"], image_root=config["image_root"])
    return config


def main(argv=None):
    """Command-line entry point; returns the exit status.

    0 done; 2 bad input, or `--out` held by a live run (one line, nothing written); 1 a file that
    could not be written (one line naming it; the run resumes from its last finished epoch once
    there is room); 130 interrupted (Ctrl-C: one line with the command that resumes the run).
    """
    parser = options.build_parser()
    args = parser.parse_args(argv)
    out = args.out if args.resume else None  # the run folder, once known: for the resume hint
    with parser.exit_statuses(USAGE_ERRORS, kept=lambda: _resume_hint(out)):
        config = _resumed_config(args) if args.resume else prepare(args)
        out = config["out"]
        with rundir.run_lock(out):
            if not args.resume:  # again under the lock: a run that held it may have written the folder
                rundir.check_out_dir(out, overwrite=args.overwrite)
            quiet.import_keras()
            run(config, verbose=args.verbose, resume=args.resume)
    return 0


def _resume_hint(out):
    """What the user can do after a run stopped half-way: the command that resumes it, if anything was saved."""
    if out is None or not (Path(out) / rundir.CONFIG_FILE).is_file():
        return "nothing of this run was saved"
    return f"the finished epochs are kept; resume with: python retrieval.py --resume --out {shlex.quote(str(out))}"


if __name__ == "__main__":
    sys.exit(main())
