"""Retrieval evaluation: bit packing, exact Hamming and Euclidean search, and the field's metrics.

Vocabulary, shared with the rest of the project:

- `bits`: a 0/1 (or bool) array of shape `[n, L]`, one hash code per row, as the CLI stores it in
  `codes.h5`. `L` is also called `bits` where it is a number (`unpack_bits(codes, bits)`).
- `codes`: the same codes packed by `pack_bits`, `uint8` of shape `[n, ceil(L / 8)]`, most
  significant bit first (NumPy's `np.packbits` order). `code_size` is the number of bytes per code.
- `features`: the float latent activations the codes are thresholded from, `[n, d]`.
- `labels`: integer class labels `[n]` (relevant = same label), or 0/1 multi-hot rows `[n, C]`
  (relevant = shares at least one label, `query_labels @ db_labels.T > 0`).
- `query_*` / `db_*`: the queries and the database searched; `nq` and `ntotal` rows.

Hamming search lives in `engines.py`: every engine answers `search(query_codes, k) -> (distances,
ids)`, each row ranked by (distance, database index), so ties go to the lower index. The metrics
rank the whole database with `engines.BackendEngine.distances`, the active Keras backend's XOR and
popcount, and can rank their top list through any engine instead. `ExactEuclideanSearch` ranks
float features by squared Euclidean distance the same way. `average_precision` is the plain
definition of AP@k that the vectorised metrics are tested against. `import evaluate` imports
neither TensorFlow nor Keras.

Example:

>>> rng = np.random.default_rng(0)
>>> db_bits = rng.integers(0, 2, size=(1000, 48), dtype=np.uint8)
>>> db_labels = rng.integers(0, 10, size=1000)
>>> metrics = evaluate_retrieval(db_bits[:50], db_labels[:50], db_bits, db_labels, top=100)
>>> sorted(metrics)
['mAP', 'mAP_all', 'pr_curve', 'precision', 'precision_at_k', 'precision_r2', 'recall_r2']
"""

from typing import NamedTuple

import numpy as np

import engines

BATCH_ELEMENTS = engines.BATCH_ELEMENTS

# Hamming radius of the "precision and recall within radius 2" that the hashing papers report.
RADIUS = 2

def _check_matrix(array, name, kind, columns):
    """Refuses anything but a 2-D array with at least one column (`columns` names them in the message)."""
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be a 2-D {kind} of shape [n, {columns}] with {columns} >= 1. "
            f"Received: {name}.shape={array.shape}"
        )


def _check_bits(bits, name):
    bits = np.asarray(bits)
    _check_matrix(bits, name, "array", "L")
    invalid = (bits != 0) & (bits != 1)
    if invalid.any():
        raise ValueError(
            f"`{name}` must contain only 0 and 1. "
            f"Received: {name} with a value of {bits[invalid][0]}"
        )
    return bits


def _check_labels(query_labels, db_labels, nq, ntotal):
    """Validated labels: both integer `[n]`, or both 0/1 multi-hot `[n, C]` with the same `C`."""
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    named = (("query_labels", query_labels, nq), ("db_labels", db_labels, ntotal))
    for name, labels, rows in named:
        if labels.ndim not in (1, 2) or len(labels) != rows or 0 in labels.shape[1:]:
            raise ValueError(
                f"`{name}` must hold one label per item: integers of shape [{rows}], or 0/1 "
                f"multi-hot rows of shape [{rows}, C] with C >= 1. "
                f"Received: {name}.shape={labels.shape}"
            )
        if labels.ndim == 2:
            invalid = (labels != 0) & (labels != 1)
            if invalid.any():
                raise ValueError(
                    f"`{name}` as multi-hot rows must contain only 0 and 1. "
                    f"Received: {name} with a value of {labels[invalid][0]}"
                )
    if query_labels.shape[1:] != db_labels.shape[1:]:
        raise ValueError(
            "`query_labels` and `db_labels` must both be integer labels [n], or both multi-hot "
            "rows [n, C] with the same number of classes C. "
            f"Received: query_labels.shape={query_labels.shape}, db_labels.shape={db_labels.shape}"
        )
    return query_labels, db_labels


def _check_features(features, name):
    features = np.asarray(features)
    _check_matrix(features, name, "float array", "d")
    if features.dtype.kind not in "iuf":
        raise TypeError(
            f"`{name}` must hold real numbers (ranked as float32). "
            f"Received: {name}.dtype={features.dtype}"
        )
    features = features.astype(np.float32, copy=False)
    finite = np.isfinite(features)
    if not finite.all():
        raise ValueError(
            f"`{name}` must be finite. Received: {name} with a value of {features[~finite][0]}"
        )
    return features


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
    codes = engines.check_codes(codes, "codes", 8 * np.shape(codes)[-1] if np.ndim(codes) == 2 else 8)
    if not 8 * (codes.shape[1] - 1) < bits <= 8 * codes.shape[1]:
        raise ValueError(
            f"`bits` must be a code length that packs into {codes.shape[1]} bytes, i.e. in "
            f"{8 * codes.shape[1] - 7}..{8 * codes.shape[1]}. Received: bits={bits}"
        )
    return np.unpackbits(codes, axis=1, count=bits)


def _check_not_empty(array, name):
    """Returns `array` if it has at least one row; a search over nothing is a caller's mistake."""
    if len(array) == 0:
        raise ValueError(f"`{name}` must hold at least one row. Received: {name}.shape={array.shape}")
    return array


class ExactEuclideanSearch:
    """Exact k-nearest-neighbour search of float features by squared Euclidean distance.

    For each query batch, `|x|^2 - 2 q.x` comes from one float32 matrix product (BLAS) and
    `np.argpartition` picks the `k` smallest, which are then sorted. Ties go to the lower database
    index, as the Hamming engines do: where the k-th smallest value also occurs outside the `k`
    picked, the row is redone from every item up to that value with a stable sort. Identical
    features always tie exactly (the same arithmetic gives the same float). Expanding the square
    costs float32 cancellation, an absolute error of about 1e-7 x |x|^2 in each distance, so
    items whose distances differ by less than that may be ranked either way.

    Args:
        db_features: float database features of shape `[ntotal, d]`. No default.
        batch_elements: most elements one query batch may hold (query rows x `ntotal`).
            Defaults to `BATCH_ELEMENTS` (2**22).

    Example:

    >>> index = ExactEuclideanSearch([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    >>> distances, ids = index.search([[0.0, 0.5]], k=2)
    >>> distances, ids
    (array([[0.25, 1.25]], dtype=float32), array([[0, 2]]))
    """

    def __init__(self, db_features, batch_elements=BATCH_ELEMENTS):
        db_features = _check_not_empty(_check_features(db_features, "db_features"), "db_features")
        self.ntotal, self.d = db_features.shape
        # One product gives |x|^2 - 2 q.x: queries get a column of ones, the database a row of
        # squared norms under its features times -2 (a power of 2: no rounding of its own).
        norms = np.einsum("ij,ij->i", db_features, db_features)
        self._db_augmented = np.ascontiguousarray(np.vstack([-2 * db_features.T, norms]))
        self._batch_size = max(1, batch_elements // self.ntotal)

    def search(self, query_features, k):
        """Finds the `k` database features nearest to each query.

        Args:
            query_features: float query features of shape `[nq, d]`. No default.
            k: number of neighbours per query, `1 <= k <= ntotal`. No default.

        Returns:
            Tuple `(distances, ids)`: `float32` squared distances (clipped at 0 against rounding)
            and `int64` ids, both of shape `[nq, k]`, each row sorted by (distance, id) ascending.
        """
        query_features = _check_features(query_features, "query_features")
        if query_features.shape[1] != self.d:
            raise ValueError(
                f"`query_features` must have the database's dimension {self.d}. "
                f"Received: query_features.shape={query_features.shape}"
            )
        engines.check_k(k, self.ntotal, "k")
        distances = np.empty((len(query_features), k), dtype=np.float32)
        ids = np.empty((len(query_features), k), dtype=np.int64)
        for start in range(0, len(query_features), self._batch_size):
            batch = slice(start, start + self._batch_size)
            queries = query_features[batch]
            # A query's own |q|^2 is the same along its row: it is added after the ranking.
            partial = np.hstack([queries, np.ones((len(queries), 1), np.float32)])
            partial = partial @ self._db_augmented
            ids[batch] = _smallest(partial, k)
            batch_distances = np.take_along_axis(partial, ids[batch], axis=1)
            batch_distances += np.einsum("ij,ij->i", queries, queries)[:, None]
            distances[batch] = np.maximum(batch_distances, 0)
        return distances, ids


def _sortable(values):
    """float32 values as int32 in the same order (IEEE 754 bits, negatives flipped), any sign."""
    bits = values.view(np.int32)
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


def _smallest(values, k):
    """Ids of the `k` smallest float32 values of each row, by (value, id): ties to the lower id."""
    ntotal = values.shape[1]
    if k == ntotal:
        ids = np.broadcast_to(np.arange(ntotal), values.shape)
    else:
        ids = np.argpartition(values, k - 1, axis=1)[:, :k]
        # argpartition keeps any of the items equal to the k-th value; redo rows where one was
        # left out, so that the lowest ids among them are kept.
        kth = np.take_along_axis(values, ids, axis=1).max(axis=1, keepdims=True)
        for row in np.flatnonzero(np.count_nonzero(values <= kth, axis=1) > k):
            candidates = np.flatnonzero(values[row] <= kth[row])
            ids[row] = candidates[np.argsort(values[row, candidates], kind="stable")[:k]]
    # Sorting (value, id) pairs packed into one int64 is several times faster than a lexsort.
    pairs = _sortable(np.take_along_axis(values, ids, axis=1)).astype(np.int64) << 32
    pairs |= ids
    pairs.sort(axis=1)
    return pairs & 0xFFFFFFFF


class Relevance:
    """Which database items are relevant to each query of a batch, as a bool `[b, ntotal]` array.

    Integer labels: the same label. Multi-hot rows: at least one label shared, i.e.
    `query_labels @ db_labels.T > 0`, as a float32 product (exact for up to 2**24 classes).
    """

    def __init__(self, db_labels):
        self._multi_label = db_labels.ndim == 2
        if self._multi_label:
            self._db_labels = np.ascontiguousarray(db_labels.T, dtype=np.float32)
        else:
            self._db_labels = db_labels[None, :]

    def __call__(self, query_labels):
        if self._multi_label:
            return query_labels.astype(np.float32) @ self._db_labels > 0
        return query_labels[:, None] == self._db_labels


def _relevant_found(relevant, ids):
    """Whether each ranked id is relevant; a slot an engine left empty (`engines.MISSING_ID`) is a miss."""
    ids = np.asarray(ids, dtype=np.int64)
    found = ids != engines.MISSING_ID
    return np.take_along_axis(relevant, np.where(found, ids, 0), axis=1) & found


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


class _FullRanking(NamedTuple):
    """Where a batch's relevant items fall when each query ranks the whole database.

    `rows` and `ranks` (0-based) locate every relevant item, by row and then rank ascending;
    `relevant_counts` `[b]` counts them per query; `relevant_within` and `retrieved_within`
    `[b, L + 1]` count the relevant and all items at Hamming distance <= r for r = 0..L.
    """

    rows: np.ndarray
    ranks: np.ndarray
    relevant_counts: np.ndarray
    relevant_within: np.ndarray
    retrieved_within: np.ndarray


def _full_ranking(distances, relevant, bits):
    """Ranks the whole database by (Hamming distance, id) for each query of a batch.

    One row sort of the distinct integer keys `distance * 2 ntotal + 2 id + relevant` orders the
    items by (distance, id), and the low bit carries relevance along, so no gather follows the
    sort. Distances span only 0..L, so each row's sorted keys also give the count within every
    radius by binary search.

    Args:
        distances: `int32 [b, ntotal]` Hamming distances.
        relevant: bool `[b, ntotal]`.
        bits: the code length L.

    Returns:
        A `_FullRanking`.
    """
    rows_in_batch, ntotal = distances.shape
    stride = 2 * ntotal  # one unit of distance in the keys
    key_dtype = np.int32 if stride * (bits + 1) <= np.iinfo(np.int32).max else np.int64
    keys = np.multiply(distances, stride, dtype=key_dtype)
    keys += np.arange(0, stride, 2, dtype=key_dtype)
    keys += relevant
    keys.sort(axis=1)
    relevant_counts = np.count_nonzero(relevant, axis=1)
    # Places in the flattened batch of sorted keys; the low byte is enough to test the low bit.
    is_relevant = np.bitwise_and(keys, 1, out=np.empty(keys.shape, np.uint8), casting="unsafe")
    places = np.flatnonzero(is_relevant.view(bool))
    rows = np.repeat(np.arange(rows_in_batch), relevant_counts)
    first_keys_beyond = np.arange(1, bits + 2, dtype=key_dtype) * stride  # of radius 0..L
    retrieved_within = np.stack([np.searchsorted(row, first_keys_beyond) for row in keys])
    # Ranked places are ascending, so the relevant items within a radius are found the same way.
    row_starts = np.arange(rows_in_batch)[:, None] * ntotal
    relevant_within = np.searchsorted(places, row_starts + retrieved_within)
    relevant_within -= np.searchsorted(places, row_starts)
    return _FullRanking(
        rows, places - rows * ntotal, relevant_counts, relevant_within, retrieved_within
    )


def _full_ranking_sums(ranking, top):
    """Sums over a batch of precision@k for k = 1..top, AP@top and AP over the whole ranking."""
    counts = ranking.relevant_counts
    rows, ranks = ranking.rows, ranking.ranks
    # The i-th relevant item of a query is preceded by i - 1 relevant ones: precision at it.
    hits = np.arange(1, len(rows) + 1) - (np.cumsum(counts) - counts)[rows]
    precision_at_hits = hits / (ranks + 1)
    # (Not in place: bincount of no items at all returns integers.)
    average_precision_all = np.bincount(rows, precision_at_hits, len(counts)) / np.maximum(
        counts, 1
    )
    in_top = ranks < top
    if in_top.all():  # top == ntotal, or every relevant item in the top list: the same AP
        average_precision_top = average_precision_all
    else:
        top_rows = rows[in_top]
        average_precision_top = np.bincount(
            top_rows, precision_at_hits[in_top], len(counts)
        ) / np.maximum(np.bincount(top_rows, minlength=len(counts)), 1)
    precision_sums = np.cumsum(np.bincount(ranks[in_top], minlength=top)) / np.arange(1, top + 1)
    return precision_sums, average_precision_top.sum(), average_precision_all.sum()


def _radius_sums(ranking):
    """Sums over a batch of precision and recall within each Hamming radius 0..L.

    A query with nothing within a radius has precision 0 there; one with no relevant item in the
    database has recall 0 at every radius. Both still count in the means.
    """
    relevant_within = ranking.relevant_within.astype(np.float64)
    counts = ranking.relevant_counts[:, None]
    precision = np.divide(
        relevant_within, ranking.retrieved_within,
        out=np.zeros_like(relevant_within), where=ranking.retrieved_within > 0,
    )
    recall = np.divide(
        relevant_within, counts, out=np.zeros_like(relevant_within), where=counts > 0
    )
    return precision.sum(axis=0), recall.sum(axis=0)


def average_precision(relevant, k=None):
    """AP@k of one ranked list, by its definition: the mean precision at each relevant item's rank.

    The ranks considered are 1..k; a list with no relevant item among them scores 0. This is
    DLBHC's AP@k (the mean over the relevant items retrieved, not over all relevant items in the
    database); with `k` the whole database it is the usual AP. `evaluate_retrieval` computes the
    same for many queries at once, and is tested against this function.

    Args:
        relevant: whether the item at rank 1, 2, ... is relevant (0/1 or bool). No default.
        k: how many ranks count. Defaults to `None`: all of them.

    Returns:
        A float in [0, 1].

    Example:

    >>> average_precision([1, 0, 1, 0])  # relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    0.8333333333333333
    >>> average_precision([0, 0, 1], k=2)
    0.0
    """
    hits, precisions = 0, []
    for rank, is_relevant in enumerate(list(relevant)[:k], start=1):
        if is_relevant:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions) if precisions else 0.0


def evaluate_retrieval(
    query_bits, query_labels, db_bits, db_labels, top, search=None, batch_elements=BATCH_ELEMENTS
):
    """Scores Hamming ranking of a database: mAP, precision@k, precision-recall over radii.

    An item is relevant to a query when their integer labels are equal, or, for multi-hot label
    rows, when they share at least one label. Each query ranks the whole database by (Hamming
    distance, database index); the distances come from `engines.BackendEngine.distances`, one query
    batch at a time, and the metrics are accumulated batch by batch, so memory stays bounded (about
    20 bytes per query row x `ntotal` element of a batch) for any number of queries. On a 0..1
    scale, each averaged over all queries:

    - mAP@top (DLBHC's): per query, the mean of precision@r over the ranks r <= top that hold a
      relevant item; 0 for a query with none there. mAP over the whole ranking likewise.
    - precision@k for k = 1..top: the share of relevant items among the first k.
    - For each Hamming radius r = 0..L: precision, the relevant items at distance <= r over all
      items at distance <= r (0 for a query with nothing within r), and recall, the relevant items
      within r over all relevant items in the database (0 for a query with none in the database).
      Radius 2 (`RADIUS`) is reported on its own, as in the hashing papers.

    Args:
        query_bits: 0/1 query codes of shape `[nq, L]`. No default.
        query_labels: integer labels of shape `[nq]`, or 0/1 multi-hot rows `[nq, C]`. No default.
        db_bits: 0/1 database codes of shape `[ntotal, L]`. No default.
        db_labels: labels of the same kind as `query_labels`: `[ntotal]` or `[ntotal, C]`.
            No default.
        top: length of the ranked list of mAP@top and precision@k, `1 <= top <= ntotal`; `ntotal`
            scores the whole ranking. No default.
        search: an engine over `pack_bits(db_bits)`, in order, with `search(query_codes, k) ->
            (distances, ids)` ranked by (distance, id), to rank the top list of mAP@top and
            precision@k instead; a slot it leaves empty (`engines.MISSING_ID`, fewer than `top`
            found) counts as an irrelevant item, never as a database item. Defaults to `None`: the
            exact ranking above. Every other metric uses the exact distances either way.
        batch_elements: most elements one query batch may hold (query rows x `ntotal`), also
            passed to the Hamming kernels. Defaults to `BATCH_ELEMENTS` (2**22).

    Returns:
        Dict with `"mAP"` (mAP@top, float), `"precision_at_k"` (`float64 [top]`, entry `k - 1` is
        precision@k), `"precision"` (precision@top), `"mAP_all"` (mAP over the whole database,
        float; equal to `"mAP"` when `top == ntotal`), `"pr_curve"` (dict of `"radius"` `[L + 1]`
        = 0..L, `"precision"` and `"recall"` `float64 [L + 1]`), and `"precision_r2"`,
        `"recall_r2"` (the curve at radius 2, or at L if L < 2).

    Example:

    >>> db_bits = np.array([[0, 0], [1, 1], [0, 1]])
    >>> metrics = evaluate_retrieval([[0, 0]], [7], db_bits, [7, 7, 3], top=2)
    >>> metrics["mAP"], metrics["precision_at_k"], metrics["precision"], metrics["mAP_all"]
    (1.0, array([1. , 0.5]), 0.5, 0.8333333333333333)
    >>> metrics["pr_curve"]["precision"], metrics["pr_curve"]["recall"]
    (array([1.        , 0.5       , 0.66666667]), array([0.5, 0.5, 1. ]))
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
    query_labels, db_labels = _check_labels(query_labels, db_labels, len(query_bits), len(db_bits))
    engines.check_k(top, len(db_bits), "top")
    nq, ntotal, bits = len(query_bits), len(db_bits), query_bits.shape[1]
    query_codes = pack_bits(query_bits)
    index = engines.BackendEngine(pack_bits(db_bits), bits, batch_elements)
    relevance = Relevance(db_labels)

    precision_sums, average_precision_sum, average_precision_all_sum = np.zeros(top), 0.0, 0.0
    radius_precision_sums, radius_recall_sums = np.zeros(bits + 1), np.zeros(bits + 1)
    batch_size = max(1, batch_elements // ntotal)
    for start in range(0, nq, batch_size):
        batch = slice(start, start + batch_size)
        relevant = relevance(query_labels[batch])
        ranking = _full_ranking(index.distances(query_codes[batch]), relevant, bits)
        batch_precision_sums, batch_average_precision_sum, batch_average_precision_all_sum = (
            _full_ranking_sums(ranking, top)
        )
        if search is not None:
            _, ids = search.search(query_codes[batch], top)
            batch_precision_sums, batch_average_precision_sum = _metric_sums(_relevant_found(relevant, ids))
        precision_sums += batch_precision_sums
        average_precision_sum += batch_average_precision_sum
        average_precision_all_sum += batch_average_precision_all_sum
        batch_radius_precision_sums, batch_radius_recall_sums = _radius_sums(ranking)
        radius_precision_sums += batch_radius_precision_sums
        radius_recall_sums += batch_radius_recall_sums

    precision_at_k = precision_sums / nq
    radius_precision, radius_recall = radius_precision_sums / nq, radius_recall_sums / nq
    return {
        "mAP": float(average_precision_sum / nq),
        "precision_at_k": precision_at_k,
        "precision": float(precision_at_k[-1]),
        "mAP_all": float(average_precision_all_sum / nq),
        "pr_curve": {
            "radius": np.arange(bits + 1),
            "precision": radius_precision,
            "recall": radius_recall,
        },
        "precision_r2": float(radius_precision[min(RADIUS, bits)]),
        "recall_r2": float(radius_recall[min(RADIUS, bits)]),
    }


def evaluate_features(
    query_features, query_labels, db_features, db_labels, top, batch_elements=BATCH_ELEMENTS
):
    """Scores Euclidean ranking of float features: mAP@top and precision@k.

    The same metrics and relevance as `evaluate_retrieval`, with the database ranked by squared
    Euclidean distance between the float features (`ExactEuclideanSearch`; ties to the lower
    database index) instead of Hamming distance between codes. On the latent features that the
    codes are thresholded from, the gap to `evaluate_retrieval`'s mAP is what binarisation costs.

    Args:
        query_features: float features of shape `[nq, d]`. No default.
        query_labels: integer labels of shape `[nq]`, or 0/1 multi-hot rows `[nq, C]`. No default.
        db_features: float features of shape `[ntotal, d]`. No default.
        db_labels: labels of the same kind as `query_labels`. No default.
        top: length of the ranked list scored, `1 <= top <= ntotal`. No default.
        batch_elements: most elements one query batch may hold (query rows x `ntotal`).
            Defaults to `BATCH_ELEMENTS` (2**22).

    Returns:
        Dict with `"mAP"` (mAP@top, float), `"precision_at_k"` (`float64 [top]`) and
        `"precision"` (precision@top), on a 0..1 scale.

    Example:

    >>> db_features = np.array([[0.0, 0.0], [0.9, 0.9], [0.2, 0.0]])
    >>> metrics = evaluate_features([[0.1, 0.0]], [7], db_features, [7, 3, 7], top=3)
    >>> metrics["mAP"], metrics["precision_at_k"]
    (1.0, array([1.        , 1.        , 0.66666667]))
    """
    query_features = _check_features(query_features, "query_features")
    db_features = _check_features(db_features, "db_features")
    if len(query_features) == 0:
        raise ValueError(
            "`query_features` must hold at least one query. "
            f"Received: query_features.shape={query_features.shape}"
        )
    query_labels, db_labels = _check_labels(
        query_labels, db_labels, len(query_features), len(db_features)
    )
    engines.check_k(top, len(db_features), "top")
    index = ExactEuclideanSearch(db_features, batch_elements)
    relevance = Relevance(db_labels)
    precision_sums, average_precision_sum = np.zeros(top), 0.0
    batch_size = max(1, batch_elements // len(db_features))
    for start in range(0, len(query_features), batch_size):
        batch = slice(start, start + batch_size)
        _, ids = index.search(query_features[batch], top)
        batch_precision_sums, batch_average_precision_sum = _metric_sums(
            np.take_along_axis(relevance(query_labels[batch]), ids, axis=1)
        )
        precision_sums += batch_precision_sums
        average_precision_sum += batch_average_precision_sum
    precision_at_k = precision_sums / len(query_features)
    return {
        "mAP": float(average_precision_sum / len(query_features)),
        "precision_at_k": precision_at_k,
        "precision": float(precision_at_k[-1]),
    }
