"""Tests for options.py: every flag is checked before any data or Keras, and a mistake is one line on stderr with exit status 2."""

import importlib

import pytest

import options
from cli import fails_with


def resolved(*flags):
    return options.resolve_args(options.build_parser().parse_args(["--out", "unused", *flags]))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-l", "7"], "--bits must be between 8 and 256, got 7"),
        (["-l", "257"], "--bits must be between 8 and 256, got 257"),
        (["-e", "-1"], "--epochs must be 0 or more, got -1"),
        (["-o", "rmsprop"], "--optimizer must be one of"),
        (["--arch", "vgg"], "--arch must be one of dbr, resnet, speedrun, resnet50, mobilenetv2, efficientnetb0, vgg16, got 'vgg'"),
        (["--method", "hashnet"], "--method must be one of dbr, dlbhc, dhn, dnnh, hadamard, got 'hashnet'"),
        (["--method", "dbr", "--lambda", "0.5"], "--lambda applies to --method dhn only, not --method dbr"),
        (["--method", "dhn", "--lambda", "-1"], "--lambda must be 0 or more, got -1.0"),
        (["--method", "dhn", "--lambda", "nan"], "--lambda must be 0 or more, got nan"),
        (["--method", "dnnh", "--margin", "0"], "--margin must be positive, got 0.0"),
        (["--method", "dhn", "--margin", "2"], "--margin applies to --method dnnh only, not --method dhn"),
        (["--method", "dnnh", "--images-per-class", "1"], "--images-per-class must be at least 2, got 1"),
        (["--method", "dnnh", "--classes-per-batch", "1"], "--classes-per-batch must be at least 2, got 1"),
        (["--method", "dlbhc", "--classes-per-batch", "4"], "--classes-per-batch applies to --method dnnh only"),
        (["--method", "dnnh", "--batch-size", "64"], "--batch-size does not apply to --method dnnh"),
        (["--dataset", "imagenet"], "--dataset must be one of cifar10, mnist, fashion_mnist, got 'imagenet'"),
        (["--method", "dlbhc", "-c", "2"], "--code-type applies to --method dbr only"),
        (["-c", "golay", "--method", "dbr"], "--code-type must be one of"),
        (["-t", "0"], "--top must be a positive integer or 'all', got '0'"),
        (["-t", "many"], "--top must be a positive integer or 'all', got 'many'"),
        (["-q", "0"], "--queries must be at least 1, got 0"),
        (["-s", "3"], "invalid choice: 3"),
        (["-l", "forty"], "invalid int value: 'forty'"),
        (["--resume"], "--resume needs --out"),
        (["--recipe", "quick"], "--recipe must be one of auto, speedrun, dbr, classic, airbench, got 'quick'"),
        (["--width", "0"], "--width must be at least 1, got 0"),
        (["--arch", "dbr", "--width", "64"], "--width applies to --arch resnet or speedrun only, not --arch dbr"),
        (["--growth", "0"], "--growth must be at least 1, got 0"),
        (["--arch", "resnet", "--growth", "3"], "--growth applies to --arch speedrun only, not --arch resnet"),
        (["--augment", "rotate"], "--augment must be one of none, flip, crop-flip, light-crop-flip, got 'rotate'"),
        (["--arch", "dbr", "--label-smoothing", "0.1"], "--label-smoothing applies to --method dlbhc only, not --method dbr"),
        (["--label-smoothing", "1"], "--label-smoothing must be at least 0 and below 1, got 1.0"),
        (["--weight-decay", "-1"], "--weight-decay must be 0 or more, got -1.0"),
        (["--norm-bias-lr-scale", "0"], "--norm-bias-lr-scale must be positive, got 0.0"),
        (["--loss-scale", "-2"], "--loss-scale must be positive, got -2.0"),
        (["--schedule", "step"], "--schedule must be one of constant, cosine, triangular, linear, got 'step'"),
        (["--filter-lr", "0"], "--filter-lr must be positive, got 0.0"),
        (["--batch-norm-epsilon", "0"], "--batch-norm-epsilon must be positive, got 0.0"),
        (["--whitening-bias-epochs", "-1"], "--whitening-bias-epochs must be 0 or more, got -1"),
        (["--flip", "sometimes"], "--flip must be one of random, alternating, got 'sometimes'"),
        (["--pooling", "round"], "--pooling must be one of same, floor, got 'round'"),
        (["--init", "glorot"], "--init must be one of he, pytorch, got 'glorot'"),
        (["--whitening", "zca"], "--whitening must be one of pixels, standardised, got 'zca'"),
        (["--arch", "resnet", "--pooling", "floor"], "--pooling applies to --arch speedrun only, not --arch resnet"),
    ],
)
def test_bad_arguments_exit_2_before_anything_is_written(capsys, tmp_path, argv, message):
    fails_with(capsys, [*argv, "--out", str(tmp_path / "run")] if "--resume" not in argv else argv, message)
    assert not (tmp_path / "run").exists()


def test_the_default_run_is_the_speedrun_network_with_the_dlbhc_method():
    config = resolved()
    assert (config["arch"], config["method"], config["recipe"]) == ("speedrun", "dlbhc", "auto")
    assert resolved("--arch", "dbr")["method"] == "dbr"  # DeepBinaryRepre's network trains its own method
    assert resolved("--arch", "dbr", "--method", "dhn")["method"] == "dhn"


@pytest.mark.parametrize(
    "script, argv",
    [("retrieval.py", ["--bogus"]), ("retrieval.py", ["-l", "7"]), ("search.py", ["query"]), ("reproduce.py", ["--bogus"])],
)
def test_a_mistake_is_one_line_not_the_usage_block(capsys, script, argv):
    main = importlib.import_module(script.removesuffix(".py")).main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert stderr.startswith(f"{script}") and stderr.count("\n") == 1 and "usage:" not in stderr, stderr
    assert stderr.rstrip().endswith("(see --help)")
