"""`keras.applications` backbones as hashing trunks, with their ImageNet input preprocessing as layers.

Inside the model, in this order: grey images are repeated to 3 channels, every image is
resized to the backbone's square input (`Resizing`, 224 by default), the backbone's own
`preprocess_input` is applied as built-in layers (`backbone_preprocessing`), then the backbone
(layer `BACKBONE_LAYER`, without its classifier) and global average pooling. So the model still
takes raw 0..255 pixels of any size, and a `model.keras` needs no other code than this module's
registered layers to load. `models.build_encoder` adds the latent layer.
"""

import re
from typing import NamedTuple

import keras
import numpy as np
from keras import layers, ops

import vocabulary

BACKBONE_LAYER = "backbone"


class Application(NamedTuple):
    """A `keras.applications` backbone: its constructor, default input side and input preprocessing.

    `preprocessing` names the mode of `keras.applications.imagenet_utils.preprocess_input`
    the network was trained with: `"caffe"` (RGB to BGR, minus the ImageNet
    channel means, no scaling), `"tf"` (scaled to [-1, 1]), or `"none"` where
    the network holds its own rescaling (EfficientNet takes 0..255).
    """

    constructor: callable
    input_size: int
    preprocessing: str


_APPLICATION_PARTS = {
    "resnet50": (keras.applications.ResNet50, "caffe"),
    "mobilenetv2": (keras.applications.MobileNetV2, "tf"),
    "efficientnetb0": (keras.applications.EfficientNetB0, "none"),
    "vgg16": (keras.applications.VGG16, "caffe"),
}
APPLICATIONS = {
    name: Application(constructor, vocabulary.APPLICATION_INPUT_SIZES[name], preprocessing)
    for name, (constructor, preprocessing) in _APPLICATION_PARTS.items()
}
# The smallest input keras.applications accepts for these networks without their classifier.
MIN_INPUT_SIZE = vocabulary.MIN_BACKBONE_SIZE
# 'caffe' mode of keras.applications.imagenet_utils.preprocess_input: BGR channel means.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# ImageNet channel standard deviations (RGB), which keras.applications' EfficientNet uses.
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


class WeightsError(Exception):
    """Pretrained weights that cannot be had: no download (offline), or a file that does not fit."""


def in_backbone(variable_path):
    """Whether a variable (by its `.path`) belongs to an application backbone built here."""
    return BACKBONE_LAYER in variable_path.split("/")[:-1]


def backbone_preprocessing(arch):
    """The layers that turn resized 0..255 RGB pixels into what the backbone `arch` was trained on.

    Built-in layers (plus `ReverseChannels`) reproducing
    `keras.applications.<family>.preprocess_input`, so the model saves and
    loads as `.keras` without custom functions. They compute in float32 so
    that mixed precision does not round the mean subtraction.

    Args:
        arch: one of `APPLICATIONS`.

    Returns:
        A list of layers to apply in order; empty for EfficientNet, which
        rescales inside the network.
    """
    mode = APPLICATIONS[arch].preprocessing
    if mode == "caffe":
        return [
            ReverseChannels(dtype="float32", name="rgb_to_bgr"),
            layers.Normalization(mean=CAFFE_BGR_MEAN, variance=(1.0, 1.0, 1.0), dtype="float32", name="subtract_imagenet_mean"),
        ]
    if mode == "tf":
        return [layers.Rescaling(1.0 / 127.5, offset=-1.0, dtype="float32", name="scale_to_symmetric")]
    return []


def application_trunk(inputs, arch, weights, input_size, freeze_backbone):
    """Grey to RGB, resizing, preprocessing, the backbone and global average pooling."""
    application = APPLICATIONS[arch]
    input_size = application.input_size if input_size is None else input_size
    if not (isinstance(input_size, int) and input_size >= MIN_INPUT_SIZE):
        raise ValueError(f"`input_size` must be an integer of at least {MIN_INPUT_SIZE}. Received: input_size={input_size!r}")
    channels = inputs.shape[-1]
    if channels not in (1, 3):
        raise ValueError(
            f"arch={arch!r} takes grey (1-channel) or colour (3-channel) images. Received: input_shape={tuple(inputs.shape[1:])}"
        )
    x = inputs
    if channels == 1:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    x = layers.Resizing(input_size, input_size, name="resize")(x)
    for layer in backbone_preprocessing(arch):
        x = layer(x)
    backbone = Backbone(_application_network(arch, weights, input_size), name=BACKBONE_LAYER)
    backbone.trainable = not freeze_backbone
    x = backbone(x)
    return layers.GlobalAveragePooling2D(name="global_pool")(x)


def _application_network(arch, weights, input_size):
    """The `keras.applications` network without its classifier, its variables under `BACKBONE_LAYER/`."""
    application = APPLICATIONS[arch]
    weights_file = weights not in (None, "imagenet")
    try:
        with keras.name_scope(BACKBONE_LAYER):
            network = application.constructor(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))
    except Exception as error:  # Keras raises a bare Exception for a failed download
        fetch_failure = re.search(r"URL fetch failure on (\S+): (.*)", str(error))
        if weights == "imagenet" and fetch_failure:
            url, reason = fetch_failure.groups()
            reason = reason.removeprefix("None -- ")  # Keras's "<HTTP code> -- <reason>", no code offline
            raise WeightsError(
                f"Could not download the ImageNet weights of {arch} ({reason}): is this machine offline? "
                f"Fetch {url} on a connected machine, then pass that file with --weights PATH "
                f"(weights=PATH), or put it in ~/.keras/models/ and keep --weights imagenet."
            ) from None
        if weights_file and isinstance(error, (ValueError, OSError)):
            raise WeightsError(f"Could not load the weights file {weights} into {arch}: {error}") from None
        raise
    if weights_file and application.constructor is keras.applications.EfficientNetB0:
        _match_imagenet_scaling(network)
    return network


def _match_imagenet_scaling(network):
    """Gives an EfficientNet loaded from a local ImageNet file the input scaling `weights="imagenet"` gets.

    keras.applications adds a `Rescaling(1 / sqrt(stddev))` after the input
    `Normalization` only when `weights == "imagenet"`, not for a file of the very
    same weights. Dividing by `sqrt(stddev)` after dividing by `sqrt(variance)`
    equals dividing by `sqrt(variance * stddev)`, so the variance is scaled instead.
    """
    normalization = next(layer for layer in network.layers if isinstance(layer, layers.Normalization))
    normalization.adapt_variance.assign(ops.multiply(normalization.adapt_variance, np.array(IMAGENET_STDDEV_RGB, "float32")))
    normalization.finalize_state()


@keras.saving.register_keras_serializable(package="deephash")
class ReverseChannels(layers.Layer):
    """Reverses the order of the last (channel) axis: RGB to BGR, as Caffe-trained networks expect.

    Example:

    >>> keras.ops.convert_to_numpy(ReverseChannels()(np.array([[1.0, 2.0, 3.0]]))).tolist()
    [[3.0, 2.0, 1.0]]
    """

    def call(self, inputs):
        return ops.flip(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="deephash")
class Backbone(layers.Layer):
    """Wraps a `keras.applications` network so its variables keep the path prefix `<name>/`.

    A nested functional model's variable paths are those of its own layers
    (`Conv1/kernel`), and after `keras.saving.load_model` they lose any name
    scope they were built under. This layer rebuilds its network under its own
    name scope when loaded, so `backbone/Conv1/kernel` stays the same across
    save and load, and the optimiser (`train.RateScaleMixin`) can find the
    backbone's variables by path. A frozen backbone (`trainable = False`) runs
    in inference mode: batch norm on its moving statistics, no dropout.

    Args:
        network: a `keras.Model`, built under `keras.name_scope(name)`.
        **kwargs: `keras.layers.Layer` arguments, e.g. `name`.
    """

    def __init__(self, network, **kwargs):
        super().__init__(**kwargs)
        self.network = network

    def build(self, input_shape):
        self.built = True

    def call(self, inputs, training=None):
        return self.network(inputs, training=training if self.trainable else False)

    def compute_output_shape(self, input_shape):
        return self.network.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "network": keras.saving.serialize_keras_object(self.network)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        with keras.name_scope(config["name"]):
            network = keras.saving.deserialize_keras_object(config.pop("network"))
        return cls(network, **config)
