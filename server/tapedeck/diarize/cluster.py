"""Clustering window embeddings into speakers (scipy's agglomerative clustering).

GE2E embeddings are non-negative (ReLU) and share a large common component, so raw cosines
between different voices are high (0.7-0.86 between speaker centroids on 8 kHz prompts).
Clustering therefore runs on the recording's *centred* embeddings (its own mean removed,
re-normalized), which separate voices well but would split a lone voice too. So the count is
decided on the *raw* embeddings: the tree (average linkage, cosine) is cut into 2, 3, …
clusters, and the count is the largest cut whose large clusters are all mutually
dissimilar — raw centroid cosine below ``SAME_VOICE`` (measured: halves of one voice's
windows ≥ 0.88, different voices ≤ 0.86). Clusters holding fewer than ``MIN_WINDOWS`` windows
(4 s of speech: smaller centroids are too noisy to compare) or less than ``MIN_SHARE`` of
them are noise and join their nearest large cluster (with no large cluster: one speaker). A count
given (``speakers_expected``) is used as is; ``min_speakers``/``max_speakers`` clamp the
estimate. Two rounds of nearest-centroid reassignment then refine the labels.

Memory: at most ``MAX_UNITS`` items enter the tree (its distances are quadratic); with more
windows, runs of consecutive windows are averaged into units first, and every window is
then assigned to its nearest centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAME_VOICE = 0.885
MIN_SHARE = 0.06
MIN_WINDOWS = 8
MAX_UNITS = 1200
MAX_ESTIMATE = 10
REFINE_ROUNDS = 2


@dataclass(frozen=True)
class Bounds:
    """Count constraints: ``expected`` wins; else ``[minimum, maximum]`` (None = open)."""

    minimum: int | None = None
    maximum: int | None = None
    expected: int | None = None


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12))


def cluster(emb: np.ndarray, bounds: Bounds) -> tuple[np.ndarray, np.ndarray]:
    """``(labels per window, unit raw centroids)``; labels are 0..k-1 (arbitrary order)."""
    n = len(emb)
    if n < 2 or bounds.expected == 1 or bounds.maximum == 1:
        return np.zeros(n, np.int64), _unit(emb.mean(0, keepdims=True))
    centred = _unit(emb - emb.mean(0))
    group = max(1, -(-n // MAX_UNITS))
    idx = [slice(i, i + group) for i in range(0, n, group)]
    units = _unit(np.stack([centred[s].mean(0) for s in idx]))
    raw_units = _unit(np.stack([emb[s].mean(0) for s in idx]))
    unit_labels = _labels_for_count(units, raw_units, bounds)
    labels = _assign(centred, _centroids(units, unit_labels))
    for _ in range(REFINE_ROUNDS):
        labels = _compact(_assign(centred, _centroids(centred, labels)))
    return labels, _centroids(emb, labels)


def _labels_for_count(x: np.ndarray, raw: np.ndarray, bounds: Bounds) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(x, method="average", metric="cosine")

    def cut(k: int) -> np.ndarray:
        return _drop_noise(x, _compact(fcluster(tree, t=min(k, len(x)), criterion="maxclust")))

    if bounds.expected is not None:
        return _compact(fcluster(tree, t=min(bounds.expected, len(x)), criterion="maxclust"))
    best = np.zeros(len(x), np.int64)
    top = min(bounds.maximum or MAX_ESTIMATE, len(x))
    for k in range(2, top + 1):
        labels = cut(k)
        found = int(labels.max()) + 1
        if found <= int(best.max()) + 1:
            continue  # the extra cluster was noise
        c = _centroids(raw, labels)
        sims = c @ c.T
        if np.max(sims[~np.eye(len(c), dtype=bool)]) >= SAME_VOICE:
            break
        best = labels
    k = int(best.max()) + 1
    if bounds.minimum is not None and k < bounds.minimum:
        best = _compact(fcluster(tree, t=min(bounds.minimum, len(x)), criterion="maxclust"))
    return best


def _drop_noise(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Small clusters join the nearest large one (if any cluster is large)."""
    counts = np.bincount(labels)
    big = counts >= max(MIN_WINDOWS, MIN_SHARE * len(x))
    if not big.any():
        return np.zeros(len(labels), np.int64)
    if big.all():
        return labels
    centroids = _centroids(x, labels)
    keep = np.flatnonzero(big)
    small = ~big[labels]
    labels = labels.copy()
    labels[small] = keep[np.argmax(x[small] @ centroids[keep].T, axis=1)]
    return _compact(labels)


def _centroids(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    k = int(labels.max()) + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    return _unit(sums)


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.asarray(np.argmax(x @ centroids.T, axis=1), np.int64)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..k-1 with no gaps."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return np.asarray(inverse, np.int64)
