"""Tests for evaluate.py: packing, metrics against their plain definitions, Euclidean search, ties, bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines import MISSING_DISTANCE, MISSING_ID
from evaluate import (
    average_precision,
    ExactEuclideanSearch,
    evaluate_features,
    evaluate_retrieval,
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


def reference_relevance(query_labels, db_labels):
    """Same integer label, or, for multi-hot rows, at least one label shared."""
    if np.ndim(db_labels) == 2:
        return np.asarray(query_labels) @ np.asarray(db_labels).T > 0
    return np.asarray(query_labels)[:, None] == np.asarray(db_labels)[None, :]


def reference_ranked_metrics(ids, relevant):
    """mAP (by `average_precision`, the plain definition) and mean precision@k of ranked lists
    `ids` [nq, top], from relevance [nq, ntotal]."""
    ranked = np.array([relevant_row[ranked_ids] for relevant_row, ranked_ids in zip(relevant, ids)])
    precision_rows = np.cumsum(ranked, axis=1) / np.arange(1, ranked.shape[1] + 1)
    return np.mean([average_precision(row) for row in ranked]), precision_rows.mean(axis=0)


def reference_metrics(query_bits, query_labels, db_bits, db_labels, top):
    _, ids = reference_ranking(query_bits, db_bits, top)
    return reference_ranked_metrics(ids, reference_relevance(query_labels, db_labels))


def reference_radius_metrics(query_bits, query_labels, db_bits, db_labels):
    """Mean precision and recall within each Hamming radius 0..L, one query and radius at a time."""
    distances = reference_distances(query_bits, db_bits)
    relevant = reference_relevance(query_labels, db_labels)
    precision_rows, recall_rows = [], []
    for distance_row, relevant_row in zip(distances, relevant):
        precision_row, recall_row = [], []
        for radius in range(query_bits.shape[1] + 1):
            within = distance_row <= radius
            found = np.sum(within & relevant_row)
            precision_row.append(found / within.sum() if within.any() else 0.0)
            recall_row.append(found / relevant_row.sum() if relevant_row.any() else 0.0)
        precision_rows.append(precision_row)
        recall_rows.append(recall_row)
    return np.mean(precision_rows, axis=0), np.mean(recall_rows, axis=0)


def reference_euclidean_ranking(query_features, db_features, k):
    distances = ((query_features[:, None, :] - db_features[None, :, :]) ** 2).sum(axis=-1)
    ids = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, ids, axis=1), ids


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


# Ranking: ties go to the lower database index.


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
    # mAP over the whole database does not depend on top: 97/180, as worked out below.
    metrics = evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS, top=3)
    np.testing.assert_allclose(metrics["precision_at_k"], [1 / 3, 1 / 3, 4 / 9])
    assert metrics["precision"] == pytest.approx(4 / 9)
    assert metrics["mAP"] == pytest.approx(17 / 36)
    assert metrics["mAP_all"] == pytest.approx(97 / 180)


def test_metrics_hand_worked_whole_database():
    # Precision@1..5: A 1, 1/2, 2/3, 2/4, 2/5;  B 0, 1/2, 2/3, 2/4, 2/5;  C 0, 0, 0, 0, 1/5.
    # Means: 1/3, 1/3, 4/9, (1/2+1/2)/3 = 1/3, (2/5+2/5+1/5)/3 = 1/3.
    # AP: A 5/6, B 7/12 as in the top 3;  C (1/5) / 1 = 1/5.
    # mAP = (50/60 + 35/60 + 12/60) / 3 = 97/180.
    metrics = evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS, top=5)
    np.testing.assert_allclose(metrics["precision_at_k"], [1 / 3, 1 / 3, 4 / 9, 1 / 3, 1 / 3])
    assert metrics["precision"] == pytest.approx(1 / 3)
    assert metrics["mAP"] == pytest.approx(97 / 180)
    assert metrics["mAP_all"] == metrics["mAP"]  # top = ntotal: the same number, computed once


def test_precision_recall_curve_hand_worked():
    # Within radius r = 0..4 (items, then relevant among them; relevant in the database: A 2, B 2,
    # C 1), and precision, recall:
    #   A: 1,1  3,2  4,2  4,2  5,2   P 1, 2/3, 1/2, 1/2, 2/5   R 1/2, 1, 1, 1, 1
    #   B: 1,0  1,0  2,1  4,2  5,2   P 0, 0, 1/2, 1/2, 2/5     R 0, 0, 1/2, 1, 1
    #   C: 1,0  3,0  4,0  4,0  5,1   P 0, 0, 0, 0, 1/5         R 0, 0, 0, 0, 1
    # Means: P 1/3, 2/9, 1/3, 1/3, 1/3;  R 1/6, 1/3, 1/2, 2/3, 1.
    metrics = evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS, top=3)
    curve = metrics["pr_curve"]
    np.testing.assert_array_equal(curve["radius"], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(curve["precision"], [1 / 3, 2 / 9, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(curve["recall"], [1 / 6, 1 / 3, 1 / 2, 2 / 3, 1])
    assert metrics["precision_r2"] == pytest.approx(1 / 3)
    assert metrics["recall_r2"] == pytest.approx(1 / 2)


def test_radius_2_counts_a_query_with_nothing_within_it_as_precision_0():
    # 6-bit database (id: code, label): 0: 000000, 0   1: 000001, 0   2: 000011, 1   3: 111111, 0.
    # X: 000000, 0  distances 0, 1, 2, 6: ids 0, 1, 2 within radius 2, of which 0 and 1 relevant,
    #    of 3 relevant in all: precision 2/3, recall 2/3.
    # Y: 111000, 1  distances 3, 4, 5, 3: nothing within radius 2: precision 0, recall 0.
    # Z: 000000, 5  no label 5 in the database: 3 items within radius 2, none relevant:
    #    precision 0; recall 0 at every radius, and AP 0.
    # Means over all three: precision (2/3 + 0 + 0)/3 = 2/9, recall the same.
    db_bits = [[0] * 6, [0] * 5 + [1], [0] * 4 + [1, 1], [1] * 6]
    query_bits = [[0] * 6, [1, 1, 1, 0, 0, 0], [0] * 6]
    metrics = evaluate_retrieval(query_bits, [0, 1, 5], db_bits, [0, 0, 1, 0], top=4)
    assert metrics["precision_r2"] == pytest.approx(2 / 9)
    assert metrics["recall_r2"] == pytest.approx(2 / 9)
    # Radius 6 takes in everything: precision X 3/4, Y 1/4, Z 0; recall X 1, Y 1, Z 0.
    assert metrics["pr_curve"]["precision"][-1] == pytest.approx(1 / 3)
    assert metrics["pr_curve"]["recall"][-1] == pytest.approx(2 / 3)
    # AP: X relevant at ranks 1, 2, 4: (1 + 1 + 3/4)/3 = 11/12;  Y (id 2 at rank 4): 1/4;  Z 0.
    assert metrics["mAP_all"] == pytest.approx((11 / 12 + 1 / 4) / 3)


# Multi-label: 4-bit database (id: code, multi-hot labels over 3 classes):
#   0: 0000 [1,0,0]   1: 0001 [0,1,1]   2: 0011 [0,0,1]   3: 0111 [1,1,0]   4: 1111 [0,0,0]
# Relevant = shares at least one label. Queries:
#   P: 0000 [0,1,0]  relevant 1, 3   distances 0,1,2,3,4  ranking 0,1,2,3,4  relevant 0,1,0,1,0
#   Q: 1111 [1,0,1]  relevant 0..3   distances 4,3,2,1,0  ranking 4,3,2,1,0  relevant 0,1,1,1,1
# (id 4 has no label, so it is relevant to nothing.)
MULTI_DB_BITS = [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]
MULTI_DB_LABELS = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]])
MULTI_QUERY_BITS = [[0, 0, 0, 0], [1, 1, 1, 1]]
MULTI_QUERY_LABELS = np.array([[0, 1, 0], [1, 0, 1]])


def test_multi_label_metrics_hand_worked():
    # Top 3: precision@1..3 P 0, 1/2, 1/3;  Q 0, 1/2, 2/3;  means 0, 1/2, 1/2.
    # AP@3: P (1/2)/1 = 1/2;  Q (1/2 + 2/3)/2 = 7/12;  mAP@3 = 13/24.
    # AP over all 5: P (1/2 + 2/4)/2 = 1/2;  Q (1/2 + 2/3 + 3/4 + 4/5)/4 = 163/240;
    # mAP@all = (120/240 + 163/240)/2 = 283/480.
    # Radius 2: P ids 0, 1, 2 within, 1 relevant of 2: precision 1/3, recall 1/2;
    # Q ids 2, 3, 4 within, 2 relevant of 4: precision 2/3, recall 1/2.
    metrics = evaluate_retrieval(
        MULTI_QUERY_BITS, MULTI_QUERY_LABELS, MULTI_DB_BITS, MULTI_DB_LABELS, top=3
    )
    np.testing.assert_allclose(metrics["precision_at_k"], [0, 1 / 2, 1 / 2])
    assert metrics["mAP"] == pytest.approx(13 / 24)
    assert metrics["mAP_all"] == pytest.approx(283 / 480)
    assert metrics["precision_r2"] == pytest.approx(1 / 2)
    assert metrics["recall_r2"] == pytest.approx(1 / 2)


def test_one_hot_labels_score_as_integer_labels():
    one_hot = np.eye(3, dtype=np.int64)
    integer = evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS, top=3)
    multi = evaluate_retrieval(QUERY_BITS, one_hot[QUERY_LABELS], DB_BITS, one_hot[DB_LABELS], 3)
    for name in ("mAP", "mAP_all", "precision_r2", "recall_r2"):
        assert multi[name] == integer[name]
    for name in ("precision", "recall"):
        np.testing.assert_array_equal(multi["pr_curve"][name], integer["pr_curve"][name])
    np.testing.assert_array_equal(multi["precision_at_k"], integer["precision_at_k"])


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


@pytest.mark.parametrize("multi_label", [False, True])
def test_whole_database_metrics_match_reference_across_batches(multi_label):
    # 7-bit codes (8 radii, many ties); multi-hot labels over 5 classes with some rows empty, so
    # some queries have no relevant item at all. batch_elements forces batches of 3 queries.
    rng = np.random.default_rng(11 + multi_label)
    query_bits, db_bits = random_bits(rng, 40, 7), random_bits(rng, 200, 7)
    if multi_label:
        query_labels = (rng.random((40, 5)) < 0.25).astype(np.int64)
        db_labels = (rng.random((200, 5)) < 0.25).astype(np.int64)
    else:
        query_labels, db_labels = rng.integers(0, 6, size=40), rng.integers(0, 5, size=200)
    metrics = evaluate_retrieval(
        query_bits, query_labels, db_bits, db_labels, top=25, batch_elements=600
    )
    expected_map_all, _ = reference_metrics(query_bits, query_labels, db_bits, db_labels, 200)
    expected_map, expected_precision_at_k = reference_metrics(
        query_bits, query_labels, db_bits, db_labels, 25
    )
    expected_precision, expected_recall = reference_radius_metrics(
        query_bits, query_labels, db_bits, db_labels
    )
    assert metrics["mAP_all"] == pytest.approx(expected_map_all)
    assert metrics["mAP"] == pytest.approx(expected_map)
    np.testing.assert_allclose(metrics["precision_at_k"], expected_precision_at_k)
    np.testing.assert_array_equal(metrics["pr_curve"]["radius"], np.arange(8))
    np.testing.assert_allclose(metrics["pr_curve"]["precision"], expected_precision)
    np.testing.assert_allclose(metrics["pr_curve"]["recall"], expected_recall)
    assert metrics["precision_r2"] == pytest.approx(expected_precision[2])
    assert metrics["recall_r2"] == pytest.approx(expected_recall[2])


def test_evaluate_retrieval_ranks_through_given_search_engine():
    class ReverseSearch:
        """Ranks the database backwards, ignoring the codes: relevant 0,0,1,0,1 for query A."""

        def search(self, query_codes, k):
            ids = np.tile(np.arange(4, 4 - k, -1), (len(query_codes), 1))
            return np.zeros_like(ids, dtype=np.int32), ids

    # Query A (label 1) sees ids 4,3,2: relevant 0,0,1, so AP = (1/3) / 1 = 1/3.
    # The whole-database metrics use the exact ranking whatever the engine: A's AP is 5/6.
    metrics = evaluate_retrieval(QUERY_BITS[:1], [1], DB_BITS, DB_LABELS, 3, search=ReverseSearch())
    assert metrics["mAP"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(metrics["precision_at_k"], [0, 0, 1 / 3])
    assert metrics["mAP_all"] == pytest.approx(5 / 6)


# Float features ranked by Euclidean distance.


def test_float_metrics_hand_worked():
    # Database (id: features, label): 0: (0,0), 1   1: (5,5), 0   2: (1,0), 0   3: (0,2), 1
    # 4: (3,3), 1. Squared distances and rankings:
    #   (0.1, 0), label 1: 0.01, 49.01, 0.81, 4.01, 17.41  ranking 0,2,3  relevant 1,0,1
    #   (5, 4.9), label 0: 49.01, 0.01, 40.01, 33.41, 7.61  ranking 1,4,3  relevant 1,0,0
    # Precision@1..3: 1, 1/2, 2/3 and 1, 1/2, 1/3;  AP@3: (1 + 2/3)/2 = 5/6 and 1;  mAP 11/12.
    db_features = [[0, 0], [5, 5], [1, 0], [0, 2], [3, 3]]
    query_features = [[0.1, 0], [5, 4.9]]
    metrics = evaluate_features(query_features, [1, 0], db_features, [1, 0, 0, 1, 1], top=3)
    assert metrics["mAP"] == pytest.approx(11 / 12)
    np.testing.assert_allclose(metrics["precision_at_k"], [1, 1 / 2, 1 / 2])
    assert metrics["precision"] == pytest.approx(1 / 2)
    distances, ids = ExactEuclideanSearch(db_features).search(query_features, 3)
    np.testing.assert_array_equal(ids, [[0, 2, 3], [1, 4, 3]])
    # |q|^2 + |x|^2 - 2 q.x in float32 loses about 1e-7 x |x|^2 to cancellation: 50 - 49.99 here.
    np.testing.assert_allclose(distances, [[0.01, 0.81, 4.01], [0.01, 7.61, 33.41]], atol=1e-5)


def test_float_multi_label_metrics_hand_worked():
    # The multi-label case above with features equal to the codes: the same rankings.
    metrics = evaluate_features(
        MULTI_QUERY_BITS, MULTI_QUERY_LABELS, MULTI_DB_BITS, MULTI_DB_LABELS, top=3
    )
    assert metrics["mAP"] == pytest.approx(13 / 24)


@pytest.mark.parametrize("k", [1, 3, 4, 5])
def test_euclidean_search_ties_go_to_lower_index(k):
    # Ids 0, 2, 4 tie at distance 2 from the query, ids 1 and 3 at 0.
    db_features = [[1, 1], [0, 0], [1, 1], [0, 0], [1, 1]]
    distances, ids = ExactEuclideanSearch(db_features).search([[0, 0]], k)
    np.testing.assert_array_equal(ids, [[1, 3, 0, 2, 4][:k]])
    np.testing.assert_array_equal(distances, [[0, 0, 2, 2, 2][:k]])


@pytest.mark.parametrize("k", [1, 7, 60, 150])
def test_euclidean_search_and_metrics_match_reference_across_batches(k):
    # Integer features from 12 distinct rows: squared distances are exact in float32 and ties
    # are everywhere, also across the k-th place. batch_elements forces batches of 2 queries.
    rng = np.random.default_rng(k)
    rows = rng.integers(-3, 4, size=(12, 5)).astype(np.float32)
    query_features, db_features = rows[rng.integers(0, 12, 30)], rows[rng.integers(0, 12, 150)]
    query_labels, db_labels = rng.integers(0, 3, 30), rng.integers(0, 3, 150)
    distances, ids = ExactEuclideanSearch(db_features, batch_elements=300).search(query_features, k)
    expected_distances, expected_ids = reference_euclidean_ranking(query_features, db_features, k)
    assert distances.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(distances, expected_distances)
    metrics = evaluate_features(
        query_features, query_labels, db_features, db_labels, top=k, batch_elements=300
    )
    expected_map, expected_precision = reference_ranked_metrics(
        expected_ids, reference_relevance(query_labels, db_labels)
    )
    assert metrics["mAP"] == pytest.approx(expected_map)
    np.testing.assert_allclose(metrics["precision_at_k"], expected_precision)


# Invalid input.


def test_evaluate_rejects_top_out_of_range():
    with pytest.raises(ValueError, match=r"`top` must be an integer between 1 and .* Received: top=0"):
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


def test_rejects_labels_of_wrong_shape():
    with pytest.raises(ValueError, match=r"`query_labels` must .* query_labels\.shape=\(2,\)"):
        evaluate_retrieval(QUERY_BITS, [1, 0], DB_BITS, DB_LABELS, top=3)
    with pytest.raises(ValueError, match=r"`db_labels` .* Received: db_labels\.shape=\(5, 0\)"):
        evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, np.zeros((5, 0)), top=3)
    with pytest.raises(ValueError, match=r"Received: db_labels\.shape=\(5, 1, 1\)"):
        evaluate_features(QUERY_BITS, QUERY_LABELS, DB_BITS, DB_LABELS[:, None, None], top=3)


def test_rejects_mixed_or_mismatched_label_kinds():
    with pytest.raises(ValueError, match=r"both be integer labels \[n\], or both multi-hot .* "
                       r"Received: query_labels\.shape=\(3,\), db_labels\.shape=\(5, 3\)"):
        evaluate_retrieval(QUERY_BITS, QUERY_LABELS, DB_BITS, np.eye(3)[DB_LABELS], top=3)
    with pytest.raises(ValueError, match=r"labels\.shape=\(2, 3\), db_labels\.shape=\(5, 4\)"):
        evaluate_retrieval(MULTI_QUERY_BITS, MULTI_QUERY_LABELS, MULTI_DB_BITS, np.ones((5, 4)), 3)


def test_rejects_multi_hot_labels_other_than_0_or_1():
    with pytest.raises(ValueError, match=r"`db_labels` as multi-hot rows must contain only 0 and 1"
                       r"\. Received: db_labels with a value of 2"):
        evaluate_retrieval(QUERY_BITS, [[1], [0], [1]], DB_BITS, DB_LABELS[:, None], top=3)


def test_rejects_bad_features():
    with pytest.raises(ValueError, match=r"`db_features` must be a 2-D .*\.shape=\(5,\)"):
        ExactEuclideanSearch(np.zeros(5))
    with pytest.raises(ValueError, match=r"`db_features` must hold at least one row"):
        ExactEuclideanSearch(np.zeros((0, 3)))
    with pytest.raises(TypeError, match=r"real numbers .* Received: db_features\.dtype=bool"):
        ExactEuclideanSearch(np.zeros((5, 3), dtype=bool))
    with pytest.raises(ValueError, match=r"`query_features` must be finite\. .* value of nan"):
        evaluate_features([[np.nan, 0.0]], [1], [[0.0, 0.0]], [1], top=1)
    index = ExactEuclideanSearch(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"dimension 3\. Received: query_features\.shape=\(1, 2\)"):
        index.search(np.zeros((1, 2)), 1)
    with pytest.raises(ValueError, match=r"`k` must be an integer between 1 and .* Received: k=6"):
        index.search(np.zeros((1, 3)), 6)
    with pytest.raises(ValueError, match=r"`top` must be an integer between 1 and .* Received: top=6"):
        evaluate_features(np.zeros((1, 3)), [0], np.zeros((5, 3)), np.zeros(5), top=6)


def test_unpack_bits_rejects_wrong_length():
    with pytest.raises(ValueError, match=r"into 2 bytes, i\.e\. in 9\.\.16\. Received: bits=8"):
        unpack_bits(np.zeros((1, 2), dtype=np.uint8), 8)


# Backends.


@pytest.mark.slow
def test_import_does_not_load_tensorflow_or_keras():
    script = "import sys, evaluate; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


# Keras's numpy backend has no kernels of its own here: it exercises the NumPy fallback.


def test_average_precision_by_its_definition():
    assert average_precision([1, 0, 1, 0]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision([0, 1, 1], k=2) == pytest.approx(1 / 2)
    assert average_precision([0, 0, 1], k=2) == 0.0
    assert average_precision([]) == 0.0


def test_a_slot_an_engine_left_empty_counts_as_a_miss_not_as_the_last_item():
    class ApproximateEngine:  # finds only the first neighbour, then MISSING_ID
        def search(self, query_codes, k):
            return np.array([[0, MISSING_DISTANCE]], np.int32), np.array([[0, MISSING_ID]], np.int64)

    db_bits, db_labels = np.array([[0, 0], [1, 1], [0, 1]]), np.array([5, 7, 5])  # the last item is relevant
    metrics = evaluate_retrieval([[0, 0]], [5], db_bits, db_labels, top=2, search=ApproximateEngine())
    assert metrics["precision_at_k"].tolist() == [1.0, 0.5]
    assert metrics["mAP"] == 1.0


def test_map_over_the_whole_ranking_matches_scikit_learn_on_tie_free_codes():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    bits = 24
    # Database code i has i leading ones, so the all-zero query sees distances 0..bits, no ties.
    db_bits = (np.arange(bits)[None, :] < np.arange(bits + 1)[:, None]).astype(np.uint8)
    order = rng.permutation(bits + 1)
    db_bits, distances = db_bits[order], order
    db_labels = rng.integers(0, 3, size=bits + 1)
    query_labels = np.array([0, 1, 2])
    metrics = evaluate_retrieval(np.zeros((3, bits), np.uint8), query_labels, db_bits, db_labels, top=bits + 1)
    expected = [sklearn_metrics.average_precision_score(db_labels == label, -distances) for label in query_labels]
    assert metrics["mAP_all"] == pytest.approx(np.mean(expected))
