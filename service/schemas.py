"""The request and response bodies of the HTTP API, with the examples /docs shows."""

from __future__ import annotations

from pydantic import BaseModel, Field

# A 28x28 PNG of an MNIST test digit (a 7), small enough to paste into /docs.
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAxUlEQVR4nGNgGDaAEUKFpD77sfTFHeyS9xQYGBg+X4UKPuk6"
    "w8DAwMDAAuGm6l/TMnSweCzLwPDntSTDozPIOhkYGBgYBA3PmDIw/Lh1XShnGi5nBP+9KIRLTuzl/2AokwlDMlv0/U1cGq1/"
    "/rPDJcfQ+m83Ky45zrM/rHBqrPu3Daec9+8PlrjkhO/+W4ZLjvn0v9vKuCTV/v3zxSUn/+BfMSMuydZ//0xwydl+QpdEClsb"
    "Hoa7X1AkWZA5F53f4TIWEwAAaRE8kJuHrgAAAAAASUVORK5CYII="
)
MAX_BATCH = 1024


class ModelRef(BaseModel):
    """The registered model version that answered."""

    name: str = Field(examples=["mnist-mlp"])
    version: str = Field(examples=["3"])


class Prediction(BaseModel):
    label: int = Field(ge=0, le=9, examples=[7])
    probabilities: list[float] = Field(
        min_length=10, max_length=10, description="one per digit 0-9, summing to 1"
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
    error: str = Field(examples=["images[2]: invalid base64: Incorrect padding"])
