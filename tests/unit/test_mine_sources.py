"""The config's mining sources and stages/mine.py's table of them name the same set."""

from __future__ import annotations

import pytest

from syneg_ray.config import MINE_SOURCES, load_config
from syneg_ray.errors import ConfigError
from syneg_ray.stages import mine


def test_every_configurable_source_has_its_function_and_no_other() -> None:
    assert set(mine.SOURCES) == set(MINE_SOURCES)


def test_an_unknown_source_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="mine.sources = \\['dense', 'splade'\\]; choose from dense, bm25, pyserini, given"):
        load_config(None, ["mine.sources=[dense,splade]"])
