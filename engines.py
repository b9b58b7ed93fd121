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
  streams the database once for the whole block (one 64-bit word load serves every query of the
  block): XOR, popcount, and a compare against the query's current admission bound. Codes under
  the bound go to a small candidate buffer; when it fills, a histogram of its distances (there are
  only `bits + 1` of them) gives the threshold distance that keeps exactly `k`, ties to the lower
  id, and the bound drops to it. The final `k` are ordered by a counting sort. No general sort
  runs anywhere, and nothing of size `ntotal` is stored per query.
- `faiss`: `faiss.IndexBinaryFlat`, exact; FAISS breaks ties to the lower id as well (the tests
  check it on codes with many ties).
- `faiss-ivf`: `faiss.IndexBinaryIVF`, approximate; options `nlist` (defaults to `sqrt(ntotal)`)
  and `nprobe` (defaults to 16).
- `faiss-mih`: `faiss.IndexBinaryMultiHash` (multi-index hashing), approximate; options `nhash`
  (defaults to `code bits // 16`) and `nflip` (defaults to 2).

Example:

>>> from evaluate import pack_bits
>>> db_codes = pack_bits([[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
>>> engine = make_engine("exact", db_codes, bits=4)
>>> engine.search(pack_bits([[0, 0, 0, 0]]), k=2)
(array([[0, 1]], dtype=int32), array([[2, 0]]))
"""

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

ENGINES = ("exact", "faiss", "faiss-ivf", "faiss-mih")

# Sentinels of the approximate engines for "fewer than k found", at the end of a row (FAISS's).
MISSING_ID = -1
MISSING_DISTANCE = np.iinfo(np.int32).max

# Queries one thread serves per pass over the database: each database word loaded is compared
# with this many queries. 16 keeps a block's query words and bounds in registers and L1.
QUERY_BLOCK = 16

# Database codes scanned by every query of a block before the next chunk: 4096 x 8 bytes stays
# in L1/L2 cache while the block's queries pass over it.
DB_CHUNK = 4096

# Codes whose smallest distance is checked at once (vectorised) before any is looked at alone.
SUB_CHUNK = 64

# Database codes sampled per query to guess its admission bound, and the margin (in distance)
# added to the sample's quantile: a guess below the k-th distance costs a second scan.
SAMPLE = 2048
GUESS_MARGIN = 1

# Most candidate-buffer bytes (12 per slot) one query block may hold; shrinks the block for huge k.
BUFFER_BYTES = 2**28


# ---------------------------------------------------------------------------------------------
# Validation, shared by every engine.


def _check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
        raise ValueError(f"`bits` must be a positive integer code length. Received: bits={bits!r}")
    return int(bits)


def _check_codes(codes, name, bits):
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


def _check_k(k, ntotal):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= ntotal:
        raise ValueError(
            f"`k` must be an integer between 1 and the database size {ntotal}. Received: k={k!r}"
        )
    return int(k)


def _check_radius(radius, bits):
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


# ---------------------------------------------------------------------------------------------
# The exact engine's kernels (numba).


@intrinsic
def _popcount(typingctx, word):
    """Population count of a uint64 as LLVM's `ctpop`: one POPCNT instruction on x86-64."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return signature, codegen


@numba.njit(cache=True, nogil=True)
def _keep_k(buffer_distances, buffer_ids, count, k, bits):
    """Keeps, in place, the `k` best of `count` candidates (in id order), ties to the lower id.

    Returns the threshold distance `t`: every kept code has distance <= t, and any later code
    (higher id) needs distance < t to enter.
    """
    histogram = np.zeros(bits + 2, dtype=np.int64)
    for j in range(count):
        histogram[buffer_distances[j]] += 1
    below = 0
    threshold = 0
    while below + histogram[threshold] < k:
        below += histogram[threshold]
        threshold += 1
    at_threshold = k - below  # the first `at_threshold` codes at the threshold, in id order
    kept = 0
    for j in range(count):
        distance = buffer_distances[j]
        if distance < threshold or (distance == threshold and at_threshold > 0):
            if distance == threshold:
                at_threshold -= 1
            buffer_distances[kept] = distance
            buffer_ids[kept] = buffer_ids[j]
            kept += 1
    return threshold


@numba.njit(cache=True, nogil=True)
def _scan_one_word(word, db_words, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits):
    """Scans codes `lo..hi-1` of one-word (<= 64-bit) codes for one query: (count, bound).

    Each sub-chunk's smallest distance comes first, from a loop that LLVM vectorises (a vector
    popcount on AVX-512, `vpopcntq`); only a sub-chunk holding a code under the bound is scanned
    again one code at a time. Once the bound has dropped, that is rare.
    """
    capacity = buffer_distances.shape[0]
    sub_distances = np.empty(SUB_CHUNK, dtype=np.uint64)
    for sub_lo in range(lo, hi, SUB_CHUNK):
        # Unsigned indices spare LLVM numba's negative-index wraparound, so the loop vectorises
        # cleanly (about 2x faster than with signed ones).
        base = np.uint64(sub_lo)
        sub_size = min(SUB_CHUNK, hi - sub_lo)
        smallest = np.uint64(bits + 1)
        if sub_size == SUB_CHUNK:
            for j in range(SUB_CHUNK):
                distance = _popcount(word ^ db_words[base + np.uint64(j)])
                sub_distances[np.uint64(j)] = distance
                smallest = min(smallest, distance)
        else:
            for j in range(sub_size):
                distance = _popcount(word ^ db_words[base + np.uint64(j)])
                sub_distances[np.uint64(j)] = distance
                smallest = min(smallest, distance)
        if np.int64(smallest) >= bound:
            continue
        for j in range(sub_size):
            distance = np.int64(sub_distances[j])
            if distance < bound:
                buffer_distances[count] = distance
                buffer_ids[count] = sub_lo + j
                count += 1
                if count == capacity:
                    bound = _keep_k(buffer_distances, buffer_ids, count, k, bits)
                    count = k
    return count, bound


@numba.njit(cache=True, nogil=True)
def _scan_words(query, db_words, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits):
    """Scans codes `lo..hi-1` of multi-word codes for one query; returns its (count, bound)."""
    capacity = buffer_distances.shape[0]
    nwords = db_words.shape[1]
    for i in range(lo, hi):
        distance = np.int64(0)
        for w in range(nwords):
            distance += np.int64(_popcount(query[w] ^ db_words[i, w]))
        if distance < bound:
            buffer_distances[count] = distance
            buffer_ids[count] = i
            count += 1
            if count == capacity:
                bound = _keep_k(buffer_distances, buffer_ids, count, k, bits)
                count = k
    return count, bound


@numba.njit(cache=True, nogil=True)
def _scan(query, db_words, db_column, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits):
    if db_words.shape[1] == 1:
        return _scan_one_word(
            query[0], db_column, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits
        )
    return _scan_words(query, db_words, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits)


@numba.njit(cache=True, nogil=True)
def _guess_bound(query, db_words, k, bits):
    """An admission bound likely, not surely, above the k-th distance: from a database sample.

    Returns the smallest distance whose count in the sample reaches its share of k, plus
    `GUESS_MARGIN` + 1; `bits + 1` (admit all) when the sample is most of the database.
    """
    ntotal, nwords = db_words.shape
    if ntotal < 4 * SAMPLE:
        return np.int64(bits + 1)
    step = ntotal // SAMPLE
    histogram = np.zeros(bits + 1, dtype=np.int64)
    for s in range(SAMPLE):
        distance = 0
        for w in range(nwords):
            distance += _popcount(query[w] ^ db_words[s * step, w])
        histogram[distance] += 1
    needed = k * SAMPLE / ntotal
    below = 0
    for threshold in range(bits + 1):
        below += histogram[threshold]
        if below >= needed:
            return np.int64(min(bits + 1, threshold + GUESS_MARGIN + 1))
    return np.int64(bits + 1)


@numba.njit(parallel=True, cache=True, nogil=True)
def _exact_search(query_words, db_words, k, bits, block, capacity, chunk):
    nq, nwords = query_words.shape
    ntotal = db_words.shape[0]
    db_column = np.ascontiguousarray(db_words[:, 0])  # one-word codes as a contiguous vector
    out_distances = np.empty((nq, k), dtype=np.int32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    nblocks = (nq + block - 1) // block
    for b in numba.prange(nblocks):
        start = b * block
        size = min(block, nq - start)
        buffer_distances = np.empty((size, capacity), dtype=np.int32)
        buffer_ids = np.empty((size, capacity), dtype=np.int64)
        counts = np.zeros(size, dtype=np.int64)
        # A guessed admission bound per query, from a strided sample of the database: the
        # sample's k/ntotal quantile plus a margin. A guess too low is caught below.
        bounds = np.empty(size, dtype=np.int64)  # admit distance < bound
        for q in range(size):
            bounds[q] = _guess_bound(query_words[start + q], db_words, k, bits)
        # Database chunks small enough to stay in cache while every query of the block scans them.
        for lo in range(0, ntotal, chunk):
            hi = min(lo + chunk, ntotal)
            for q in range(size):
                counts[q], bounds[q] = _scan(
                    query_words[start + q], db_words, db_column, lo, hi, bounds[q],
                    buffer_distances[q], buffer_ids[q], counts[q], k, bits,
                )
        for q in range(size):
            if counts[q] < k:  # fewer than k under the guess: the guess was low; scan again
                counts[q], bounds[q] = _scan(
                    query_words[start + q], db_words, db_column, 0, ntotal, bits + 1,
                    buffer_distances[q], buffer_ids[q], 0, k, bits,
                )
        # Exactly k per query, then a stable counting sort by distance (ids stay ascending).
        histogram = np.empty(bits + 2, dtype=np.int64)
        for q in range(size):
            if counts[q] > k:
                _keep_k(buffer_distances[q], buffer_ids[q], counts[q], k, bits)
            histogram[:] = 0
            for j in range(k):
                histogram[buffer_distances[q, j] + 1] += 1
            for d in range(1, bits + 2):
                histogram[d] += histogram[d - 1]
            for j in range(k):
                distance = buffer_distances[q, j]
                slot = histogram[distance]
                histogram[distance] += 1
                out_distances[start + q, slot] = distance
                out_ids[start + q, slot] = buffer_ids[q, j]
    return out_distances, out_ids


@numba.njit(parallel=True, cache=True, nogil=True)
def _range_counts(query_words, db_words, radius):
    nq, nwords = query_words.shape
    counts = np.zeros(nq, dtype=np.int64)
    for q in numba.prange(nq):
        c = 0
        for i in range(db_words.shape[0]):
            distance = 0
            for w in range(nwords):
                distance += _popcount(query_words[q, w] ^ db_words[i, w])
            if distance <= radius:
                c += 1
        counts[q] = c
    return counts


@numba.njit(parallel=True, cache=True, nogil=True)
def _range_fill(query_words, db_words, radius, offsets, out_distances, out_ids):
    """Fills each query's slice, counting-sorted by distance (ids ascending within a distance)."""
    nq, nwords = query_words.shape
    for q in numba.prange(nq):
        histogram = np.zeros(radius + 2, dtype=np.int64)
        for i in range(db_words.shape[0]):
            distance = 0
            for w in range(nwords):
                distance += _popcount(query_words[q, w] ^ db_words[i, w])
            if distance <= radius:
                histogram[distance + 1] += 1
        histogram[0] = offsets[q]
        for d in range(1, radius + 2):
            histogram[d] += histogram[d - 1]
        for i in range(db_words.shape[0]):
            distance = 0
            for w in range(nwords):
                distance += _popcount(query_words[q, w] ^ db_words[i, w])
            if distance <= radius:
                slot = histogram[distance]
                histogram[distance] += 1
                out_distances[slot] = distance
                out_ids[slot] = i


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
    """

    def __init__(self, db_codes, bits, query_block=QUERY_BLOCK):
        self.bits = _check_bits(bits)
        db_codes = _check_codes(db_codes, "db_codes", self.bits)
        if len(db_codes) == 0:
            raise ValueError(
                f"`db_codes` must hold at least one code. Received: db_codes.shape={db_codes.shape}"
            )
        self.ntotal = len(db_codes)
        self.code_size = db_codes.shape[1]
        self.query_block = int(query_block)
        self._db_words = _to_words(db_codes)

    def search(self, query_codes, k):
        """Finds the `k` nearest codes per query: `(int32 [nq, k], int64 [nq, k])`."""
        query_codes = _check_codes(query_codes, "query_codes", self.bits)
        k = _check_k(k, self.ntotal)
        # Room for k kept plus at least as many new candidates between two selections.
        capacity = min(self.ntotal, 2 * k + 256)
        block = max(1, min(self.query_block, BUFFER_BYTES // (12 * capacity)))
        if len(query_codes) == 0:
            return np.empty((0, k), np.int32), np.empty((0, k), np.int64)
        return _exact_search(
            _to_words(query_codes), self._db_words, k, self.bits, block, capacity, DB_CHUNK
        )

    def range_search(self, query_codes, radius):
        """Every code within `radius` per query: a list of `(int32 [m], int64 [m])`."""
        query_codes = _check_codes(query_codes, "query_codes", self.bits)
        radius = _check_radius(radius, self.bits)
        if len(query_codes) == 0:
            return []
        query_words = _to_words(query_codes)
        counts = _range_counts(query_words, self._db_words, radius)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        distances = np.empty(offsets[-1], dtype=np.int32)
        ids = np.empty(offsets[-1], dtype=np.int64)
        _range_fill(query_words, self._db_words, radius, offsets, distances, ids)
        return [
            (distances[offsets[q]:offsets[q + 1]], ids[offsets[q]:offsets[q + 1]])
            for q in range(len(query_codes))
        ]


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

        self.bits = _check_bits(bits)
        db_codes = _check_codes(db_codes, "db_codes", self.bits)
        if len(db_codes) == 0:
            raise ValueError(
                f"`db_codes` must hold at least one code. Received: db_codes.shape={db_codes.shape}"
            )
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
        query_codes = np.ascontiguousarray(_check_codes(query_codes, "query_codes", self.bits))
        k = _check_k(k, self.ntotal)
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
        query_codes = np.ascontiguousarray(_check_codes(query_codes, "query_codes", self.bits))
        radius = _check_radius(radius, self.bits)
        # FAISS's binary range search keeps distances strictly below its radius.
        lims, distances, ids = self.index.range_search(query_codes, radius + 1)
        distances = distances.astype(np.int32, copy=False)
        ids = ids.astype(np.int64, copy=False)
        return [
            _sort_rows(distances[lims[q]:lims[q + 1]], ids[lims[q]:lims[q + 1]])
            for q in range(len(query_codes))
        ]


def make_engine(name, db_codes, bits, **options):
    """Builds a search engine over packed codes by name.

    Args:
        name: one of `ENGINES`: `"exact"`, `"faiss"`, `"faiss-ivf"` or `"faiss-mih"`. No default.
        db_codes: packed `uint8` codes `[ntotal, ceil(bits / 8)]` from `evaluate.pack_bits`.
            No default.
        bits: the code length `L`. No default.
        **options: engine options: `query_block` (`exact`); `nlist`, `nprobe` (`faiss-ivf`);
            `nhash`, `nflip` (`faiss-mih`).

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
        "exact": {"query_block"},
        "faiss": set(),
        "faiss-ivf": {"nlist", "nprobe"},
        "faiss-mih": {"nhash", "nflip"},
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
    kind = {"faiss": "flat", "faiss-ivf": "ivf", "faiss-mih": "mih"}[name]
    return FaissEngine(db_codes, bits, kind=kind, **options)
