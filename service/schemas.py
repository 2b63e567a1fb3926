"""The request and response bodies of the HTTP API, with the examples /docs shows."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, Field

from mindtrace.images import EXAMPLE_IMAGE
from mindtrace.registry.names import MODEL_NAME_PATTERN

__all__ = ["EXAMPLE_IMAGE", "MAX_BATCH"]

MAX_BATCH = 1024
# The registry checks model names itself (422); the pattern only says so in the OpenAPI document (a Python
# regular expression, which pydantic's own pattern check would not run).
ModelName = Annotated[
    str, Path(description="a registered model", json_schema_extra={"pattern": MODEL_NAME_PATTERN})
]


class ModelRef(BaseModel):
    """The registered model version that answered."""

    name: str = Field(examples=["mnist-mlp"])
    version: str = Field(examples=["3"])


class Prediction(BaseModel):
    label: int = Field(ge=0, le=9, examples=[7])
    probabilities: list[float] = Field(
        min_length=10, max_length=10, description="one per digit 0-9, summing to 1"
    )
    prediction_id: str = Field(
        examples=["019ac9f3e2a47c1d9e5b20f4"],
        description="send it back with the true label to POST /feedback",
    )


class InferenceResponse(Prediction):
    model: ModelRef


class BatchResponse(BaseModel):
    predictions: list[Prediction]
    model: ModelRef


class AliasMove(BaseModel):
    """Body of ``POST /registry/models/{name}/aliases/{alias}``."""

    version: str = Field(examples=["3"], description="the version number the alias should point to")


class ErrorBody(BaseModel):
    """Every error answer (``service.errors``)."""

    error: str = Field(
        examples=["images[2]: invalid base64: Incorrect padding"],
        description="what went wrong, naming the field or image at fault",
    )
    request_id: str | None = Field(None, description="with a 500: the id the service's log carries")
