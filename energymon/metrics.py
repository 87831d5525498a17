"""Self-metrics every stage exports, with the same names and labels.

===================================================  =========  =================  =====================================
metric                                               type       labels             meaning
===================================================  =========  =================  =====================================
``energymon_received_total``                         counter    stage              points (or messages) taken in
``energymon_sent_total``                             counter    stage              points handed on (published, written,
                                                                                   notified)
``energymon_dropped_total``                          counter    stage, reason      points set aside, by reason
``energymon_errors_total``                           counter    stage, error_type  errors, by :mod:`energymon.errors`
                                                                                   class name
``energymon_dead_letters_total``                     counter    stage, reason      records written to the stage's
                                                                                   dead-letter file (a message, or the
                                                                                   points set aside from one batch)
``energymon_device_up``                              gauge      meter              1 while a meter answers, 0 while it
                                                                                   does not
``energymon_poll_duration_seconds``                  histogram  group              time for one poll of a group
``energymon_store_write_duration_seconds``           histogram                     time for one store write
``energymon_outbox_fill_ratio``                      gauge      gateway            used outbox bytes ÷
                                                                                   ``gateway.outbox_max_bytes``
``energymon_outbox_bytes``                           gauge      gateway            bytes of the outbox file in use
                                                                                   (pages not free)
``energymon_outbox_batches``                         gauge      gateway            batches waiting in the outbox
``energymon_outbox_oldest_age_seconds``              gauge      gateway            age of the oldest waiting batch (0
                                                                                   when empty)
``energymon_queue_depth``                            gauge      stage, queue       items waiting in a stage's queue, or
                                                                                   in flight
``energymon_queue_capacity``                         gauge      stage, queue       items the queue holds at most
``energymon_queue_oldest_age_seconds``               gauge      stage, queue       how long its oldest item has waited
                                                                                   (0 when empty)
``energymon_gateway_up``                             gauge      gateway            1 while the gateway's retained status
                                                                                   says ``online``, 0 for ``offline``
``energymon_gateway_last_seen_timestamp_seconds``    gauge      gateway            Unix time of the gateway's last batch
                                                                                   (before the first: when its status
                                                                                   was first heard)
``energymon_build_info``                             gauge      version            always 1; the version is the label
===================================================  =========  =================  =====================================

docs/metrics.md holds the same table with the stage that sets each metric, and the alert rules built on them
(``deploy/prometheus/rules/energymon-health.rules.yml``).

Labels stay low-cardinality: a stage name, a reason, an error class, a meter, gateway, poll group or queue id
from the plant file; never a value. Pass ``registry=`` (a fresh :class:`~prometheus_client.CollectorRegistry`)
in tests.

Queue gauges are read when the registry is scraped: a stage registers its queue once with
:meth:`PipelineMetrics.track_queue` and its hot path pays nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

from energymon import __version__

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
        self.dead_letters = Counter(
            "energymon_dead_letters",
            "Records a stage wrote to its dead-letter file, by reason",
            ["stage", "reason"],
            registry=registry,
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
        self.queue_depth = Gauge(
            "energymon_queue_depth", "Items waiting in a stage's queue", ["stage", "queue"], registry=registry
        )
        self.queue_capacity = Gauge(
            "energymon_queue_capacity", "Items a stage's queue holds at most", ["stage", "queue"], registry=registry
        )
        self.queue_oldest_age = Gauge(
            "energymon_queue_oldest_age_seconds",
            "How long the oldest item in a stage's queue has waited (0 when empty)",
            ["stage", "queue"],
            registry=registry,
        )
        self.gateway_up = Gauge(
            "energymon_gateway_up", "1 while a gateway's retained status says online, 0 for offline", ["gateway"],
            registry=registry,
        )
        self.gateway_last_seen = Gauge(
            "energymon_gateway_last_seen_timestamp_seconds",
            "Unix time of the last batch received from a gateway",
            ["gateway"],
            registry=registry,
        )
        self.build_info = Info("energymon_build", "The energymon version of this process", registry=registry)
        self.build_info.info({"version": __version__})
        self._seen: dict[str, Gauge] = {}

    def stage(self, name: str) -> StageMetrics:
        """Bound counters for one stage."""
        return StageMetrics(self, name)

    def track_queue(
        self,
        stage: str,
        queue: str,
        *,
        depth: Callable[[], float],
        oldest_age_s: Callable[[], float | None] | None = None,
        capacity: float | None = None,
    ) -> None:
        """Export a queue of ``stage``: the callables are called on each scrape (from the scraping thread).

        Registering the same ``(stage, queue)`` again replaces the callables.

        Args:
            stage: the stage label (``processor``, ``notify``...).
            queue: which queue of the stage (a notifier id, ``pending_rows``...).
            depth: the number of items waiting (or in flight: not yet done).
            oldest_age_s: seconds the oldest of them has waited, None or 0 when there is none; without it the
                queue exports no ``energymon_queue_oldest_age_seconds``.
            capacity: the most items the queue holds (the point where it refuses or sheds); without it the
                queue exports no ``energymon_queue_capacity``.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> m = PipelineMetrics(CollectorRegistry())
            >>> waiting = [1, 2, 3]
            >>> m.track_queue("notify", "ops", depth=lambda: len(waiting), capacity=100)
            >>> m.registry.get_sample_value("energymon_queue_depth", {"stage": "notify", "queue": "ops"})
            3.0
        """
        self.queue_depth.labels(stage, queue).set_function(lambda: float(depth()))
        if oldest_age_s is not None:
            age = oldest_age_s

            def _age() -> float:
                value = age()
                return max(0.0, float(value)) if value is not None else 0.0

            self.queue_oldest_age.labels(stage, queue).set_function(_age)
        if capacity is not None:
            self.queue_capacity.labels(stage, queue).set(capacity)

    def untrack_queue(self, stage: str, queue: str) -> None:
        """Stop exporting a queue (its stage closed it); unknown queues are ignored."""
        for gauge in (self.queue_depth, self.queue_oldest_age, self.queue_capacity):
            with contextlib.suppress(KeyError):
                gauge.remove(stage, queue)

    def gateway_seen(self, gateway: str) -> None:
        """A batch from ``gateway`` arrived now (sets ``energymon_gateway_last_seen_timestamp_seconds``)."""
        child = self._seen.get(gateway)
        if child is None:
            child = self._seen[gateway] = self.gateway_last_seen.labels(gateway)
        child.set(time.time())

    def gateway_status(self, gateway: str, online: bool) -> None:
        """The retained status of ``gateway`` said ``online`` (True) or ``offline`` (False).

        A gateway heard of for the first time also gets its last-seen time set to now, so that one that never
        sends a batch is noticed as silent.
        """
        self.gateway_up.labels(gateway).set(1 if online else 0)
        if gateway not in self._seen:
            self.gateway_seen(gateway)


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

    def dead_letter(self, reason: str) -> None:
        """Count a record written to the stage's dead-letter file."""
        self._m.dead_letters.labels(self.name, reason).inc()

    def error(self, exc: BaseException | str) -> None:
        """Count an error by its class name."""
        kind = exc if isinstance(exc, str) else type(exc).__name__
        self._m.errors.labels(self.name, kind).inc()


def private_metrics() -> PipelineMetrics:
    """Metrics on a fresh registry of their own (tests, and stages built without a shared registry)."""
    return PipelineMetrics(registry=CollectorRegistry())
