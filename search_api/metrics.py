"""Prometheus metrics of the search service, kept in a registry per application."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds; request stages on a CPU range from tens of microseconds (cache hit, metadata)
# to seconds (exact search over a million vectors).
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class ServiceMetrics:
    """Every metric the service exports.

    Each application gets its own registry, so several apps in one process (tests, the
    benchmark) do not collide on metric names.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pig_search_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "pig_search_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "pig_search_stage_duration_seconds",
            "Time of one stage of a search request: encode, search or metadata.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encode_batch_size = Histogram(
            "pig_search_encode_batch_size",
            "Number of queries encoded in one forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.search_batch_size = Histogram(
            "pig_search_faiss_batch_size",
            "Number of query vectors searched in one FAISS call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.query_cache = Counter(
            "pig_search_query_cache",
            "Lookups in the query embedding cache, by result (hit or miss).",
            ["result"],
            registry=self.registry,
        )
        self.index_vectors = Gauge(
            "pig_search_index_vectors",
            "Number of segment vectors in the served snapshot.",
            registry=self.registry,
        )
        self.index_videos = Gauge(
            "pig_search_index_videos",
            "Number of indexed videos in the catalog when the served snapshot was loaded.",
            registry=self.registry,
        )
        self.reloads = Counter(
            "pig_search_snapshot_reloads",
            "Snapshot reload attempts, by result (ok or failed).",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "pig_search_errors",
            "Errors caught while serving, by kind.",
            ["kind"],
            registry=self.registry,
        )
