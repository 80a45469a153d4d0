"""syneg-ray: SyNeg hard negatives (LLM-written and retrieved), hybrid mixing and InfoNCE training on Ray.

Example:
    ```python
    import syneg_ray

    cfg = syneg_ray.load_config("configs/scifact.yaml", ["mix.ratio=0.5"])
    result = syneg_ray.run(cfg)  # or stage by stage: synthesize, mine, mix, train, evaluate
    ```
"""

from __future__ import annotations

from syneg_ray.api import evaluate, mine, mix, read_instances, read_negatives, run, synthesize, train, tune
from syneg_ray.config import PipelineConfig, load_config
from syneg_ray.errors import (
    ConfigError,
    DataError,
    EngineError,
    MissingExtraError,
    ModelNotFoundError,
    PlanError,
    ResumeError,
    SynegError,
    TuneError,
)
from syneg_ray.registry import resolve_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "EngineError",
    "MissingExtraError",
    "ModelNotFoundError",
    "PipelineConfig",
    "PlanError",
    "ResumeError",
    "SynegError",
    "TuneError",
    "__version__",
    "evaluate",
    "load_config",
    "mine",
    "mix",
    "read_instances",
    "read_negatives",
    "resolve_model",
    "run",
    "synthesize",
    "train",
    "tune",
]
