"""Hashing networks: an image encoder whose last layer is `bits` sigmoid units.

Every architecture takes raw pixels (0..255, any height and width) and ends in
the layer named `LATENT_LAYER`: `Dense(bits, activation="sigmoid")`. A code bit
is 1 where the latent activation is above `BIT_THRESHOLD`.

Trained from scratch (any channel count; pixels scaled to [0, 1] inside):

- `dbr`: the DeepBinaryRepre CNN (Lu et al. 2017), layer for layer.
- `resnet`: a small residual CNN (batch norm, three stages), stronger and slower;
  `width` sets its first stage's channels (the others double).
- `speedrun`: the CIFAR-10 speed-run network (the shape of airbench's, Jordan
  2024): a frozen patch-whitening 2x2 convolution, then three blocks of
  [conv3x3, max pool, batch norm, GELU, conv3x3, batch norm, GELU], their
  3x3 convolutions identity-initialised, batch norm with fast momentum and no
  scale weights; `width` sets the first block's channels (the others are 4x).
  Its whitening layer is fitted to the training images before training
  (`adapt_to_images`).

`keras.applications` backbones (`backbones.APPLICATIONS`: `resnet50`,
`mobilenetv2`, `efficientnetb0`, `vgg16`), optionally with ImageNet weights, as
DLBHC fine-tuned an ImageNet network; `backbones.py` builds them with their
input preprocessing as layers, so the model still takes raw 0..255 pixels.

Example:

>>> encoder = build_encoder("dbr", input_shape=(28, 28, 1), bits=48)
>>> encoder.output.shape
(None, 48)
>>> encoder = build_encoder("mobilenetv2", (32, 32, 3), bits=48, weights=None, input_size=32)
>>> encoder.get_layer(backbones.BACKBONE_LAYER).network.name
'mobilenetv2_1.00_32'
"""


from typing import NamedTuple

import keras
import numpy as np
from keras import layers, ops

import backbones
import vocabulary

LATENT_LAYER = "latent"
BIT_THRESHOLD = vocabulary.BIT_THRESHOLD
EXTRA_LAYER_UNITS = 512
# Channels of the residual CNN's first stage; each later stage doubles them.
RESNET_WIDTH = 32
RESNET_STAGES = 3
# The speed-run network: channels of its first block (the second and third have
# SPEEDRUN_GROWTH times as many, airbench's 64/256/256), batch norm momentum (Keras's: the share of the
# old moving statistics kept each step; airbench's 0.6), and the side of the
# whitened patches.
SPEEDRUN_WIDTH = 32
SPEEDRUN_GROWTH = vocabulary.SPEEDRUN_GROWTH
SPEEDRUN_BATCH_NORM_MOMENTUM = 0.6
WHITENING_PATCH = 2
# Added to the patch covariance's eigenvalues before whitening, so near-constant directions stay finite.
WHITENING_EPSILON = 5e-4
# Images the whitening layer's patch statistics are computed from (adapt_to_images).
WHITENING_IMAGES = 5000
# Images whose patches are summed at a time: a few dozen MB of float64 patches instead of the
# sample's 460 MB, which took 2 s to allocate and fill (0.3 s in chunks).
WHITENING_CHUNK = 250
# Training-time augmentation inside the model, so it runs on the accelerator within the
# compiled step: "flip" mirrors colour images left-right (digits are never mirrored),
# "crop-flip" also shifts every image by up to `CROP_PADDING_FRACTION` of its side.
# "light-crop-flip" shifts by up to `LIGHT_CROP_PADDING_FRACTION` (2 pixels on 32), as the speed-runs do.
AUGMENTATIONS = vocabulary.AUGMENTATIONS
# Where an augmentation's mirroring happens: a random flip in the model, or airbench's
# alternating flip in the data feed (batches.ShardedBatches).
RANDOM_FLIP = "random"
FLIPS = vocabulary.FLIPS
DEFAULT_AUGMENTATION = {"dbr": "none"}  # the original CNN trained on plain images; the rest: "flip"
CROP_PADDING_FRACTION = 1 / 8  # 4 pixels on CIFAR-10's 32, the usual CIFAR padding
LIGHT_CROP_PADDING_FRACTION = 1 / 16
# The largest shift of each shifting augmentation, as a share of the image's side.
SHIFT_FRACTIONS = {"crop-flip": CROP_PADDING_FRACTION, "light-crop-flip": LIGHT_CROP_PADDING_FRACTION}
# The views each test-time augmentation mode (vocabulary.TTA_MODES) averages, every one with
# its mirror image: (rows, columns) shift in pixels, weight. "flip-shift" is airbench's
# multi-crop TTA: half the weight on the image, a quarter each on copies shifted one pixel
# down-right and up-left (reflect padding); on validation it scored mAP@1000 0.005 above
# "flip" at full scale (docs/recipes.md).
TTA_VIEWS = {
    vocabulary.NO_TTA: (),
    "flip": (((0, 0), 1.0),),
    "flip-shift": (((0, 0), 0.5), ((1, 1), 0.25), ((-1, -1), 0.25)),
}
# Images augmented at a time for test-time augmentation (predict_with_views).
TTA_CHUNK = 8192
# PyTorch's default. Keras's 0.99 averages over ~100 steps of fast-changing
# weights, which left a 5-epoch classroom run predicting one class at inference.
BATCH_NORM_MOMENTUM = 0.9
# Set by devices.py while TensorFlow builds a model mirrored over several replicas: batch
# norm then averages its statistics over the global batch, not each replica's share.
synchronized_batch_norm = False


ARCHS = vocabulary.ARCHS


def build_encoder(arch, input_shape, bits, extra_layer=False, weights=None, input_size=None, freeze_backbone=False,
                  augment=None, width=None, growth=None, flip=RANDOM_FLIP, craft=None):
    """Builds the encoder `pixels -> latent` for one architecture.

    Args:
        arch: one of `ARCHS`.
        input_shape: `(height, width, channels)` of the images. A
            `keras.applications` backbone takes 1 (grey) or 3 (colour) channels.
        bits: number of latent sigmoid units, i.e. the code length.
        extra_layer: whether to add the original tool's "additional activation
            layer", a `Dense(512)` + ReLU block, just before the latent layer.
            Defaults to `False`.
        weights: backbones only: `"imagenet"` (downloaded once by Keras), `None`
            (random initialisation), or the path of a weights file that
            `keras.applications` accepts, e.g. a local copy of the ImageNet
            file `--weights imagenet` downloads. Defaults to `None`.
        input_size: backbones only: side of the square the images are resized
            to before the backbone, at least `MIN_INPUT_SIZE`. Defaults to
            `None`: the backbone's own (`APPLICATIONS[arch].input_size`).
        freeze_backbone: backbones only: make the backbone untrainable; its
            batch norm and dropout then run in inference mode. Defaults to
            `False`.
        augment: training-time augmentation, one of `AUGMENTATIONS`; active
            only in training (`fit`), never when encoding. Defaults to `None`:
            `DEFAULT_AUGMENTATION` for `arch`, else `"flip"`.
        width: `resnet` and `speedrun` only: channels of the first stage,
            positive. Defaults to `None` (`RESNET_WIDTH`, `SPEEDRUN_WIDTH`).
        growth: `speedrun` only: channels of its second and third blocks as a
            multiple of the first's, positive. Defaults to `None` (`SPEEDRUN_GROWTH`).
        flip: `"random"`: the augmentation's mirroring is a random flip in the
            model; `"alternating"`: the model leaves mirroring to the data feed
            (`batches.ShardedBatches`, airbench's alternating flip). Defaults to `"random"`.
        craft: `speedrun` only: a `SpeedrunCraft` (pooling, batch norm epsilon,
            initialisation, whitening). Defaults to `None` (`SpeedrunCraft()`).

    Returns:
        A `keras.Model` mapping `[batch, *input_shape]` pixels in 0..255 to
        `[batch, bits]` latent activations in (0, 1).

    Raises:
        ValueError: an unknown `arch`, or options that do not apply to it.
        WeightsError: `weights="imagenet"` without a connection (the message
            says how to pass a local file), or a weights file that cannot be loaded.
    """
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {ARCHS}. Received: arch={arch!r}")
    if width is not None and arch not in vocabulary.WIDTH_ARCHS:
        raise ValueError(f"`width` applies to arch {vocabulary.WIDTH_ARCHS} only. Received: arch={arch!r}, width={width!r}")
    if growth is not None and arch != vocabulary.GROWTH_ARCH:
        raise ValueError(f"`growth` applies to arch {vocabulary.GROWTH_ARCH!r} only. Received: arch={arch!r}, growth={growth!r}")
    if craft is not None and arch != "speedrun":
        raise ValueError(f"`craft` applies to arch 'speedrun' only. Received: arch={arch!r}")
    if flip not in FLIPS:
        raise ValueError(f"`flip` must be one of {FLIPS}. Received: flip={flip!r}")
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = _augmentation(inputs, DEFAULT_AUGMENTATION.get(arch, "flip") if augment is None else augment, flip)
    if arch in backbones.APPLICATIONS:
        x = backbones.application_trunk(x, arch, weights, input_size, freeze_backbone)
    else:
        for name, value, default in (("weights", weights, None), ("input_size", input_size, None), ("freeze_backbone", freeze_backbone, False)):
            if value != default:
                raise ValueError(
                    f"`{name}` applies to the keras.applications archs {tuple(backbones.APPLICATIONS)} only, "
                    f"not to arch={arch!r}, which trains from scratch. Received: {name}={value!r}"
                )
        x = layers.Rescaling(1.0 / 255, name="scale_to_unit")(x)
        x = _scratch_trunk(x, arch, width, growth, craft or SpeedrunCraft())
    if extra_layer:
        x = layers.Dense(EXTRA_LAYER_UNITS, activation="relu", name="extra_dense")(x)
    # float32 so the codes stay exact under mixed precision.
    latent = layers.Dense(bits, activation="sigmoid", dtype="float32", name=LATENT_LAYER)(x)
    return keras.Model(inputs, latent, name=f"{arch}_encoder")


def encoder_of(model):
    """The sub-model of a training model that maps pixels to the latent layer."""
    return keras.Model(model.inputs, model.get_layer(LATENT_LAYER).output, name="encoder")


def scoring_model(model):
    """A model sharing `model`'s weights whose outputs are the latent layer, then the classifier's, if any."""
    latent = model.get_layer(LATENT_LAYER).output
    has_classifier = latent is not model.outputs[0]
    return keras.Model(model.inputs, [latent, model.outputs[0]] if has_classifier else [latent])


def encode(model, images, tta=vocabulary.NO_TTA, batch_size=vocabulary.ENCODE_BATCH_SIZE):
    """The outputs of `model` for uint8 `images` `[n, h, w, c]`, in batches, without a progress bar.

    Args:
        model: an encoder, a `scoring_model`, or any model taking raw pixels.
        images: the images, as the model takes them (raw 0..255 pixels).
        tta: test-time augmentation, a name of `vocabulary.TTA_MODES` (colour
            images; `True`/`False` as configs before the modes held them):
            each output is the weighted mean of the outputs for the mode's
            `TTA_VIEWS`. Defaults to none.
        batch_size: images per step. Defaults to `vocabulary.ENCODE_BATCH_SIZE`.

    Returns:
        The model's output array, or a list of them for a model of several outputs.
    """
    views = TTA_VIEWS[vocabulary.tta_mode(tta)]
    if not views:
        return predict(model, images, batch_size)
    return predict_with_views(model, images, views, batch_size)


def binarise(latent):
    """The codes of latent activations: uint8 0/1 bits, 1 where the activation is above `BIT_THRESHOLD`.

    >>> binarise([[0.2, 0.7, 0.5]])
    array([[0, 1, 0]], dtype=uint8)
    """
    return (np.asarray(latent) > BIT_THRESHOLD).astype(np.uint8)


def predict(model, images, batch_size):
    """The model's outputs for `images`, `batch_size` at a time, without a progress bar.

    On one device, batch by batch (`predict_on_batch`): `model.predict` feeds
    the arrays through a `tf.data` pipeline whose threads take cores from the
    arithmetic, and encoded about 1,940 images/s against 2,400 to 2,660 this way
    on a 2-core CPU (docs/results.md). Across devices, `model.predict`, which
    splits each batch among them.
    """
    if not _on_one_device(model):
        return model.predict(images, batch_size=batch_size, verbose=0)
    outputs = [model.predict_on_batch(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outputs)


def _on_one_device(model):
    """Whether `model` runs on one device: no JAX distribution, one TensorFlow replica."""
    if keras.distribution.distribution() is not None:
        return False
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow's trainer only
    return strategy is None or strategy.num_replicas_in_sync == 1


def predict_with_views(model, images, views, batch_size):
    """Test-time augmentation: the weighted mean of the outputs for each of `views` of each image and its mirror image.

    For colour images, whose mirror and shifted images belong to the same class;
    the mean latent activation is binarised as usual. Augments `TTA_CHUNK`
    images at a time, so the copies stay small whatever the number of images.
    """
    chunks = [
        average_views(lambda batch: predict(model, batch, batch_size), images[start : start + TTA_CHUNK], views)
        for start in range(0, len(images), TTA_CHUNK)
    ]
    return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *chunks)


def average_views(outputs_of, images, views):
    """The weighted mean of `outputs_of` over `views` (`TTA_VIEWS` entries) of `images`, each with its mirror image.

    No views (the mode `none`): `outputs_of(images)` itself.

    >>> images = np.arange(2 * 3 * 3 * 1, dtype="uint8").reshape(2, 3, 3, 1)
    >>> row_means = lambda batch: batch.mean(axis=(2, 3))  # unchanged by mirroring
    >>> average_views(row_means, images, TTA_VIEWS["flip"])[0].tolist()
    [1.0, 4.0, 7.0]
    >>> average_views(row_means, images, [((1, 0), 1.0)])[0].tolist()  # one row down: the top row reflected
    [4.0, 1.0, 4.0]
    """
    if not views:
        return outputs_of(images)
    weighted = [
        keras.tree.map_structure(lambda output: weight * np.asarray(output), average_with_mirror(outputs_of, shifted(images, shift)))
        for shift, weight in views
    ]
    return keras.tree.map_structure(lambda *parts: sum(parts), *weighted)


def shifted(images, shift):
    """`images` `[n, h, w, c]` moved by `shift` = (rows, columns) pixels, down and right if positive, the edges reflected."""
    rows, columns = shift
    if rows == columns == 0:
        return images
    pad = max(abs(rows), abs(columns))
    padded = np.pad(np.asarray(images), ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    return np.ascontiguousarray(padded[:, pad - rows : pad - rows + height, pad - columns : pad - columns + width])


def average_with_mirror(outputs_of, images):
    """The mean of `outputs_of(images)` and `outputs_of(mirrored images)`, output by output."""
    mirrored = np.ascontiguousarray(np.asarray(images)[:, :, ::-1])
    return keras.tree.map_structure(
        lambda plain, flipped: (np.asarray(plain) + np.asarray(flipped)) / 2, outputs_of(images), outputs_of(mirrored)
    )


def unsynchronize_batch_norm(model):
    """Turns off cross-replica batch norm in `model`, so its saved file loads on every backend.

    `synchronized=True` (set for training under a TensorFlow `MirroredStrategy`)
    only changes how training statistics are gathered, and Keras refuses to
    build such a layer on another backend; inference uses the moving statistics
    either way.
    """
    for layer in model._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):
            layer.synchronized = False


def _dbr_trunk(x):
    """DeepBinaryRepre's CNN up to (not including) its latent layer."""
    for filters, stage in ((32, 1), (64, 2)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{stage}a")(x)
        x = layers.Conv2D(filters, 3, padding="valid", activation="relu", name=f"conv{stage}b")(x)
        x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        x = layers.Dropout(0.25, name=f"dropout{stage}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", name="dense")(x)
    return layers.Dropout(0.5, name="dropout_dense")(x)


def _scratch_trunk(x, arch, width, growth, craft):
    """The trunk of an arch trained from scratch, from pixels in [0, 1] to one feature vector."""
    if arch == "dbr":
        return _dbr_trunk(x)
    if arch == "resnet":
        return _resnet_trunk(x, RESNET_WIDTH if width is None else width)
    return _speedrun_trunk(x, SPEEDRUN_WIDTH if width is None else width, SPEEDRUN_GROWTH if growth is None else growth, craft)


def _augmentation(inputs, augment, flip=RANDOM_FLIP):
    """Applies `augment` (one of `AUGMENTATIONS`) to raw pixels; identity outside training.

    Mirroring applies to colour images only, where a mirror image belongs to the
    same class; digits and other grey images are only shifted.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"`augment` must be one of {AUGMENTATIONS}. Received: augment={augment!r}")
    x = inputs
    if augment in SHIFT_FRACTIONS:
        padding = max(1, round(min(inputs.shape[1:3]) * SHIFT_FRACTIONS[augment]))
        x = RandomShift(padding, name="random_shift")(x)
    if augment != "none" and inputs.shape[-1] == 3 and flip == RANDOM_FLIP:
        x = layers.RandomFlip("horizontal", name="random_flip")(x)
    return x


def _resnet_trunk(x, width):
    """A small residual CNN: per stage a conv, a 2x2 pool and one residual block of two convs."""
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"`width` must be a positive integer. Received: width={width!r}")
    widths = [width * 2**stage for stage in range(RESNET_STAGES)]
    x = _conv_bn_relu(x, widths[0], "stem")
    for stage, filters in enumerate(widths, start=1):
        x = _conv_bn_relu(x, filters, f"stage{stage}_conv")
        x = layers.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
        shortcut = x
        x = _conv_bn_relu(x, filters, f"stage{stage}_res1")
        x = _conv_bn_relu(x, filters, f"stage{stage}_res2")
        x = layers.Add(name=f"stage{stage}_add")([shortcut, x])
    return layers.GlobalAveragePooling2D(name="global_pool")(x)


class SpeedrunCraft(NamedTuple):
    """The details of the speed-run network that airbench's code does its own way; the defaults are this project's.

    Each is a named setting of the `speedrun` recipe, so that its worth can be measured alone:

    - `pooling`: `"same"` pads odd sides before each 2x2 max pool (32 -> 31 ->
      16 -> 8 -> 4); `"floor"` drops the last row and column, as airbench's
      PyTorch pooling does (31 -> 15 -> 7 -> 3), 19% less arithmetic.
    - `batch_norm_epsilon`: Keras's 1e-3, or airbench's 1e-12.
    - `init`: the 3x3 filters beyond their identity channels, `"he"` uniform,
      or `"pytorch"`'s default (uniform within 1/sqrt(fan in): a sixth of He's variance).
    - `whitening`: the patch covariance's epsilon added on `"pixels"` scaled to
      [0, 1], or on `"standardised"` ones (each channel divided by its standard
      deviation, as airbench normalises its inputs), where it weighs about 16x less.
    """

    pooling: str = "same"
    batch_norm_epsilon: float = 1e-3
    init: str = "he"
    whitening: str = "pixels"


# The variance scale of each `SpeedrunCraft.init` (keras.initializers.VarianceScaling, uniform, fan in).
INIT_VARIANCE_SCALES = {"he": 2.0, "pytorch": 1.0 / 3.0}
POOLINGS = {"same": "same", "floor": "valid"}
WHITENINGS = ("pixels", "standardised")


def check_craft(craft):
    """`craft` (a `SpeedrunCraft`), or a `ValueError` naming the setting out of range."""
    for name, value, allowed in (("pooling", craft.pooling, tuple(POOLINGS)), ("init", craft.init, tuple(INIT_VARIANCE_SCALES)),
                                 ("whitening", craft.whitening, WHITENINGS)):
        if value not in allowed:
            raise ValueError(f"`{name}` must be one of {allowed}. Received: {name}={value!r}")
    if not craft.batch_norm_epsilon > 0:
        raise ValueError(f"`batch_norm_epsilon` must be positive. Received: batch_norm_epsilon={craft.batch_norm_epsilon}")
    return craft


def _speedrun_trunk(x, width, growth, craft):
    """The speed-run network up to its global max pool (see the module docstring)."""
    for name, value in (("width", width), ("growth", growth)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    check_craft(craft)
    x = PatchWhitening(standardise=craft.whitening == "standardised", name="whitening")(x)
    x = layers.Activation("gelu", name="whitening_gelu")(x)
    for block, filters in enumerate((width, width * growth, width * growth), start=1):
        x = _identity_conv(x, filters, f"block{block}_conv1", craft.init)
        x = layers.MaxPooling2D(2, padding=POOLINGS[craft.pooling], name=f"block{block}_pool")(x)
        x = _speedrun_norm_gelu(x, f"block{block}_norm1", craft.batch_norm_epsilon)
        x = _identity_conv(x, filters, f"block{block}_conv2", craft.init)
        x = _speedrun_norm_gelu(x, f"block{block}_norm2", craft.batch_norm_epsilon)
    return layers.GlobalMaxPooling2D(name="global_pool")(x)


def _identity_conv(x, filters, name, init):
    initializer = PartialIdentity(variance_scale=INIT_VARIANCE_SCALES[init])
    return layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=initializer, name=name)(x)


def _speedrun_norm_gelu(x, name, epsilon):
    """Batch norm with a learnt bias but no scale (a GELU after it needs none), then GELU."""
    x = layers.BatchNormalization(
        momentum=SPEEDRUN_BATCH_NORM_MOMENTUM, epsilon=epsilon, scale=False, synchronized=synchronized_batch_norm, name=f"{name}_bn"
    )(x)
    return layers.Activation("gelu", name=f"{name}_gelu")(x)


def is_norm_bias(variable_path):
    """Whether a variable (by its `.path`) is a batch norm's bias, which the speed-run recipe trains faster."""
    return variable_path.endswith("_bn/beta")


def is_whitening_bias(variable_path):
    """Whether a variable (by its `.path`) is the whitening layer's bias, which airbench trains for its first epochs only."""
    return variable_path.endswith("whitening/bias")


def adapt_to_images(model, images):
    """Fits every `PatchWhitening` layer of `model` to `images` (raw 0..255 pixels); no-op without one.

    The whitening layer sees the pixels scaled to [0, 1], as in the model, and
    its statistics come from a fixed random draw of `WHITENING_IMAGES` of
    `images` (a training set may come sorted by class).
    """
    whitening = [layer for layer in model._flatten_layers() if isinstance(layer, PatchWhitening)]
    if whitening:
        draw = np.random.default_rng(0).permutation(len(images))[:WHITENING_IMAGES]
        sample = np.asarray(images[np.sort(draw)], dtype="float32") / 255.0
        for layer in whitening:
            layer.adapt(sample)


def _conv_bn_relu(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, synchronized=synchronized_batch_norm, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


@keras.saving.register_keras_serializable(package="deephash")
class RandomShift(layers.Layer):
    """Random crop with padding: shifts each image by up to `padding` pixels each way (training only).

    The image is reflect-padded by `padding` on every side and a window of its
    own size is cut at a random offset, per image, with two gathers
    (`ops.take_along_axis`). Unlike `keras.layers.RandomCrop`, which marks
    itself unfit for XLA and so turns `jit_compile` off for the whole model,
    every op here compiles, so the shift runs on the accelerator inside the
    compiled training step. Outside training it returns its input.

    Args:
        padding: largest shift in pixels, positive.
        seed: seed of the shifts. Defaults to `None`.
        **kwargs: `keras.layers.Layer` arguments, e.g. `name`.

    Example:

    >>> images = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    >>> shifted = RandomShift(1, seed=0)(images, training=True)
    >>> tuple(shifted.shape)
    (1, 4, 4, 1)
    """

    def __init__(self, padding, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(padding, int) and padding >= 1):
            raise ValueError(f"`padding` must be a positive integer. Received: padding={padding!r}")
        self.padding = padding
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        height, width = images.shape[1], images.shape[2]
        pad = self.padding
        padded = ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect")
        offsets = keras.random.randint((ops.shape(images)[0], 2), 0, 2 * pad + 1, dtype="int32", seed=self.seed_generator)
        rows = offsets[:, :1] + ops.arange(height, dtype="int32")[None, :]
        columns = offsets[:, 1:] + ops.arange(width, dtype="int32")[None, :]
        shifted = ops.take_along_axis(padded, rows[:, :, None, None], axis=1)
        return ops.take_along_axis(shifted, columns[:, None, :, None], axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "seed": self.seed}


@keras.saving.register_keras_serializable(package="deephash")
class PartialIdentity(keras.initializers.Initializer):
    """A 3x3 convolution kernel whose first output channels copy the input channels; the rest uniform (He's by default).

    The speed-runs' "dirac" initialisation: at the start each block passes its
    input through unchanged in its first channels, so a deep stack of freshly
    initialised convolutions starts close to the identity and trains faster.

    Example:

    >>> kernel = keras.ops.convert_to_numpy(PartialIdentity()((3, 3, 2, 4)))
    >>> kernel[1, 1, :, :2].tolist(), float(kernel[0, 0, 0, 0])
    ([[1.0, 0.0], [0.0, 1.0]], 0.0)
    """

    def __init__(self, seed=None, variance_scale=INIT_VARIANCE_SCALES["he"]):
        self.seed = seed
        self.variance_scale = float(variance_scale)

    def __call__(self, shape, dtype=None):
        uniform = keras.initializers.VarianceScaling(self.variance_scale, mode="fan_in", distribution="uniform", seed=self.seed)
        kernel = keras.ops.convert_to_numpy(uniform(shape, dtype="float32"))
        rows, columns, inputs, outputs = shape
        copied = min(inputs, outputs)
        kernel[:, :, :, :copied] = 0.0
        kernel[rows // 2, columns // 2, np.arange(copied), np.arange(copied)] = 1.0
        return keras.ops.convert_to_tensor(kernel, dtype=dtype)

    def get_config(self):
        return {"seed": self.seed, "variance_scale": self.variance_scale}


@keras.saving.register_keras_serializable(package="deephash")
class PatchWhitening(layers.Layer):
    """A frozen 2x2 convolution that whitens image patches: the speed-runs' first layer.

    `adapt(images)` computes the covariance of every 2x2 patch of `images`,
    and sets the kernel to its eigenvectors divided by the square roots of the
    eigenvalues, each filter also negated (`+W` and `-W`, so a GELU after it
    keeps both signs), and the bias so that the mean patch maps to zero. The
    kernel never trains; the bias does. Until adapted the kernel is zero.
    With `standardise=True` the covariance is that of patches whose channels
    are divided by their standard deviation (airbench whitens normalised
    pixels), so `WHITENING_EPSILON` weighs as it does there; the kernel still
    takes the layer's own input.

    Example:

    >>> images = np.random.default_rng(0).random((64, 8, 8, 3), dtype="float32")
    >>> layer = PatchWhitening()
    >>> layer.adapt(images)
    >>> whitened = keras.ops.convert_to_numpy(layer(images)).reshape(-1, 24)[:, :12]
    >>> bool(np.allclose(np.cov(whitened, rowvar=False), np.eye(12), atol=0.05))
    True
    """

    def __init__(self, standardise=False, **kwargs):
        super().__init__(**kwargs)
        self.standardise = bool(standardise)

    def build(self, input_shape):
        channels = input_shape[-1]
        dims = WHITENING_PATCH * WHITENING_PATCH * channels
        self.kernel = self.add_weight(shape=(WHITENING_PATCH, WHITENING_PATCH, channels, 2 * dims), initializer="zeros", trainable=False, name="kernel")
        self.bias = self.add_weight(shape=(2 * dims,), initializer="zeros", name="bias")

    def adapt(self, images):
        """Sets the kernel and bias from the 2x2 patches of `images` (a NumPy batch, as the layer will see it)."""
        if not self.built:
            self.build(images.shape)
        mean, covariance = patch_statistics(images, WHITENING_PATCH)
        scale = np.ones(len(mean))
        if self.standardise:  # one standard deviation per channel, tiled in the kernel's order (rows, columns, channels)
            scale = np.tile(np.asarray(images, dtype="float64").std(axis=(0, 1, 2)), WHITENING_PATCH * WHITENING_PATCH)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance / np.outer(scale, scale))
        filters = eigenvectors / np.sqrt(eigenvalues + WHITENING_EPSILON) / scale[:, None]
        kernel = np.concatenate([filters, -filters], axis=1)
        self.kernel.assign(kernel.reshape(WHITENING_PATCH, WHITENING_PATCH, images.shape[-1], -1).astype("float32"))
        self.bias.assign((-mean @ kernel).astype("float32"))

    def call(self, images):
        return ops.conv(images, self.kernel, padding="valid") + self.bias

    def get_config(self):
        return {**super().get_config(), "standardise": self.standardise}

    def compute_output_shape(self, input_shape):
        size = WHITENING_PATCH
        rows, columns = (None if side is None else side - size + 1 for side in input_shape[1:3])
        return (input_shape[0], rows, columns, self.kernel.shape[-1] if self.built else 2 * size * size * input_shape[-1])


def patch_statistics(images, size):
    """The mean and covariance (float64) of every `size` x `size` patch of `images` `[n, h, w, c]`.

    A patch is flattened in a convolution kernel's order (rows, columns, channels).
    The sums are taken `WHITENING_CHUNK` images at a time.

    >>> images = np.random.default_rng(0).random((3, 4, 4, 2))
    >>> windows = np.lib.stride_tricks.sliding_window_view(images, (2, 2), axis=(1, 2))
    >>> patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 8)
    >>> mean, covariance = patch_statistics(images, 2)
    >>> bool(np.allclose(mean, patches.mean(axis=0)) and np.allclose(covariance, np.cov(patches, rowvar=False)))
    True
    """
    dims = size * size * images.shape[-1]
    total, products, count = np.zeros(dims), np.zeros((dims, dims)), 0
    for start in range(0, len(images), WHITENING_CHUNK):
        windows = np.lib.stride_tricks.sliding_window_view(images[start : start + WHITENING_CHUNK], (size, size), axis=(1, 2))
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, dims).astype("float64")  # [n, h, w, c, size, size] -> kernel order
        total += patches.sum(axis=0)
        products += patches.T @ patches
        count += len(patches)
    mean = total / count
    return mean, (products - count * np.outer(mean, mean)) / (count - 1)
