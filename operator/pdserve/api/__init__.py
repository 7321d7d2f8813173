"""pdserve.api: the LLMService resource (pydantic models, the one source of the CRD schema)."""

from pdserve.api.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION, LLMService
from pdserve.api.spec import LLMServiceSpec
from pdserve.api.status import LLMServiceStatus

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION",
    "LLMService", "LLMServiceSpec", "LLMServiceStatus",
]
