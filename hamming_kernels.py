"""The `exact` engine's compiled kernels (numba): popcount scans with a counting top-k.

Kept apart from `engines.py` so that importing the engines, and searching a few queries, never
imports numba or loads its compiled code (about a second on a 2-core machine): `engines.py` ranks
small batches with NumPy and calls these kernels for larger ones. See `engines.py` for the method.
"""

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

# Database codes scanned by every query of a block before the next chunk: 4096 x 8 bytes stays
# in L1/L2 cache while the block's queries pass over it.
DB_CHUNK = 4096

# Codes whose smallest distance is checked at once (vectorised) before any is looked at alone.
SUB_CHUNK = 64

# Database codes sampled per query to guess its admission bound, and the margin (in distance)
# added to the sample's quantile: a guess below the k-th distance costs a second scan.
SAMPLE = 2048
GUESS_MARGIN = 1


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
def _collect(sub_distances, sub_size, sub_lo, bound, buffer_distances, buffer_ids, count, k, bits):
    """Appends a sub-chunk's codes under the bound to the buffer, selecting when it is full: (count, bound)."""
    capacity = buffer_distances.shape[0]
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
def _scan_one_word(word, db_words, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits):
    """Scans codes `lo..hi-1` of one-word (<= 64-bit) codes for one query: (count, bound).

    Each sub-chunk's smallest distance comes first, from a loop that LLVM vectorises (a vector
    popcount on AVX-512, `vpopcntq`); only a sub-chunk holding a code under the bound is scanned
    again one code at a time. Once the bound has dropped, that is rare.
    """
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
        if np.int64(smallest) < bound:
            count, bound = _collect(sub_distances, sub_size, sub_lo, bound, buffer_distances, buffer_ids, count, k, bits)
    return count, bound


@numba.njit(cache=True, nogil=True)
def _scan_columns(query, db_columns, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits):
    """Scans codes `lo..hi-1` of multi-word codes for one query; returns its (count, bound).

    The database is stored word-major (`db_columns[w]` holds word `w` of every code), so each
    word's popcounts for a sub-chunk come from one contiguous, vectorised loop.
    """
    nwords = db_columns.shape[0]
    sub_distances = np.empty(SUB_CHUNK, dtype=np.uint64)
    for sub_lo in range(lo, hi, SUB_CHUNK):
        base = np.uint64(sub_lo)
        sub_size = min(SUB_CHUNK, hi - sub_lo)
        word, column = query[0], db_columns[0]
        for j in range(sub_size):
            sub_distances[np.uint64(j)] = _popcount(word ^ column[base + np.uint64(j)])
        for w in range(1, nwords):
            word, column = query[w], db_columns[w]
            for j in range(sub_size):
                sub_distances[np.uint64(j)] += _popcount(word ^ column[base + np.uint64(j)])
        smallest = np.uint64(bits + 1)
        for j in range(sub_size):
            smallest = min(smallest, sub_distances[np.uint64(j)])
        if np.int64(smallest) < bound:
            count, bound = _collect(sub_distances, sub_size, sub_lo, bound, buffer_distances, buffer_ids, count, k, bits)
    return count, bound


@numba.njit(cache=True, nogil=True)
def _scan(query, db_columns, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits):
    if db_columns.shape[0] == 1:
        return _scan_one_word(
            query[0], db_columns[0], lo, hi, bound, buffer_distances, buffer_ids, count, k, bits
        )
    return _scan_columns(
        query, db_columns, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits
    )


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
def exact_search(query_words, db_words, db_columns, k, bits, block, capacity, chunk):
    """The k nearest per query, `(int32 [nq, k], int64 [nq, k])`, ties to the lower id.

    `db_words` is the database `[ntotal, nwords]`, `db_columns` the same words word-major
    `[nwords, ntotal]` (for one word, the same memory).
    """
    nq = query_words.shape[0]
    ntotal = db_words.shape[0]
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
                    query_words[start + q], db_columns, lo, hi, bounds[q],
                    buffer_distances[q], buffer_ids[q], counts[q], k, bits,
                )
        for q in range(size):
            if counts[q] < k:  # fewer than k under the guess: the guess was low; scan again
                counts[q], bounds[q] = _scan(
                    query_words[start + q], db_columns, 0, ntotal, bits + 1,
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
def range_counts(query_words, db_words, radius):
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
def range_fill(query_words, db_words, radius, offsets, out_distances, out_ids):
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
