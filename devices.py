"""Where training runs: the devices, the data-parallel distribution over them, and the processes.

`start(config)` is called once per run, before any Keras computation, and
sets up the `Placement` that `placement()` then returns:

- TensorFlow: one process; with several devices a `tf.distribute.MirroredStrategy`
  over the GPUs, or over N logical CPU devices when asked on a machine without
  one (tests). Batch norm is then synchronised across replicas
  (`models.synchronized_batch_norm`). Several processes are refused: Keras
  3.15's `fit` under `MultiWorkerMirroredStrategy` is broken (keras-team/keras#20585).
- JAX: `keras.distribution.DataParallel` over the devices of every process,
  processes joined by `keras.distribution.initialize` (`jax.distributed`). The
  batch is one global array sharded over the devices, so batch norm already
  sees the whole global batch. Each process feeds only its share of every
  global batch (`batches.ShardedBatches`), as the JAX trainer expects
  (`jax.make_array_from_process_local_data`).

In every mode the global batch is `--batch-size`, whatever the number of devices.

On one GPU with JAX, the training images and targets are copied to the GPU once
(up to `DEVICE_DATA_MAX_BYTES`) and each batch is gathered there
(`batches.ShardedBatches` over device arrays): no per-step host gather or copy.
"""

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"
MULTI_PROCESS_BACKENDS = ("jax",)
DEFAULT_BACKEND = "tensorflow"  # Keras's own default when neither the environment nor keras.json names one
# Training data held on one JAX GPU for the whole run, at most: CIFAR-10 is 150 MB; larger
# sets (own images at 224 pixels) stay in host memory, one batch copied per step.
DEVICE_DATA_MAX_BYTES = 4 * 2**30

_placement = None


class DeviceError(Exception):
    """Devices or processes that cannot be had as asked; the message is meant for the user."""


def configured_backend():
    """The Keras backend the run will use, read as Keras reads it, without importing Keras."""
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    settings = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return json.loads(settings.read_text()).get("backend", DEFAULT_BACKEND)
    except (OSError, ValueError):
        return DEFAULT_BACKEND


def start(config):
    """Joins the processes and picks the devices that `config` asks for; returns the `Placement`.

    Must run before JAX or TensorFlow has done any computation: JAX's host
    device count (`XLA_FLAGS`) and `jax.distributed`, and TensorFlow's logical
    devices, can only be set up before their runtime starts.

    Args:
        config: a run config with `devices` (per process; `None`: every GPU,
            else one), `coordinator`, `num_processes` and `process_id`.
    """
    global _placement
    wanted, processes = config.get("devices"), config.get("num_processes") or 1
    backend = configured_backend()
    if backend == "jax":
        _placement = _start_jax(wanted, config.get("coordinator"), processes, config.get("process_id") or 0)
    elif backend == "tensorflow":
        _placement = Placement(backend, _tensorflow_devices(wanted))
    elif wanted not in (None, 1):
        raise DeviceError(f"--devices {wanted}: several devices need the tensorflow or jax backend, not {backend}")
    else:
        _placement = Placement(backend, [None])
    return _placement


def placement():
    """The `Placement` set up by `start`; a single device when `start` was not called."""
    return _placement or Placement(configured_backend(), [None])


def _start_jax(wanted, coordinator, num_processes, process_id):
    flags = os.environ.get("XLA_FLAGS", "")
    if wanted and wanted > 1 and HOST_DEVICE_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICE_FLAG}={wanted}".strip()  # read when JAX starts its CPU backend
    import jax
    import keras

    if num_processes > 1:
        keras.distribution.initialize(coordinator, num_processes, process_id)
    gpus = [device for device in jax.local_devices() if device.platform == "gpu"]
    local = gpus or jax.local_devices(backend="cpu")
    count = wanted or (len(gpus) or 1)
    if count > len(local):
        hint = "" if gpus else f"; JAX had already started, so set XLA_FLAGS={HOST_DEVICE_FLAG}={count} before it does"
        raise DeviceError(f"--devices {count}: this process has only {len(local)} {'GPU' if gpus else 'CPU device'}(s){hint}")
    by_process = {}
    for device in jax.devices(local[0].platform):
        by_process.setdefault(device.process_index, []).append(device)
    # Process 0's devices first, so process p holds the p-th slice of every global batch (ShardedBatches).
    chosen = [device for _, devices in sorted(by_process.items()) for device in devices[:count]]
    return Placement("jax", chosen, num_processes, process_id)


def _tensorflow_devices(wanted):
    """Names of the devices a `MirroredStrategy` should mirror over: GPUs, else logical CPU devices."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    count = wanted or (len(gpus) or 1)
    if gpus:
        if count > len(gpus):
            raise DeviceError(f"--devices {count}: this machine has only {len(gpus)} GPU(s)")
        return [f"/gpu:{index}" for index in range(count)]
    cpu = tf.config.list_physical_devices("CPU")[0]
    # Asked before listing logical devices: listing them starts TensorFlow, after which this cannot change.
    if count > 1 and len(tf.config.get_logical_device_configuration(cpu) or ()) < count:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:
            raise DeviceError(f"--devices {count}: TensorFlow had already started with fewer CPU devices") from None
    return [device.name for device in tf.config.list_logical_devices("CPU")[:count]]


class Placement:
    """The devices one process trains on, and how the batches and the model are spread over them.

    Args:
        backend: the Keras backend's name.
        devices: TensorFlow: device names (one process); JAX: `jax.Device`s of
            every process; `[None]`: the backend's default single device.
        num_processes: processes training together. Defaults to 1.
        process_id: this process's rank, 0 the one that writes. Defaults to 0.
    """

    def __init__(self, backend, devices, num_processes=1, process_id=0):
        self.backend, self.devices = backend, list(devices)
        self.num_processes, self.process_id = num_processes, process_id

    @property
    def replicas(self):
        """Devices the global batch is split over, in all processes together."""
        return len(self.devices)

    @property
    def distributed(self):
        """Whether training is spread over more than one device (in any number of processes)."""
        return self.replicas > 1

    def describe(self):
        """A short description for the run's provenance, e.g. `2 device(s) x 1 process(es)`."""
        return f"{self.replicas // self.num_processes} device(s) x {self.num_processes} process(es)"

    @contextlib.contextmanager
    def scope(self):
        """The context to build, compile and `fit` the model in."""
        if not self.distributed:
            yield
        elif self.backend == "tensorflow":
            import tensorflow as tf

            import models

            models.synchronized_batch_norm = True
            try:
                with tf.distribute.MirroredStrategy(devices=self.devices).scope():
                    yield
            finally:
                models.synchronized_batch_norm = False
        else:
            import keras

            distribution = keras.distribution.DataParallel(devices=self.devices)
            distribution.auto_shard_dataset = False  # ShardedBatches hands each process its own share
            with distribution.scope():
                yield

    def check_batch(self, batch_size, what="--batch-size"):
        """Refuses a global batch that JAX cannot split evenly over its devices."""
        if self.backend == "jax" and batch_size % self.replicas:
            raise DeviceError(f"{what} {batch_size} must be a multiple of the {self.replicas} devices training together")

    def check_class_batches(self):
        """P x K batches (`dnnh`) need the whole batch in one loss: one device, or JAX in one process."""
        if self.distributed and (self.backend != "jax" or self.num_processes > 1):
            raise DeviceError(
                "--method dnnh on several devices needs the jax backend in one process "
                "(its triplets span the whole P x K batch, which TensorFlow replicas and JAX processes split)"
            )

    def training_batches(self, x, y, batch_size, seed, first_epoch=0, alternating_flip=False):
        """The training arrays as one data set of batches for `train.fit_resumable`, and its steps per epoch.

        Every backend gets seeded batch orders that a resumed run continues:
        TensorFlow a `tf.data` pipeline told `first_epoch` (a resumed run's
        epochs already trained); JAX a `batches.ShardedBatches`, which learns
        each epoch from its callback (on one GPU with the arrays held there).
        An `alternating_flip` (airbench's mirroring, in the feed) always takes
        a `batches.ShardedBatches`, which knows the epoch it serves.
        """
        import batches

        if self.backend == "tensorflow" and not alternating_flip:
            steps = -(-len(x) // batch_size)
            return batches.tensorflow_batches(x, y, batch_size, seed, first_epoch), steps
        if not alternating_flip and self.holds_data_on_device(x.nbytes + y.nbytes):  # the flip writes NumPy batches
            import jax

            x, y = jax.device_put(x), jax.device_put(y)
        # batch_size checked against the replicas by run (check_batch)
        shares = batches.ShardedBatches(x, y, batch_size, self.replicas, self.num_processes, self.process_id, seed, alternating_flip)
        return shares, len(shares)

    def holds_data_on_device(self, nbytes):
        """Whether training data of `nbytes` lives on the device for the run: JAX, one GPU, small enough."""
        if self.backend != "jax" or self.distributed or nbytes > DEVICE_DATA_MAX_BYTES:
            return False
        import jax

        return jax.default_backend() == "gpu"

    def local_model(self, model, path):
        """The trained model, usable by this process alone: JAX's global arrays are reloaded from `path`."""
        if self.backend == "jax" and self.distributed:
            import keras

            return keras.saving.load_model(path)
        return model


def worker_config(config):
    """The config this process runs: process 0 writes the run folder; the others a private temporary one.

    Only process 0 writes `config["out"]`; every other process trains the same
    model in a temporary folder removed at exit, so nothing it writes can
    clobber the run's files.
    """
    if not config.get("process_id"):
        return config
    private = tempfile.mkdtemp(prefix=f"deephash-process{config['process_id']}-")
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    return {**config, "out": private}
