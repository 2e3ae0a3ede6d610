"""A two-version sentiment model served by FastAPI, instrumented for Prometheus."""
