"""Tests for evaluate.py: packing, Hamming search and ties, metrics, bad input, backends."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluate import (
    ExactHammingSearch,
    evaluate_retrieval,
    hamming_distances,
    pack_bits,
    unpack_bits,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_LENGTHS = [8, 12, 36, 48, 64, 65, 256]


# Plain NumPy reference, written for clarity rather than speed.


def reference_distances(query_bits, db_bits):
    return (query_bits[:, None, :] != db_bits[None, :, :]).sum(axis=-1)


def reference_ranking(query_bits, db_bits, k):
    distances = reference_distances(query_bits, db_bits)
    ids = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, ids, axis=1), ids


def reference_metrics(query_bits, query_labels, db_bits, db_labels, top):
    _, ids = reference_ranking(query_bits, db_bits, top)
    precision_rows, average_precisions = [], []
    for query_label, ranked_ids in zip(query_labels, ids):
        hits, precision_row, precision_at_hits = 0, [], []
        for rank, db_id in enumerate(ranked_ids, start=1):
            if db_labels[db_id] == query_label:
                hits += 1
                precision_at_hits.append(hits / rank)
            precision_row.append(hits / rank)
        precision_rows.append(precision_row)
        average_precisions.append(np.mean(precision_at_hits) if precision_at_hits else 0.0)
    return np.mean(average_precisions), np.mean(precision_rows, axis=0)


def random_bits(rng, n, length):
    return rng.integers(0, 2, size=(n, length), dtype=np.uint8)


# Packing and Hamming distances.


@pytest.mark.parametrize("length", CODE_LENGTHS)
def test_pack_bits_round_trip_and_numpy_order(length):
    bits = random_bits(np.random.default_rng(length), 20, length)
    codes = pack_bits(bits)
    assert codes.dtype == np.uint8
    assert codes.shape == (20, -(-length // 8))
    np.testing.assert_array_equal(codes, np.packbits(bits, axis=1))
    np.testing.assert_array_equal(unpack_bits(codes, length), bits)


def test_pack_bits_accepts_bool():
    bits = np.array([[True, False, True, True, False, False, False, False, True]])
    np.testing.assert_array_equal(pack_bits(bits), [[176, 128]])


@pytest.mark.parametrize("length", CODE_LENGTHS)
def test_hamming_distances_match_reference(length):
    rng = np.random.default_rng(100 + length)
    query_bits, db_bits = random_bits(rng, 7, length), random_bits(rng, 30, length)
    distances = hamming_distances(pack_bits(query_bits), pack_bits(db_bits))
    assert distances.dtype == np.int32
    np.testing.assert_array_equal(distances, reference_distances(query_bits, db_bits))


# Ranking: ties go to the lower database index.


@pytest.mark.parametrize("length", [3, 12, 65])
@pytest.mark.parametrize("k", [1, 37, 500])
def test_search_ties_go_to_lower_index(length, k):
    # 3-bit codes give 500 database codes only 4 distances, so nearly every rank is a tie.
    # k = 1, k < ntotal and k = ntotal take different code paths inside tf.math.top_k.
    rng = np.random.default_rng(k * length)
    query_bits, db_bits = random_bits(rng, 40, length), random_bits(rng, 500, length)
    index = ExactHammingSearch(pack_bits(db_bits), batch_elements=7 * 500)
    distances, ids = index.search(pack_bits(query_bits), k)
    expected_distances, expected_ids = reference_ranking(query_bits, db_bits, k)
    assert distances.dtype == np.int32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(distances, expected_distances)


def test_search_all_identical_codes_returns_ids_in_order():
    index = ExactHammingSearch(pack_bits(np.ones((50, 48), dtype=np.uint8)))
    distances, ids = index.search(pack_bits(np.zeros((2, 48), dtype=np.uint8)), k=50)
    np.testing.assert_array_equal(ids, np.tile(np.arange(50), (2, 1)))
    np.testing.assert_array_equal(distances, np.full((2, 50), 48))


def test_search_with_no_queries():
    index = ExactHammingSearch(pack_bits(np.ones((5, 8), dtype=np.uint8)))
    distances, ids = index.search(np.zeros((0, 1), dtype=np.uint8), k=3)
    assert distances.shape == ids.shape == (0, 3)


# Metrics on a hand-worked case. 4-bit codes, database (id: code, label):
#   0: 0000, 1    1: 0001, 0    2: 0010, 1    3: 0011, 0    4: 1111, 2
# Queries (code, label) and their rankings; ids 1 and 2 tie, so id 1 ranks first:
#   A: 0000, 1  distances [0, 1, 1, 2, 4]  ranking 0,1,2,3,4  relevant 1,0,1,0,0
#   B: 1111, 0  distances [4, 3, 3, 2, 0]  ranking 4,3,1,2,0  relevant 0,1,1,0,0
#   C: 0000, 2  distances [0, 1, 1, 2, 4]  ranking 0,1,2,3,4  relevant 0,0,0,0,1
DB_BITS = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
DB_LABELS = np.array([1, 0, 1, 0, 2])
QUERY_BITS = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
QUERY_LABELS = np.array([1, 0, 2])


def test_metrics_hand_worked_top_3():
    # Precision@1..3 per query: A 1, 1/2, 2/3;  B 0, 1/2, 2/3;  C 0, 0, 0.
    # Means: (1+0+0)/3 = 1/3;  (1/2+1/2+0)/3 = 1/3;  (2/3+2/3+0)/3 = 4/9.
    # AP: A (1 + 2/3) / 2 = 5/6;  B (1/2 + 2/3) / 2 = 7/12;  C has no relevant item in its top 3: 0.
    # mAP = (5/6 + 7/12 + 0) / 3 = 17/36. (Breaking the 1-2 tie the other way would make A's AP 1.)
    metrics = evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS, top=3)
    np.testing.assert_allclose(metrics["precision_at_k"], [1 / 3, 1 / 3, 4 / 9])
    assert metrics["precision"] == pytest.approx(4 / 9)
    assert metrics["mAP"] == pytest.approx(17 / 36)


def test_metrics_hand_worked_whole_database():
    # Precision@1..5: A 1, 1/2, 2/3, 2/4, 2/5;  B 0, 1/2, 2/3, 2/4, 2/5;  C 0, 0, 0, 0, 1/5.
    # Means: 1/3, 1/3, 4/9, (1/2+1/2)/3 = 1/3, (2/5+2/5+1/5)/3 = 1/3.
    # AP: A 5/6, B 7/12 as in the top 3;  C (1/5) / 1 = 1/5.
    # mAP = (50/60 + 35/60 + 12/60) / 3 = 97/180.
    metrics = evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS, top=5)
    np.testing.assert_allclose(metrics["precision_at_k"], [1 / 3, 1 / 3, 4 / 9, 1 / 3, 1 / 3])
    assert metrics["precision"] == pytest.approx(1 / 3)
    assert metrics["mAP"] == pytest.approx(97 / 180)


@pytest.mark.parametrize("top", [1, 17, 300])
def test_metrics_match_reference_across_batches(top):
    # 6-bit codes and 4 labels: many ties and many relevant items. batch_elements forces small
    # batches in both the search and the metric accumulation.
    rng = np.random.default_rng(top)
    query_bits, db_bits = random_bits(rng, 53, 6), random_bits(rng, 300, 6)
    query_labels, db_labels = rng.integers(0, 4, size=53), rng.integers(0, 4, size=300)
    metrics = evaluate_retrieval(
        query_bits, query_labels, db_bits, db_labels, top=top, batch_elements=2000
    )
    expected_map, expected_precision = reference_metrics(
        query_bits, query_labels, db_bits, db_labels, top
    )
    assert metrics["mAP"] == pytest.approx(expected_map)
    np.testing.assert_allclose(metrics["precision_at_k"], expected_precision)
    assert metrics["precision_at_k"].dtype == np.float64
    assert metrics["precision"] == pytest.approx(expected_precision[-1])


def test_evaluate_retrieval_ranks_through_given_search_engine():
    class ReverseSearch:
        """Ranks the database backwards, ignoring the codes: relevant 0,0,1,0,1 for query A."""

        def search(self, query_codes, k):
            ids = np.tile(np.arange(4, 4 - k, -1), (len(query_codes), 1))
            return np.zeros_like(ids, dtype=np.int32), ids

    # Query A (label 1) sees ids 4,3,2: relevant 0,0,1, so AP = (1/3) / 1 = 1/3.
    metrics = evaluate_retrieval(QUERY_BITS[:1], [1], DB_BITS, DB_LABELS, 3, search=ReverseSearch())
    assert metrics["mAP"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(metrics["precision_at_k"], [0, 0, 1 / 3])


# Invalid input.


def test_search_rejects_k_out_of_range():
    index = ExactHammingSearch(pack_bits(DB_BITS))
    with pytest.raises(ValueError, match=r"`k` must be between 1 and .* 5\. Received: k=0"):
        index.search(pack_bits(QUERY_BITS), 0)
    with pytest.raises(ValueError, match=r"Received: k=6"):
        index.search(pack_bits(QUERY_BITS), 6)


def test_evaluate_rejects_top_out_of_range():
    with pytest.raises(ValueError, match=r"`top` must be between 1 and .* Received: top=0"):
        evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS, top=0)
    with pytest.raises(ValueError, match=r"Received: top=6"):
        evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS, top=6)


def test_rejects_bits_that_are_not_0_or_1():
    with pytest.raises(ValueError, match=r"`bits` must contain only 0 and 1\. .* value of 2"):
        pack_bits([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"`db_bits` must contain only 0 and 1\. .* value of 0\.5"):
        evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS * 0.5, DB_LABELS, top=3)


def test_rejects_bits_that_are_not_2d():
    with pytest.raises(ValueError, match=r"2-D array .* Received: bits\.shape=\(3,\)"):
        pack_bits([0, 1, 1])


def test_rejects_mismatched_code_lengths():
    with pytest.raises(ValueError, match=r"same code length\. .* query_bits\.shape=\(3, 4\)"):
        evaluate_retrieval(QUERY_BITS, QUERY_LABELS, np.zeros((5, 12)), DB_LABELS, top=3)
    index = ExactHammingSearch(pack_bits(np.zeros((5, 12))))
    with pytest.raises(ValueError, match=r"code size \(2 bytes .* query_codes\.shape=\(3, 1\)"):
        index.search(pack_bits(QUERY_BITS), 3)
    with pytest.raises(ValueError, match=r"query_codes\.shape=\(3, 1\)"):
        hamming_distances(pack_bits(QUERY_BITS), pack_bits(np.zeros((5, 12))))


def test_rejects_labels_of_wrong_length():
    with pytest.raises(ValueError, match=r"`query_labels` must .* query_labels\.shape=\(2,\)"):
        evaluate_retrieval(QUERY_BITS, [1, 0], DB_BITS, DB_LABELS, top=3)
    with pytest.raises(ValueError, match=r"`db_labels` .* Received: db_labels\.shape=\(5, 1\)"):
        evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS[:, None], top=3)


def test_unpack_bits_rejects_wrong_length():
    with pytest.raises(ValueError, match=r"into 2 bytes, i\.e\. in 9\.\.16\. Received: bits=8"):
        unpack_bits(np.zeros((1, 2), dtype=np.uint8), 8)


def test_rejects_codes_that_are_not_packed():
    with pytest.raises(TypeError, match=r"Received: db_codes\.dtype=int64"):
        ExactHammingSearch(np.zeros((3, 2), dtype=np.int64))


# Backends.


def test_import_does_not_load_tensorflow_or_keras():
    script = "import sys, evaluate; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


def masked_search_results():
    """Exact search on 65-bit codes with bits set with probability 1/4, so ties are common."""
    rng = np.random.default_rng(7)
    query_codes = pack_bits(random_bits(rng, 20, 65))
    db_codes = pack_bits(random_bits(rng, 400, 65) & random_bits(rng, 400, 65))
    index = ExactHammingSearch(db_codes, batch_elements=3000)
    distances, ids = index.search(query_codes, 100)
    all_distances = hamming_distances(query_codes, db_codes)
    return {
        "all_distances": all_distances.tolist(),
        "distances": distances.tolist(),
        "ids": ids.tolist(),
    }


BACKEND_SCRIPT = """
import json, keras
from tests.test_evaluate import masked_search_results
print(json.dumps({"backend": keras.backend.backend(), **masked_search_results()}))
"""
JAX_INSTALLED = importlib.util.find_spec("jax") is not None
# Keras's numpy backend has no kernels of its own here: it exercises the NumPy fallback.
OTHER_BACKENDS = ["jax", "numpy"] if JAX_INSTALLED else ["numpy"]


@pytest.fixture(scope="module")
def backend_processes():
    """One `BACKEND_SCRIPT` subprocess per other backend, all started at once to overlap imports."""
    processes = {
        backend: subprocess.Popen(
            [sys.executable, "-c", BACKEND_SCRIPT],
            cwd=REPO_ROOT,
            env=dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(REPO_ROOT)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for backend in OTHER_BACKENDS
    }
    yield processes
    for process in processes.values():
        process.kill()


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(
            "jax", marks=pytest.mark.skipif(not JAX_INSTALLED, reason="jax is not installed")
        ),
        "numpy",
    ],
)
def test_other_backend_matches_tensorflow(backend, backend_processes):
    stdout, stderr = backend_processes[backend].communicate(timeout=120)
    assert backend_processes[backend].returncode == 0, stderr[-2000:]
    other = json.loads(stdout.strip().splitlines()[-1])
    assert other.pop("backend") == backend
    assert other == masked_search_results()  # this process runs TensorFlow (tests/conftest.py)
