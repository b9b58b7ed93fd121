"""Fixed per-class target codewords for the `dbr` method.

DeepBinaryRepre trains its sigmoid latent layer to regress onto one fixed binary
codeword per class. Two families are offered, both built from short blocks that
are tiled until the code is exactly `bits` long:

- `origin` (code type 1, the original tool's choice): the greedy lexicographic
  code ("lexicode") of 12-bit words at minimum distance 6, which has 16 words.
- `hamming74` (code type 2): the 16 codewords of the Hamming(7, 4) code, minimum
  distance 3.

When `bits` is not a multiple of the block length, the `bits % block` bits that
remain are filled with the lexicode of that length that has the largest minimum
distance while still holding one word per class. This keeps every class distinct
at every length from 8 to 256, which the original tool did not (it produced codes
of the wrong width for most lengths). `min_distance` reports the minimum pairwise
Hamming distance that results; the CLI writes it to `metrics.json`.

The `hadamard` method uses `hadamard_codewords` instead: rows of a Sylvester
Hadamard matrix, which are at Hamming distance exactly `bits / 2` from each other
when `bits` is a power of 2 (the largest distance possible for that many words).
"""

import functools

import numpy as np

CODE_TYPES = ("origin", "hamming74")
ORIGIN_BLOCK_BITS = 12
ORIGIN_BLOCK_DISTANCE = 6
HAMMING74_BLOCK_BITS = 7
# Generator matrix of the systematic Hamming(7, 4) code: 4 data bits, 3 parity bits.
HAMMING74_GENERATOR = np.array(
    [
        [1, 0, 0, 0, 1, 1, 0],
        [0, 1, 0, 0, 1, 0, 1],
        [0, 0, 1, 0, 0, 1, 1],
        [0, 0, 0, 1, 1, 1, 1],
    ],
    dtype=np.uint8,
)
MAX_CLASSES = 16


@functools.lru_cache(maxsize=None)
def lexicode(length, distance):
    """Greedy lexicographic code: scan words in increasing order, keep each that is far enough.

    Args:
        length: word length in bits.
        distance: minimum Hamming distance between any two kept words.

    Returns:
        uint8 array of shape `[num_words, length]`, most significant bit first.
    """
    kept = []
    for word in range(2**length):
        if all((word ^ other).bit_count() >= distance for other in kept):
            kept.append(word)
    return _int_words_to_bits(kept, length)


def hamming74_words():
    """All 16 codewords of Hamming(7, 4), in the order of their 4 data bits, as `[16, 7]` uint8."""
    data = _int_words_to_bits(range(16), 4)
    return (data @ HAMMING74_GENERATOR % 2).astype(np.uint8)


def class_codewords(num_classes, bits, code_type="origin"):
    """Target codewords for `num_classes` classes, exactly `bits` long.

    Args:
        num_classes: number of classes; at most 16 (both block codes have 16 words).
        bits: code length, 8 to 256.
        code_type: `"origin"` (12-bit lexicode, distance 6) or `"hamming74"`.
            Defaults to `"origin"`.

    Returns:
        uint8 array of shape `[num_classes, bits]` with values 0/1; row `c` is the
        target of class `c`.
    """
    if code_type not in CODE_TYPES:
        raise ValueError(f"`code_type` must be one of {CODE_TYPES}. Received: code_type={code_type!r}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"The {code_type} codewords exist for 2 to {MAX_CLASSES} classes. "
            f"Received: num_classes={num_classes}"
        )
    if bits < 1:
        raise ValueError(f"`bits` must be positive. Received: bits={bits}")
    if code_type == "origin":
        block = lexicode(ORIGIN_BLOCK_BITS, ORIGIN_BLOCK_DISTANCE)
    else:
        block = hamming74_words()
    full_blocks, remainder = divmod(bits, block.shape[1])
    parts = [block[:num_classes]] * full_blocks
    if remainder:
        parts.append(_remainder_block(remainder, num_classes))
    return np.concatenate(parts, axis=1)


def sylvester_hadamard(order):
    """The Sylvester Hadamard matrix of a power-of-2 order: `H_1 = [1]`, `H_2n = [[H, H], [H, -H]]`.

    Args:
        order: matrix size, a power of 2.

    Returns:
        int8 array of shape `[order, order]` with entries +1/-1; its rows are
        mutually orthogonal, so any two differ in exactly `order / 2` places.
        Row 0 is all +1.
    """
    if order < 1 or order & (order - 1):
        raise ValueError(f"`order` must be a power of 2. Received: order={order}")
    matrix = np.ones((1, 1), dtype=np.int8)
    while len(matrix) < order:
        matrix = np.block([[matrix, matrix], [matrix, -matrix]])
    return matrix


def hadamard_codewords(num_classes, bits):
    """Target codewords for `num_classes` classes from the rows of a Hadamard matrix.

    The matrix is the Sylvester one of order `bits` when `bits` is a power of 2,
    else of the next larger power of 2, truncated to its first `bits` columns
    (no Hadamard matrix of order `bits` is built then). Entry +1 becomes bit 1,
    -1 bit 0. Row 0 (all +1) is never used: it would make one class's target
    the all-ones word, which a sigmoid layer reaches by saturating every unit
    whatever the image, an uninformative code. Rows are picked
    farthest-first (the next row is the one farthest, in Hamming distance, from
    those already picked; ties go to the lower row; the first is row 1). For a
    power-of-2 `bits` every pair of rows is at distance `bits / 2`, so this is
    simply rows `1..num_classes`; after truncation it keeps the minimum distance
    higher than taking rows in order (e.g. 12 instead of 8 at 24 bits, 10
    classes). `min_distance` of the result is what the CLI reports.

    Args:
        num_classes: number of classes, 2 to `order - 1` where `order` is the
            smallest power of 2 that is at least `bits`.
        bits: code length, at least 2.

    Returns:
        uint8 array of shape `[num_classes, bits]` with values 0/1; row `c` is the
        target of class `c`.

    Example:

    >>> table = hadamard_codewords(10, 16)
    >>> table.shape, min_distance(table)
    ((10, 16), 8)
    """
    if bits < 2:
        raise ValueError(f"`bits` must be at least 2. Received: bits={bits}")
    order = 1 << (bits - 1).bit_length()
    usable_rows = order - 1
    if not 2 <= num_classes <= usable_rows:
        raise ValueError(
            f"Hadamard codewords of {bits} bits come from a Hadamard matrix of order {order}, "
            f"which has {usable_rows} usable rows (all but the all-ones row): they serve 2 to "
            f"{usable_rows} classes; use more bits for more classes. "
            f"Received: num_classes={num_classes}, bits={bits}"
        )
    rows = (sylvester_hadamard(order)[1:, :bits] > 0).astype(np.uint8)
    chosen = _farthest_first(rows, num_classes)
    table = rows[chosen]
    if min_distance(table) == 0:  # cannot happen for bits > order / 2; kept as a guard
        raise ValueError(f"Truncated Hadamard rows collide. Received: num_classes={num_classes}, bits={bits}")
    return table


def _farthest_first(rows, count):
    """Indices of `count` rows, each next one the farthest from those chosen (ties: lowest index)."""
    chosen = [0]
    distance_to_chosen = (rows != rows[0]).sum(axis=1)
    distance_to_chosen[0] = -1
    while len(chosen) < count:
        best = int(np.argmax(distance_to_chosen))
        chosen.append(best)
        distance_to_chosen = np.minimum(distance_to_chosen, (rows != rows[best]).sum(axis=1))
        distance_to_chosen[chosen] = -1
    return np.array(chosen)


def min_distance(codewords):
    """Smallest Hamming distance between two different rows of a `[n, bits]` 0/1 array."""
    codewords = np.asarray(codewords, dtype=np.int32)
    distances = (codewords[:, None, :] != codewords[None, :, :]).sum(axis=-1)
    off_diagonal = ~np.eye(len(codewords), dtype=bool)
    return int(distances[off_diagonal].min())


def _remainder_block(length, num_classes):
    """The widest-spread lexicode of `length` bits with a word per class; words repeat if 2**length < classes."""
    for distance in range(length, 0, -1):
        words = lexicode(length, distance)
        if len(words) >= num_classes:
            return words[:num_classes]
    all_words = lexicode(length, 1)
    return all_words[np.arange(num_classes) % len(all_words)]


def _int_words_to_bits(words, length):
    words = np.asarray(list(words), dtype=np.int64)
    shifts = np.arange(length - 1, -1, -1)
    return ((words[:, None] >> shifts) & 1).astype(np.uint8)
