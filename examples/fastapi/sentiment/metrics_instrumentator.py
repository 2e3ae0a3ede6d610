"""Flavour `instrumentator`: prometheus-fastapi-instrumentator's default metrics, plus a
predictions counter added the way its documentation shows (an instrumentation function passed to
``Instrumentator.add``).

What the library really exports with its defaults (prometheus-fastapi-instrumentator 8.1.0,
``metrics.default()``; read from its source), for every handler including ``/metrics`` itself:

- ``http_requests_total{handler, method, status}`` counter. ``handler`` is the route template
  (``/predict``; ``none`` for a path with no route), ``status`` the status code *grouped*:
  ``"2xx"``, ``"4xx"``, ``"5xx"``. Errors are ``status="5xx"`` of this counter.
- ``http_request_duration_seconds{handler, method}`` histogram with only the buckets
  0.1, 0.5, 1 and +Inf.
- ``http_request_duration_highr_seconds`` histogram with no labels at all (every handler
  mixed, scrapes and health checks included), buckets 0.01 ... 60 (21 buckets and +Inf).
- ``http_request_size_bytes{handler}`` and ``http_response_size_bytes{handler}`` summaries
  (Content-Length sums and counts).

The library records a request after its response has been sent, so a scrape right after an
answer may not count it yet.

Added here: ``model_predictions_total{class}`` counter, successful predictions by predicted class
(``negative``/``positive``), both series created at start. The ``/predict`` handler leaves the
class in ``request.state``; the instrumentation function reads it from ``info.request``.

Everything is in prometheus_client's default registry, so its process_* / python_* series and a
``*_created`` gauge per counter/histogram series are exposed too.
"""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI, Request
from prometheus_client import Counter
from prometheus_fastapi_instrumentator import Instrumentator, metrics
from prometheus_fastapi_instrumentator.metrics import Info

from .classifier import CLASSES


def predictions_total() -> Callable[[Info], None]:
    metric = Counter(
        "model_predictions_total",
        "Predictions returned, by predicted class.",
        labelnames=("class",),
    )
    for label in CLASSES:
        metric.labels(label)

    def instrumentation(info: Info) -> None:
        label = getattr(info.request.state, "prediction", None)
        if label is not None:
            metric.labels(label).inc()

    return instrumentation


def install(app: FastAPI, _version: str) -> Callable[[Request, str], None]:
    """Instrument `app`, add `GET /metrics`; returns the function that counts one prediction."""
    # `add` replaces the default metrics unless they are added too.
    Instrumentator().add(metrics.default()).add(predictions_total()).instrument(app).expose(
        app, include_in_schema=False
    )

    def record_prediction(request: Request, label: str) -> None:
        request.state.prediction = label

    return record_prediction
