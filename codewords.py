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
