"""Runs one `retrieval.py` training in this process and writes its loss per epoch and mAP to a JSON file.

    python tests/device_run.py RESULT.json -- <retrieval.py arguments>

The multi-device tests (tests/test_devices.py) start it in fresh subprocesses,
since devices and processes can only be set up before the backend starts.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import devices  # noqa: E402  (needs sys.path)
import options
import retrieval  # noqa: E402


def main(result_path, argv):
    """Trains as `retrieval.main(argv)` would, recording the training loss after every epoch."""
    import keras

    config = devices.worker_config(options.resolve_args(options.build_parser().parse_args(argv)))
    losses = []
    recorder = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: losses.append(float(logs["loss"])))
    metrics = retrieval.run(config, verbose=0, callbacks=[recorder])
    result = {"loss": losses, "mAP": metrics[f"mAP@{metrics['top']}"], "placement": metrics["placement"]}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    separator = sys.argv.index("--")
    main(sys.argv[1], sys.argv[separator + 1 :])
