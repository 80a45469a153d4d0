"""syneg-ray: SyNeg hard negatives (LLM-written and retrieved), hybrid mixing and InfoNCE training on Ray."""

from __future__ import annotations

from syneg_ray.config import PipelineConfig, load_config
from syneg_ray.errors import ConfigError, DataError, EngineError, ModelNotFoundError, ResumeError, SynegError
from syneg_ray.registry import resolve_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "EngineError",
    "ModelNotFoundError",
    "PipelineConfig",
    "ResumeError",
    "SynegError",
    "__version__",
    "load_config",
    "resolve_model",
]
