"""Exceptions raised by syneg_ray, each carrying a one-line message that names the fix.

    SynegError                 every error the CLI prints as one line, without a traceback
    ├── ConfigError            a config key is unknown, mistyped or out of range
    ├── DataError              an input file is malformed (the message names file and line)
    ├── ModelNotFoundError     a model name is neither registered, a local path, nor reachable
    ├── EngineError            an LLM / encoder engine failed as a whole (not a single row)
    ├── ResumeError            a run directory was made with a different config
    ├── MissingExtraError      an optional dependency is missing (also an ImportError); names the extra
    └── PlanError              `syneg run`'s estimate exceeds run.max_hours (names the setting that shrinks it)
"""

from __future__ import annotations


class SynegError(Exception):
    """Base class: the message is meant for the user, on one line."""


class ConfigError(SynegError):
    """A config key is unknown, has the wrong type, or a value is out of range."""


class DataError(SynegError):
    """An input file is malformed; the message names the file, the line and the fix."""

    @classmethod
    def at(cls, path: object, line: int | None, problem: str) -> DataError:
        """Builds the error for `problem` at `path:line` (line is 1-based, None for the whole file)."""
        where = f"{path}:{line}" if line is not None else f"{path}"
        return cls(f"{where}: {problem}")


class ModelNotFoundError(SynegError):
    """A model name is neither a registered short name, a local path, nor a reachable hub id."""


class EngineError(SynegError):
    """An engine failed as a whole (startup, server down); row-level failures never raise this."""


class ResumeError(SynegError):
    """A stage output exists but was made with a different config; the message shows the difference."""


class MissingExtraError(SynegError, ImportError):
    """An optional dependency a path needs is not installed; the message names the extra to install
    (`syneg_ray.extras.require`). Also an ImportError, so guarded imports keep catching it."""


class PlanError(SynegError):
    """The plan of a run exceeds `run.max_hours`; the message names the estimate, the limit and the fix."""


class TuneError(SynegError):
    """A Tune search produced no usable trial."""


def yaml_error_message(path: object, exc: Exception, fix: str = "") -> str:
    """`path:line: not valid YAML (problem)[; fix]` on one line, for a YAMLError raised while parsing `path`.

    str() of a YAMLError spans several lines (context, problem, the offending line and a caret), so
    only the problem and its line are kept.
    """
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else f"{path}"
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return f"{where}: not valid YAML ({problem})" + (f"; {fix}" if fix else "")
