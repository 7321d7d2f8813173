"""The LLMService resource: its names in the Kubernetes API and the whole object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pdserve.api.base import ApiModel
from pdserve.api.spec import LLMServiceSpec
from pdserve.api.status import LLMServiceStatus

GROUP = "pdserve.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LLMService"
PLURAL = "llmservices"
SINGULAR = "llmservice"
SHORT_NAMES = ("llms",)
CRD_NAME = f"{PLURAL}.{GROUP}"


class LLMService(ApiModel):
    """A language model served with prefill/decode disaggregation: a prefill pool, a decode
    pool and an OpenAI-compatible router, rebalanced by an optional metrics-driven planner."""

    api_version: Literal["pdserve.dev/v1alpha1"] = Field(description="pdserve.dev/v1alpha1")
    kind: Literal["LLMService"] = Field(description="LLMService")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard metadata.")
    spec: LLMServiceSpec = Field(description="Desired state.")
    status: LLMServiceStatus | None = Field(default=None, description="Observed state.")
