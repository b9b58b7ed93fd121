"""The project's vocabulary: every name the command lines accept, and the defaults shared by modules.

Each list is defined here once. The modules that implement a name (`models.py` for archs and
augmentations, `methods.py` for methods, `train.py` for optimisers and schedules, `engines.py`
for search engines) key their registries by these names, and the command lines check their
arguments against them. Importing this module imports nothing else, so `retrieval.py` and
`search.py` check a command line before TensorFlow loads. The training settings a recipe fills
in (epochs, batch size, learning rate, ...) are in `recipes.py`.

Example:

>>> "speedrun" in ARCHS, METHOD_OPTIONS["margin"]
(True, ('dnnh',))
"""

# --- networks (models.py) ----------------------------------------------------------------------

SCRATCH_ARCHS = ("dbr", "resnet", "speedrun")  # trained from scratch
# keras.applications backbones and the side of the square they resize images to by default.
APPLICATION_INPUT_SIZES = {"resnet50": 224, "mobilenetv2": 224, "efficientnetb0": 224, "vgg16": 224}
ARCHS = (*SCRATCH_ARCHS, *APPLICATION_INPUT_SIZES)
WIDTH_ARCHS = ("resnet", "speedrun")  # archs whose channel count `--width` sets
GROWTH_ARCH = "speedrun"  # the arch whose later blocks' channels `--growth` sets, as a multiple of `--width`
SPEEDRUN_GROWTH = 4  # airbench's: the speed-run network's later blocks have 4x the first's channels
MIN_BACKBONE_SIZE = 32  # the smallest input keras.applications takes for these networks
WEIGHTS_NAMES = ("imagenet", "none")
# Learning rate of a pretrained backbone relative to the hash head (DLBHC trained its new layers 10x faster).
BACKBONE_LR_SCALE = 0.1
AUGMENTATIONS = ("none", "flip", "crop-flip", "light-crop-flip")
FLIPS = ("random", "alternating")  # how an augmentation mirrors: per image at random, or airbench's alternation

# --- codes -------------------------------------------------------------------------------------

MIN_BITS, MAX_BITS = 8, 256
DEFAULT_BITS = 48
BIT_THRESHOLD = 0.5  # a code bit is 1 where its latent sigmoid activation is above this
ENCODE_BATCH_SIZE = 512  # images per step when encoding a database or queries
# Test-time augmentation of colour images (models.TTA_VIEWS): none; "flip", each image's code
# from the mean of its own and its mirror image's latent activations; "flip-shift", that mean
# also over copies shifted by one pixel (airbench's multi-crop TTA).
NO_TTA = "none"
TTA_MODES = (NO_TTA, "flip", "flip-shift")

# --- methods (methods.py) ----------------------------------------------------------------------

METHODS = ("dbr", "dlbhc", "dhn", "dnnh", "hadamard")
CLASS_BATCH_METHODS = ("dnnh",)  # batches of P classes x K images
MULTI_LABEL_METHODS = ("dhn", "dnnh")  # learn from multi-hot labels ("shares a label")
# Each method-specific option and the methods it applies to.
METHOD_OPTIONS = {
    "code_type": ("dbr",),
    "lambda": ("dhn",),
    "margin": ("dnnh",),
    "classes_per_batch": CLASS_BATCH_METHODS,
    "images_per_class": CLASS_BATCH_METHODS,
    "label_smoothing": ("dlbhc",),
}
# Target codewords of `dbr`, by name and by the original tool's numeric code.
CODE_TYPES = {"1": "origin", "origin": "origin", "2": "hamming74", "hamming74": "hamming74"}
DEFAULT_CODE_TYPE = "origin"
QUANTIZATION_WEIGHT = 1.0  # `dhn`'s lambda
MARGIN_PER_BIT = 0.25  # `dnnh`'s triplet margin as a share of the code length (the DeepHash port's)
CLASSES_PER_BATCH = 8  # `dnnh`'s P
IMAGES_PER_CLASS = 4  # `dnnh`'s K

# --- training (train.py) -----------------------------------------------------------------------

OPTIMIZERS = ("adadelta", "sgd", "adam", "muon")
# The optimisers by name and by the original tool's numeric code.
OPTIMIZER_ALIASES = {"1": "adadelta", "adadelta": "adadelta", "2": "sgd", "sgd": "sgd", "adam": "adam", "muon": "muon"}
SCHEDULES = ("constant", "cosine", "triangular", "linear")
PRECISIONS = ("float32", "mixed_bfloat16")  # Keras dtype policies a run trains and encodes under

# --- search (engines.py) -----------------------------------------------------------------------

ENGINES = ("exact", "faiss", "faiss-ivf", "faiss-mih", "backend")


def tta_mode(value):
    """The TTA mode a config or index holds: a name of `TTA_MODES`, or the on/off of files written before there were several.

    >>> tta_mode(True), tta_mode(0), tta_mode("flip-shift")
    ('flip', 'none', 'flip-shift')
    """
    if isinstance(value, str):
        return value
    return "flip" if value else NO_TTA


def applies(option, method):
    """Whether a method-specific option (a key of `METHOD_OPTIONS`) applies to `method`.

    >>> applies("lambda", "dhn"), applies("lambda", "dlbhc")
    (True, False)
    """
    return method in METHOD_OPTIONS[option]
