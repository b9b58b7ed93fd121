"""Hamming search engines behind one interface: exact counting top-k, and FAISS's binary indexes.

Every engine is built by `make_engine(name, db_codes, bits, **options)` from packed codes (`uint8
[ntotal, ceil(bits / 8)]`, most significant bit first, as `evaluate.pack_bits` makes them) and
answers, FAISS style:

- `search(query_codes, k) -> (distances, ids)`: `int32` and `int64` arrays `[nq, k]`, each row
  sorted by (distance, id) ascending. `k` must lie in `1..ntotal`. The exact engines (`exact`,
  `faiss`) return identical results: the true k nearest, ties to the lower database id. The
  approximate engines (`faiss-ivf`, `faiss-mih`) may miss neighbours; where they find fewer than
  `k`, the row ends with `MISSING_ID` (-1) and `MISSING_DISTANCE` (int32 max).
- `range_search(query_codes, radius) -> [(distances, ids), ...]`: one pair per query, every code
  within Hamming distance `<= radius` (`0..bits`), sorted by (distance, id). Approximate engines
  may miss some.

Code lengths that are not a multiple of 8 (or of 64 for `exact`) are zero-padded: the padding bits
are cleared in queries and database alike, so they add nothing to any distance.

Engines (`ENGINES`):

- `exact` (default): brute force compiled with numba. Each thread takes a block of queries and
  streams the database in chunks that stay in cache while every query of the block scans them.
  Each query has an admission bound, first guessed from a database sample (a guess too low is
  detected and the query scanned again without it). XOR, popcount and the minimum over 64 codes
  come from a few vector instructions (explicit 512-bit vectors for codes of one word); only when
  that minimum is under the bound is a 64-bit mask of the codes under it made, and just those
  codes go to a small candidate buffer. When the buffer fills, a
  histogram of its distances (there are only `bits + 1` of them) gives the threshold distance that
  keeps exactly `k`, ties to the lower id, and the bound drops to it. The final `k` are ordered
  by a counting sort. No general sort runs anywhere, and nothing of size `ntotal` is stored per
  query. The kernels live in `hamming_kernels.py`; a search of at most `NUMPY_QUERIES` queries
  runs the same counting selection in NumPy instead (a histogram of all distances, then the ids
  under the threshold), so that a query by image never waits for numba's start-up.
- `faiss`: `faiss.IndexBinaryFlat`, exact; FAISS breaks ties to the lower id as well (the tests
  check it on codes with many ties).
- `faiss-ivf`: `faiss.IndexBinaryIVF`, approximate; options `nlist` (defaults to `sqrt(ntotal)`)
  and `nprobe` (defaults to 16).
- `faiss-mih`: `faiss.IndexBinaryMultiHash` (multi-index hashing), approximate; options `nhash`
  (defaults to `code bits // 16`) and `nflip` (defaults to 2).
- `backend`: `BackendEngine`, the active Keras backend's own XOR, popcount and top-k
  (`tf.raw_ops.PopulationCount` and `tf.math.top_k` on TensorFlow, over `uint64` words;
  `jax.lax.population_count` and `jax.lax.top_k` on JAX, over `uint32` words, since JAX without
  x64 has no `uint64`; NumPy's `bitwise_count` and a stable argsort on any other backend),
  exact. Its `distances(query_codes)` gives every distance: `evaluate.evaluate_retrieval` ranks
  the whole database with it. The backend modules are imported on first use, so `import
  engines` loads neither TensorFlow nor Keras.

Example:

>>> from evaluate import pack_bits
>>> db_codes = pack_bits([[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
>>> engine = make_engine("exact", db_codes, bits=4)
>>> engine.search(pack_bits([[0, 0, 0, 0]]), k=2)
(array([[0, 1]], dtype=int32), array([[2, 0]]))
"""

import functools
from typing import Callable, NamedTuple

import numpy as np

from vocabulary import ENGINES

# Most elements one `backend` query batch may hold: query rows x database codes x words for the
# XOR. `evaluate.py` batches its whole-database ranking by the same number (query rows x database
# items, about 20 bytes each, so about 80 MB a batch). Of 2**22..2**25, 2**22 cost the least time
# for the whole evaluation on bench/eval_bench.py's data; the top_k search cares little.
BATCH_ELEMENTS = 2**22

# Sentinels of the approximate engines for "fewer than k found", at the end of a row (FAISS's).
# No metric counts a MISSING_ID slot as a database item (see `evaluate.evaluate_retrieval`).
MISSING_ID = -1
MISSING_DISTANCE = np.iinfo(np.int32).max
# Distances one `backend` range search holds at a time (queries x database codes).
BACKEND_RANGE_ELEMENTS = 2**24

# Queries one thread serves per pass over the database: each database chunk brought into cache is
# scanned by this many queries before the next.
QUERY_BLOCK = 16

# Searches of at most this many queries rank in NumPy (a few ms a query over 1M codes): a
# query by image then never waits for numba's start-up, about a second on first use.
NUMPY_QUERIES = 4

# Most candidate-buffer bytes (12 per slot) one query block may hold; shrinks the block for huge k.
BUFFER_BYTES = 2**28


# ---------------------------------------------------------------------------------------------
# Validation, shared by every engine.


def check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
        raise ValueError(f"`bits` must be a positive integer code length. Received: bits={bits!r}")
    return int(bits)


def check_codes(codes, name, bits):
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(
            f"`{name}` must be packed uint8 codes from `evaluate.pack_bits`. "
            f"Received: {name}.dtype={codes.dtype}"
        )
    code_size = -(-bits // 8)
    if codes.ndim != 2 or codes.shape[1] != code_size:
        raise ValueError(
            f"`{name}` must have shape [n, {code_size}] for {bits}-bit codes "
            f"(ceil(bits / 8) bytes per code). Received: {name}.shape={codes.shape}"
        )
    if bits % 8:
        # Clear the padding bits of the last byte so that they never count in a distance.
        codes = codes.copy()
        codes[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    return codes


def check_db_codes(db_codes, bits):
    """`check_codes` for a database, which must also hold at least one code."""
    db_codes = check_codes(db_codes, "db_codes", bits)
    if len(db_codes) == 0:
        raise ValueError(f"`db_codes` must hold at least one code. Received: db_codes.shape={db_codes.shape}")
    return db_codes


def check_k(k, ntotal, name="k"):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= ntotal:
        raise ValueError(
            f"`{name}` must be an integer between 1 and the database size {ntotal}. Received: {name}={k!r}"
        )
    return int(k)


def check_radius(radius, bits):
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or not (
        0 <= radius <= bits
    ):
        raise ValueError(
            f"`radius` must be an integer Hamming distance between 0 and bits={bits}. "
            f"Received: radius={radius!r}"
        )
    return int(radius)


def _sort_rows(distances, ids):
    """Sorts a result (one row, or each row of a matrix) by (distance, id).

    `MISSING_ID` slots carry `MISSING_DISTANCE`, so they stay at the end of their row.
    """
    key = distances.astype(np.int64) * 2**32 + ids  # ids < 2**31 in any index here
    order = np.argsort(key, axis=-1, kind="stable")
    return np.take_along_axis(distances, order, -1), np.take_along_axis(ids, order, -1)


def _to_words(codes):
    """Packed codes as C-contiguous uint64 words, each row zero-padded to a whole word."""
    padding = -codes.shape[1] % 8
    return np.ascontiguousarray(np.pad(codes, ((0, 0), (0, padding)))).view(np.uint64)


class ExactEngine:
    """Exact Hamming k-NN by brute force, with a counting top-k; see the module docstring.

    Args:
        db_codes: packed `uint8` codes `[ntotal, ceil(bits / 8)]`. No default.
        bits: the code length `L`. No default.
        query_block: queries one thread compares per pass over the database.
            Defaults to `QUERY_BLOCK` (16).
        numpy_queries: searches of at most this many queries run in NumPy, sparing the first
            call numba's start-up (about a second). Defaults to `NUMPY_QUERIES` (4).
    """

    def __init__(self, db_codes, bits, query_block=QUERY_BLOCK, numpy_queries=NUMPY_QUERIES):
        self.bits = check_bits(bits)
        db_codes = check_db_codes(db_codes, self.bits)
        self.ntotal = len(db_codes)
        self.code_size = db_codes.shape[1]
        self.query_block = int(query_block)
        self.numpy_queries = int(numpy_queries)
        self._db_words = _to_words(db_codes)
        # Word-major copy for the scan kernel; for codes of one word, the same memory.
        self._db_columns = np.ascontiguousarray(self._db_words.T)

    def search(self, query_codes, k):
        """Finds the `k` nearest codes per query: `(int32 [nq, k], int64 [nq, k])`."""
        query_codes = check_codes(query_codes, "query_codes", self.bits)
        k = check_k(k, self.ntotal)
        if len(query_codes) <= self.numpy_queries:
            return self._numpy_search(_to_words(query_codes), k)
        import hamming_kernels

        # Room for k kept plus at least as many new candidates between two selections.
        capacity = min(self.ntotal, 2 * k + 256)
        block = max(1, min(self.query_block, BUFFER_BYTES // (12 * capacity)))
        return hamming_kernels.exact_search(
            _to_words(query_codes), self._db_words, self._db_columns, k, self.bits, block,
            capacity, hamming_kernels.DB_CHUNK,
        )

    def range_search(self, query_codes, radius):
        """Every code within `radius` per query: a list of `(int32 [m], int64 [m])`."""
        query_codes = check_codes(query_codes, "query_codes", self.bits)
        radius = check_radius(radius, self.bits)
        query_words = _to_words(query_codes)
        if len(query_codes) <= self.numpy_queries:
            return [self._numpy_range(words, radius) for words in query_words]
        import hamming_kernels

        counts = hamming_kernels.range_counts(query_words, self._db_words, radius)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        distances = np.empty(offsets[-1], dtype=np.int32)
        ids = np.empty(offsets[-1], dtype=np.int64)
        hamming_kernels.range_fill(query_words, self._db_words, radius, offsets, distances, ids)
        return [
            (distances[offsets[q]:offsets[q + 1]], ids[offsets[q]:offsets[q + 1]])
            for q in range(len(query_codes))
        ]

    def _numpy_distances(self, words):
        """One query's distances to every code, `uint8` (or `uint16` past 255 bits)."""
        counts = np.bitwise_count(self._db_words ^ words)
        dtype = np.uint8 if self.bits < 256 else np.uint16
        return counts[:, 0] if counts.shape[1] == 1 else counts.sum(axis=1, dtype=dtype)

    def _numpy_search(self, query_words, k):
        """The same counting selection in NumPy, one query at a time, for a few queries."""
        distances = np.empty((len(query_words), k), dtype=np.int32)
        ids = np.empty((len(query_words), k), dtype=np.int64)
        for row, words in enumerate(query_words):
            all_distances = self._numpy_distances(words)
            cumulative = np.cumsum(np.bincount(all_distances, minlength=self.bits + 1))
            threshold = int(np.searchsorted(cumulative, k))  # first distance reaching k codes
            below = np.flatnonzero(all_distances < threshold)
            at = np.flatnonzero(all_distances == threshold)[: k - len(below)]
            chosen = np.concatenate([below, at])
            # A stable sort of small integers: NumPy's radix sort, ids stay ascending per distance.
            chosen = chosen[np.argsort(all_distances[chosen], kind="stable")]
            distances[row], ids[row] = all_distances[chosen], chosen
        return distances, ids

    def _numpy_range(self, words, radius):
        all_distances = self._numpy_distances(words)
        ids = np.flatnonzero(all_distances <= radius)
        ids = ids[np.argsort(all_distances[ids], kind="stable")]
        return all_distances[ids].astype(np.int32), ids.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# FAISS engines.


class FaissEngine:
    """A FAISS binary index behind the common interface; `faiss`, `faiss-ivf` or `faiss-mih`.

    Args:
        db_codes: packed `uint8` codes `[ntotal, ceil(bits / 8)]`. No default.
        bits: the code length `L`; FAISS sees `8 * ceil(L / 8)` bits, the padding zero.
            No default.
        kind: `"flat"` (exact), `"ivf"` or `"mih"`. Defaults to `"flat"`.
        nlist: IVF lists. Defaults to `sqrt(ntotal)`.
        nprobe: IVF lists visited per query. Defaults to 16.
        nhash: multi-index hash tables. Defaults to `8 * code_size // 16`, at least 1.
        nflip: bits flipped when probing each hash table. Defaults to 2.
    """

    def __init__(self, db_codes, bits, kind="flat", nlist=None, nprobe=16, nhash=None, nflip=2):
        import faiss

        self.bits = check_bits(bits)
        db_codes = check_db_codes(db_codes, self.bits)
        self.ntotal = len(db_codes)
        self.code_size = db_codes.shape[1]
        d = 8 * self.code_size
        db_codes = np.ascontiguousarray(db_codes)
        if kind == "flat":
            index = faiss.IndexBinaryFlat(d)
        elif kind == "ivf":
            nlist = int(nlist or max(1, round(self.ntotal**0.5)))
            if not 1 <= nlist <= self.ntotal:
                raise ValueError(
                    f"`nlist` must be between 1 and the database size {self.ntotal}. "
                    f"Received: nlist={nlist}"
                )
            self._quantizer = faiss.IndexBinaryFlat(d)  # kept alive: the IVF index points to it
            index = faiss.IndexBinaryIVF(self._quantizer, d, nlist)
            index.nprobe = int(min(nprobe, nlist))
            index.train(db_codes)
        elif kind == "mih":
            nhash = int(nhash or max(1, d // 16))
            if not 1 <= nhash <= d:
                raise ValueError(
                    f"`nhash` must be between 1 and the padded code length {d}. "
                    f"Received: nhash={nhash}"
                )
            index = faiss.IndexBinaryMultiHash(d, nhash, d // nhash)
            index.nflip = int(nflip)
        else:
            raise ValueError(f"`kind` must be 'flat', 'ivf' or 'mih'. Received: kind={kind!r}")
        index.add(db_codes)
        self.index = index
        self.exact = kind == "flat"

    def search(self, query_codes, k):
        """Finds the `k` nearest codes per query: `(int32 [nq, k], int64 [nq, k])`."""
        query_codes = np.ascontiguousarray(check_codes(query_codes, "query_codes", self.bits))
        k = check_k(k, self.ntotal)
        distances, ids = self.index.search(query_codes, k)
        distances = distances.astype(np.int32, copy=False)
        ids = ids.astype(np.int64, copy=False)
        missing = ids < 0
        if missing.any():
            distances[missing] = MISSING_DISTANCE
            ids[missing] = MISSING_ID
        if not self.exact:
            distances, ids = _sort_rows(distances, ids)
        return distances, ids

    def range_search(self, query_codes, radius):
        """Every code within `radius` per query: a list of `(int32 [m], int64 [m])`."""
        query_codes = np.ascontiguousarray(check_codes(query_codes, "query_codes", self.bits))
        radius = check_radius(radius, self.bits)
        # FAISS's binary range search keeps distances strictly below its radius.
        lims, distances, ids = self.index.range_search(query_codes, radius + 1)
        distances = distances.astype(np.int32, copy=False)
        ids = ids.astype(np.int64, copy=False)
        return [
            _sort_rows(distances[lims[q]:lims[q + 1]], ids[lims[q]:lims[q + 1]])
            for q in range(len(query_codes))
        ]


class BackendEngine:
    """Exact Hamming k-NN by brute force with the active Keras backend's kernels (`backend`).

    Each query batch runs XOR, popcount and top-k in one backend call; a batch holds at most
    `batch_elements` words of XOR output, so memory stays bounded for any number of queries.

    Args:
        db_codes: packed `uint8` codes `[ntotal, ceil(bits / 8)]`. No default.
        bits: the code length `L`. No default.
        batch_elements: most elements one query batch may hold (query rows x `ntotal` x words).
            Defaults to `BATCH_ELEMENTS` (2**22).

    Example:

    >>> from evaluate import pack_bits
    >>> engine = BackendEngine(pack_bits([[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]]), bits=4)
    >>> engine.distances(pack_bits([[0, 0, 0, 0]]))
    array([[1, 2, 0]], dtype=int32)
    """

    def __init__(self, db_codes, bits, batch_elements=BATCH_ELEMENTS):
        self.bits = check_bits(bits)
        db_codes = check_db_codes(db_codes, self.bits)
        self.ntotal, self.code_size = db_codes.shape
        self._kernels = _kernels(_keras_backend())
        self._db_words = _backend_words(db_codes, self._kernels.word_dtype)
        self._batch_size = max(1, batch_elements // self._db_words.size)

    def search(self, query_codes, k):
        """Finds the `k` nearest codes per query: `(int32 [nq, k], int64 [nq, k])`."""
        query_words = self._query_words(query_codes)
        k = check_k(k, self.ntotal)
        distances = np.empty((len(query_words), k), dtype=np.int32)
        ids = np.empty((len(query_words), k), dtype=np.int64)
        for start in range(0, len(query_words), self._batch_size):
            batch = slice(start, start + self._batch_size)
            distances[batch], ids[batch] = self._kernels.search(query_words[batch], self._db_words, np.int32(k))
        return distances, ids

    def distances(self, query_codes):
        """Hamming distances from each query to every code, in database order: `int32 [nq, ntotal]`.

        The array may be read-only.
        """
        query_words = self._query_words(query_codes)
        if len(query_words) <= self._batch_size:  # one batch: no copy
            return np.asarray(self._kernels.distances(query_words, self._db_words))
        distances = np.empty((len(query_words), self.ntotal), dtype=np.int32)
        for start in range(0, len(query_words), self._batch_size):
            batch = slice(start, start + self._batch_size)
            distances[batch] = self._kernels.distances(query_words[batch], self._db_words)
        return distances

    def range_search(self, query_codes, radius):
        """Every code within `radius` per query: a list of `(int32 [m], int64 [m])`."""
        radius = check_radius(radius, self.bits)
        batch = max(1, BACKEND_RANGE_ELEMENTS // self.ntotal)
        results = []
        for start in range(0, len(query_codes), batch):
            for distances in self.distances(query_codes[start:start + batch]):
                ids = np.flatnonzero(distances <= radius)
                results.append(_sort_rows(distances[ids].astype(np.int32), ids.astype(np.int64)))
        return results

    def _query_words(self, query_codes):
        return _backend_words(check_codes(query_codes, "query_codes", self.bits), self._kernels.word_dtype)


def hamming_distances(query_codes, db_codes):
    """Hamming distances between every query and every database code, with the Keras backend's kernels.

    Args:
        query_codes: packed `uint8` codes `[nq, code_size]`. No default.
        db_codes: packed `uint8` codes `[ntotal, code_size]`. No default.

    Returns:
        `int32` array `[nq, ntotal]`.

    Example:

    >>> from evaluate import pack_bits
    >>> hamming_distances(pack_bits([[0, 0, 0, 0]]), pack_bits([[0, 1, 1, 0], [1, 1, 1, 1]]))
    array([[2, 4]], dtype=int32)
    """
    code_size = np.shape(db_codes)[1] if np.ndim(db_codes) == 2 else 1
    return np.asarray(BackendEngine(db_codes, 8 * code_size).distances(query_codes), dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# The `backend` engine's kernels, one set per Keras backend.


# Machine word per backend: TensorFlow has uint64 bitwise ops and popcount; JAX without x64 has not.
TENSORFLOW_WORD = np.uint64
JAX_WORD = np.uint32
NUMPY_WORD = np.uint64


class _HammingKernels(NamedTuple):
    """One backend's kernels over packed words: `distances(q, db)` and `search(q, db, k)`."""

    word_dtype: type
    distances: Callable
    search: Callable


def _tensorflow_kernels():
    """TensorFlow kernels over uint64 words: XOR and popcount under XLA, then `tf.math.top_k`."""
    import tensorflow as tf

    words = tf.TensorSpec([None, None], tf.uint64)

    def xor_popcount(query_words, db_words):
        xor = tf.bitwise.bitwise_xor(query_words[:, None, :], db_words[None, :, :])
        counts = tf.raw_ops.PopulationCount(x=xor)
        return tf.reduce_sum(tf.cast(counts, tf.int32), axis=-1)

    # XLA fuses XOR, popcount, sum (and negation) into one loop, about 8x faster than separate ops.
    distances = tf.function(xor_popcount, jit_compile=True, input_signature=[words, words])

    @tf.function(jit_compile=True)
    def negated_distances(query_words, db_words):
        return -xor_popcount(query_words, db_words)

    def search(query_words, db_words, k):
        # top_k stays outside XLA, whose CPU top_k sorts whole rows (about 20x slower). top_k
        # keeps the lower index first among equal values, so ties go to the lower id.
        negated, ids = tf.math.top_k(negated_distances(query_words, db_words), k=k)
        return -negated, ids

    return _HammingKernels(
        TENSORFLOW_WORD,
        distances,
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


def _keras_backend():
    """The active Keras backend name; keras is imported here as importing it loads TensorFlow."""
    import keras

    return keras.backend.backend()


def _backend_words(codes, word_dtype):
    """Packed codes `[n, code_size]` as words of `word_dtype`, each row zero-padded to a whole word.

    The padding is zero in queries and database alike, so it adds nothing to any distance.
    """
    padding = -codes.shape[1] % np.dtype(word_dtype).itemsize
    return np.pad(codes, ((0, 0), (0, padding))).view(word_dtype)


def make_engine(name, db_codes, bits, **options):
    """Builds a search engine over packed codes by name.

    Args:
        name: one of `ENGINES`: `"exact"`, `"faiss"`, `"faiss-ivf"`, `"faiss-mih"` or `"backend"`.
            No default.
        db_codes: packed `uint8` codes `[ntotal, ceil(bits / 8)]` from `evaluate.pack_bits`.
            No default.
        bits: the code length `L`. No default.
        **options: engine options: `query_block`, `numpy_queries` (`exact`); `nlist`, `nprobe` (`faiss-ivf`);
            `nhash`, `nflip` (`faiss-mih`); `batch_elements` (`backend`).

    Returns:
        An engine with `ntotal`, `bits`, `search(query_codes, k)` and
        `range_search(query_codes, radius)`.

    Example:

    >>> from evaluate import pack_bits
    >>> engine = make_engine("faiss", pack_bits([[1, 0, 1], [0, 0, 0]]), bits=3)
    >>> engine.ntotal, engine.bits
    (2, 3)
    """
    allowed = {
        "exact": {"query_block", "numpy_queries"},
        "faiss": set(),
        "faiss-ivf": {"nlist", "nprobe"},
        "faiss-mih": {"nhash", "nflip"},
        "backend": {"batch_elements"},
    }
    if name not in allowed:
        raise ValueError(f"`name` must be one of {ENGINES}. Received: name={name!r}")
    unknown = sorted(set(options) - allowed[name])
    if unknown:
        raise TypeError(
            f"Engine {name!r} takes the options {sorted(allowed[name])}. "
            f"Received: {', '.join(f'{option}={options[option]!r}' for option in unknown)}"
        )
    if name == "exact":
        return ExactEngine(db_codes, bits, **options)
    if name == "backend":
        return BackendEngine(db_codes, bits, **options)
    kind = {"faiss": "flat", "faiss-ivf": "ivf", "faiss-mih": "mih"}[name]
    return FaissEngine(db_codes, bits, kind=kind, **options)
