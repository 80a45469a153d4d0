"""Optional dependencies: which `pip install 'syneg-ray[EXTRA]'` brings each module, and `require`.

Only some paths need these packages (ONNX Runtime encoding, GGUF conversion, plots, the probes, faiss),
so they live in extras of pyproject.toml instead of the core. A path that needs one calls
`require(module)` first: a missing or too-old package is then one line that names the extra, not a
traceback from deep inside the stage.

    require("matplotlib")  ->  MissingExtraError: matplotlib is not installed, needed for training
                               curves, ...: pip install 'syneg-ray[plots]'
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from syneg_ray.errors import MissingExtraError

# module -> (extra(s) that install it, what needs it). Keep in step with [project.optional-dependencies].
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnxruntime": (("onnx",), "encoder.backend = onnx and encoder.dtype = int8"),
    "onnx": (("onnx",), "exporting an encoder to ONNX"),
    "gguf": (("gguf",), "converting a GGUF LLM (smollm2-135m, qwen2.5-coder-*) to safetensors"),
    "matplotlib": (("plots",), "training curves, the report's similarity plot and the Tune heatmap"),
    "sklearn": (("probes",), "the source-identifiability probe"),
    # faiss-cpu and faiss-gpu-cu12 both ship the `faiss` module: exactly one of these extras.
    "faiss": (("cpu", "gpu"), "ANN search and exact search on CPU"),
}


def install_hint(module: str, upgrade: bool = False) -> str:
    """`pip install 'syneg-ray[x]'` (or `... or ...` for several extras) for a module of EXTRAS."""
    extras, _ = EXTRAS[module]
    pip = "pip install -U" if upgrade else "pip install"
    return " or ".join(f"{pip} 'syneg-ray[{extra}]'" for extra in extras)


def message(module: str, problem: str = "is not installed", upgrade: bool = False) -> str:
    """One line: what is missing, what needs it, and the install command."""
    _, purpose = EXTRAS[module]
    return f"{module} {problem}, needed for {purpose}: {install_hint(module, upgrade)}"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not part.isdigit():
            break
    return tuple(parts)


def require(module: str, minimum: str = "") -> ModuleType:
    """Imports and returns `module`, an optional dependency listed in EXTRAS.

    Args:
        module: top-level module name (e.g. "matplotlib", "sklearn").
        minimum: the lowest version the caller works with ("" = any), read from `module.__version__`.

    Raises:
        MissingExtraError: the module is not installed, or older than `minimum`; the one-line message
            names the extra to install. It is both a SynegError (the CLI prints it as one line) and an
            ImportError (code that guards an import keeps catching it).
    """
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(message(module), name=module)
    loaded = importlib.import_module(module)
    if minimum:
        found = str(getattr(loaded, "__version__", ""))
        if found and _version_tuple(found) < _version_tuple(minimum):
            raise MissingExtraError(message(module, f"{found} is older than {minimum}", upgrade=True), name=module)
    return loaded


def check(*modules: str) -> None:
    """Raises MissingExtraError for the first of `modules` that is not installed. Looked up, not
    imported: for a process that only starts another one (a child, an actor) that imports it."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(message(module), name=module)
