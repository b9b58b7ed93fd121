"""Training recipes: named sets of training settings, one the default on CPU and one on GPU.

A recipe fills in every training setting the command line left unset; a flag
given explicitly always wins. `--recipe auto` (the default) picks `fast` when
Keras sees a GPU and `classic` otherwise, and the run's `config.json` records
the recipe and every value it chose, so `--resume` continues with the same ones.

- `classic`: the settings the CPU figures in the README were measured with
  (the classroom run, the full 20-epoch run, the defaults table): Adam at its
  default rate, batch 32, cosine schedule, mirrored images.
- `fast`: issue 5's GPU recipe: batch 500 (bf16 and XLA are on by default on a
  GPU, see `train.py`), Adam with decoupled weight decay, warm-up then cosine
  decay, the residual CNN at twice the width, random shifts and mirroring inside
  the compiled step, label smoothing (`dlbhc`) and flip test-time augmentation
  (colour images). Its values come from the probes issue 5 describes and
  common CIFAR-10 practice; they have not yet been tuned on a GPU.

No Keras here: `retrieval.py` reads these names and values while it checks its
arguments, before TensorFlow is imported.
"""

AUTO = "auto"
CLASSIC = "classic"
FAST = "fast"

RECIPES = {
    CLASSIC: {
        "epochs": 20,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": None,  # the optimiser's own (train.OPTIMIZERS)
        "schedule": "cosine",
        "weight_decay": 0.0,
        "width": 32,
        "augment": None,  # the arch's own (models.DEFAULT_AUGMENTATION)
        "label_smoothing": 0.0,
        "tta": False,
    },
    FAST: {
        "epochs": 40,
        "batch_size": 500,  # divides CIFAR-10's 50,000: a smaller last batch would compile a second XLA step
        "optimizer": "adam",
        "lr": 0.002,
        "schedule": "cosine",
        "weight_decay": 0.01,
        "width": 64,
        "augment": "crop-flip",
        "label_smoothing": 0.1,
        "tta": True,
    },
}
NAMES = (AUTO, *RECIPES)

# Settings that apply only to some runs: the arch, method or image kind each needs.
WIDTH_ARCHS = ("resnet",)
LABEL_SMOOTHING_METHODS = ("dlbhc",)


def choose(name, gpu):
    """The recipe `name` stands for: `auto` is `fast` on a GPU, `classic` otherwise."""
    if name not in NAMES:
        raise ValueError(f"`recipe` must be one of {NAMES}. Received: recipe={name!r}")
    if name == AUTO:
        return FAST if gpu else CLASSIC
    return name


def fill(config, recipe, colour):
    """`config` with every unset (`None`) training setting taken from `recipe`.

    Settings that do not apply stay `None`: `width` for an arch other than
    `resnet`, `label_smoothing` for a method other than `dlbhc`; `tta` stays
    off for grey images, whose mirror images are other shapes (a mirrored digit).

    Args:
        config: a resolved run config (`retrieval.resolve_args`).
        recipe: a key of `RECIPES`.
        colour: whether the images have three channels.

    Returns:
        A new dict, with `config["recipe"]` set to `recipe`.
    """
    settings = dict(RECIPES[recipe])
    if config["arch"] not in WIDTH_ARCHS:
        settings["width"] = None
    if config["method"] not in LABEL_SMOOTHING_METHODS:
        settings["label_smoothing"] = None
    if not colour:
        settings["tta"] = False
    filled = {key: value if config.get(key) is None else config[key] for key, value in settings.items()}
    return {**config, **filled, "recipe": recipe}
