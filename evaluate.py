"""Retrieval evaluation for binary hash codes: packing, exact Hamming search, mAP and precision@k.

Vocabulary, shared with the rest of the project:

- `bits`: a 0/1 (or bool) array of shape `[n, L]`, one hash code per row, as the CLI stores it in
  `codes.h5`. `L` is also called `bits` where it is a number (`unpack_bits(codes, bits)`).
- `codes`: the same codes packed by `pack_bits`, `uint8` of shape `[n, ceil(L / 8)]`, most
  significant bit first (NumPy's `np.packbits` order). `code_size` is the number of bytes per code.
- `query_*` / `db_*`: the queries and the database searched; `nq` and `ntotal` rows.

Every search engine answers `search(query_codes, k) -> (distances, ids)`, FAISS style:
`distances` is `int32 [nq, k]`, `ids` is `int64 [nq, k]`, each row sorted by (Hamming distance,
database index) ascending, so ties go to the lower database index. `k` must lie in `1..ntotal`;
there is no "fewer than k" sentinel. `evaluate_retrieval` ranks through this same interface, so any
engine with that method can be evaluated.

The Hamming distance is a vectorised XOR and population count over machine words. Keras has no
popcount, so the kernels come from the active Keras backend through small seams that import it
lazily: TensorFlow (`uint64` words, `tf.raw_ops.PopulationCount`, `tf.math.top_k`), JAX
(`uint32` words, since JAX without x64 has no `uint64`; `jax.lax.population_count`,
`jax.lax.top_k`), and NumPy (`np.bitwise_count`, stable argsort) for any other backend.
`import evaluate` imports neither TensorFlow nor Keras.

Example:

>>> rng = np.random.default_rng(0)
>>> db_bits = rng.integers(0, 2, size=(1000, 48), dtype=np.uint8)
>>> db_labels = rng.integers(0, 10, size=1000)
>>> metrics = evaluate_retrieval(db_bits[:50], db_labels[:50], db_bits, db_labels, top=100)
>>> sorted(metrics)
['mAP', 'precision', 'precision_at_k']
"""

import functools
from typing import Callable, NamedTuple

import numpy as np

# Most elements one batch may hold: query rows x database codes x words for the XOR in the search
# kernel, query rows x `top` for the metric arrays. 2**24 keeps each batch near 100-200 MB; of
# 2**22..2**25 it cost the least CPU time on bench/eval_bench.py's data (335 queries a batch),
# though top_k, nearly 90% of the time, cares little.
BATCH_ELEMENTS = 2**24

# Machine word per backend: TensorFlow has uint64 bitwise ops and popcount; JAX without x64 has not.
TENSORFLOW_WORD = np.uint64
JAX_WORD = np.uint32
NUMPY_WORD = np.uint64


class _HammingKernels(NamedTuple):
    """One backend's kernels over packed words: `distances(q, db)` and `search(q, db, k)`."""

    word_dtype: type
    distances: Callable
    search: Callable


def _keras_backend():
    """The active Keras backend name; keras is imported here as importing it loads TensorFlow."""
    import keras

    return keras.backend.backend()


def _tensorflow_kernels():
    """TensorFlow kernels over uint64 words: XOR and popcount under XLA, then `tf.math.top_k`."""
    import tensorflow as tf

    words = tf.TensorSpec([None, None], tf.uint64)

    # XLA fuses XOR, popcount, sum and negation into one loop, about 8x faster than separate ops.
    @tf.function(jit_compile=True)
    def negated_distances(query_words, db_words):
        xor = tf.bitwise.bitwise_xor(query_words[:, None, :], db_words[None, :, :])
        counts = tf.raw_ops.PopulationCount(x=xor)
        return -tf.reduce_sum(tf.cast(counts, tf.int32), axis=-1)

    def distances(query_words, db_words):
        return -negated_distances(query_words, db_words)

    def search(query_words, db_words, k):
        # top_k stays outside XLA, whose CPU top_k sorts whole rows (about 20x slower). top_k
        # keeps the lower index first among equal values, so ties go to the lower id.
        negated, ids = tf.math.top_k(negated_distances(query_words, db_words), k=k)
        return -negated, ids

    return _HammingKernels(
        TENSORFLOW_WORD,
        tf.function(distances, input_signature=[words, words]),
        tf.function(search, input_signature=[words, words, tf.TensorSpec([], tf.int32)]),
    )


def _jax_kernels():
    """JAX kernels over uint32 words. Correct, but XLA's CPU top_k sorts whole rows: slow here."""
    import jax
    import jax.numpy as jnp

    def distances(query_words, db_words):
        xor = jnp.bitwise_xor(query_words[:, None, :], db_words[None, :, :])
        return jnp.sum(jax.lax.population_count(xor), axis=-1, dtype=jnp.int32)

    def search(query_words, db_words, k):
        # jax.lax.top_k documents that the lower index comes first among equal values.
        negated, ids = jax.lax.top_k(-distances(query_words, db_words), k)
        return -negated, ids

    return _HammingKernels(JAX_WORD, jax.jit(distances), jax.jit(search, static_argnums=2))


def _numpy_kernels():
    """NumPy kernels for backends without their own popcount; a stable argsort ranks."""
    def distances(query_words, db_words):
        xor = np.bitwise_xor(query_words[:, None, :], db_words[None, :, :])
        return np.bitwise_count(xor).sum(axis=-1, dtype=np.int32)

    def search(query_words, db_words, k):
        all_distances = distances(query_words, db_words)
        ids = np.argsort(all_distances, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(all_distances, ids, axis=1), ids

    return _HammingKernels(NUMPY_WORD, distances, search)


@functools.cache
def _kernels(backend):
    """The Hamming kernels for a Keras backend name; NumPy for backends without their own."""
    builders = {"tensorflow": _tensorflow_kernels, "jax": _jax_kernels}
    return builders.get(backend, _numpy_kernels)()


def _to_words(codes, word_dtype):
    """Views packed codes `[n, code_size]` as words, zero-padding each row to a whole word.

    The padding is zero in queries and database alike, so it adds nothing to any distance.
    """
    padding = -codes.shape[1] % np.dtype(word_dtype).itemsize
    return np.pad(codes, ((0, 0), (0, padding))).view(word_dtype)


def _check_bits(bits, name):
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be a 2-D array of shape [n, L] with L >= 1. "
            f"Received: {name}.shape={bits.shape}"
        )
    invalid = (bits != 0) & (bits != 1)
    if invalid.any():
        raise ValueError(
            f"`{name}` must contain only 0 and 1. "
            f"Received: {name} with a value of {bits[invalid][0]}"
        )
    return bits


def _check_codes(codes, name):
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(
            f"`{name}` must be packed uint8 codes from `pack_bits`. "
            f"Received: {name}.dtype={codes.dtype}"
        )
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be a 2-D array of shape [n, code_size] with code_size >= 1. "
            f"Received: {name}.shape={codes.shape}"
        )
    return codes


def _check_same_code_size(query_codes, db_code_size):
    if query_codes.shape[1] != db_code_size:
        raise ValueError(
            f"`query_codes` must have the database's code size ({db_code_size} bytes per code). "
            f"Received: query_codes.shape={query_codes.shape}"
        )


def _check_k(k, ntotal, name):
    if not 1 <= k <= ntotal:
        raise ValueError(
            f"`{name}` must be between 1 and the database size {ntotal}. Received: {name}={k}"
        )


def _check_labels(labels, bits, labels_name, bits_name):
    labels = np.asarray(labels)
    if labels.shape != (len(bits),):
        raise ValueError(
            f"`{labels_name}` must hold one integer label per row of `{bits_name}`, shape "
            f"[{len(bits)}]. Received: {labels_name}.shape={labels.shape}"
        )
    return labels


def pack_bits(bits):
    """Packs 0/1 codes into bytes, eight bits per byte, most significant bit first.

    This is `np.packbits(bits, axis=1)` with validation; the last byte of each row is padded with
    zeros when the code length is not a multiple of 8.

    Args:
        bits: 0/1 or bool array of shape `[n, L]`. No default.

    Returns:
        `uint8` array of shape `[n, ceil(L / 8)]`.

    Example:

    >>> pack_bits(np.array([[1, 0, 1, 1, 0, 0, 0, 0, 1]]))
    array([[176, 128]], dtype=uint8)
    """
    bits = _check_bits(bits, "bits")
    return np.packbits(bits.astype(bool), axis=1)


def unpack_bits(codes, bits):
    """Unpacks codes made by `pack_bits` back into 0/1 bits.

    Args:
        codes: `uint8` array of shape `[n, code_size]`. No default.
        bits: the code length `L`, with `ceil(L / 8) == code_size`. No default.

    Returns:
        `uint8` array of shape `[n, bits]` holding 0 and 1.

    Example:

    >>> unpack_bits(np.array([[176, 128]], dtype=np.uint8), bits=9)
    array([[1, 0, 1, 1, 0, 0, 0, 0, 1]], dtype=uint8)
    """
    codes = _check_codes(codes, "codes")
    if not 8 * (codes.shape[1] - 1) < bits <= 8 * codes.shape[1]:
        raise ValueError(
            f"`bits` must be a code length that packs into {codes.shape[1]} bytes, i.e. in "
            f"{8 * codes.shape[1] - 7}..{8 * codes.shape[1]}. Received: bits={bits}"
        )
    return np.unpackbits(codes, axis=1, count=bits)


def hamming_distances(query_codes, db_codes):
    """Hamming distances between every query and every database code.

    Computed in one piece with the active Keras backend's XOR and popcount, so it suits tests and
    small inputs; `ExactHammingSearch` batches for large ones.

    Args:
        query_codes: packed `uint8` codes of shape `[nq, code_size]`. No default.
        db_codes: packed `uint8` codes of shape `[ntotal, code_size]`. No default.

    Returns:
        `int32` array of shape `[nq, ntotal]`.

    Example:

    >>> hamming_distances(pack_bits([[0, 0, 0, 0]]), pack_bits([[0, 1, 1, 0], [1, 1, 1, 1]]))
    array([[2, 4]], dtype=int32)
    """
    query_codes = _check_codes(query_codes, "query_codes")
    db_codes = _check_codes(db_codes, "db_codes")
    _check_same_code_size(query_codes, db_codes.shape[1])
    kernels = _kernels(_keras_backend())
    distances = kernels.distances(
        _to_words(query_codes, kernels.word_dtype), _to_words(db_codes, kernels.word_dtype)
    )
    return np.asarray(distances, dtype=np.int32)


class ExactHammingSearch:
    """Exact k-nearest-neighbour search in Hamming space, by brute force over packed codes.

    Each query batch runs XOR, popcount and top-k in one backend call; the batch holds at most
    `batch_elements` words of XOR output, so memory stays bounded for any number of queries.
    Results are ranked by (Hamming distance, database index) ascending.

    Args:
        db_codes: packed `uint8` database codes of shape `[ntotal, code_size]`, from `pack_bits`.
            No default.
        batch_elements: most elements one query batch may hold (query rows x `ntotal` x words).
            Defaults to `BATCH_ELEMENTS` (2**24).

    Example:

    >>> index = ExactHammingSearch(pack_bits([[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]]))
    >>> distances, ids = index.search(pack_bits([[0, 0, 0, 0]]), k=2)
    >>> distances, ids
    (array([[0, 1]], dtype=int32), array([[2, 0]]))
    """

    def __init__(self, db_codes, batch_elements=BATCH_ELEMENTS):
        db_codes = _check_codes(db_codes, "db_codes")
        if len(db_codes) == 0:
            raise ValueError(
                "`db_codes` must hold at least one code. "
                f"Received: db_codes.shape={db_codes.shape}"
            )
        self.ntotal, self.code_size = db_codes.shape
        self._kernels = _kernels(_keras_backend())
        self._db_words = _to_words(db_codes, self._kernels.word_dtype)
        self._batch_size = max(1, batch_elements // self._db_words.size)

    def search(self, query_codes, k):
        """Finds the `k` database codes nearest to each query.

        Args:
            query_codes: packed `uint8` query codes of shape `[nq, code_size]`. No default.
            k: number of neighbours per query, `1 <= k <= ntotal`. No default.

        Returns:
            Tuple `(distances, ids)`: `int32` and `int64` arrays of shape `[nq, k]`, each row sorted
            by (distance, id) ascending.
        """
        query_codes = _check_codes(query_codes, "query_codes")
        _check_same_code_size(query_codes, self.code_size)
        _check_k(k, self.ntotal, "k")
        query_words = _to_words(query_codes, self._kernels.word_dtype)
        distances = np.empty((len(query_codes), k), dtype=np.int32)
        ids = np.empty((len(query_codes), k), dtype=np.int64)
        for start in range(0, len(query_codes), self._batch_size):
            batch = slice(start, start + self._batch_size)
            distances[batch], ids[batch] = self._kernels.search(
                query_words[batch], self._db_words, np.int32(k)
            )
        return distances, ids


def _metric_sums(relevant):
    """Sums over a batch of queries of precision@r for every rank r, and of average precision.

    Args:
        relevant: bool array of shape `[b, top]`, whether the item at each rank is relevant.

    Returns:
        Tuple `(precision_sums, average_precision_sum)`: `float64` of shape `[top]`, and a float.
        AP is the mean of precision@r over the ranks r holding a relevant item (DLBHC's mAP@top);
        a query with no relevant item in its top list has AP 0.
    """
    reciprocal_ranks = 1.0 / np.arange(1, relevant.shape[1] + 1)
    hits = np.cumsum(relevant, axis=1, dtype=np.float64)  # relevant items within the top r
    average_precision = (hits * relevant) @ reciprocal_ranks / np.maximum(hits[:, -1], 1)
    return hits.sum(axis=0) * reciprocal_ranks, average_precision.sum()


def evaluate_retrieval(
    query_bits, query_labels, db_bits, db_labels, top, search=None, batch_elements=BATCH_ELEMENTS
):
    """Scores Hamming ranking of a database for each query: mAP@top and precision@k for k <= top.

    An item is relevant to a query when their integer labels are equal. Queries are ranked in
    batches through `search(query_codes, top)`, and the metrics are accumulated batch by batch, so
    no `[nq, ntotal]` array is ever held, even with `top = ntotal`.

    Args:
        query_bits: 0/1 query codes of shape `[nq, L]`. No default.
        query_labels: integer labels of shape `[nq]`. No default.
        db_bits: 0/1 database codes of shape `[ntotal, L]`. No default.
        db_labels: integer labels of shape `[ntotal]`. No default.
        top: length of the ranked list scored, `1 <= top <= ntotal`; `ntotal` scores the whole
            ranking. No default.
        search: an engine over `pack_bits(db_bits)`, in order, with `search(query_codes, k) ->
            (distances, ids)` ranked by (distance, id). Defaults to `None`, which builds an
            `ExactHammingSearch`.
        batch_elements: most elements one query batch may hold (query rows x `top`), also passed to
            the default engine. Defaults to `BATCH_ELEMENTS` (2**24).

    Returns:
        Dict with `"mAP"` (float), `"precision_at_k"` (`float64` array of shape `[top]`, entry
        `k - 1` is precision@k averaged over queries) and `"precision"` (precision@top, float),
        all on a 0..1 scale.

    Example:

    >>> db_bits = np.array([[0, 0], [1, 1], [0, 1]])
    >>> metrics = evaluate_retrieval([[0, 0]], [7], db_bits, [7, 7, 3], top=2)
    >>> metrics["mAP"], metrics["precision_at_k"], metrics["precision"]
    (1.0, array([1. , 0.5]), 0.5)
    """
    query_bits = _check_bits(query_bits, "query_bits")
    db_bits = _check_bits(db_bits, "db_bits")
    if query_bits.shape[1] != db_bits.shape[1]:
        raise ValueError(
            "`query_bits` and `db_bits` must have the same code length. "
            f"Received: query_bits.shape={query_bits.shape}, db_bits.shape={db_bits.shape}"
        )
    if len(query_bits) == 0:
        raise ValueError(
            "`query_bits` must hold at least one query. "
            f"Received: query_bits.shape={query_bits.shape}"
        )
    query_labels = _check_labels(query_labels, query_bits, "query_labels", "query_bits")
    db_labels = _check_labels(db_labels, db_bits, "db_labels", "db_bits")
    _check_k(top, len(db_bits), "top")
    query_codes = pack_bits(query_bits)
    if search is None:
        search = ExactHammingSearch(pack_bits(db_bits), batch_elements)

    precision_sums = np.zeros(top)
    average_precision_sum = 0.0
    batch_size = max(1, batch_elements // top)
    for start in range(0, len(query_codes), batch_size):
        batch = slice(start, start + batch_size)
        _, ids = search.search(query_codes[batch], top)
        batch_precision_sums, batch_average_precision_sum = _metric_sums(
            db_labels[ids] == query_labels[batch, None]
        )
        precision_sums += batch_precision_sums
        average_precision_sum += batch_average_precision_sum

    precision_at_k = precision_sums / len(query_codes)
    return {
        "mAP": float(average_precision_sum / len(query_codes)),
        "precision_at_k": precision_at_k,
        "precision": float(precision_at_k[-1]),
    }
