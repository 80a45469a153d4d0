"""Attribute pools (domain, difficulty, length) per BEIR dataset, and the seeded per-pair draw.

The SciFact pools are the paper's (arXiv 2412.17250); the others are ours. A dataset with no
pool gets one derived once by the LLM from a corpus sample (see `stages/synthesize.py`), and a
YAML file with the same three keys overrides both.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from syneg_ray.errors import ConfigError, yaml_error_message

DIFFICULTY_BASIC = "Foundational (Equivalent to Elementary and Middle School)"
DIFFICULTY_MID = "Intermediate (High School and Undergraduate)"
DIFFICULTY_EXPERT = "Advanced (Graduate and Professional)"
LENGTHS = ("approximately the same as", "nearly the same as")


@dataclass(frozen=True)
class Pools:
    """The three attribute pools one dataset draws from."""

    domains: tuple[str, ...]
    difficulties: tuple[str, ...] = (DIFFICULTY_BASIC, DIFFICULTY_MID)
    lengths: tuple[str, ...] = LENGTHS

    def to_dict(self) -> dict[str, list[str]]:
        """YAML-safe form, the same shape `from_mapping` reads."""
        return {"domains": list(self.domains), "difficulties": list(self.difficulties), "lengths": list(self.lengths)}

    @classmethod
    def from_mapping(cls, raw: Any, source: str) -> Pools:
        """Validates a mapping with `domains` (required), `difficulties` and `lengths` (optional).

        Raises:
            ConfigError: not a mapping, unknown keys, or an empty / non-string list.
        """
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: attribute pools must be a mapping with keys domains, difficulties, lengths")
        unknown = sorted(set(raw) - {"domains", "difficulties", "lengths"})
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r}; known keys: domains, difficulties, lengths")
        values: dict[str, tuple[str, ...]] = {}
        for name in ("domains", "difficulties", "lengths"):
            if name not in raw:
                if name == "domains":
                    raise ConfigError(f"{source}: 'domains' is required (a list of strings)")
                continue
            items = raw[name]
            if not isinstance(items, list) or not items or not all(isinstance(i, str) and i.strip() for i in items):
                raise ConfigError(f"{source}: {name!r} must be a non-empty list of strings")
            values[name] = tuple(i.strip() for i in items)
        return cls(**values)


POOLS: dict[str, Pools] = {
    "scifact": Pools(
        domains=(
            "Epidemiology", "Public Health", "Virology", "Biostatistics", "Healthcare Policy",
            "Infectious Diseases", "Bioinformatics", "Medical Research", "Pharmacology",
        ),
    ),
    "nfcorpus": Pools(
        domains=("Nutrition Science", "Dietetics", "Cardiology", "Oncology", "Endocrinology", "Food Safety", "Public Health"),
    ),
    "fiqa": Pools(
        domains=("Personal Finance", "Investing", "Taxation", "Banking", "Corporate Finance", "Insurance", "Real Estate"),
        difficulties=(DIFFICULTY_BASIC, DIFFICULTY_MID, DIFFICULTY_EXPERT),
    ),
    "trec-covid": Pools(
        domains=("Virology", "Epidemiology", "Immunology", "Critical Care Medicine", "Public Health", "Pharmacology"),
        difficulties=(DIFFICULTY_MID, DIFFICULTY_EXPERT),
    ),
    "scidocs": Pools(
        domains=("Machine Learning", "Computer Vision", "Networking", "Databases", "Human-Computer Interaction", "Security"),
        difficulties=(DIFFICULTY_MID, DIFFICULTY_EXPERT),
    ),
    "arguana": Pools(
        domains=("Politics", "Ethics", "Economics", "Education", "Law", "Environment", "Philosophy"),
    ),
    "nq": Pools(
        domains=("History", "Geography", "Entertainment", "Sports", "Science", "Politics", "Literature"),
    ),
    "hotpotqa": Pools(
        domains=("History", "Film and Television", "Music", "Sports", "Geography", "Biography", "Politics"),
    ),
    "fever": Pools(
        domains=("History", "Film and Television", "Music", "Sports", "Geography", "Biography", "Science"),
    ),
    "climate-fever": Pools(
        domains=("Climate Science", "Meteorology", "Oceanography", "Energy Policy", "Ecology", "Glaciology"),
    ),
    "quora": Pools(
        domains=("Technology", "Careers", "Psychology", "Travel", "Education", "Health", "Culture"),
    ),
}

# Used when the LLM cannot propose domains (e.g. it writes no valid JSON list).
GENERIC = Pools(domains=("General Knowledge", "Science", "Society", "Technology", "Health"))


def pools_for(dataset: str) -> Pools | None:
    """The built-in pools of a dataset name or folder: exact name, else the longest pool name that
    prefixes the folder name at a word boundary (`scifact_small` -> scifact). None when unknown."""
    name = Path(dataset).name.lower()
    if name in POOLS:
        return POOLS[name]
    matches = [key for key in POOLS if re.match(rf"{re.escape(key)}(?![a-z0-9])", name)]
    return POOLS[max(matches, key=len)] if matches else None


def load_pools(path: str | Path) -> Pools:
    """Reads a pools YAML file (`domains: [...]`, optional `difficulties`, `lengths`).

    Raises:
        ConfigError: unreadable file, invalid YAML or a malformed mapping.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read attribute pools ({exc.strerror}); check synthesize.attribute_pools") from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_message(path, exc, "fix the attribute pools file (synthesize.attribute_pools)")) from None
    return Pools.from_mapping(raw, str(path))


def save_pools(pools: Pools, path: Path) -> None:
    """Writes pools as YAML atomically, so a killed run never leaves half a file."""
    from syneg_ray.runtime import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(pools.to_dict(), sort_keys=False))


def pair_seed(root_seed: int, query_id: str, positive_id: str) -> int:
    """A stable per-pair seed: the same pair and root seed give the same draw on any machine."""
    digest = hashlib.sha256(f"{root_seed}\x1f{query_id}\x1f{positive_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def draw(pools: Pools, seed: int) -> dict[str, str]:
    """One attribute draw (domain, difficulty, length) from a seeded generator."""
    rng = random.Random(seed)
    return {"domain": rng.choice(pools.domains), "difficulty": rng.choice(pools.difficulties), "length": rng.choice(pools.lengths)}
