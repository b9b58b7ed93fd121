"""The `exact` engine's compiled kernels (numba): popcount scans with a counting top-k.

Kept apart from `engines.py` so that importing the engines, and searching a few queries, never
imports numba or loads its compiled code (about a second on a 2-core machine): `engines.py` ranks
small batches with NumPy and calls these kernels for larger ones. See `engines.py` for the method.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# Database codes scanned by every query of a block before the next chunk: 4096 x 8 bytes stays
# in L1/L2 cache while the block's queries pass over it.
DB_CHUNK = 4096

# Codes whose smallest distance is checked at once (vectorised) before any is looked at alone.
# 64: the one-word scan marks a sub-chunk's codes under the bound in the bits of one uint64.
SUB_CHUNK = 64

# uint64 lanes of the explicit vectors in the one-word scan: 512 bits, one AVX-512 register.
LANES = 8

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


@intrinsic
def _trailing_zeros(typingctx, word):
    """Index of the lowest set bit of a nonzero uint64, as LLVM's `cttz`: one TZCNT on x86-64."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return signature, codegen


# The one-word scan's sub-chunk test is written as LLVM vector IR rather than as a numba loop.
# LLVM's loop vectoriser prefers 256-bit vectors on AVX-512 CPUs (its `prefer-256-bit` tuning),
# so a loop compiles to ymm registers, 4 popcounts per `vpopcntq`; vector types written in the IR
# are instead legalised to the widest registers the target has: zmm (8 per `vpopcntq`) on
# AVX-512, two ymm on AVX2, four xmm (popcount expanded to shuffles or bit arithmetic) on older
# CPUs. Nothing global changes (no numba or LLVM setting), and numba's cache is keyed by the CPU
# name and features, so a cache compiled for one CPU is never loaded on another.


def _vector_intrinsic(builder, name, vector_type, nargs):
    """Declares the overloaded LLVM intrinsic `name` (`llvm.ctpop`, `llvm.umin`) for `vector_type`."""
    full_name = f"{name}.v{vector_type.count}i{vector_type.element.width}"
    function_type = ir.FunctionType(vector_type, [vector_type] * nargs)
    return cgutils.get_or_insert_function(builder.module, function_type, full_name)


def _splat(builder, value, vector_type):
    """`value` in every lane of a `vector_type`."""
    undefined = ir.Constant(vector_type, ir.Undefined)
    lane0 = builder.insert_element(undefined, value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(lane0, undefined, zeros)


def _sub_chunk_distances(context, builder, sig, args):
    """IR for the distances of `word` to `words[start:start + SUB_CHUNK]`: SUB_CHUNK // LANES vectors."""
    word, words, start = args[:3]
    data = context.make_array(sig.args[1])(context, builder, words).data
    i64 = ir.IntType(64)
    vector_type = ir.VectorType(i64, LANES)
    ctpop = _vector_intrinsic(builder, "llvm.ctpop", vector_type, 1)
    query = _splat(builder, word, vector_type)
    distances = []
    for first in range(0, SUB_CHUNK, LANES):
        pointer = builder.gep(data, [builder.add(start, ir.Constant(i64, first))])
        codes = builder.load(builder.bitcast(pointer, vector_type.as_pointer()), align=8)
        distances.append(builder.call(ctpop, [builder.xor(codes, query)]))
    return distances


def _sub_chunk_signature(return_type, words):
    if not (isinstance(words, types.Array) and words.ndim == 1 and words.layout == "C"
            and words.dtype == types.uint64):
        return None
    return return_type(types.uint64, words, types.uint64, types.uint64)


@intrinsic
def _any_below(typingctx, word, words, start, bound):
    """Whether any of `words[start:start + SUB_CHUNK]` lies at distance < `bound` from `word`.

    `words` is a contiguous uint64 array holding all SUB_CHUNK words (not checked): XOR, popcount
    and their minimum, 8 codes per instruction on AVX-512.
    """

    def codegen(context, builder, sig, args):
        distances = _sub_chunk_distances(context, builder, sig, args)
        vector_type = distances[0].type
        umin = _vector_intrinsic(builder, "llvm.umin", vector_type, 2)
        while len(distances) > 1:
            distances = [builder.call(umin, distances[i:i + 2]) for i in range(0, len(distances), 2)]
        below = builder.icmp_unsigned("<", distances[0], _splat(builder, args[3], vector_type))
        lanes = builder.bitcast(below, ir.IntType(LANES))
        return builder.icmp_unsigned("!=", lanes, ir.Constant(ir.IntType(LANES), 0))

    return _sub_chunk_signature(types.boolean, words), codegen


@intrinsic
def _below_mask(typingctx, word, words, start, bound):
    """A uint64 whose bit `j` is set when `words[start + j]` lies at distance < `bound` from `word`.

    Same preconditions as `_any_below`; after it, LLVM reuses its popcounts.
    """

    def codegen(context, builder, sig, args):
        distances = _sub_chunk_distances(context, builder, sig, args)
        vector_type = distances[0].type
        bound = _splat(builder, args[3], vector_type)
        i64 = ir.IntType(64)
        mask = ir.Constant(i64, 0)
        for v, vector in enumerate(distances):
            below = builder.bitcast(builder.icmp_unsigned("<", vector, bound), ir.IntType(LANES))
            mask = builder.or_(mask, builder.shl(builder.zext(below, i64), ir.Constant(i64, v * LANES)))
        return mask

    return _sub_chunk_signature(types.uint64, words), codegen


@numba.njit(cache=True, nogil=True)
def _scan_one_word(word, db_words, lo, hi, bound, buffer_distances, buffer_ids, count, k, bits):
    """Scans codes `lo..hi-1` of one-word (<= 64-bit) codes for one query: (count, bound).

    Per sub-chunk of 64 codes, `_any_below` tells whether any lies under the bound (no distance is
    stored); only then does `_below_mask` mark which, and just those are appended, found by their
    bits. A last partial sub-chunk is marked by a plain loop.
    """
    capacity = buffer_distances.shape[0]
    limit = np.uint64(bound)
    full_end = lo + (hi - lo) // SUB_CHUNK * SUB_CHUNK
    for sub_lo in range(lo, hi, SUB_CHUNK):
        # Unsigned indices spare LLVM numba's negative-index wraparound.
        base = np.uint64(sub_lo)
        if sub_lo < full_end:
            if not _any_below(word, db_words, base, limit):
                continue
            mask = _below_mask(word, db_words, base, limit)
        else:
            mask = np.uint64(0)
            for j in range(hi - sub_lo):
                below = _popcount(word ^ db_words[base + np.uint64(j)]) < limit
                mask |= np.uint64(below) << np.uint64(j)
        while mask != 0:
            j = _trailing_zeros(mask)
            mask &= mask - np.uint64(1)
            distance = np.int64(_popcount(word ^ db_words[base + j]))
            if distance < bound:  # the bound may have dropped since the mask was made
                buffer_distances[count] = distance
                buffer_ids[count] = sub_lo + np.int64(j)
                count += 1
                if count == capacity:
                    bound = _keep_k(buffer_distances, buffer_ids, count, k, bits)
                    limit = np.uint64(bound)
                    count = k
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
