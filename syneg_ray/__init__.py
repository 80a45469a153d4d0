"""syneg-ray: SyNeg hard negatives (LLM-written and retrieved), hybrid mixing and InfoNCE training on Ray.

Example:
    ```python
    import syneg_ray

    cfg = syneg_ray.load_config("configs/scifact.yaml", ["mix.ratio=0.5"])
    result = syneg_ray.run(cfg)  # or stage by stage: synthesize, mine, mix, train, evaluate
    ```
"""

from __future__ import annotations

import sys
import types

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


class _Package(types.ModuleType):
    """This package's module type: keeps the API functions `train` and `tune` bound over the submodules of the same name."""

    def __setattr__(self, name: str, value: object) -> None:
        # Importing a submodule binds it as an attribute of its package, so the first import of
        # syneg_ray.train.* or syneg_ray.tune (the API's own calls do one) would replace the
        # functions and make `syneg_ray.train(cfg)` fail on its second call. The submodules stay
        # importable by their full name (`from syneg_ray.train.trainer import run_train`).
        if isinstance(value, types.ModuleType) and isinstance(self.__dict__.get(name), types.FunctionType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
