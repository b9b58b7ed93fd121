"""Training on several devices and processes (devices.py), all on CPU: bad input, then the same run on
one device and on several, compared.

Each multi-device run starts a fresh subprocess (tests/device_run.py): devices and processes can
only be set up before the backend starts. The runs train the residual CNN (batch norm, synchronised
over TensorFlow replicas; one global sharded batch on JAX) on the tiny image tree with a global batch
of 16 and compare per-epoch training loss and mAP with a single-device run of the same seed.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import batches
from cli import fails_with, tiny_argv

DRIVER = Path(__file__).with_name("device_run.py")
RUN_TIMEOUT_S = 150  # one tiny run takes 15-35 s on 2 cores; a hung process must not hang the suite
EPOCHS, BATCH = 6, 16
# Same seed and global batch, so only float summation order and per-replica randomness (TensorFlow's
# RandomFlip draws per replica) differ, or, on JAX, the last batch of an epoch (cut to a multiple of
# the devices): every epoch's loss within this share of the first epoch's loss, mAP within MAP_TOLERANCE.
LOSS_TOLERANCE = 0.1
MAP_TOLERANCE = 0.05
# Two processes against one process with two devices: the same global batches, sharded the same way.
SAME_BATCHES_TOLERANCE = 1e-4


# --- bad input: one line, exit status 2, before Keras builds anything --------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--devices", "0"], "--devices must be at least 1, got 0"),
        (["--num-processes", "0"], "--num-processes must be at least 1, got 0"),
        (["--num-processes", "2"], "--num-processes 2 needs --coordinator HOST:PORT"),
        (["--num-processes", "2", "--coordinator", "127.0.0.1:1234", "--process-id", "2"], "--process-id must be between 0 and 1, got 2"),
        (["--num-processes", "2", "--coordinator", "127.0.0.1:1234"], "--process-id must be between 0 and 1, got None"),
        (["--process-id", "1"], "--coordinator and --process-id apply to multi-process runs only"),
        (["--method", "dnnh", "--num-processes", "2", "--coordinator", "h:1", "--process-id", "0"], "--method dnnh cannot train in several processes"),
    ],
)
def test_bad_device_arguments_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    fails_with(capsys, [*argv, "--out", str(tmp_path / "run")], message)


def test_several_processes_on_tensorflow_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    argv = ["--num-processes", "2", "--coordinator", "127.0.0.1:1234", "--process-id", "0", "--out", str(tmp_path / "run")]
    fails_with(capsys, argv, "needs KERAS_BACKEND=jax, not tensorflow: Keras 3.15's fit under TensorFlow's MultiWorkerMirroredStrategy is broken")


def test_sharded_batches_split_each_global_batch_between_processes():
    import numpy as np

    x = np.arange(70)
    shares = [batches.ShardedBatches(x, x, 32, replicas=2, num_processes=2, process_id=rank) for rank in (0, 1)]
    whole = batches.ShardedBatches(x, x, 32, replicas=2)
    assert len(whole) == 3 and [len(whole[index][0]) for index in range(3)] == [32, 32, 6]
    for index in range(3):
        np.testing.assert_array_equal(np.concatenate([shares[0][index][0], shares[1][index][0]]), whole[index][0])
    whole.set_epoch(1)
    assert not np.array_equal(whole[0][0], shares[0][0][0][:16])


# --- the same run on one device and on several ---------------------------------------------


def _command(result, argv):
    return [sys.executable, str(DRIVER), str(result), "--", *argv]


def _environment(backend, host_devices=None):
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if host_devices:
        environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={host_devices}"
    return environment


def _argv(tiny_tree, out, *extra):
    return [*tiny_argv(tiny_tree, out), "--arch", "resnet", "-e", str(EPOCHS), "--batch-size", str(BATCH), *extra]


def _train(tiny_tree, folder, name, backend, *extra, host_devices=None):
    """One run in a fresh subprocess; returns its recorded losses and mAP."""
    result = folder / f"{name}.json"
    argv = _argv(tiny_tree, folder / name, *extra)
    completed = subprocess.run(_command(result, argv), env=_environment(backend, host_devices), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(result.read_text())


def _assert_close(single, several, loss_tolerance=LOSS_TOLERANCE, map_tolerance=MAP_TOLERANCE):
    assert len(single["loss"]) == len(several["loss"]) == EPOCHS
    for epoch, (one, many) in enumerate(zip(single["loss"], several["loss"])):
        assert abs(one - many) <= loss_tolerance * single["loss"][0], (epoch, single["loss"], several["loss"])
    assert abs(single["mAP"] - several["mAP"]) <= map_tolerance, (single["mAP"], several["mAP"])


@pytest.mark.slow
def test_tensorflow_two_logical_cpus_match_one(tiny_tree, tmp_path):
    single = _train(tiny_tree, tmp_path, "one", "tensorflow")
    mirrored = _train(tiny_tree, tmp_path, "two", "tensorflow", "--devices", "2")
    assert mirrored["placement"].startswith("2 device(s) x 1 process")
    _assert_close(single, mirrored)


@pytest.fixture(scope="module")
def jax_runs(tiny_tree, tmp_path_factory):
    """The JAX runs on one device and on two host devices of one process, shared by the JAX tests."""
    folder = tmp_path_factory.mktemp("jax")
    return _train(tiny_tree, folder, "one", "jax"), _train(tiny_tree, folder, "two", "jax", "--devices", "2", host_devices=2)


@pytest.mark.slow
def test_jax_two_host_devices_match_one(jax_runs):
    single, data_parallel = jax_runs
    assert data_parallel["placement"].startswith("2 device(s) x 1 process")
    _assert_close(single, data_parallel)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_jax_two_processes_match_one(jax_runs, tiny_tree, tmp_path):
    out = tmp_path / "run"
    argv = _argv(tiny_tree, out, "--num-processes", "2", "--coordinator", f"127.0.0.1:{_free_port()}")
    workers = [
        subprocess.Popen(_command(tmp_path / f"process{rank}.json", [*argv, "--process-id", str(rank)]), env=_environment("jax"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    try:
        errors = [worker.communicate(timeout=RUN_TIMEOUT_S)[1] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()  # no-op for a finished one; stops a hung one
    assert [worker.returncode for worker in workers] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["process0.json", "process1.json", "run"]  # one run folder
    assert {path.name for path in out.iterdir()} >= {"config.json", "model.keras", "codes.h5", "metrics.json"}
    first, second = (json.loads((tmp_path / f"process{rank}.json").read_text()) for rank in (0, 1))
    assert first["placement"].startswith("1 device(s) x 2 process")
    assert first["loss"] == second["loss"]  # one global loss
    single, data_parallel = jax_runs
    _assert_close(data_parallel, first, SAME_BATCHES_TOLERANCE, SAME_BATCHES_TOLERANCE)
    _assert_close(single, first)


BATCH_NORM_CHECK = """
import keras, numpy as np, jax
x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
x[8:] += 5  # the two devices' halves of the batch have different means
with keras.distribution.DataParallel(devices=jax.devices()).scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.0)])
    model.compile("sgd", "mse")
    model.fit(x, x, batch_size=16, epochs=1, shuffle=False, verbose=0)
assert len(jax.devices()) == 2
np.testing.assert_allclose(np.asarray(model.layers[0].moving_mean.value), x.mean(axis=0), rtol=1e-5)
"""


@pytest.mark.slow
def test_jax_batch_norm_sees_the_global_batch():
    """With momentum 0, the moving mean after one step is the batch mean: the global one, not a device's half."""
    completed = subprocess.run([sys.executable, "-c", BATCH_NORM_CHECK], env=_environment("jax", host_devices=2),
                               capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr[-3000:]


# --- training data held on one JAX GPU ----------------------------------------------------

DEVICE_DATA_SCRIPT = """
import jax, keras, numpy as np
import devices
placement = devices.Placement("jax", [None])
assert not placement.holds_data_on_device(1000)  # a CPU: the arrays stay where they are
x = np.random.default_rng(0).integers(0, 255, (50, 8, 8, 3)).astype("uint8")
y = np.eye(2, dtype="float32")[np.arange(50) % 2]
on_host = placement.training_batches(x, y, 16, seed=3)[0]  # seeded per epoch, so a resumed run continues it
on_host.set_epoch(2)
assert isinstance(on_host.x, np.ndarray) and np.array_equal(on_host[0][0], x[np.random.default_rng([3, 2]).permutation(50)[:16]])
jax.default_backend = lambda: "gpu"  # as on the GPU machine
assert placement.holds_data_on_device(1000) and not placement.holds_data_on_device(devices.DEVICE_DATA_MAX_BYTES + 1)
assert not devices.Placement("jax", [None, None]).holds_data_on_device(1000)  # data-parallel: ShardedBatches' shares
held, steps = placement.training_batches(x, y, 16, seed=3)
assert isinstance(held.x, jax.Array) and steps == len(held) == 4
batch_x, batch_y = held[3]
rows = np.random.default_rng([3, 0]).permutation(50)[48:]
assert isinstance(batch_x, jax.Array) and np.array_equal(np.asarray(batch_x), x[rows]) and np.array_equal(np.asarray(batch_y), y[rows])
model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
model.compile(optimizer="adam", loss="categorical_crossentropy")
history = model.fit(held, epochs=2, shuffle=False, verbose=0, callbacks=[held.epoch_callback()])
print(len(history.history["loss"]), held.epoch)
"""


@pytest.mark.slow
def test_jax_batches_are_seeded_per_epoch_and_held_on_one_gpu():
    result = subprocess.run(
        [sys.executable, "-c", DEVICE_DATA_SCRIPT], cwd=DRIVER.parents[1], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        env=dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(DRIVER.parents[1])),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["2", "1"]  # trained two epochs, the second on epoch 1's shuffle


@pytest.mark.slow
def test_a_model_trained_with_synchronised_batch_norm_saves_loadable_on_jax(tmp_path, monkeypatch):
    import models

    monkeypatch.setattr(models, "synchronized_batch_norm", True)  # as under a TensorFlow MirroredStrategy
    encoder = models.build_encoder("resnet", (32, 32, 3), 8, width=2)
    models.unsynchronize_batch_norm(encoder)  # what retrieval.py does before saving
    encoder.save(tmp_path / "model.keras")
    script = f"import keras, models; keras.saving.load_model({str(tmp_path / 'model.keras')!r}); print(keras.backend.backend())"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=DRIVER.parents[1], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        env=dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(DRIVER.parents[1])),
    )
    assert result.stdout.split()[-1:] == ["jax"], result.stderr[-2000:]


@pytest.mark.slow
def test_a_batch_the_devices_cannot_share_exits_2_before_the_run_folder_is_made(tiny_tree, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(DRIVER.parents[1] / "retrieval.py"), *tiny_argv(tiny_tree, out, "--devices", "2", "--batch-size", "15")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=dict(os.environ, KERAS_BACKEND="jax"),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--batch-size 15 must be a multiple of the 2 devices training together" in result.stderr
    assert not out.exists()
