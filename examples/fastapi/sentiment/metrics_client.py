"""Flavour `prometheus-client`: metrics written with prometheus_client directly, the way most
hand-instrumented FastAPI services do it (an HTTP middleware plus one domain counter).

Series (default registry, so prometheus_client's own process_* / python_* series come too):

- ``http_requests_total{method, route, status}`` counter: every HTTP request. ``route`` is the
  route template (``/predict``, ``/healthz``, ``/metrics``, ``/fault``; ``unmatched`` for a path
  with no route), ``status`` the numeric HTTP status code (``"200"``, ``"422"``, ``"500"``).
  Errors are not a counter of their own: they are ``status=~"5.."`` of this counter.
- ``http_request_duration_seconds{method, route}`` histogram, prometheus_client's default
  buckets (0.005 ... 10 s); time from the request reaching the app to the response headers.
- ``model_predictions_total{model_version, class}`` counter: successful predictions by model
  version (``v1``/``v2``) and predicted class (``negative``/``positive``). Both class series are
  created at start, so a class never predicted reads 0 rather than missing.

prometheus_client also exposes a ``*_created`` gauge per counter/histogram series (the
creation timestamp), e.g. ``http_requests_created{method, route, status}``.
"""

from __future__ import annotations

import time
from typing import Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from .classifier import CLASSES

REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, in seconds, by method and route template.",
    ["method", "route"],
)
PREDICTIONS = Counter(
    "model_predictions_total",
    "Predictions returned, by model version and predicted class.",
    ["model_version", "class"],
)


def install(app: FastAPI, version: str) -> Callable[[Request, str], None]:
    """Instrument `app`, add `GET /metrics`; returns the function that counts one prediction."""
    for label in CLASSES:
        PREDICTIONS.labels(version, label)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        status = 500  # an exception escaping the app becomes a 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(request.method, template, str(status)).inc()
            LATENCY.labels(request.method, template).observe(time.perf_counter() - started)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def record_prediction(_request: Request, label: str) -> None:
        PREDICTIONS.labels(version, label).inc()

    return record_prediction
