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

import argparse
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

import data
import devices
import protocols
import recipes
import rundir

# The command-line vocabulary. Each name is checked against the registry that
# implements it (models.ARCHS, methods.METHODS, train.OPTIMIZERS) by the tests;
# they are repeated here so that parsing never imports Keras.
# keras.applications backbones and the side of the square they resize images to (models.APPLICATIONS).
APPLICATION_INPUT_SIZES = {"resnet50": 224, "mobilenetv2": 224, "efficientnetb0": 224, "vgg16": 224}
ARCHS = ("dbr", "resnet", "speedrun", *APPLICATION_INPUT_SIZES)
MIN_BACKBONE_SIZE = 32  # the smallest input keras.applications takes for these networks
WEIGHTS_NAMES = ("imagenet", "none")
METHODS = ("dbr", "dlbhc", "dhn", "dnnh", "hadamard")
# Methods whose batches are P classes x K images (methods' `batch_classes`).
CLASS_BATCH_METHODS = ("dnnh",)
# Methods that learn from multi-hot labels ("shares a label"), as methods.py says; the
# others need one class per image, so `--dataset list:DIR` is refused for them.
MULTI_LABEL_METHODS = ("dhn", "dnnh")
SCHEDULES = ("constant", "cosine", "triangular")  # train.SCHEDULES
AUGMENTATIONS = ("none", "flip", "crop-flip", "light-crop-flip")  # models.AUGMENTATIONS
OPTIMIZER_NAMES = {"1": "adadelta", "adadelta": "adadelta", "2": "sgd", "sgd": "sgd", "adam": "adam"}
CODE_TYPE_NAMES = {"1": "origin", "origin": "origin", "2": "hamming74", "hamming74": "hamming74"}
MIN_BITS, MAX_BITS = 8, 256
DEFAULT_TOP = 1000
# Training settings (epochs, batch size, optimiser, ...) default to the recipe's (recipes.py).
DEFAULTS = {
    "bits": 48,
    "top": DEFAULT_TOP,
    "arch": "speedrun",
    "method": None,  # recipes.default_method(arch): dbr for --arch dbr, else dlbhc
    "lambda": 1.0,
    "classes_per_batch": 8,
    "images_per_class": 4,
    "recipe": recipes.AUTO,
    "seed": 0,
    "dataset": "cifar10",
    "backbone_lr_scale": 0.1,  # with pretrained weights: DLBHC trained its new layers 10x faster
}
ENCODE_BATCH_SIZE = 512

# TensorFlow's C++ start-up notices (oneDNN, CPU features) drown the progress bars.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def build_parser():
    """The argument parser; every flag has a long form, help text and a stated default."""
    parser = argparse.ArgumentParser(
        prog="retrieval.py",
        description="Learn binary codes for images and evaluate Hamming-distance retrieval.",
    )
    add = parser.add_argument
    add("-l", "--bits", type=int, default=DEFAULTS["bits"], help=f"code length, {MIN_BITS}..{MAX_BITS} (default: %(default)s)")
    add("-q", "--queries", type=int, default=None, help="number of queries drawn (seeded) from the test split (default: all of it)")
    add("-e", "--epochs", type=int, default=None, help=f"training epochs (default: the recipe's, {_recipe_defaults('epochs')})")
    add("-s", "--verbose", type=int, choices=(0, 1), default=1, help="0 silent, 1 progress bars and logs (default: %(default)s)")
    add("-t", "--top", default=None, help=f"k of mAP@k and precision@k, or 'all' for the whole database (default: {DEFAULT_TOP}, clipped to the database size)")
    add("-o", "--optimizer", default=None, help=f"adadelta or 1 (lr 1.0), sgd or 2 (lr 0.01, Nesterov momentum 0.9), adam (lr 0.001) (default: the recipe's, {_recipe_defaults('optimizer')})")
    add("-a", "--extra-layer", type=int, choices=(1, 2), default=1, help="1 no, 2 yes: a Dense(512)+ReLU block before the latent layer (default: %(default)s)")
    add("-c", "--code-type", default=None, help="target codewords of --method dbr: 1 or origin (12-bit lexicode), 2 or hamming74 (default: origin)")
    add("-n", "--train-size", type=int, default=None, help="seeded class-balanced draw of N training images, used for training and as the database (default: all)")
    add("--dataset", default=DEFAULTS["dataset"], help=f"one of {', '.join(data.DATASETS)}; or your own images: folder:PATH (one sub-folder of images per class, optionally under train/ and test/) or list:DIR (DIR/train.txt, test.txt [, database.txt]: '<path> <0/1 label> ...' a line) (default: %(default)s)")
    add("--data-dir", default=None, help="offline copy to read instead of downloading: CIFAR-10 python batches, train/test image folders, a .tar.gz of either, or IDX .gz files (default: download with keras.datasets)")
    add("--image-size", type=int, default=None, help=f"folder:/list: data: side in pixels of the square every image is resized (shorter side) and centre-cropped to, {data.MIN_IMAGE_SIZE}..{data.MAX_IMAGE_SIZE} (default: {data.DEFAULT_IMAGE_SIZE})")
    add("--test-fraction", type=float, default=None, help=f"folder:PATH without train/ and test/: share of each class drawn (seeded, stratified) as test images (default: {data.DEFAULT_TEST_FRACTION})")
    add("--image-root", default=None, help="list:DIR data: the folder the list files' image paths are relative to (default: DIR)")
    add("--arch", default=DEFAULTS["arch"], help=f"network: speedrun, dbr or resnet (trained from scratch), or a keras.applications backbone: {', '.join(APPLICATION_INPUT_SIZES)} (default: %(default)s)")
    add("--weights", default=None, help="keras.applications archs: imagenet (downloaded once by Keras), none (random initialisation), or the path of a .h5 weights file, e.g. the ImageNet file copied to a machine without internet (default: imagenet; none for dbr and resnet)")
    add("--freeze-backbone", action="store_true", help="keras.applications archs: train only the layers after the backbone; the backbone keeps its weights and runs in inference mode (batch norm, dropout)")
    add("--backbone-lr-scale", type=float, default=None, help=f"keras.applications archs: the backbone's learning rate as a multiple of the rest's, positive (default: {DEFAULTS['backbone_lr_scale']} with pretrained weights, 1 with --weights none)")
    add("--backbone-size", type=int, default=None, help=f"keras.applications archs: side of the square the model resizes every image to before the backbone, at least {MIN_BACKBONE_SIZE} (default: the backbone's own, 224)")
    add("--method", default=DEFAULTS["method"], help=f"training method: {' or '.join(METHODS)} (default: dbr with --arch dbr, else dlbhc)")
    add("--batch-size", type=int, default=None, help=f"training batch size; not with --method dnnh, whose batches are --classes-per-batch x --images-per-class images (default: the recipe's, {_recipe_defaults('batch_size')})")
    add("--lambda", dest="lambda_", type=float, default=None, help=f"--method dhn: weight of the quantisation penalty, 0 or more (default: {DEFAULTS['lambda']})")
    add("--margin", type=float, default=None, help="--method dnnh: triplet margin on the relaxed codes in [-1, 1], positive (default: bits/4)")
    add("--classes-per-batch", type=int, default=None, help=f"--method dnnh: P, distinct classes per batch, 2 or more (default: {DEFAULTS['classes_per_batch']}, or the number of classes if fewer)")
    add("--images-per-class", type=int, default=None, help=f"--method dnnh: K, images of each class per batch, 2 or more (default: {DEFAULTS['images_per_class']})")
    add("--schedule", default=None, help=f"learning rate schedule: constant, cosine (5%% linear warm-up, then cosine decay to 0), or triangular (linear from 0.2x up to the peak at 23%% of the steps, then down to 0) (default: the recipe's, {_recipe_defaults('schedule')})")
    add("--lr", type=float, default=None, help=f"(peak) learning rate (default: the recipe's, {_recipe_defaults('lr')}; none: the optimizer's own, see --optimizer)")
    add("--recipe", default=DEFAULTS["recipe"], help=f"where the training settings whose help says 'the recipe's' take their defaults: {', '.join(recipes.RECIPES)}, or auto (the arch's own: speedrun for --arch speedrun, dbr for --arch dbr, classic otherwise); flags given explicitly win; see recipes.py (default: %(default)s)")
    add("--weight-decay", type=float, default=None, help=f"decoupled weight decay of the optimizer, 0 or more (default: the recipe's, {_recipe_defaults('weight_decay')})")
    add("--width", type=int, default=None, help=f"--arch speedrun or resnet: channels of the first stage (speedrun: the later ones have 4x; resnet: each doubles them) (default: the recipe's, {_recipe_defaults('width')})")
    add("--augment", default=None, help=f"training-time augmentation inside the model: none, flip (colour images mirrored), crop-flip (also shifted up to 1/8 of the side), light-crop-flip (shifted up to 1/16) (default: the recipe's, {_recipe_defaults('augment')}; none: flip, none for --arch dbr)")
    add("--label-smoothing", type=float, default=None, help=f"--method dlbhc: label smoothing of the cross-entropy, in [0, 1) (default: the recipe's, {_recipe_defaults('label_smoothing')})")
    add("--tta", action=argparse.BooleanOptionalAction, default=None, help=f"encode each colour image as the mean of its own and its mirror image's latent activations (flip test-time augmentation) (default: the recipe's, {_recipe_defaults('tta')})")
    add("--norm-bias-lr-scale", type=float, default=None, help=f"learning rate of the batch norm biases as a multiple of the rest's, positive (default: the recipe's, {_recipe_defaults('norm_bias_lr_scale')}; none: 1)")
    add("--weight-averaging", action=argparse.BooleanOptionalAction, default=None, help=f"keep an exponential moving average of the weights, which replaces them when training ends (default: the recipe's, {_recipe_defaults('weight_averaging')})")
    add("--loss-scale", type=float, default=None, help=f"factor on the method's loss, positive: what a method needs of its own under a recipe's learning rate (default: the recipe's, {_recipe_defaults('loss_scale')}; recipes.METHOD_SETTINGS)")
    add("--seed", type=int, default=DEFAULTS["seed"], help="seed of the splits, the query draw and training (default: %(default)s)")
    add("--protocol", default=None, help=f"evaluation protocol: {', '.join(protocols.PROTOCOLS)} (default: dlbhc for the named datasets, folder for folder:/list: data); see protocols.py")
    add("--val-size", type=int, default=None, help="hold out N training images (class-balanced) as the queries, leaving the test split untouched: for choosing settings (default: off)")
    add("--devices", type=int, default=None, help="devices this process trains on, data-parallel: GPUs, or on a machine without one N host devices (TensorFlow logical CPUs, JAX XLA host devices); the global batch stays --batch-size (default: every GPU, 1 on CPU)")
    add("--coordinator", default=None, help="HOST:PORT of process 0, which every process of a multi-process run (jax backend only) connects to (default: one process)")
    add("--num-processes", type=int, default=None, help="processes training together, one per machine or per group of devices, jax backend only; needs --coordinator and --process-id (default: 1)")
    add("--process-id", type=int, default=None, help="this process's rank, 0..--num-processes - 1; only process 0 writes the run folder (default: 0)")
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
    if not MIN_BITS <= args.bits <= MAX_BITS:
        raise UsageError(f"--bits must be between {MIN_BITS} and {MAX_BITS}, got {args.bits}")
    for flag, value in (("--queries", args.queries), ("--train-size", args.train_size), ("--val-size", args.val_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    _check_choice("--recipe", args.recipe, recipes.NAMES)
    _check_training_options(args)
    _check_choice("--arch", args.arch, ARCHS)
    backbone = _resolve_backbone(args)
    _check_choice("--method", args.method, METHODS)
    dataset, own_data = _resolve_dataset(args)
    if args.protocol is not None:
        _check_choice("--protocol", args.protocol, protocols.PROTOCOLS)
    if args.optimizer is not None:
        _check_choice("--optimizer", args.optimizer, tuple(OPTIMIZER_NAMES))
    if args.schedule is not None:
        _check_choice("--schedule", args.schedule, SCHEDULES)
    if args.code_type is not None:
        _check_choice("--code-type", args.code_type, tuple(CODE_TYPE_NAMES))
        if args.method != "dbr":
            raise UsageError(f"--code-type applies to --method dbr only, not --method {args.method}")
    _check_method_options(args)
    placement = _resolve_devices(args)
    class_batches = args.method in CLASS_BATCH_METHODS
    config = {
        "bits": args.bits,
        "queries": args.queries,
        "epochs": args.epochs,
        "top": _parse_top(args.top),
        "optimizer": OPTIMIZER_NAMES.get(args.optimizer),  # None: the recipe's, filled by run
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
        "lambda": (DEFAULTS["lambda"] if args.lambda_ is None else args.lambda_) if args.method == "dhn" else None,
        "margin": (args.bits / 4 if args.margin is None else args.margin) if args.method == "dnnh" else None,
        "classes_per_batch": args.classes_per_batch,  # dnnh: None until run knows the number of classes
        "images_per_class": (args.images_per_class or DEFAULTS["images_per_class"]) if class_batches else None,
        "lr": args.lr,
        "schedule": args.schedule,
        "recipe": args.recipe,  # auto: chosen by run, once Keras knows whether there is a GPU
        "weight_decay": args.weight_decay,
        "width": args.width,
        "augment": args.augment,
        "label_smoothing": args.label_smoothing,
        "tta": args.tta,
        "norm_bias_lr_scale": args.norm_bias_lr_scale,
        "weight_averaging": args.weight_averaging,
        "loss_scale": args.loss_scale,
        "seed": args.seed,
        "val_size": args.val_size,
        "protocol": args.protocol or protocols.default_protocol(args.dataset),
        **placement,
        "out": str(Path(args.out or _default_out(args))),
    }
    return config


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
        if args.method in CLASS_BATCH_METHODS:
            raise UsageError(f"--method {args.method} cannot train in several processes: its triplets span the whole P x K batch")
    return {"devices": args.devices, "coordinator": args.coordinator, "num_processes": processes, "process_id": args.process_id or 0}


def _check_training_options(args):
    """The training settings a recipe fills in: each in range, each only where it applies."""
    if args.epochs is not None and args.epochs < 0:
        raise UsageError(f"--epochs must be 0 or more, got {args.epochs}")
    if args.weight_decay is not None and not args.weight_decay >= 0:
        raise UsageError(f"--weight-decay must be 0 or more, got {args.weight_decay}")
    if args.width is not None:
        if args.arch not in recipes.WIDTH_ARCHS:
            raise UsageError(f"--width applies to --arch {' or '.join(recipes.WIDTH_ARCHS)} only, not --arch {args.arch}")
        if args.width < 1:
            raise UsageError(f"--width must be at least 1, got {args.width}")
    if args.augment is not None:
        _check_choice("--augment", args.augment, AUGMENTATIONS)
    for flag, value in (("--norm-bias-lr-scale", args.norm_bias_lr_scale), ("--loss-scale", args.loss_scale)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if args.label_smoothing is not None:
        if args.method not in recipes.LABEL_SMOOTHING_METHODS:
            raise UsageError(f"--label-smoothing applies to --method {' or '.join(recipes.LABEL_SMOOTHING_METHODS)} only, not --method {args.method}")
        if not 0 <= args.label_smoothing < 1:
            raise UsageError(f"--label-smoothing must be at least 0 and below 1, got {args.label_smoothing}")


def _check_method_options(args):
    """The flags of one method: each only with its method, each in range."""
    owners = (("--lambda", args.lambda_, ("dhn",)), ("--margin", args.margin, ("dnnh",)),
              ("--classes-per-batch", args.classes_per_batch, CLASS_BATCH_METHODS), ("--images-per-class", args.images_per_class, CLASS_BATCH_METHODS))
    for flag, value, methods_using in owners:
        if value is not None and args.method not in methods_using:
            raise UsageError(f"{flag} applies to --method {' or '.join(methods_using)} only, not --method {args.method}")
    if args.batch_size is not None and args.method in CLASS_BATCH_METHODS:
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
    if kind == data.LIST and args.method not in MULTI_LABEL_METHODS:
        raise UsageError(
            f"--dataset list: has multi-hot labels (an image may have several), which --method {args.method} "
            f"cannot learn from: use --method {' or '.join(MULTI_LABEL_METHODS)}"
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
    if args.arch not in APPLICATION_INPUT_SIZES:
        given = [f"--weights {args.weights}"] if args.weights not in (None, "none") else []
        given += [flag for flag, value in (("--freeze-backbone", args.freeze_backbone or None), ("--backbone-lr-scale", args.backbone_lr_scale), ("--backbone-size", args.backbone_size)) if value is not None]
        if given:
            raise UsageError(f"{given[0]} applies to the keras.applications archs ({', '.join(APPLICATION_INPUT_SIZES)}) only, not --arch {args.arch}, which trains from scratch")
        return {"weights": "none", "freeze_backbone": False, "backbone_lr_scale": None, "backbone_size": None}
    weights = _resolve_weights(args.weights or "imagenet")
    if args.backbone_size is not None and args.backbone_size < MIN_BACKBONE_SIZE:
        raise UsageError(f"--backbone-size must be at least {MIN_BACKBONE_SIZE}, got {args.backbone_size}")
    if args.backbone_lr_scale is not None:
        if not args.backbone_lr_scale > 0:
            raise UsageError(f"--backbone-lr-scale must be positive, got {args.backbone_lr_scale}")
        if args.freeze_backbone:
            raise UsageError("--backbone-lr-scale and --freeze-backbone contradict each other: a frozen backbone does not learn")
    # A randomly initialised backbone has nothing to preserve: it learns at the full rate.
    default_scale = DEFAULTS["backbone_lr_scale"] if weights != "none" else 1.0
    return {
        "weights": weights,
        "freeze_backbone": args.freeze_backbone,
        "backbone_lr_scale": None if args.freeze_backbone else args.backbone_lr_scale or default_scale,
        "backbone_size": args.backbone_size or APPLICATION_INPUT_SIZES[args.arch],
    }


def _resolve_weights(weights):
    """`imagenet`, `none`, or the absolute path of an existing weights file (so `--resume` works from anywhere)."""
    if weights in WEIGHTS_NAMES:
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UsageError(f"--weights must be imagenet, none or a weights file; no file {weights}")
    if not path.name.endswith((".h5", ".hdf5", ".keras")):
        raise UsageError(f"--weights must be a .h5 weights file as keras.applications reads (or .keras), got {weights}")
    return str(path.resolve())


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
    if args.method != "dbr":
        return None
    return CODE_TYPE_NAMES[args.code_type] if args.code_type else "origin"


def _default_out(args):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{data.dataset_slug(args.dataset)}-{args.method}-{args.bits}b-{stamp}"


def select_split(config, dataset):
    """Applies the protocol, then `--val-size`, `--train-size` and `--queries`, all seeded; checks sizes.

    Returns:
        A `protocols.Split`. With `--val-size`, the queries are held out of the
        training split and the database is the rest of it: the test split is not
        looked at, which is how settings are chosen. The database comes in a
        seeded random order (see `protocols.shuffled`).
    """
    seed = config["seed"]
    labels = (dataset.y_train, dataset.y_test, getattr(dataset, "y_db", None))
    try:
        split = protocols.make_split(config["protocol"], labels, seed)
    except protocols.ProtocolError as error:
        raise UsageError(str(error)) from None
    if config["val_size"] is not None:
        split = _validation_split(split, dataset.y_train, config["val_size"], seed)
    if config["train_size"] is not None:
        split = _smaller_training_set(split, dataset, config["train_size"], seed)
    if config["queries"] is not None:
        available = len(split.queries)
        if config["queries"] > available:
            source = "validation" if config["val_size"] else "test"
            raise UsageError(f"--queries must be at most {available} (the {source} split's size), got {config['queries']}")
        split.queries = split.queries.subset(data.draw_queries(available, config["queries"], seed))
    split.database = protocols.shuffled(split.database, seed)
    return split


def _validation_split(split, train_labels, val_size, seed):
    """Queries held out of the training items; the database and training set are the rest of them."""
    if val_size >= len(split.train):
        raise UsageError(f"--val-size must be below the {len(split.train)} training images, got {val_size}")
    rest, held_out = data.holdout_split(split.train.gather([train_labels, None, None]), val_size, seed)
    remaining = split.train.subset(rest)
    return protocols.Split(split.protocol, train=remaining, database=remaining, queries=split.train.subset(held_out), top=split.top)


def _smaller_training_set(split, dataset, train_size, seed):
    """`--train-size`: a class-balanced draw of the training items, which is also the database."""
    if split.protocol not in ("dlbhc", "dbr"):
        raise UsageError(f"--train-size applies to the dlbhc and dbr protocols, not {split.protocol}, whose training set is fixed")
    num_classes = len(dataset.class_names)
    if train_size < num_classes:
        raise UsageError(f"--train-size must be at least the number of classes, {num_classes}, got {train_size}")
    if train_size > len(split.train):
        raise UsageError(f"--train-size must be at most {len(split.train)} (the training images available), got {train_size}")
    drawn = split.train.subset(_balanced(split.train.gather([dataset.y_train, None, None]), train_size, seed))
    return protocols.Split(split.protocol, train=drawn, database=drawn, queries=split.queries, top=split.top)


def _balanced(labels, n, seed):
    try:
        return data.balanced_subset(labels, n, seed)
    except ValueError as error:
        raise UsageError(f"--train-size: {error}") from None


def resolve_top(top, database_size, default=DEFAULT_TOP):
    """The integer k to evaluate at, and a note for the user when the default had to be clipped.

    Args:
        top: `--top` as parsed: `None` (use `default`), `"all"` or an integer.
        database_size: number of database items.
        default: the protocol's own k, an integer or `"all"`. Defaults to `DEFAULT_TOP`.
    """
    if top is None:
        top = default
        if top != "all" and database_size < top:
            return database_size, f"note: --top {top} clipped to the database size, {database_size}"
    if top == "all":
        return database_size, None
    if top > database_size:
        raise UsageError(f"--top must be at most the database size, {database_size}, got {top}")
    return top, None


def run(config, verbose=1, resume=False, callbacks=()):
    """Runs (or resumes) one experiment described by a resolved `config`; returns its metrics.

    Args:
        config: the dict from `resolve_args` (or a resumed run's `config.json`).
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
    split, num_classes, train_x, train_y, db_x, db_y, query_x, query_y = load_arrays(config)
    top, note = resolve_top(config["top"], len(db_y), split.top)
    if note:
        log(note)
    devices.start(config)  # before Keras computes anything: joins the processes, picks the devices
    config = _resolve_class_batches(_resolve_recipe(config, colour=train_x.shape[-1] == 3, train_size=len(train_y)), train_y, log)
    _check_batches_fit_devices(config)
    timings["data_seconds"] = time.perf_counter() - started
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        rundir.clear_run(out)
        rundir.write_json(out / rundir.CONFIG_FILE, config)

    import keras  # imported by now (devices, recipe); named here, where this function starts to use it

    import train

    keras.utils.set_random_seed(config["seed"])
    precision_policy = train.use_mixed_precision_on_gpu()
    method = method_for(config, num_classes)
    model, trained_epochs, timings["train_seconds"] = _trained_model(config, method, train_x, train_y, out, verbose, callbacks)

    started = time.perf_counter()
    db_latent, query_latent, query_accuracy = encode(scoring_model(model), db_x, query_x, query_y, tta=config.get("tta", False))
    db_bits, query_bits = binarise(db_latent), binarise(query_latent)
    timings["encode_seconds"] = time.perf_counter() - started
    _save_codes(out / rundir.CODES_FILE, db_bits, query_bits, db_y, query_y, split)

    import evaluate

    started = time.perf_counter()
    scores = evaluate.evaluate_retrieval(query_bits, query_y, db_bits, db_y, top)
    # The same ranking of the float latent features the codes come from: what binarising costs.
    float_scores = evaluate.evaluate_features(query_latent, query_y, db_latent, db_y, top)
    timings["eval_seconds"] = time.perf_counter() - started

    title = f"{config['dataset']} {config['method']} {config['arch']} {config['bits']} bits"
    _save_plot(out / rundir.PLOT_FILE, scores["precision_at_k"], title)
    _save_pr_curve(out / rundir.PR_CURVE_FILE, scores["pr_curve"], title)
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
        "num_train": len(train_y),
        "num_queries": len(query_y),
        "num_database": len(db_y),
        "epochs_trained": trained_epochs,
        **({"query_accuracy": query_accuracy} if query_accuracy is not None else {}),
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
        f"protocol {split.protocol}{_overrides(config)}); "
        f"results in {out}"
    )
    return metrics


class Arrays(NamedTuple):
    """A run's split, its number of classes, and the images and labels of its three roles."""

    split: protocols.Split
    num_classes: int
    train_x: np.ndarray
    train_y: np.ndarray
    db_x: np.ndarray
    db_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


def load_arrays(config):
    """Loads the config's dataset and gathers its training, database and query images and labels."""
    dataset = _load(config)
    split = select_split(config, dataset)
    images = (dataset.x_train, dataset.x_test, getattr(dataset, "x_db", None))
    labels = (dataset.y_train, dataset.y_test, getattr(dataset, "y_db", None))
    roles = (items.gather(source) for items in (split.train, split.database, split.queries) for source in (images, labels))
    return Arrays(split, len(dataset.class_names), *roles)


def _load(config):
    try:
        return data.load_dataset(
            config["dataset"], data_dir=config["data_dir"], image_size=config.get("image_size"),
            test_fraction=config.get("test_fraction"), image_root=config.get("image_root"), seed=config["seed"],
        )
    except data.DataError as error:
        raise UsageError(str(error)) from None


def _query_source(config):
    return "validation" if config["val_size"] else "test"


def _overrides(config):
    """Says which of the protocol's defaults the user's flags replaced, for the printed result."""
    flags = [flag for flag, key in (("-q", "queries"), ("-t", "top"), ("-n", "train_size"), ("--val-size", "val_size")) if config[key] is not None]
    return f" with {', '.join(flags)} overriding its defaults" if flags else ""


def _resolve_recipe(config, colour, train_size):
    """Fills the training settings the flags left unset from the run's recipe (`auto`: the arch's own)."""
    if config.get("tta") and not colour:
        raise UsageError("--tta averages each image with its mirror image: it applies to colour images only")
    return recipes.fill(config, recipes.choose(config["recipe"], config["arch"]), colour, train_size)


def _check_batches_fit_devices(config):
    """Refuses, before the run folder is written, batches the devices cannot share (see devices.py)."""
    placement = devices.placement()
    if config["method"] in CLASS_BATCH_METHODS:
        placement.check_class_batches()
        placement.check_batch(config["batch_size"], "--classes-per-batch x --images-per-class")
    else:
        placement.check_batch(config["batch_size"])


def _resolve_class_batches(config, train_y, log):
    """For P x K batches (`dnnh`): P (default clipped to the classes present), K checked, batch size P*K."""
    if config["method"] not in CLASS_BATCH_METHODS:
        return config
    groups = train_y if train_y.ndim == 1 else np.argmax(train_y, axis=1)  # multi-hot: grouped by first label
    class_sizes = np.unique(groups, return_counts=True)[1]
    classes_per_batch, images_per_class = config["classes_per_batch"], config["images_per_class"]
    if classes_per_batch is None:
        classes_per_batch = min(DEFAULTS["classes_per_batch"], len(class_sizes))
        if classes_per_batch < DEFAULTS["classes_per_batch"]:
            log(f"note: --classes-per-batch {DEFAULTS['classes_per_batch']} clipped to the number of classes, {classes_per_batch}")
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


def _trained_model(config, method, x, y, out, verbose, callbacks):
    """Trains (or resumes training of) the model; returns it, the epochs trained and the seconds spent now.

    A run killed after `model.keras` was saved but before it finished skips
    training when resumed.
    """
    import keras

    import models
    import train

    model_path, backup_dir = out / rundir.MODEL_FILE, out / rundir.BACKUP_DIR
    if model_path.is_file():
        return keras.saving.load_model(model_path), config["epochs"], 0.0
    targets = method.targets(y)
    placement = devices.placement()
    if method.batch_classes:
        import batches

        inputs = batches.ClassBalancedBatches(x, targets, y, config["classes_per_batch"], config["images_per_class"], seed=config["seed"])
        fit_data, steps_per_epoch = {"x": inputs}, len(inputs)
    else:
        fit_data, steps_per_epoch = placement.fit_data(x, targets, config["batch_size"], config["seed"])
    with placement.scope():
        try:
            encoder = models.build_encoder(
                config["arch"], x.shape[1:], config["bits"], config["extra_layer"],
                weights=None if config.get("weights", "none") == "none" else config["weights"],
                input_size=config.get("backbone_size"), freeze_backbone=config.get("freeze_backbone", False),
                augment=config.get("augment"), width=config.get("width"),
            )
        except models.WeightsError as error:
            raise UsageError(str(error)) from None
        model = method.training_model(encoder)
        model.compile(
            optimizer=train.make_optimizer(
                config["optimizer"], config["lr"], config["schedule"], backbone_lr_scale=config.get("backbone_lr_scale"),
                total_steps=max(1, config["epochs"] * steps_per_epoch), weight_decay=config.get("weight_decay"),
                norm_bias_lr_scale=config.get("norm_bias_lr_scale"), weight_averaging=config.get("weight_averaging", False),
            ),
            loss=method.loss(),
            loss_weights=[config.get("loss_scale") or 1.0],
            metrics=method.metrics(),
        )
        if verbose and train.gpu_count() and not model.jit_compile:
            print("warning: XLA compilation is off (a layer of this model does not support jit_compile): training will be slow")
        start_epoch = train.resumed_epoch(backup_dir)
        if not start_epoch:  # a resumed run's checkpoint holds the fitted whitening
            models.adapt_to_images(model, x)
        if start_epoch and verbose:
            print(f"resuming from epoch {start_epoch} of {config['epochs']}")
        started = time.perf_counter()
        train.fit_resumable(model, **fit_data, epochs=config["epochs"], backup_dir=backup_dir, verbose=verbose, callbacks=callbacks)
        seconds = time.perf_counter() - started
    models.unsynchronize_batch_norm(model)
    with rundir.atomic_path(model_path) as temporary:
        model.save(temporary)
    rundir.remove_backup(out)
    return placement.local_model(model, model_path), config["epochs"], seconds


def scoring_model(model):
    """A model (sharing `model`'s weights) whose outputs are the latent layer, then the classifier's, if any."""
    import keras

    import models

    latent = model.get_layer(models.LATENT_LAYER).output
    has_classifier = latent is not model.outputs[0]
    return keras.Model(model.inputs, [latent, model.outputs[0]] if has_classifier else [latent])


def encode(scorer, db_x, query_x, query_y, tta=False):
    """Latent activations of database and queries, plus the query accuracy when the model classifies.

    Args:
        scorer: a `scoring_model`.
        db_x, query_x: database and query images.
        query_y: the queries' labels, for the accuracy.
        tta: make each image's outputs the mean of its own and its mirror
            image's. Defaults to `False`.

    Returns:
        `(db_latent, query_latent, accuracy)`, `accuracy` `None` without a classifier.
    """
    import models

    predict = models.predict_with_flips if tta else models.predict
    db_out = predict(scorer, db_x, ENCODE_BATCH_SIZE)
    query_out = predict(scorer, query_x, ENCODE_BATCH_SIZE)
    if len(scorer.outputs) == 1:
        return db_out, query_out, None
    accuracy = float(np.mean(np.argmax(query_out[1], axis=1) == query_y))
    return db_out[0], query_out[0], accuracy


def binarise(latent):
    import models

    return (np.asarray(latent) > models.BIT_THRESHOLD).astype(np.uint8)


def _save_codes(path, db_bits, query_bits, db_labels, query_labels, split):
    """Writes `codes.h5`: the codes, labels and places of exactly the evaluated items.

    `db_index`/`query_index` are positions within the source split named, item by
    item, by `db_source`/`query_source` (indices into `protocols.SOURCES`:
    train, test, database).
    """
    import h5py

    with rundir.atomic_path(path) as temporary, h5py.File(temporary, "w") as codes:
        codes["db_bits"] = db_bits
        codes["query_bits"] = query_bits
        codes["db_labels"] = db_labels.astype(np.int64)
        codes["query_labels"] = query_labels.astype(np.int64)
        for role, items in (("db", split.database), ("query", split.queries)):
            codes[f"{role}_index"] = items.positions
            codes[f"{role}_source"] = items.sources
            codes[f"{role}_source"].attrs["sources"] = list(protocols.SOURCES)
        codes.attrs["protocol"] = split.protocol


def _save_plot(path, precision_at_k, title):
    from plots.precision_at_k import plot_precision_at_k

    with rundir.atomic_path(path) as temporary:
        plot_precision_at_k(precision_at_k, temporary, title)


def _save_pr_curve(path, pr_curve, title):
    from plots.pr_curve import plot_pr_curve

    with rundir.atomic_path(path) as temporary:
        plot_pr_curve(pr_curve["precision"], pr_curve["recall"], temporary, title)


def with_settings_added_since(saved, out):
    """A run's saved config, completed with the settings added to the tool after it was saved.

    Each takes the value the run had in effect: today's default, except the
    recipe (`classic`, the only one there was) and the protocol (its dataset's default).
    """
    added = {key: value for key, value in resolve_args(build_parser().parse_args(["--out", str(out)])).items() if key not in saved}
    if "recipe" in added:
        added["recipe"] = recipes.CLASSIC
    if "protocol" in added:
        added["protocol"] = protocols.default_protocol(saved["dataset"])
    return {**saved, **added}


def _resumed_config(args):
    """The saved config of the run to resume; the other flags given are ignored (the run's own apply)."""
    if args.out is None:
        raise UsageError("--resume needs --out: the folder of the run to continue")
    if args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pick one")
    rundir.check_out_dir(args.out, resume=True)
    config = with_settings_added_since(rundir.read_json(Path(args.out) / rundir.CONFIG_FILE), args.out)
    if config.get("num_processes", 1) > 1:
        raise UsageError(f"--resume: {args.out} was trained by {config['num_processes']} processes, which cannot be resumed; start it again")
    return config


# The errors that mean bad input: one line on stderr, exit status 2.
USAGE_ERRORS = (UsageError, rundir.RunDirError, data.DataError, devices.DeviceError)


def prepare(args):
    """The config of a new run from parsed arguments, with its run folder and data checked; no Keras yet."""
    config = devices.worker_config(resolve_args(args))  # process > 0: a private temporary run folder
    rundir.check_out_dir(config["out"], overwrite=args.overwrite)
    if config["data_dir"]:
        data.check_data_dir(config["data_dir"])
    elif data.parse_dataset_name(config["dataset"])[0]:
        data.check_dataset(config["dataset"], test_fraction=config["test_fraction"], image_root=config["image_root"])
    return config


def main(argv=None):
    """Command-line entry point; returns the exit status (0 done, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _resumed_config(args) if args.resume else prepare(args)
        run(config, verbose=args.verbose, resume=args.resume)
    except USAGE_ERRORS as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
