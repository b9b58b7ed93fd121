"""Training recipes: named sets of training settings, picked by the network being trained.

A recipe fills in every training setting the command line left unset; a flag
given explicitly always wins. `--recipe auto` (the default) picks the arch's
own recipe (`ARCH_RECIPES`), and the run's `config.json` records the recipe and
every value it chose, so `--resume` continues with the same ones.

- `speedrun` (the default, with the default `--arch speedrun`): the CIFAR-10
  speed-run craft (hlb-CIFAR10, airbench) on a hashing network: the
  patch-whitened, identity-initialised network of `models.py`, Nesterov SGD
  with a large batch, a triangular learning rate and the speed-runs' strong weight decay,
  batch norm biases trained `norm_bias_lr_scale` times faster, label smoothing, 2-pixel
  shifts and mirroring, and airbench's multi-crop test-time augmentation
  (each code from the image, its mirror image and one-pixel shifts of both).
  Below `SMALL_DATA_IMAGES` training images it takes smaller batches at a
  smaller rate for more epochs of a network twice as wide (`SMALL_DATA`), and a short
  training (under `SHORT_TRAINING_IMAGES` images seen: the classroom run) drops the
  shifts and keeps the narrower network (`SHORT_TRAINING`); on a small set `dlbhc`
  trains at twice the small-data rate, with later blocks of 3x, not 4x, the first
  block's channels (`SHORT_SMALL_DATA`). Both encode with flip
  test-time augmentation only, a third of the multi-crop's encoding time.
  Methods other than `dlbhc` need their own loss scale under it (`METHOD_SETTINGS`), and
  `dnnh`, whose batches are its own, the recipe's rate scaled to them (`rate_for_batch`).
- `dbr`: DeepBinaryRepre's own settings (Lu et al. 2017) for its own network
  (`--arch dbr`): Adadelta at rate 1.0, batch 32, 20 epochs, no augmentation.
- `classic`: the settings the earlier CPU defaults (`--arch resnet`) were
  measured with: Adam at its default rate, batch 32, cosine schedule, mirroring.

No Keras here: `retrieval.py` reads these names and values while it checks its
arguments, before TensorFlow is imported.
"""

import vocabulary

AUTO = "auto"
SPEEDRUN = "speedrun"
AIRBENCH = "airbench"
DBR = "dbr"
CLASSIC = "classic"
# The settings of the speed-run network's own craft (models.SpeedrunCraft, Muon's filter rate, the
# whitening bias's epochs, the flip): `None` in a recipe for networks that have none of it.
NO_CRAFT = {"filter_lr": None, "whitening_bias_epochs": None, "flip": "random", "pooling": None,
            "batch_norm_epsilon": None, "init": None, "whitening": None}
SPEEDRUN_CRAFT = {**NO_CRAFT, "pooling": "same", "batch_norm_epsilon": 1e-3, "init": "he", "whitening": "pixels"}

RECIPES = {
    SPEEDRUN: {
        "epochs": 18,  # under 30 minutes of training on a 2-core CPU (about 90 s an epoch)
        "batch_size": 1000,  # divides CIFAR-10's 50,000: no smaller last batch to compile a second time
        "optimizer": "sgd",
        "lr": 1.0,
        "schedule": "triangular",
        "weight_decay": 1e-2,  # airbench's decay per image; 1e-2 to 1e-1 scored alike on validation, 5e-5 lower
        "norm_bias_lr_scale": 64.0,
        "weight_averaging": False,  # lookahead scored no higher on validation (docs/recipes.md, ablation)
        "width": 32,
        "growth": vocabulary.SPEEDRUN_GROWTH,
        "augment": "light-crop-flip",
        "label_smoothing": 0.2,
        "loss_scale": 1.0,
        "tta": "flip-shift",  # 0.005 above flip alone on validation at full scale (docs/recipes.md)
        **SPEEDRUN_CRAFT,
        "precision": None,  # the device's own (train.use_precision)
    },
    DBR: {
        "epochs": 20,
        "batch_size": 32,
        "optimizer": "adadelta",
        "lr": None,  # the optimiser's own (train.OPTIMIZERS)
        "schedule": "constant",
        "weight_decay": 0.0,
        "norm_bias_lr_scale": None,
        "weight_averaging": False,
        "width": None,
        "growth": None,
        "augment": "none",
        "label_smoothing": 0.0,
        "loss_scale": 1.0,
        "tta": vocabulary.NO_TTA,
        **NO_CRAFT,
        "precision": None,
    },
    CLASSIC: {
        "epochs": 20,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": None,
        "schedule": "cosine",
        "weight_decay": 0.0,
        "norm_bias_lr_scale": None,
        "weight_averaging": False,
        "width": 32,
        "growth": None,
        "augment": None,  # the arch's own (models.DEFAULT_AUGMENTATION)
        "label_smoothing": 0.0,
        "loss_scale": 1.0,
        "tta": vocabulary.NO_TTA,
        **NO_CRAFT,
        "precision": None,
    },
}
# airbench94_muon (Jordan 2024) ported: its full width, 8 epochs of batches of 2,000, Muon on
# the filters at 0.24 with every rate falling straight to zero, the whitening bias trained for
# 3 epochs, alternating flips, and its network's details (models.SpeedrunCraft). The hashing
# layers and the biases keep the speed-run recipe's SGD rates.
RECIPES[AIRBENCH] = {
    **RECIPES[SPEEDRUN],
    "epochs": 8,
    "batch_size": 2000,
    "optimizer": "muon",
    "schedule": "linear",
    "width": 64,
    "filter_lr": 0.24,
    "whitening_bias_epochs": 3,
    "flip": "alternating",
    "pooling": "floor",
    "batch_norm_epsilon": 1e-12,
    "init": "pytorch",
    "whitening": "standardised",
}
NAMES = (AUTO, *RECIPES)
# The methods `auto` trains with the airbench recipe at full scale: those it was measured with
# on validation (docs/recipes.md: 0.9011 against speedrun's 0.8936, 48 bits; 29.8 minutes of
# training on 50,000 images here); the others keep the speedrun recipe until they are.
FULL_SCALE_METHODS = ("dlbhc",)
ARCH_RECIPES = {"speedrun": SPEEDRUN, "dbr": DBR}  # any other arch: CLASSIC

# The speed-run recipe on small training sets (the classroom run's 5,000 images, the dhn
# protocol's): smaller batches, so that an epoch still takes several dozen steps, at a smaller
# peak rate, and many more epochs, which a small set affords and needs (on validation, 5,000
# images: 30 epochs scored 0.12 above 5), on airbench's full width, which 60 epochs of 5,000
# images afford within half an hour on a 2-core CPU (on validation, the dhn protocol's
# training set: 0.016 above half the width; docs/recipes.md).
SMALL_DATA_IMAGES = 20_000
# Their encodings mirror without shifting: the shifts' worth was measured at full scale only,
# and would triple the encoding of the dhn protocol's 54,000-image database at that width.
SMALL_DATA = {"batch_size": 100, "lr": 0.15, "epochs": 60, "width": 64, "tta": "flip"}
# A short training (fewer images seen than this, epochs x training images) mirrors without
# shifting: on validation the 2-pixel shifts cost a 5-epoch classroom run and won 0.04 in a
# 30-epoch one (docs/recipes.md). It keeps the full-scale recipe's width: the classroom run
# is there to be quick.
SHORT_TRAINING_IMAGES = 100_000
SHORT_TRAINING = {"augment": "flip", "width": RECIPES[SPEEDRUN]["width"], "tta": "flip"}
# A short training on a small set (the classroom run), per method: `dlbhc` at twice the
# small-data rate, which scored 0.025 higher on validation there, on later blocks of 96
# channels instead of 128: 70% of the arithmetic, for a run under a minute on a 2-core CPU,
# still 0.008 above the 128-channel network at the old rate. The other methods scored lower
# with it (dbr -0.013, hadamard -0.023, dhn -0.053, dnnh -0.064, one seed) and keep the
# small-data settings (docs/recipes.md).
SHORT_SMALL_DATA = {"dlbhc": {"growth": 3, "lr": 2 * SMALL_DATA["lr"]}}

# What a method needs of its own under a recipe. The speed-run rate suits the
# cross-entropy of `dlbhc`; the squared error of the codeword methods (`dbr`,
# `hadamard`) has far smaller gradients and needs them scaled up, and the
# triplet loss of `dnnh` far larger ones scaled down (validation runs: README, Training recipes).
METHOD_SETTINGS = {
    SPEEDRUN: {"dbr": {"loss_scale": 8.0}, "hadamard": {"loss_scale": 8.0}, "dnnh": {"loss_scale": 0.1}},
}
METHOD_SETTINGS[AIRBENCH] = METHOD_SETTINGS[SPEEDRUN]


def rate_for_batch(rate, recipe_batch_size, batch_size):
    """The recipe's peak `rate` for batches of `batch_size` images instead of its own.

    The same rate per image (the linear scaling rule of Goyal et al., 2017): a method
    whose batches are made its own way (`dnnh`'s 8 classes x 4 images) takes as large a step
    per image as the recipe does, and, since Keras decays weights by rate x decay a step,
    as much weight decay per epoch. On validation (docs/results.md, the rate of `dnnh`)
    `dnnh` scored 0.67 with it against 0.16 with the recipe's own rate on 20,000 images
    (batches of 1,000), and 0.44 against 0.33 at classroom scale (batches of 100).
    `None` (the optimiser's own rate) stays `None`.

    >>> rate_for_batch(1.0, 1000, 32)
    0.032
    """
    return None if rate is None else rate * batch_size / recipe_batch_size


def choose(name, arch, method=None, train_size=0):
    """The recipe `name` stands for: `auto` is the arch's own (`ARCH_RECIPES`, else `classic`).

    For the speed-run network, `auto` is `airbench` at full scale (`SMALL_DATA_IMAGES` training
    images or more) for the methods measured with it (`FULL_SCALE_METHODS`), else `speedrun`.

    >>> choose("auto", "speedrun", "dlbhc", 50_000), choose("auto", "speedrun", "dlbhc", 5000), choose("auto", "speedrun", "dhn", 50_000)
    ('airbench', 'speedrun', 'speedrun')
    """
    if name not in NAMES:
        raise ValueError(f"`recipe` must be one of {NAMES}. Received: recipe={name!r}")
    if name != AUTO:
        return name
    if arch == "speedrun" and method in FULL_SCALE_METHODS and train_size >= SMALL_DATA_IMAGES:
        return AIRBENCH
    return ARCH_RECIPES.get(arch, CLASSIC)


def default_method(arch):
    """The method a run trains when `--method` is not given: DeepBinaryRepre's own for its network, else `dlbhc`."""
    return "dbr" if arch == "dbr" else "dlbhc"


def fill(config, recipe, colour, train_size):
    """`config` with every unset (`None`) training setting taken from `recipe`.

    Settings that do not apply stay `None`: `width` for an arch without one,
    `label_smoothing` for a method other than `dlbhc`; `tta` stays `none` for
    grey images, whose mirror images are other shapes (a mirrored digit).

    Args:
        config: a resolved run config (`retrieval.resolve_args`); for `dnnh`, with its P*K
            `batch_size`, which takes the recipe's rate scaled to it (`rate_for_batch`).
        recipe: a key of `RECIPES`.
        colour: whether the images have three channels.
        train_size: number of training images (`SMALL_DATA` below `SMALL_DATA_IMAGES`;
            with the epochs, whether the training is short, `SHORT_TRAINING_IMAGES`).

    Returns:
        A new dict, with `config["recipe"]` set to `recipe`.

    Example:

    >>> config = {"arch": "speedrun", "method": "dlbhc", "batch_size": 50}
    >>> filled = fill(config, "speedrun", colour=True, train_size=5000)
    >>> filled["batch_size"], filled["width"], filled["lr"], filled["epochs"], filled["augment"]
    (50, 64, 0.15, 60, 'light-crop-flip')
    >>> short = fill({**config, "epochs": 5}, "speedrun", colour=True, train_size=5000)
    >>> short["augment"], short["width"], short["growth"], short["lr"], short["tta"]
    ('flip', 32, 3, 0.3, 'flip')
    """
    settings = dict(RECIPES[recipe])
    small = recipe == SPEEDRUN and train_size < SMALL_DATA_IMAGES  # the airbench recipe is for full scale only
    if small:
        settings.update(SMALL_DATA)
    short = recipe == SPEEDRUN and (config.get("epochs") or settings["epochs"]) * train_size < SHORT_TRAINING_IMAGES
    if short:
        settings.update(SHORT_TRAINING)
    if small and short:
        settings.update(SHORT_SMALL_DATA.get(config["method"], {}))
    settings.update(METHOD_SETTINGS.get(recipe, {}).get(config["method"], {}))
    if config["method"] in vocabulary.CLASS_BATCH_METHODS and config.get("batch_size"):  # P*K, resolved by the run
        settings["lr"] = rate_for_batch(settings["lr"], settings["batch_size"], config["batch_size"])
    if config["arch"] not in vocabulary.WIDTH_ARCHS:
        settings["width"] = None
    if config["arch"] != vocabulary.GROWTH_ARCH:
        settings.update(growth=None, **{key: value for key, value in NO_CRAFT.items() if key != "flip"})
    if not vocabulary.applies("label_smoothing", config["method"]):
        settings["label_smoothing"] = None
    if not colour:
        settings["tta"] = vocabulary.NO_TTA
        settings["flip"] = "random"  # no mirroring at all: models.py mirrors colour images only
    filled = {key: value if config.get(key) is None else config[key] for key, value in settings.items()}
    return {**config, **filled, "recipe": recipe}
