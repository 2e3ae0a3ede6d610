"""Faults injected on purpose, for tests and demos: errors, added latency, prediction skew and
a cold start. The same settings as canary-model's, set at start (flags or environment) and
changed at run time with ``POST /fault``.

The decision for one request is pure: its random draws come in as arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .classifier import CLASSES


class FaultError(ValueError):
    """A fault setting that cannot be applied; the message names the field and the fix."""


@dataclass
class FaultConfig:
    # Fraction (0..1) of /predict requests answered with HTTP 500.
    error_rate: float = 0.0
    # Latency added to every /predict request, in milliseconds.
    latency_ms: int = 0
    # Fraction (0..1) of predictions replaced by skew_class.
    skew: float = 0.0
    # The class skewed predictions are forced to.
    skew_class: str = "positive"
    # Number of upcoming /predict requests served "cold" (cold_latency_ms added).
    cold_requests: int = 0
    # Extra latency of a cold request, in milliseconds.
    cold_latency_ms: int = 200
    # Make /healthz answer 503.
    health_failing: bool = False

    def validate(self) -> None:
        for name in ("error_rate", "skew"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FaultError(
                    f"`{name}` is {value}: it is a fraction of requests, give a number from 0 to 1"
                )
        for name in ("latency_ms", "cold_requests", "cold_latency_ms"):
            value = getattr(self, name)
            if value < 0:
                raise FaultError(f"`{name}` is {value}: give a number of 0 or more")
        if self.skew_class not in CLASSES:
            raise FaultError(
                f"`skew_class` is {self.skew_class!r}: use one of {', '.join(CLASSES)}"
            )


FIELD_TYPES = {
    "error_rate": float,
    "latency_ms": int,
    "skew": float,
    "skew_class": str,
    "cold_requests": int,
    "cold_latency_ms": int,
    "health_failing": bool,
}


def apply_update(current: FaultConfig, update: dict) -> FaultConfig:
    """The config after a partial update (a ``POST /fault`` body), validated.

    Absent fields keep their value; ``"reset": true`` first returns every field to its default.
    The current config is never changed: on error nothing is applied.
    """
    if not isinstance(update, dict):
        raise FaultError("the body must be a JSON object such as {\"error_rate\": 0.1}")
    unknown = sorted(set(update) - set(FIELD_TYPES) - {"reset"})
    if unknown:
        raise FaultError(
            f"unknown field(s) {', '.join(unknown)}: known fields are "
            f"{', '.join([*FIELD_TYPES, 'reset'])}"
        )
    reset = update.get("reset", False)
    if not isinstance(reset, bool):
        raise FaultError("`reset` must be true or false")
    base = FaultConfig() if reset else current
    changes = {}
    for name, value in update.items():
        if name == "reset":
            continue
        if not _has_type(value, FIELD_TYPES[name]):
            raise FaultError(f"`{name}` must be a {FIELD_TYPES[name].__name__}, got {value!r}")
        changes[name] = float(value) if FIELD_TYPES[name] is float else value
    result = dataclasses.replace(base, **changes)
    result.validate()
    return result


def _has_type(value: object, expected: type) -> bool:
    # bool is a subclass of int in Python: never take true/false for a number. JSON has no
    # int/float split: take an integer where a fraction is expected.
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


@dataclass(frozen=True)
class RequestPlan:
    # Seconds to sleep before answering.
    delay: float
    # Answer HTTP 500.
    fail: bool
    # Replace the model's prediction with this class.
    force_class: str | None


class FaultState:
    """The faults in force plus the cold-request count that runs down with each request."""

    def __init__(self, config: FaultConfig) -> None:
        config.validate()
        self.config = config

    def update(self, update: dict) -> FaultConfig:
        self.config = apply_update(self.config, update)
        return self.config

    def next_request(self, error_draw: float, skew_draw: float) -> RequestPlan:
        """Decide the fate of the next /predict request from two uniform draws in 0..1."""
        c = self.config
        delay_ms = c.latency_ms
        if c.cold_requests > 0:
            c.cold_requests -= 1
            delay_ms += c.cold_latency_ms
        return RequestPlan(
            delay=delay_ms / 1000.0,
            fail=error_draw < c.error_rate,
            force_class=c.skew_class if skew_draw < c.skew else None,
        )
