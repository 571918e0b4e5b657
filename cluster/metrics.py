"""The Ray side of `services.core.metrics`: its instruments as Ray metrics.

Inside a Serve replica the instruments are `ray.serve.metrics` (Serve adds the
`deployment`, `replica` and `application` labels); elsewhere (the bulk driver, a plain
actor) `ray.util.metrics`. Ray's metrics agent on each node exports them for Prometheus,
with `ray_` in front of the name. `install()` is called once per process, in the replica's
constructor; `start_sampling` runs a sampling function on a daemon thread (gauges read
from the disk), for replicas that have no loop of their own to run it on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from services.core.logging import get_logger
from services.core.metrics import Instrument, MetricSpec, Tags, telemetry

log = get_logger(__name__)


class _RayInstrument:
    def __init__(self, metric: Any, kind: str) -> None:
        self._metric = metric
        self._kind = kind

    def record(self, value: float, tags: Tags) -> None:
        labels = dict(tags) or None
        if self._kind == "counter":
            if value > 0:
                self._metric.inc(value, tags=labels)
            else:  # `inc` refuses 0; a series at 0 is what `start_at_zero` wants
                self._metric._record(0.0, tags=labels)
        elif self._kind == "gauge":
            self._metric.set(value, tags=labels)
        else:
            self._metric.observe(value, tags=labels)


class RayBackend:
    def __init__(self) -> None:
        from ray import serve

        try:
            in_replica = serve.get_replica_context() is not None
        except Exception:  # RayServeException outside a replica
            in_replica = False
        if in_replica:
            from ray.serve import metrics as module
        else:
            from ray.util import metrics as module  # type: ignore[no-redef]
        self._module: Any = module

    def instrument(self, spec: MetricSpec) -> Instrument:
        tag_keys = spec.labels or None
        if spec.kind == "counter":
            metric = self._module.Counter(spec.name, spec.description, tag_keys=tag_keys)
        elif spec.kind == "gauge":
            metric = self._module.Gauge(spec.name, spec.description, tag_keys=tag_keys)
        else:
            metric = self._module.Histogram(
                spec.name, spec.description, boundaries=list(spec.boundaries), tag_keys=tag_keys
            )
        return _RayInstrument(metric, spec.kind)


def install(role: str = "") -> None:
    """Point this process's `telemetry` at Ray's metrics; a `role` (`ingress`, `tracker`)
    exports the counters it will have at 0 at once."""
    telemetry.use(RayBackend())
    telemetry.start_at_zero(role)


def start_sampling(sample: Callable[[], None], interval_s: float) -> threading.Event:
    """Call `sample` every `interval_s` on a daemon thread until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                sample()
            except Exception as exc:  # a metric must never take the replica down
                log.debug("metrics_sample_failed", error=repr(exc))
            if stop.wait(interval_s):
                return

    threading.Thread(target=loop, name="rayscribe-metrics", daemon=True).start()
    return stop
