"""Serve the sentiment app with uvicorn.

    python serve.py --version v2 --metrics instrumentator --listen 127.0.0.1:8000

Every flag defaults to an environment variable (shown in --help). Once the socket is bound it
prints ``listening on HOST:PORT`` on stdout (the real port when port 0 was asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import uvicorn

from sentiment.app import create_app
from sentiment.classifier import CLASSES, VERSIONS
from sentiment.faults import FaultConfig
from sentiment.settings import METRICS_LIBRARIES, Settings, SettingsError, from_env


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str]) -> tuple[Settings, tuple[str, int], bool]:
    try:
        env = from_env(os.environ)
    except SettingsError as e:
        sys.exit(f"serve.py: {e}")
    f = env.faults
    p = argparse.ArgumentParser(description="Serve the two-version sentiment model with uvicorn.")
    p.add_argument("--listen", type=parse_listen, default=os.environ.get("LISTEN", "0.0.0.0:8080"),
                   help="HOST:PORT to listen on (env LISTEN; default 0.0.0.0:8080)")
    p.add_argument("--version", choices=VERSIONS, default=env.version,
                   help="model version (env MODEL_VERSION; default v1)")
    p.add_argument("--metrics", choices=METRICS_LIBRARIES, default=env.metrics,
                   help="metrics library (env METRICS_LIBRARY; default prometheus-client)")
    p.add_argument("--name", default=env.name,
                   help="instance name added to each answer as `backend` (env BACKEND_NAME)")
    p.add_argument("--error-rate", type=float, default=f.error_rate,
                   help="fraction (0..1) of /predict answered 500 (env FAULT_ERROR_RATE)")
    p.add_argument("--latency-ms", type=int, default=f.latency_ms,
                   help="latency added to every /predict (env FAULT_LATENCY_MS)")
    p.add_argument("--skew", type=float, default=f.skew,
                   help="fraction (0..1) of predictions forced to --skew-class (env FAULT_SKEW)")
    p.add_argument("--skew-class", choices=CLASSES, default=f.skew_class,
                   help="class of skewed predictions (env FAULT_SKEW_CLASS; default positive)")
    p.add_argument("--cold-requests", type=int, default=f.cold_requests,
                   help="the first N /predict requests are cold (env FAULT_COLD_REQUESTS)")
    p.add_argument("--cold-latency-ms", type=int, default=f.cold_latency_ms,
                   help="extra latency of a cold request (env FAULT_COLD_LATENCY_MS; default 200)")
    p.add_argument("--health-failing", action="store_true", default=f.health_failing,
                   help="start with /healthz answering 503 (env FAULT_HEALTH_FAILING)")
    p.add_argument("--seed", type=int, default=env.seed,
                   help="seed of the fault draws, for reproducible runs (env FAULT_SEED)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    a = p.parse_args(argv)
    settings = Settings(
        version=a.version,
        metrics=a.metrics,
        name=a.name,
        faults=FaultConfig(
            error_rate=a.error_rate,
            latency_ms=a.latency_ms,
            skew=a.skew,
            skew_class=a.skew_class,
            cold_requests=a.cold_requests,
            cold_latency_ms=a.cold_latency_ms,
            health_failing=a.health_failing,
        ),
        seed=a.seed,
    )
    try:
        settings.validate()
    except SettingsError as e:
        p.error(str(e))
    return settings, a.listen, a.access_log


class Server(uvicorn.Server):
    """uvicorn's server, announcing the bound address once it listens."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        print(f"listening on {'[' + host + ']' if ':' in host else host}:{port}", flush=True)


def main(argv: list[str]) -> None:
    settings, (host, port), access_log = parse_args(argv)
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level="info")
    asyncio.run(Server(config).serve())


if __name__ == "__main__":
    main(sys.argv[1:])
