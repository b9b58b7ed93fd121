"""Codeword tables of the `dbr` and `hadamard` methods: exact lengths, distinct classes, known distances, Sylvester rows."""

import numpy as np
import pytest

import codewords


@pytest.mark.parametrize("code_type", codewords.CODE_TYPES)
def test_every_length_gives_exactly_bits_and_distinct_classes(code_type):
    for bits in range(8, 257):
        table = codewords.class_codewords(10, bits, code_type)
        assert table.shape == (10, bits), bits
        assert set(np.unique(table)) <= {0, 1}
        assert codewords.min_distance(table) >= 3, bits


@pytest.mark.parametrize("code_type, block_bits, block_distance", [("origin", 12, 6), ("hamming74", 7, 3)])
def test_full_blocks_add_their_distance(code_type, block_bits, block_distance):
    for bits in range(8, 257):
        table = codewords.class_codewords(10, bits, code_type)
        assert codewords.min_distance(table) >= block_distance * (bits // block_bits), bits


def test_lexicode_12_6_is_the_original_block():
    block = codewords.lexicode(12, 6)
    assert block.shape == (16, 12)
    assert codewords.min_distance(block) == 6
    # Greedy order: the all-zero word first, then the smallest word at distance 6.
    np.testing.assert_array_equal(block[0], np.zeros(12))
    np.testing.assert_array_equal(block[1], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])


def test_hamming74_words_are_the_code():
    words = codewords.hamming74_words()
    assert words.shape == (16, 7)
    assert len({tuple(word) for word in words}) == 16
    assert codewords.min_distance(words) == 3


def test_known_minimum_distances():
    # 48 = 4 full 12-bit blocks at distance 6 each: at least 24, and the lexicode's
    # pairs at exactly distance 6 in every block make it exactly 24.
    assert codewords.min_distance(codewords.class_codewords(10, 48, "origin")) == 24
    # 8 bits: no full block; the remainder is the 8-bit lexicode at distance 4.
    assert codewords.min_distance(codewords.class_codewords(10, 8, "origin")) == 4


def test_min_distance_hand_worked():
    table = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    assert codewords.min_distance(table) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 17, "bits": 48}, "2 to 16 classes.*num_classes=17"),
        ({"num_classes": 10, "bits": 48, "code_type": "golay"}, "code_type='golay'"),
        ({"num_classes": 10, "bits": 0}, "bits=0"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        codewords.class_codewords(**kwargs)


def test_sylvester_rows_are_orthogonal():
    matrix = codewords.sylvester_hadamard(16).astype(int)
    np.testing.assert_array_equal(matrix @ matrix.T, 16 * np.eye(16))
    with pytest.raises(ValueError, match="Received: order=12"):
        codewords.sylvester_hadamard(12)


@pytest.mark.parametrize("bits", [8, 16, 32, 64, 128, 256])
def test_hadamard_codewords_are_at_exactly_half_the_length(bits):
    for num_classes in (2, min(10, bits - 1), bits - 1):
        table = codewords.hadamard_codewords(num_classes, bits)
        assert table.shape == (num_classes, bits) and set(np.unique(table)) <= {0, 1}
        distances = (table[:, None] != table[None]).sum(-1)
        np.testing.assert_array_equal(distances[~np.eye(num_classes, dtype=bool)], bits // 2)
        assert not (table == 1).all(axis=1).any()  # the all-ones row is skipped
