"""The command line of `retrieval.py`: its flags, their checks, and the config a run is made of.

`build_parser` lists every flag with its help and default; `resolve_args` checks what needs
neither data nor Keras and returns the run's config dict (saved as `config.json`, read back by
`--resume`). A mistake is a `UsageError`, which the CLI prints as one line with exit status 2.
Name lists and shared defaults are `vocabulary.py`'s; training settings are `recipes.py`'s.
`ArgumentParser` is the parser every command line of the project uses.

Example:

>>> config = resolve_args(build_parser().parse_args(["-l", "12", "--out", "runs/demo"]))
>>> config["bits"], config["method"], config["arch"]
(12, 'dlbhc', 'speedrun')
"""

import argparse
import contextlib
import time
from pathlib import Path

import data
import devices
import protocols
import recipes
import rundir
import vocabulary as V


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line (`prog: error: message`), not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    @contextlib.contextmanager
    def exit_statuses(self, usage_errors, kept):
        """Ends a command's failures with one line and the project's exit status, never a traceback.

        A mistake of the user's (`usage_errors`) exits 2; a write that failed
        (`rundir.WriteError`: a full disk, a folder that cannot be written) 1;
        Ctrl-C 130. The last two say what is still on disk, `kept()`, read when
        the failure happens (so it sees the run folder chosen by then).
        """
        try:
            yield
        except usage_errors as error:
            self.error(str(error))
        except rundir.WriteError as error:
            self.exit(1, f"{self.prog}: error: {error}; {kept()}\n")
        except KeyboardInterrupt:
            self.exit(130, f"{self.prog}: interrupted; {kept()}\n")


# The run's own defaults; training settings (epochs, batch size, optimiser, ...) default to the
# recipe's (recipes.py), and every name list is vocabulary.py's.
DEFAULTS = {"arch": "speedrun", "recipe": recipes.AUTO, "seed": 0, "dataset": "cifar10"}


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def build_parser():
    """The argument parser; every flag has a long form, help text and a stated default."""
    parser = ArgumentParser(
        prog="retrieval.py",
        description="Learn binary codes for images and evaluate Hamming-distance retrieval.",
    )
    add = parser.add_argument
    add("-l", "--bits", type=int, default=V.DEFAULT_BITS, help=f"code length, {V.MIN_BITS}..{V.MAX_BITS} (default: %(default)s)")
    add("-q", "--queries", type=int, default=None, help="number of queries drawn (seeded) from the test split (default: all of it)")
    add("-e", "--epochs", type=int, default=None, help=f"training epochs (default: the recipe's, {_recipe_defaults('epochs')})")
    add("-s", "--verbose", type=int, choices=(0, 1), default=1, help="0 silent, 1 progress bars and logs (default: %(default)s)")
    add("-t", "--top", default=None, help=f"k of mAP@k and precision@k, or 'all' for the whole database (default: the protocol's, {protocols.DEFAULT_TOP['dlbhc']} for dlbhc, clipped to the database size)")
    add("-o", "--optimizer", default=None, help=f"adadelta or 1 (lr 1.0), sgd or 2 (lr 0.01, Nesterov momentum 0.9), adam (lr 0.001), muon (airbench's: orthogonalised steps for the convolution filters at --filter-lr, Nesterov SGD at momentum 0.85 for the rest at --lr) (default: the recipe's, {_recipe_defaults('optimizer')})")
    add("-a", "--extra-layer", type=int, choices=(1, 2), default=1, help="1 no, 2 yes: a Dense(512)+ReLU block before the latent layer (default: %(default)s)")
    add("-c", "--code-type", default=None, help="target codewords of --method dbr: 1 or origin (12-bit lexicode), 2 or hamming74 (default: origin)")
    add("-n", "--train-size", type=int, default=None, help="seeded class-balanced draw of N training images, used for training and as the database (default: all)")
    add("--dataset", default=DEFAULTS["dataset"], help=f"one of {', '.join(data.DATASETS)}; or your own images: folder:PATH (one sub-folder of images per class, optionally under train/ and test/) or list:DIR (DIR/train.txt, test.txt [, database.txt]: '<path> <0/1 label> ...' a line) (default: %(default)s)")
    add("--data-dir", default=None, help="offline copy to read instead of downloading: CIFAR-10 python batches, train/test image folders, a .tar.gz of either, or IDX .gz files (default: download with keras.datasets)")
    add("--image-size", type=int, default=None, help=f"folder:/list: data: side in pixels of the square every image is resized (shorter side) and centre-cropped to, {data.MIN_IMAGE_SIZE}..{data.MAX_IMAGE_SIZE} (default: {data.DEFAULT_IMAGE_SIZE})")
    add("--test-fraction", type=float, default=None, help=f"folder:PATH without train/ and test/: share of each class drawn (seeded, stratified) as test images (default: {data.DEFAULT_TEST_FRACTION})")
    add("--image-root", default=None, help="list:DIR data: the folder the list files' image paths are relative to (default: DIR)")
    add("--arch", default=DEFAULTS["arch"], help=f"network: speedrun, dbr or resnet (trained from scratch), or a keras.applications backbone: {', '.join(V.APPLICATION_INPUT_SIZES)} (default: %(default)s)")
    add("--weights", default=None, help="keras.applications archs: imagenet (downloaded once by Keras), none (random initialisation), or the path of a .h5 weights file, e.g. the ImageNet file copied to a machine without internet (default: imagenet; none for dbr and resnet)")
    add("--freeze-backbone", action="store_true", help="keras.applications archs: train only the layers after the backbone; the backbone keeps its weights and runs in inference mode (batch norm, dropout)")
    add("--backbone-lr-scale", type=float, default=None, help=f"keras.applications archs: the backbone's learning rate as a multiple of the rest's, positive (default: {V.BACKBONE_LR_SCALE} with pretrained weights, 1 with --weights none)")
    add("--backbone-size", type=int, default=None, help=f"keras.applications archs: side of the square the model resizes every image to before the backbone, at least {V.MIN_BACKBONE_SIZE} (default: the backbone's own, 224)")
    add("--method", default=None, help=f"training method: {' or '.join(V.METHODS)} (default: dbr with --arch dbr, else dlbhc)")
    add("--batch-size", type=int, default=None, help=f"training batch size; not with --method dnnh, whose batches are --classes-per-batch x --images-per-class images (default: the recipe's, {_recipe_defaults('batch_size')})")
    add("--lambda", dest="lambda_", type=float, default=None, help=f"--method dhn: weight of the quantisation penalty, 0 or more (default: {V.QUANTIZATION_WEIGHT})")
    add("--margin", type=float, default=None, help="--method dnnh: triplet margin on the relaxed codes in [-1, 1], positive (default: bits/4)")
    add("--classes-per-batch", type=int, default=None, help=f"--method dnnh: P, distinct classes per batch, 2 or more (default: {V.CLASSES_PER_BATCH}, or the number of classes if fewer)")
    add("--images-per-class", type=int, default=None, help=f"--method dnnh: K, images of each class per batch, 2 or more (default: {V.IMAGES_PER_CLASS})")
    add("--schedule", default=None, help=f"learning rate schedule: constant, cosine (5%% linear warm-up, then cosine decay to 0), or triangular (linear from 0.2x up to the peak at 23%% of the steps, then down to 0) (default: the recipe's, {_recipe_defaults('schedule')})")
    add("--lr", type=float, default=None, help=f"(peak) learning rate (default: the recipe's, {_recipe_defaults('lr')}; none: the optimizer's own, see --optimizer; --method dnnh takes the recipe's x P*K / the recipe's batch size)")
    add("--recipe", default=DEFAULTS["recipe"], help=f"where the training settings whose help says 'the recipe's' take their defaults: {', '.join(recipes.RECIPES)}, or auto (the arch's own: for --arch speedrun, airbench for --method dlbhc on 20,000 training images or more, else speedrun; dbr for --arch dbr; classic otherwise); flags given explicitly win; see recipes.py (default: %(default)s)")
    add("--weight-decay", type=float, default=None, help=f"decoupled weight decay of the optimizer, 0 or more (default: the recipe's, {_recipe_defaults('weight_decay')})")
    add("--width", type=int, default=None, help=f"--arch speedrun or resnet: channels of the first stage (speedrun: the later ones have --growth times as many; resnet: each doubles them) (default: the recipe's, {_recipe_defaults('width')})")
    add("--growth", type=int, default=None, help=f"--arch speedrun: channels of the second and third blocks as a multiple of --width (default: the recipe's, {_recipe_defaults('growth')})")
    add("--augment", default=None, help=f"training-time augmentation inside the model: none, flip (colour images mirrored), crop-flip (also shifted up to 1/8 of the side), light-crop-flip (shifted up to 1/16) (default: the recipe's, {_recipe_defaults('augment')}; none: flip, none for --arch dbr)")
    add("--label-smoothing", type=float, default=None, help=f"--method dlbhc: label smoothing of the cross-entropy, in [0, 1) (default: the recipe's, {_recipe_defaults('label_smoothing')})")
    add("--tta", default=None, help=f"test-time augmentation of colour images: none, flip (each code from the mean of the image's and its mirror image's latent activations), or flip-shift (that mean also over copies shifted by a pixel, airbench's multi-crop) (default: the recipe's, {_recipe_defaults('tta')})")
    add("--no-tta", dest="tta", action="store_const", const=V.NO_TTA, help="--tta none")
    add("--norm-bias-lr-scale", type=float, default=None, help=f"learning rate of the batch norm biases as a multiple of the rest's, positive (default: the recipe's, {_recipe_defaults('norm_bias_lr_scale')}; none: 1)")
    add("--weight-averaging", action=argparse.BooleanOptionalAction, default=None, help=f"lookahead, the speed-runs' weight averaging: from the 4th epoch, every 5 steps the weights move into a running average and training continues from it (default: the recipe's, {_recipe_defaults('weight_averaging')})")
    add("--filter-lr", type=float, default=None, help=f"--optimizer muon: (peak) rate of the convolution filters' orthogonalised steps, positive (default: the recipe's, {_recipe_defaults('filter_lr')})")
    add("--whitening-bias-epochs", type=int, default=None, help=f"--optimizer muon: train the whitening layer's bias for these first epochs only, its rate falling to 0 over them; 0: every epoch, as the other variables (default: the recipe's, {_recipe_defaults('whitening_bias_epochs')}; none: every epoch)")
    add("--flip", default=None, help=f"how the augmentation mirrors colour images: random (each image, each time, in the model) or alternating (airbench's: a random half first, then every image the other way each epoch, in the data feed) (default: the recipe's, {_recipe_defaults('flip')})")
    add("--pooling", default=None, help=f"--arch speedrun: same (odd sides padded before each 2x2 max pool) or floor (the last row and column dropped, airbench's) (default: the recipe's, {_recipe_defaults('pooling')})")
    add("--batch-norm-epsilon", type=float, default=None, help=f"--arch speedrun: epsilon of its batch norms, positive (default: the recipe's, {_recipe_defaults('batch_norm_epsilon')})")
    add("--init", default=None, help=f"--arch speedrun: its 3x3 filters beyond the identity channels: he (uniform) or pytorch (uniform within 1/sqrt(fan in), airbench's) (default: the recipe's, {_recipe_defaults('init')})")
    add("--whitening", default=None, help=f"--arch speedrun: whitening epsilon added on pixels (scaled to [0, 1]) or standardised ones (each channel divided by its standard deviation, airbench's) (default: the recipe's, {_recipe_defaults('whitening')})")
    add("--precision", default=None, help=f"arithmetic of training and encoding: float32, or mixed_bfloat16 (bfloat16 arithmetic with float32 weights: the GPU default, and on a CPU with AVX512_BF16 oneDNN's bfloat16 kernels) (default: the recipe's, {_recipe_defaults('precision')}; none: mixed_bfloat16 on a GPU, else float32)")
    add("--loss-scale", type=float, default=None, help=f"factor on the method's loss, positive: what a method needs of its own under a recipe's learning rate (default: the recipe's, {_recipe_defaults('loss_scale')}; recipes.METHOD_SETTINGS)")
    add("--seed", type=int, default=DEFAULTS["seed"], help="seed of the splits, the query draw and training (default: %(default)s)")
    add("--protocol", default=None, help=f"evaluation protocol: {', '.join(protocols.PROTOCOLS)} (default: dlbhc for the named datasets, folder for folder:/list: data); see protocols.py")
    add("--val-size", type=int, default=None, help="hold out N training images (class-balanced) as the queries, leaving the test split untouched: for choosing settings (default: off)")
    add("--devices", type=int, default=None, help="devices this process trains on, data-parallel: GPUs, or on a machine without one N host devices (TensorFlow logical CPUs, JAX XLA host devices); the global batch stays --batch-size (default: every GPU, 1 on CPU)")
    add("--coordinator", default=None, help="HOST:PORT of process 0, which every process of a multi-process run (jax backend only) connects to (default: one process)")
    add("--num-processes", type=int, default=None, help="processes training together, one per machine or per group of devices, jax backend only; needs --coordinator and --process-id (default: 1)")
    add("--process-id", type=int, default=None, help="this process's rank, 0..--num-processes - 1; only process 0 writes the run folder (default: 0)")
    add("--model-from", default=None, help="a finished run folder whose trained model this run encodes and evaluates, without training: the data, seed, network, method, bits and training settings are that run's, and the flags here set only the evaluation (--protocol, -q, -t, --val-size, --data-dir, --out); refused unless this protocol trains on the very images that run trained on, as dhn and cifar10-1 do (default: train a model)")
    add("--out", default=None, help="run folder (default: runs/<dataset>-<method>-<bits>b-<timestamp>)")
    add("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    add("--overwrite", action="store_true", help="replace the run in --out")
    return parser


def _recipe_defaults(key):
    """A setting's value in each recipe, for the help text: 'classic 20, fast 40'."""
    return ", ".join(f"{name} {settings[key]}" for name, settings in recipes.RECIPES.items())


def resolve_args(args):
    """Checks the parsed arguments that need no data and no Keras; returns the resolved config dict."""
    if args.method is None:
        args.method = recipes.default_method(args.arch)
    if not V.MIN_BITS <= args.bits <= V.MAX_BITS:
        raise UsageError(f"--bits must be between {V.MIN_BITS} and {V.MAX_BITS}, got {args.bits}")
    _check_counts((("--queries", args.queries), ("--train-size", args.train_size), ("--val-size", args.val_size)))
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    _check_choice("--recipe", args.recipe, recipes.NAMES)
    _check_training_options(args)
    _check_choice("--arch", args.arch, V.ARCHS)
    backbone = _resolve_backbone(args)
    _check_choice("--method", args.method, V.METHODS)
    dataset, own_data = _resolve_dataset(args)
    if args.protocol is not None:
        _check_choice("--protocol", args.protocol, protocols.PROTOCOLS)
    if args.optimizer is not None:
        _check_choice("--optimizer", args.optimizer, tuple(V.OPTIMIZER_ALIASES))
    if args.schedule is not None:
        _check_choice("--schedule", args.schedule, V.SCHEDULES)
    if args.code_type is not None:
        _check_choice("--code-type", args.code_type, tuple(V.CODE_TYPES))
    _check_method_options(args)
    placement = _resolve_devices(args)
    class_batches = args.method in V.CLASS_BATCH_METHODS
    config = {
        "bits": args.bits,
        "queries": args.queries,
        "epochs": args.epochs,
        "top": _parse_top(args.top),
        "optimizer": V.OPTIMIZER_ALIASES.get(args.optimizer),  # None: the recipe's, filled by run
        "extra_layer": args.extra_layer == 2,
        "code_type": _resolve_code_type(args),
        "train_size": args.train_size,
        "dataset": dataset,
        "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None,
        **own_data,
        "arch": args.arch,
        **backbone,
        "method": args.method,
        "batch_size": None if class_batches else args.batch_size,  # None: the recipe's; dnnh: P*K; set by run
        "lambda": (V.QUANTIZATION_WEIGHT if args.lambda_ is None else args.lambda_) if V.applies("lambda", args.method) else None,
        "margin": (args.bits * V.MARGIN_PER_BIT if args.margin is None else args.margin) if V.applies("margin", args.method) else None,
        "classes_per_batch": args.classes_per_batch,  # dnnh: None until run knows the number of classes
        "images_per_class": (args.images_per_class or V.IMAGES_PER_CLASS) if class_batches else None,
        "lr": args.lr,
        "schedule": args.schedule,
        "recipe": args.recipe,  # auto: chosen by run, once Keras knows whether there is a GPU
        "weight_decay": args.weight_decay,
        "width": args.width,
        "growth": args.growth,
        "augment": args.augment,
        "label_smoothing": args.label_smoothing,
        "tta": args.tta,
        "norm_bias_lr_scale": args.norm_bias_lr_scale,
        "weight_averaging": args.weight_averaging,
        "loss_scale": args.loss_scale,
        **{key: getattr(args, key) for key in recipes.NO_CRAFT},
        "precision": args.precision,
        "seed": args.seed,
        "val_size": args.val_size,
        "protocol": args.protocol or protocols.default_protocol(args.dataset),
        **placement,
        "out": str(Path(args.out or _default_out(args.dataset, args.method, args.bits))),
        "model_from": None,
    }
    return config


# What a run that evaluates another run's model (`--model-from`) may set: the evaluation only.
EVALUATION_FLAGS = ("queries", "top", "protocol", "val_size", "data_dir", "out", "overwrite", "verbose", "resume", "model_from")
# Where such a run encodes: one process, on the devices this machine has.
ONE_PROCESS = {"devices": None, "coordinator": None, "num_processes": 1, "process_id": 0}


def resolve_model_from(args):
    """The config of a run that evaluates `--model-from`'s trained model: its training settings, these evaluation flags.

    Raises:
        UsageError: a training flag given beside `--model-from` (it would be
            ignored), or a folder without a finished run in it.
    """
    parser = build_parser()
    given = [action.option_strings[-1] for action in parser._actions
             if action.dest not in (*EVALUATION_FLAGS, "help") and getattr(args, action.dest) != action.default]
    if given:
        raise UsageError(f"--model-from evaluates a model already trained, with that run's settings: drop {given[0]}")
    trained_dir = Path(args.model_from).expanduser().resolve()
    missing = [name for name in (rundir.CONFIG_FILE, rundir.MODEL_FILE, rundir.METRICS_FILE) if not (trained_dir / name).is_file()]
    if missing:
        raise UsageError(f"--model-from {args.model_from}: no finished run there (it has no {missing[0]})")
    trained = rundir.read_json(trained_dir / rundir.CONFIG_FILE)
    _check_counts((("--queries", args.queries), ("--val-size", args.val_size)))
    if args.protocol is not None:
        _check_choice("--protocol", args.protocol, protocols.PROTOCOLS)
    return {
        **trained,
        **ONE_PROCESS,
        "queries": args.queries,
        "top": _parse_top(args.top),
        "val_size": args.val_size,
        "protocol": args.protocol or trained["protocol"],
        "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else trained["data_dir"],
        "out": str(Path(args.out or _default_out(trained["dataset"], trained["method"], trained["bits"]))),
        "model_from": str(trained_dir),
        # What the evaluation needs of the training: its images (retrieval checks them) and its time.
        "model_protocol": trained["protocol"],
        "model_val_size": trained["val_size"],
        "model_train_seconds": _train_seconds(rundir.read_json(trained_dir / rundir.METRICS_FILE)),
    }


def _train_seconds(metrics):
    """The seconds a finished run's model took to train, also where that run evaluated another run's model."""
    return metrics.get("model_train_seconds", metrics["timings"]["train_seconds"])


def _resolve_devices(args):
    """The flags of where training runs: counts in range, the processes' flags together, one process on TensorFlow.

    Returns:
        The config entries `devices` (`None`: every GPU, else one),
        `coordinator`, `num_processes` and `process_id`.
    """
    if args.devices is not None and args.devices < 1:
        raise UsageError(f"--devices must be at least 1, got {args.devices}")
    processes = 1 if args.num_processes is None else args.num_processes
    if processes < 1:
        raise UsageError(f"--num-processes must be at least 1, got {processes}")
    if processes == 1 and (args.coordinator or args.process_id):
        raise UsageError("--coordinator and --process-id apply to multi-process runs only: pass --num-processes too")
    if processes > 1:
        backend = devices.configured_backend()
        if backend not in devices.MULTI_PROCESS_BACKENDS:
            raise UsageError(
                f"--num-processes {processes} needs KERAS_BACKEND=jax, not {backend}: Keras 3.15's fit under "
                f"TensorFlow's MultiWorkerMirroredStrategy is broken (keras-team/keras#20585)"
            )
        if not args.coordinator or ":" not in args.coordinator:
            raise UsageError(f"--num-processes {processes} needs --coordinator HOST:PORT (process 0's address), got {args.coordinator!r}")
        if args.process_id is None or not 0 <= args.process_id < processes:
            raise UsageError(f"--process-id must be between 0 and {processes - 1}, got {args.process_id}")
        if args.method in V.CLASS_BATCH_METHODS:
            raise UsageError(f"--method {args.method} cannot train in several processes: its triplets span the whole P x K batch")
    return {"devices": args.devices, "coordinator": args.coordinator, "num_processes": processes, "process_id": args.process_id or 0}


def _check_training_options(args):
    """The training settings a recipe fills in: each in range, each only where it applies."""
    if args.epochs is not None and args.epochs < 0:
        raise UsageError(f"--epochs must be 0 or more, got {args.epochs}")
    if args.weight_decay is not None and not args.weight_decay >= 0:
        raise UsageError(f"--weight-decay must be 0 or more, got {args.weight_decay}")
    for flag, value, archs in (("--width", args.width, V.WIDTH_ARCHS), ("--growth", args.growth, (V.GROWTH_ARCH,))):
        if value is None:
            continue
        if args.arch not in archs:
            raise UsageError(f"{flag} applies to --arch {' or '.join(archs)} only, not --arch {args.arch}")
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.augment is not None:
        _check_choice("--augment", args.augment, V.AUGMENTATIONS)
    if args.tta is not None:
        _check_choice("--tta", args.tta, V.TTA_MODES)
    for flag, value in (("--norm-bias-lr-scale", args.norm_bias_lr_scale), ("--loss-scale", args.loss_scale),
                        ("--filter-lr", args.filter_lr), ("--batch-norm-epsilon", args.batch_norm_epsilon)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if args.whitening_bias_epochs is not None and args.whitening_bias_epochs < 0:
        raise UsageError(f"--whitening-bias-epochs must be 0 or more, got {args.whitening_bias_epochs}")
    for flag, value, choices in (("--flip", args.flip, V.FLIPS), ("--pooling", args.pooling, ("same", "floor")),
                                 ("--init", args.init, ("he", "pytorch")), ("--whitening", args.whitening, ("pixels", "standardised")),
                                 ("--precision", args.precision, V.PRECISIONS)):
        if value is not None:
            _check_choice(flag, value, choices)
    craft = [flag for flag, value in (("--pooling", args.pooling), ("--batch-norm-epsilon", args.batch_norm_epsilon), ("--init", args.init),
                                      ("--whitening", args.whitening)) if value is not None]
    if craft and args.arch != V.GROWTH_ARCH:
        raise UsageError(f"{craft[0]} applies to --arch {V.GROWTH_ARCH} only, not --arch {args.arch}")
    if args.label_smoothing is not None:
        if not 0 <= args.label_smoothing < 1:
            raise UsageError(f"--label-smoothing must be at least 0 and below 1, got {args.label_smoothing}")


def _check_method_options(args):
    """The flags of one method: each only with its method (`vocabulary.METHOD_OPTIONS`), each in range."""
    given = {"code_type": args.code_type, "lambda": args.lambda_, "margin": args.margin, "classes_per_batch": args.classes_per_batch,
             "images_per_class": args.images_per_class, "label_smoothing": args.label_smoothing}
    for option, value in given.items():
        if value is not None and not V.applies(option, args.method):
            flag = "--" + option.replace("_", "-")
            raise UsageError(f"{flag} applies to --method {' or '.join(V.METHOD_OPTIONS[option])} only, not --method {args.method}")
    if args.batch_size is not None and args.method in V.CLASS_BATCH_METHODS:
        raise UsageError(f"--batch-size does not apply to --method {args.method}: its batches are --classes-per-batch x --images-per-class images")
    if args.lambda_ is not None and not args.lambda_ >= 0:
        raise UsageError(f"--lambda must be 0 or more, got {args.lambda_}")
    if args.margin is not None and not args.margin > 0:
        raise UsageError(f"--margin must be positive, got {args.margin}")
    for flag, value in (("--classes-per-batch", args.classes_per_batch), ("--images-per-class", args.images_per_class)):
        if value is not None and value < 2:
            raise UsageError(f"{flag} must be at least 2, got {value}")


def _resolve_dataset(args):
    """Checks `--dataset` and the flags of own data (folder:/list:).

    Returns:
        `(dataset, own_data)`: the dataset name, own data's path made absolute
        (so `--resume` works from any folder), and the config entries
        `image_size`, `test_fraction`, `image_root` (None where they do not apply).
    """
    try:
        kind, path = data.parse_dataset_name(args.dataset)
    except ValueError:
        raise UsageError(
            f"--dataset must be one of {', '.join(data.DATASETS)}, got {args.dataset!r}; or folder:PATH "
            f"(one sub-folder of images per class) or list:DIR (DIR/train.txt and test.txt)"
        ) from None
    for flag, value, kinds in (("--image-size", args.image_size, data.OWN_DATA_KINDS),
                               ("--test-fraction", args.test_fraction, (data.FOLDER,)),
                               ("--image-root", args.image_root, (data.LIST,))):
        if value is not None and kind not in kinds:
            raise UsageError(f"{flag} applies to --dataset {' or '.join(f'{name}:' for name in kinds)} only, not --dataset {args.dataset}")
    if kind is not None and args.data_dir:
        raise UsageError(f"--data-dir applies to --dataset {', '.join(data.DATASETS)}; --dataset {kind}: names its own path")
    if args.image_size is not None and not data.MIN_IMAGE_SIZE <= args.image_size <= data.MAX_IMAGE_SIZE:
        raise UsageError(f"--image-size must be between {data.MIN_IMAGE_SIZE} and {data.MAX_IMAGE_SIZE}, got {args.image_size}")
    if args.test_fraction is not None and not 0 < args.test_fraction < 1:
        raise UsageError(f"--test-fraction must be above 0 and below 1, got {args.test_fraction}")
    if kind == data.LIST and args.method not in V.MULTI_LABEL_METHODS:
        raise UsageError(
            f"--dataset list: has multi-hot labels (an image may have several), which --method {args.method} "
            f"cannot learn from: use --method {' or '.join(V.MULTI_LABEL_METHODS)}"
        )
    if kind is None:
        return args.dataset, {"image_size": None, "test_fraction": None, "image_root": None}
    return f"{kind}:{Path(path).expanduser().resolve()}", {
        "image_size": args.image_size or data.DEFAULT_IMAGE_SIZE,  # to become the arch's input size
        "test_fraction": args.test_fraction,  # None: data.DEFAULT_TEST_FRACTION, where it applies
        "image_root": str(Path(args.image_root).expanduser().resolve()) if args.image_root else None,
    }


def _resolve_backbone(args):
    """The flags of keras.applications backbones: only with one of them, in range, the weights file present.

    Returns:
        The config entries `weights` (`"imagenet"`, `"none"` or an absolute
        path), `freeze_backbone`, `backbone_lr_scale` and `backbone_size`
        (`None` where they do not apply).
    """
    if args.arch not in V.APPLICATION_INPUT_SIZES:
        given = [f"--weights {args.weights}"] if args.weights not in (None, "none") else []
        given += [flag for flag, value in (("--freeze-backbone", args.freeze_backbone or None), ("--backbone-lr-scale", args.backbone_lr_scale), ("--backbone-size", args.backbone_size)) if value is not None]
        if given:
            raise UsageError(f"{given[0]} applies to the keras.applications archs ({', '.join(V.APPLICATION_INPUT_SIZES)}) only, not --arch {args.arch}, which trains from scratch")
        return {"weights": "none", "freeze_backbone": False, "backbone_lr_scale": None, "backbone_size": None}
    weights = _resolve_weights(args.weights or "imagenet")
    if args.backbone_size is not None and args.backbone_size < V.MIN_BACKBONE_SIZE:
        raise UsageError(f"--backbone-size must be at least {V.MIN_BACKBONE_SIZE}, got {args.backbone_size}")
    if args.backbone_lr_scale is not None:
        if not args.backbone_lr_scale > 0:
            raise UsageError(f"--backbone-lr-scale must be positive, got {args.backbone_lr_scale}")
        if args.freeze_backbone:
            raise UsageError("--backbone-lr-scale and --freeze-backbone contradict each other: a frozen backbone does not learn")
    # A randomly initialised backbone has nothing to preserve: it learns at the full rate.
    default_scale = V.BACKBONE_LR_SCALE if weights != "none" else 1.0
    return {
        "weights": weights,
        "freeze_backbone": args.freeze_backbone,
        "backbone_lr_scale": None if args.freeze_backbone else args.backbone_lr_scale or default_scale,
        "backbone_size": args.backbone_size or V.APPLICATION_INPUT_SIZES[args.arch],
    }


def _resolve_weights(weights):
    """`imagenet`, `none`, or the absolute path of an existing weights file (so `--resume` works from anywhere)."""
    if weights in V.WEIGHTS_NAMES:
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UsageError(f"--weights must be imagenet, none or a weights file; no file {weights}")
    if not path.name.endswith((".h5", ".hdf5", ".keras")):
        raise UsageError(f"--weights must be a .h5 weights file as keras.applications reads (or .keras), got {weights}")
    return str(path.resolve())


def _check_counts(flags_and_values):
    """Each count given (not `None`) is at least 1."""
    for flag, value in flags_and_values:
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")


def _check_choice(flag, value, choices):
    if value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def _parse_top(top):
    """`None` (the default, clipped later), `"all"`, or a positive integer given explicitly."""
    if top is None or top == "all":
        return top
    try:
        value = int(top)
    except ValueError:
        raise UsageError(f"--top must be a positive integer or 'all', got {top!r}") from None
    if value < 1:
        raise UsageError(f"--top must be a positive integer or 'all', got {top!r}")
    return value


def _resolve_code_type(args):
    if not V.applies("code_type", args.method):
        return None
    return V.CODE_TYPES[args.code_type] if args.code_type else V.DEFAULT_CODE_TYPE


def _default_out(dataset, method, bits):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{data.dataset_slug(dataset)}-{method}-{bits}b-{stamp}"
