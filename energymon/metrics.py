"""Self-metrics every stage exports, with the same names and labels.

=========================================  ==================  =============================================
metric                                     labels              meaning
=========================================  ==================  =============================================
``energymon_received_total``               stage               points (or messages) taken in
``energymon_sent_total``                   stage               points handed on (published, written, notified)
``energymon_dropped_total``                stage, reason       points set aside, by reason
``energymon_errors_total``                 stage, error_type   errors, by :mod:`energymon.errors` class name
``energymon_device_up``                    meter               1 while a meter answers, 0 while it does not
``energymon_poll_duration_seconds``        group               time for one poll of a group (histogram)
``energymon_store_write_duration_seconds``                     time for one store write (histogram)
``energymon_outbox_fill_ratio``            gateway             used outbox bytes ÷ ``gateway.outbox_max_bytes``
``energymon_outbox_bytes``                 gateway             bytes of the outbox file in use (pages not free)
``energymon_outbox_batches``               gateway             batches waiting in the outbox
``energymon_outbox_oldest_age_seconds``    gateway             age of the oldest waiting batch (0 when empty)
=========================================  ==================  =============================================

Labels stay low-cardinality: a stage name, a reason, an error class, a meter id; never a value.
Pass ``registry=`` (a fresh :class:`~prometheus_client.CollectorRegistry`) in tests.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["PipelineMetrics", "StageMetrics", "private_metrics"]


class PipelineMetrics:
    """The metric families of one process, shared by the stages that run in it."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.received = Counter("energymon_received", "Points taken in by a stage", ["stage"], registry=registry)
        self.sent = Counter("energymon_sent", "Points handed on by a stage", ["stage"], registry=registry)
        self.dropped = Counter(
            "energymon_dropped", "Points set aside by a stage, by reason", ["stage", "reason"], registry=registry
        )
        self.errors = Counter(
            "energymon_errors", "Errors by stage and error class", ["stage", "error_type"], registry=registry
        )
        self.device_up = Gauge("energymon_device_up", "1 while a meter answers", ["meter"], registry=registry)
        self.poll_duration = Histogram(
            "energymon_poll_duration_seconds",
            "Duration of one poll of a poll group",
            ["group"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.store_write_duration = Histogram(
            "energymon_store_write_duration_seconds",
            "Duration of one store write",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.outbox_fill_ratio = Gauge(
            "energymon_outbox_fill_ratio", "Used outbox bytes / outbox_max_bytes", ["gateway"], registry=registry
        )
        self.outbox_bytes = Gauge("energymon_outbox_bytes", "Outbox bytes in use", ["gateway"], registry=registry)
        self.outbox_batches = Gauge(
            "energymon_outbox_batches", "Batches waiting in the outbox", ["gateway"], registry=registry
        )
        self.outbox_oldest_age = Gauge(
            "energymon_outbox_oldest_age_seconds", "Age of the oldest batch in the outbox", ["gateway"],
            registry=registry,
        )

    def stage(self, name: str) -> StageMetrics:
        """Bound counters for one stage."""
        return StageMetrics(self, name)


class StageMetrics:
    """The counters of one stage, with the stage label bound."""

    def __init__(self, metrics: PipelineMetrics, stage: str) -> None:
        self.name = stage
        self._m = metrics
        self._received = metrics.received.labels(stage)
        self._sent = metrics.sent.labels(stage)

    def received(self, n: int = 1) -> None:
        """Count points taken in."""
        self._received.inc(n)

    def sent(self, n: int = 1) -> None:
        """Count points handed on."""
        self._sent.inc(n)

    def dropped(self, reason: str, n: int = 1) -> None:
        """Count points set aside."""
        self._m.dropped.labels(self.name, reason).inc(n)

    def error(self, exc: BaseException | str) -> None:
        """Count an error by its class name."""
        kind = exc if isinstance(exc, str) else type(exc).__name__
        self._m.errors.labels(self.name, kind).inc()


def private_metrics() -> PipelineMetrics:
    """Metrics on a fresh registry of their own (tests, and stages built without a shared registry)."""
    return PipelineMetrics(registry=CollectorRegistry())
