"""Tests for engines.py: exact engines identical to a NumPy reference, range search, bad input,
and the approximate engines' shapes and recall."""

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines import ENGINES, MISSING_ID, BackendEngine, hamming_distances, make_engine
from evaluate import pack_bits

REPO = Path(__file__).resolve().parents[1]
CODE_LENGTHS = [8, 12, 48, 64, 65]
EXACT_ENGINES = ["exact", "faiss", "backend"]


def random_bits(rng, n, bits, free_bits=None):
    """Random 0/1 codes; with `free_bits`, only that many bits vary, so distances tie often."""
    codes = rng.integers(0, 2, size=(n, bits), dtype=np.uint8)
    if free_bits is not None:
        codes[:, free_bits:] = 0
    return codes


def reference_distances(query_bits, db_bits):
    return (query_bits[:, None, :] != db_bits[None, :, :]).sum(axis=-1).astype(np.int32)


def reference_search(query_bits, db_bits, k):
    """The k nearest by (distance, id): a stable argsort of every distance."""
    distances = reference_distances(query_bits, db_bits)
    ids = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, ids, axis=1), ids


def reference_range_search(query_bits, db_bits, radius):
    results = []
    for row in reference_distances(query_bits, db_bits):
        ids = np.flatnonzero(row <= radius)
        ids = ids[np.argsort(row[ids], kind="stable")]
        results.append((row[ids], ids))
    return results


@pytest.fixture(scope="module")
def tied_data():
    """Per code length: query and database bits with few free bits, so ties abound."""
    rng = np.random.default_rng(0)
    data = {}
    for bits in CODE_LENGTHS:
        free_bits = min(bits, 6)
        db_bits = random_bits(rng, 2000, bits, free_bits)
        query_bits = random_bits(rng, 40, bits, free_bits)
        data[bits] = query_bits, db_bits
    return data


@pytest.mark.slow
@pytest.mark.parametrize("bits", CODE_LENGTHS)
@pytest.mark.parametrize("k", [1, 7, 100, 2000])
def test_exact_engines_match_reference_with_ties(tied_data, bits, k):
    query_bits, db_bits = tied_data[bits]
    expected_distances, expected_ids = reference_search(query_bits, db_bits, k)
    for name in EXACT_ENGINES:
        engine = make_engine(name, pack_bits(db_bits), bits)
        # Both sizes of query batch: FAISS takes another path below 20 queries, and `exact` ranks
        # up to 4 queries in NumPy, more with its numba kernels; all must agree.
        for queries in (query_bits[:3], query_bits):
            distances, ids = engine.search(pack_bits(queries), k)
            assert distances.dtype == np.int32 and ids.dtype == np.int64, name
            np.testing.assert_array_equal(distances, expected_distances[: len(queries)], name)
            np.testing.assert_array_equal(ids, expected_ids[: len(queries)], name)


@pytest.mark.parametrize("bits", [48, 64, 65])
def test_exact_engines_match_reference_on_spread_distances(bits):
    rng = np.random.default_rng(bits)
    db_bits = random_bits(rng, 5000, bits)
    query_bits = np.concatenate([db_bits[:5], random_bits(rng, 30, bits)])
    expected = reference_search(query_bits, db_bits, 50)
    for name in EXACT_ENGINES:
        result = make_engine(name, pack_bits(db_bits), bits).search(pack_bits(query_bits), 50)
        np.testing.assert_array_equal(result[0], expected[0], name)
        np.testing.assert_array_equal(result[1], expected[1], name)


@pytest.mark.parametrize("bits", [64, 130])
def test_exact_small_query_blocks_and_many_selections(bits):
    # k small against the database forces many selections in the candidate buffer (and a guessed
    # bound from a sample, at 20000 codes); query_block=3 leaves a partial last block.
    rng = np.random.default_rng(1)
    db_bits = random_bits(rng, 20000, bits, free_bits=bits - 54)
    query_bits = random_bits(rng, 10, bits, free_bits=bits - 54)
    engine = make_engine("exact", pack_bits(db_bits), bits, query_block=3)
    for k in (1, 3, 300):
        distances, ids = engine.search(pack_bits(query_bits), k)
        expected_distances, expected_ids = reference_search(query_bits, db_bits, k)
        np.testing.assert_array_equal(distances, expected_distances)
        np.testing.assert_array_equal(ids, expected_ids)


@pytest.mark.parametrize("name", EXACT_ENGINES)
def test_padding_bits_are_ignored(name):
    # 12-bit codes: the last byte's 4 padding bits set in the database must not count.
    db_codes = pack_bits(np.zeros((3, 12), dtype=np.uint8))
    db_codes[:, -1] |= 0x0F
    engine = make_engine(name, db_codes, 12)
    distances, ids = engine.search(pack_bits(np.zeros((1, 12), dtype=np.uint8)), 3)
    np.testing.assert_array_equal(distances, [[0, 0, 0]])
    np.testing.assert_array_equal(ids, [[0, 1, 2]])


@pytest.mark.parametrize("bits", CODE_LENGTHS)
@pytest.mark.parametrize("name", EXACT_ENGINES)
def test_range_search_matches_reference(tied_data, bits, name):
    query_bits, db_bits = tied_data[bits]
    engine = make_engine(name, pack_bits(db_bits), bits)
    for radius in (0, 2, bits):
        results = engine.range_search(pack_bits(query_bits), radius)
        expected = reference_range_search(query_bits, db_bits, radius)
        assert len(results) == len(expected)
        for (distances, ids), (expected_distances, expected_ids) in zip(results, expected):
            assert distances.dtype == np.int32 and ids.dtype == np.int64
            np.testing.assert_array_equal(distances, expected_distances)
            np.testing.assert_array_equal(ids, expected_ids)


@pytest.mark.parametrize("name", ENGINES)
def test_bad_input(name):
    db_codes = pack_bits(np.random.default_rng(2).integers(0, 2, size=(300, 16)))
    engine = make_engine(name, db_codes, 16)
    assert (engine.ntotal, engine.bits) == (300, 16)
    queries = db_codes[:2]
    with pytest.raises(ValueError, match=r"`k` must be .* between 1 and .* 300\. Received: k=0"):
        engine.search(queries, 0)
    with pytest.raises(ValueError, match=r"Received: k=301"):
        engine.search(queries, 301)
    with pytest.raises(ValueError, match=r"`radius` must be .* bits=16\. Received: radius=17"):
        engine.range_search(queries, 17)
    with pytest.raises(ValueError, match=r"Received: radius=-1"):
        engine.range_search(queries, -1)
    with pytest.raises(ValueError, match=r"`query_codes` must have shape \[n, 2\] .* "
                       r"Received: query_codes.shape=\(2, 3\)"):
        engine.search(np.zeros((2, 3), dtype=np.uint8), 1)
    with pytest.raises(TypeError, match=r"Received: query_codes.dtype=int64"):
        engine.search(np.zeros((2, 2), dtype=np.int64), 1)


def test_bad_construction():
    db_codes = pack_bits(np.zeros((10, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"`name` must be one of .* Received: name='hnsw'"):
        make_engine("hnsw", db_codes, 16)
    with pytest.raises(ValueError, match=r"`db_codes` must have shape \[n, 3\] .* "
                       r"Received: db_codes.shape=\(10, 2\)"):
        make_engine("exact", db_codes, 17)
    with pytest.raises(ValueError, match=r"`bits` must be a positive integer .* Received: bits=0"):
        make_engine("exact", db_codes, 0)
    with pytest.raises(ValueError, match=r"at least one code\. Received: db_codes.shape=\(0, 2\)"):
        make_engine("faiss", db_codes[:0], 16)
    with pytest.raises(TypeError, match=r"Received: nprobe=4"):
        make_engine("faiss-mih", db_codes, 16, nprobe=4)


@pytest.mark.parametrize("name, options", [("faiss-ivf", {"nprobe": 8}), ("faiss-mih", {})])
def test_approximate_engines_recall_on_easy_data(name, options):
    # Easy data: 64 well-separated centres, each database code one or two bits from its centre;
    # the queries are centres too, so their nearest neighbours are the centre's cluster.
    rng = np.random.default_rng(3)
    centres = random_bits(rng, 64, 64)
    members = np.repeat(centres, 50, axis=0)
    flips = rng.integers(0, 64, size=(len(members), 2))
    members[np.arange(len(members))[:, None], flips] ^= 1
    db_codes = pack_bits(members)
    exact = make_engine("exact", db_codes, 64)
    engine = make_engine(name, db_codes, 64, **options)
    queries = pack_bits(centres[:20])
    distances, ids = engine.search(queries, 10)
    assert distances.shape == ids.shape == (20, 10)
    assert distances.dtype == np.int32 and ids.dtype == np.int64
    found = ids != MISSING_ID
    assert np.all(np.diff(distances, axis=1) >= 0)
    exact_distances, _ = exact.search(queries, 10)
    # Clusters tie a lot, so recall counts codes no farther than the exact k-th (any id).
    recall = np.mean(found & (distances <= exact_distances[:, -1:]))
    assert recall > 0.8, recall
    # Every returned distance is the true distance of that code.
    true = make_engine("exact", db_codes, 64).range_search(queries, 64)
    for row, (row_distances, row_ids) in enumerate(zip(distances, ids)):
        lookup = dict(zip(true[row][1].tolist(), true[row][0].tolist()))
        for distance, db_id in zip(row_distances[found[row]], row_ids[found[row]]):
            assert lookup[db_id] == distance
    results = engine.range_search(queries, 2)
    assert len(results) == 20 and all(len(ids) > 0 for _, ids in results)


def test_exact_low_guess_falls_back_to_a_full_scan():
    # The exact engine guesses each query's admission bound from a strided database sample. Here
    # the sample sees only exact matches (every 8th code), so the guess admits too few codes for
    # k = 4000 and the engine must scan again without it.
    db_bits = np.zeros((16384, 64), dtype=np.uint8)
    db_bits[np.arange(16384) % 8 != 0, :10] = 1
    query_bits = np.zeros((1, 64), dtype=np.uint8)
    distances, ids = make_engine("exact", pack_bits(db_bits), 64).search(pack_bits(query_bits), 4000)
    expected_distances, expected_ids = reference_search(query_bits, db_bits, 4000)
    np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(ids, expected_ids)


# CPUs without AVX-512 (numba's target, as `NUMBA_CPU_NAME` and `NUMBA_CPU_FEATURES` set it): the
# one-word scan's explicit 512-bit vectors must be split into AVX2 or SSE2 registers correctly.
OLDER_CPUS = {
    "haswell (AVX2)": ("haswell", "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,"
                       "+lzcnt,+mmx,+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave"),
    "x86-64 (SSE2, no POPCNT)": ("x86-64", "+64bit,+cmov,+cx8,+fxsr,+mmx,+sse,+sse2"),
}

OLDER_CPU_SCRIPT = """
import numpy as np
from engines import make_engine
from evaluate import pack_bits
rng = np.random.default_rng(5)
db_bits = rng.integers(0, 2, size=(20000, 64), dtype=np.uint8)
db_bits[:, 12:] = 0  # few free bits: many ties and many selections
query_bits = rng.integers(0, 2, size=(8, 64), dtype=np.uint8)
query_bits[:, 12:] = 0
distances, ids = make_engine("exact", pack_bits(db_bits), 64).search(pack_bits(query_bits), 300)
reference = (query_bits[:, None, :] != db_bits[None, :, :]).sum(axis=-1)
order = np.argsort(reference, axis=1, kind="stable")[:, :300]
assert np.array_equal(ids, order), "ids differ"
assert np.array_equal(distances, np.take_along_axis(reference, order, 1)), "distances differ"
print("identical")
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 CPU targets")
@pytest.mark.parametrize("cpu", sorted(OLDER_CPUS))
def test_exact_kernels_compiled_for_cpus_without_avx512(cpu, tmp_path):
    name, features = OLDER_CPUS[cpu]
    env = {**os.environ, "NUMBA_CPU_NAME": name, "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(tmp_path)}  # a cache of its own: never this machine's code
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", OLDER_CPU_SCRIPT], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "identical" in result.stdout, result.stderr[-2000:]


# --- the backend engine: the Keras backend's kernels, which evaluate.py ranks with ---


@pytest.mark.parametrize("length", CODE_LENGTHS)
def test_hamming_distances_match_reference(length):
    rng = np.random.default_rng(100 + length)
    query_bits, db_bits = random_bits(rng, 7, length), random_bits(rng, 30, length)
    distances = hamming_distances(pack_bits(query_bits), pack_bits(db_bits))
    assert distances.dtype == np.int32
    np.testing.assert_array_equal(distances, reference_distances(query_bits, db_bits))


@pytest.mark.parametrize("length", [3, 12, 65])
@pytest.mark.parametrize("k", [1, 37, 500])
def test_search_ties_go_to_lower_index(length, k):
    # 3-bit codes give 500 database codes only 4 distances, so nearly every rank is a tie.
    # k = 1, k < ntotal and k = ntotal take different code paths inside tf.math.top_k.
    rng = np.random.default_rng(k * length)
    query_bits, db_bits = random_bits(rng, 40, length), random_bits(rng, 500, length)
    index = BackendEngine(pack_bits(db_bits), length, batch_elements=7 * 500)
    distances, ids = index.search(pack_bits(query_bits), k)
    expected_distances, expected_ids = reference_search(query_bits, db_bits, k)
    assert distances.dtype == np.int32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(distances, expected_distances)


def test_search_all_identical_codes_returns_ids_in_order():
    index = BackendEngine(pack_bits(np.ones((50, 48), dtype=np.uint8)), 48)
    distances, ids = index.search(pack_bits(np.zeros((2, 48), dtype=np.uint8)), k=50)
    np.testing.assert_array_equal(ids, np.tile(np.arange(50), (2, 1)))
    np.testing.assert_array_equal(distances, np.full((2, 50), 48))


def test_search_with_no_queries():
    index = BackendEngine(pack_bits(np.ones((5, 8), dtype=np.uint8)), 8)
    distances, ids = index.search(np.zeros((0, 1), dtype=np.uint8), k=3)
    assert distances.shape == ids.shape == (0, 3)


def test_search_rejects_k_out_of_range():
    index = BackendEngine(pack_bits(np.zeros((5, 4), dtype=np.uint8)), 4)
    with pytest.raises(ValueError, match=r"`k` must be an integer between 1 and .* 5\. Received: k=0"):
        index.search(pack_bits(np.zeros((3, 4), dtype=np.uint8)), 0)
    with pytest.raises(ValueError, match=r"Received: k=6"):
        index.search(pack_bits(np.zeros((3, 4), dtype=np.uint8)), 6)


def test_rejects_codes_that_are_not_packed():
    with pytest.raises(TypeError, match=r"Received: db_codes\.dtype=int64"):
        BackendEngine(np.zeros((3, 2), dtype=np.int64), 16)


def masked_search_results():
    """Exact search on 65-bit codes with bits set with probability 1/4, so ties are common."""
    rng = np.random.default_rng(7)
    query_codes = pack_bits(random_bits(rng, 20, 65))
    db_codes = pack_bits(random_bits(rng, 400, 65) & random_bits(rng, 400, 65))
    index = BackendEngine(db_codes, 65, batch_elements=3000)
    distances, ids = index.search(query_codes, 100)
    all_distances = hamming_distances(query_codes, db_codes)
    return {
        "all_distances": all_distances.tolist(),
        "batched_distances": index.distances(query_codes).tolist(),
        "distances": distances.tolist(),
        "ids": ids.tolist(),
    }


BACKEND_SCRIPT = """
import json, keras
from tests.test_engines import masked_search_results
print(json.dumps({"backend": keras.backend.backend(), **masked_search_results()}))
"""


JAX_INSTALLED = importlib.util.find_spec("jax") is not None


OTHER_BACKENDS = ["jax", "numpy"] if JAX_INSTALLED else ["numpy"]


@pytest.fixture(scope="module")
def backend_processes():
    """One `BACKEND_SCRIPT` subprocess per other backend, all started at once to overlap imports."""
    processes = {
        backend: subprocess.Popen(
            [sys.executable, "-c", BACKEND_SCRIPT],
            cwd=REPO,
            env=dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for backend in OTHER_BACKENDS
    }
    yield processes
    for process in processes.values():
        process.kill()


@pytest.mark.slow
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

def test_backend_rejects_a_query_code_size_other_than_the_database_s():
    index = BackendEngine(pack_bits(np.zeros((5, 12), dtype=np.uint8)), 12)
    with pytest.raises(ValueError, match=r"shape \[n, 2\] for 12-bit codes .* query_codes\.shape=\(3, 1\)"):
        index.search(pack_bits(np.zeros((3, 4), dtype=np.uint8)), 3)
    with pytest.raises(ValueError, match=r"query_codes\.shape=\(3, 1\)"):
        hamming_distances(pack_bits(np.zeros((3, 4), dtype=np.uint8)), pack_bits(np.zeros((5, 12), dtype=np.uint8)))
