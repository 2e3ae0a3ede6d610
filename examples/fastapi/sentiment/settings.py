"""What a server runs with: model version, metrics library, faults. Read from the environment
(``uvicorn --factory sentiment.app:create_app_from_env``) or from ``serve.py``'s flags, whose
defaults are the same environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .classifier import VERSIONS
from .faults import FaultConfig, FaultError

# The two ways the app can be instrumented (see metrics_client.py and metrics_instrumentator.py).
METRICS_LIBRARIES = ("prometheus-client", "instrumentator")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and says what is accepted."""


@dataclass
class Settings:
    version: str = "v1"
    metrics: str = "prometheus-client"
    # Instance name added to each answer as `backend` (left out when empty).
    name: str = ""
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Seed of the fault draws (None: seeded from the OS).
    seed: int | None = None

    def validate(self) -> None:
        if self.version not in VERSIONS:
            raise SettingsError(f"model version {self.version!r}: use one of {', '.join(VERSIONS)}")
        if self.metrics not in METRICS_LIBRARIES:
            raise SettingsError(
                f"metrics library {self.metrics!r}: use one of {', '.join(METRICS_LIBRARIES)}"
            )
        try:
            self.faults.validate()
        except FaultError as e:
            raise SettingsError(str(e)) from None


# Environment variable -> (FaultConfig field, parser).
FAULT_ENV = {
    "FAULT_ERROR_RATE": ("error_rate", float),
    "FAULT_LATENCY_MS": ("latency_ms", int),
    "FAULT_SKEW": ("skew", float),
    "FAULT_SKEW_CLASS": ("skew_class", str),
    "FAULT_COLD_REQUESTS": ("cold_requests", int),
    "FAULT_COLD_LATENCY_MS": ("cold_latency_ms", int),
}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def from_env(env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from MODEL_VERSION, METRICS_LIBRARY, BACKEND_NAME, FAULT_* and FAULT_SEED."""
    faults = FaultConfig()
    for var, (name, parse) in FAULT_ENV.items():
        if var in env:
            try:
                setattr(faults, name, parse(env[var]))
            except ValueError:
                raise SettingsError(
                    f"{var}={env[var]!r} is not a valid {parse.__name__}"
                ) from None
    try:
        faults.health_failing = parse_bool(env.get("FAULT_HEALTH_FAILING", ""))
        seed = int(env["FAULT_SEED"]) if env.get("FAULT_SEED") else None
    except ValueError as e:
        raise SettingsError(f"FAULT_HEALTH_FAILING or FAULT_SEED: {e}") from None
    settings = Settings(
        version=env.get("MODEL_VERSION", "v1"),
        metrics=env.get("METRICS_LIBRARY", "prometheus-client"),
        name=env.get("BACKEND_NAME", ""),
        faults=faults,
        seed=seed,
    )
    settings.validate()
    return settings
