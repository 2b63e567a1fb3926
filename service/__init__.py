"""mindtrace's HTTP API as a BentoML service: ``bentoml serve service:svc`` from the project root.

- ``app``: the service itself, inference routes and model lifecycle;
- ``model``: the served model, adaptive batching, hot-swap;
- ``control``: retraining jobs and registry routes;
- ``guard``: tokens, body limit, one JSON error format;
- ``schemas`` and ``metrics``: the IO types and the Prometheus metrics.
"""

from service.app import Mindtrace, svc

__all__ = ["Mindtrace", "svc"]
