"""`GET /metrics`: Prometheus text format, one registry per app (so several apps never collide).

Queue depth and jobs per state are read from the database at scrape time (they survive restarts);
counters and latency histograms count what this process did since it started.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class _StoreCollector:
    """Gauges computed from the job store when Prometheus scrapes."""

    def __init__(self, counts: Callable[[], dict[str, int]], ready: Callable[[], bool]):
        self._counts = counts
        self._ready = ready

    def describe(self):
        return []

    def collect(self):
        counts = self._counts()
        yield GaugeMetricFamily("sdlab_queue_depth", "Jobs waiting to run", value=counts.get("queued", 0))
        yield GaugeMetricFamily("sdlab_jobs_running", "Jobs being generated now", value=counts.get("running", 0))
        stored = GaugeMetricFamily(
            "sdlab_jobs_stored", "Jobs in the database by state (until retention deletes them)", labels=["state"]
        )
        for state, n in sorted(counts.items()):
            stored.add_metric([state], n)
        yield stored
        yield GaugeMetricFamily(
            "sdlab_model_ready", "1 once the worker has loaded the model", value=1 if self._ready() else 0
        )


class ServerMetrics:
    """The counters and histograms the worker and the routes update."""

    def __init__(self, counts: Callable[[], dict[str, int]], ready: Callable[[], bool]):
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(counts, ready))
        self.finished = Counter(
            "sdlab_jobs_finished", "Jobs that ended, by final state", ["state"], registry=self.registry
        )
        self.submitted = Counter("sdlab_jobs_submitted", "Jobs accepted by POST /generate", registry=self.registry)
        self.rejected = Counter(
            "sdlab_jobs_rejected", "Submissions refused, by reason", ["reason"], registry=self.registry
        )
        self.images = Counter("sdlab_images_generated", "Images written", registry=self.registry)
        self.latency = Histogram(
            "sdlab_job_latency_seconds",
            "From submission to done (queue wait + generation)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "sdlab_job_run_seconds",
            "Generation time of a job's pipeline call",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for state in ("done", "failed", "cancelled"):
            self.finished.labels(state)
        for reason in ("queue_full", "invalid", "not_ready", "disk_full"):
            self.rejected.labels(reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)
