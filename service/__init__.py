"""mindtrace's HTTP API as a BentoML service: ``bentoml serve service:svc`` from the project root.

- ``app``: the service itself, inference routes and model lifecycle;
- ``batching`` and ``watcher``: the served model, adaptive batching, hot-swap;
- ``control``: retraining jobs and registry routes; ``oip``: the Open Inference Protocol;
- ``recorder`` and ``monitor``: the prediction log, feedback, live accuracy and drift;
- ``guard``: tokens, body limit, one JSON error format;
- ``settings``, ``schemas`` and ``metrics``: the configuration, the IO types and the Prometheus metrics.

``svc`` loads ``app`` on first use, so importing one part (``service.batching`` in a test) boots nothing.
"""

from typing import Any

__all__ = ["Mindtrace", "svc"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from service import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
