"""Choice and construction of the FAISS index of a snapshot.

Every index is an ``IndexIDMap2`` around an inner-product index, so FAISS ids are the catalog's
segment ids. Flat (exact) search is the default; past ``approx_threshold`` vectors the builder
switches to HNSW, or to IVF-PQ when even HNSW would not fit in ``memory_budget_bytes``. For an
approximate index, recall@10 against exact search is measured on a sample of the stored vectors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

logger = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")

# HNSW graph degree; each vector stores about 2 * M neighbour ids of 8 bytes in its base layer.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
# IVF-PQ: bits per sub-quantizer code.
PQ_BITS = 8
RECALL_SAMPLE = 1000
RECALL_K = 10


@dataclass(frozen=True)
class IndexPolicy:
    """Policy the snapshot builder follows to pick an index type."""

    index_type: str = "auto"  # auto, flat, hnsw or ivfpq
    approx_threshold: int = 1_000_000  # vector count from which "auto" leaves flat search
    memory_budget_bytes: int = 8 * 1024**3  # RAM an index may take; beyond it "auto" picks IVF-PQ


@dataclass
class BuiltIndex:
    """A FAISS index ready to be written, with what the manifest records about it."""

    index: faiss.Index  # IndexIDMap2 around the chosen index
    index_type: str  # flat, hnsw or ivfpq
    params: dict[str, Any] = field(default_factory=dict)  # build parameters (M, nlist, ...)
    recall_at_10: float | None = None  # measured against exact search; None for flat


def estimate_memory_bytes(index_type: str, count: int, dim: int) -> int:
    """Estimate the RAM of an index of ``count`` vectors of width ``dim`` (ids included)."""
    ids = 8 * count
    if index_type == "flat":
        return 4 * dim * count + ids
    if index_type == "hnsw":
        return (4 * dim + 2 * HNSW_M * 4 + 16) * count + ids
    if index_type == "ivfpq":
        return _pq_sub_quantizers(dim) * count + 8 * count + ids
    raise ValueError(f"unknown index type {index_type!r}; expected one of {INDEX_TYPES[1:]}")


def choose_index_type(count: int, dim: int, policy: IndexPolicy) -> str:
    """Pick flat, hnsw or ivfpq for ``count`` vectors under ``policy``."""
    if policy.index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {policy.index_type!r}; expected one of {INDEX_TYPES}")
    if policy.index_type != "auto":
        return policy.index_type
    if count < policy.approx_threshold:
        return "flat"
    if estimate_memory_bytes("hnsw", count, dim) <= policy.memory_budget_bytes:
        return "hnsw"
    return "ivfpq"


def _pq_sub_quantizers(dim: int) -> int:
    """Return the largest divisor of ``dim`` that is at most dim / 4 and at most 64."""
    for m in range(min(64, max(1, dim // 4)), 0, -1):
        if dim % m == 0:
            return m
    return 1


def build_index(ids: np.ndarray, vectors: np.ndarray, dim: int, policy: IndexPolicy) -> BuiltIndex:
    """Build the index over ``vectors`` [N, D] with FAISS ids ``ids`` [N]."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)  # [N, D]
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)  # [N]
    count = vectors.shape[0]
    index_type = choose_index_type(count, dim, policy)
    # IVF-PQ needs enough training vectors for its codebooks; tiny collections stay exact.
    if index_type == "ivfpq" and count < 256 * 39:
        logger.warning("IVF-PQ needs at least %d vectors to train, have %d; using flat", 256 * 39, count)
        index_type = "flat"

    params: dict[str, Any] = {}
    if index_type == "flat":
        inner: faiss.Index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    else:
        nlist = max(1, min(65536, int(4 * math.sqrt(count)), count // 39))
        sub_quantizers = _pq_sub_quantizers(dim)
        quantizer = faiss.IndexFlatIP(dim)
        inner = faiss.IndexIVFPQ(
            quantizer, dim, nlist, sub_quantizers, PQ_BITS, faiss.METRIC_INNER_PRODUCT
        )
        inner.nprobe = max(1, min(nlist, 16))
        train_count = min(count, max(256 * 39, 64 * nlist))
        rng = np.random.default_rng(0)
        train = vectors[np.sort(rng.choice(count, size=train_count, replace=False))]
        inner.train(np.ascontiguousarray(train))
        params = {"nlist": nlist, "m": sub_quantizers, "nbits": PQ_BITS, "nprobe": inner.nprobe}

    index = faiss.IndexIDMap2(inner)
    if count:
        index.add_with_ids(vectors, ids)
    built = BuiltIndex(index=index, index_type=index_type, params=params)
    if index_type != "flat" and count:
        built.recall_at_10 = measure_recall(index, vectors)
        logger.info("built %s index over %d vectors, recall@10 = %.4f", index_type, count, built.recall_at_10)
    return built


def measure_recall(index: faiss.Index, vectors: np.ndarray, sample: int = RECALL_SAMPLE) -> float:
    """Return recall@10 of ``index`` against exact inner-product search over ``vectors``.

    Queries are a seeded sample of the stored vectors. Recall is the mean fraction of the exact
    top-10 ids that the index also returns in its top 10.
    """
    count, dim = vectors.shape
    k = min(RECALL_K, count)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(count, size=min(sample, count), replace=False))
    queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)  # [Q, D]

    exact = faiss.IndexFlatIP(dim)
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, exact_rows = exact.search(queries, k)  # [Q, k] row numbers
    id_map = faiss.vector_to_array(index.id_map)  # row number -> id, as added
    exact_ids = id_map[exact_rows]
    _, approx_ids = index.search(queries, k)  # [Q, k] ids
    hits = sum(len(set(e.tolist()) & set(a.tolist())) for e, a in zip(exact_ids, approx_ids))
    return float(hits) / float(queries.shape[0] * k)
