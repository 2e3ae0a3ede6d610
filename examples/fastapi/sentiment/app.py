"""The FastAPI app: ``POST /predict``, ``GET /healthz``, ``GET /metrics``, ``GET|POST /fault``."""

from __future__ import annotations

import asyncio
import importlib
import random

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from .classifier import Classifier
from .faults import FaultError, FaultState
from .settings import Settings, from_env

# Module of each metrics library, imported only when chosen: each defines its series in
# prometheus_client's default registry, where a name can be defined once.
INSTRUMENTATIONS = {
    "prometheus-client": "metrics_client",
    "instrumentator": "metrics_instrumentator",
}


class PredictRequest(BaseModel):
    text: str


def create_app(settings: Settings) -> FastAPI:
    """One app per process: the metrics live in prometheus_client's default registry."""
    settings.validate()
    classifier = Classifier(settings.version)
    faults = FaultState(settings.faults)
    draws = random.Random(settings.seed)
    app = FastAPI(title="sentiment", version=settings.version)
    instrumentation = importlib.import_module(f".{INSTRUMENTATIONS[settings.metrics]}", __package__)
    record_prediction = instrumentation.install(app, settings.version)

    @app.post("/predict")
    async def predict(body: PredictRequest, request: Request):
        plan = faults.next_request(draws.random(), draws.random())
        if plan.delay > 0:
            await asyncio.sleep(plan.delay)
        if plan.fail:
            return JSONResponse({"error": "injected fault"}, status_code=500)
        p = classifier.predict(body.text)
        label = plan.force_class or p.label
        record_prediction(request, label)
        answer = {"version": settings.version, "prediction": label, "confidence": p.confidence}
        if settings.name:
            answer["backend"] = settings.name
        return answer

    @app.get("/healthz")
    def healthz():
        if faults.config.health_failing:
            return JSONResponse({"status": "failing (injected)"}, status_code=503)
        return {"status": "ok", "version": settings.version}

    @app.get("/fault")
    def get_fault():
        return faults.config

    @app.post("/fault")
    async def post_fault(request: Request):
        try:
            update = await request.json()
        except ValueError as e:
            return JSONResponse({"error": f"the body is not JSON: {e}"}, status_code=400)
        try:
            return faults.update(update)
        except FaultError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory sentiment.app:create_app_from_env``."""
    return create_app(from_env())
