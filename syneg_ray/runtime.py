"""Starting or joining Ray, logging and the run directory: the only place that calls ray.init."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from syneg_ray import signals
from syneg_ray.config import PipelineConfig, to_yaml

logger = logging.getLogger(__name__)


VERBOSE_ENV = "SYNEG_VERBOSE"  # "1": Ray's own output (progress blocks, Ray Data and Train logs) as Ray prints it

# Third-party loggers kept at WARNING unless verbose.
NOISY_LOGGERS = ("ray", "urllib3", "httpx", "filelock", "sentence_transformers", "transformers", "faiss")

# The environment of a local Ray's workers when not verbose. Actors and Tune trials run Ray Data
# and Hugging Face loads in their own processes, whose output log_to_driver copies to the
# driver's terminal; a DataContext or logger setting of the driver does not reach them.
QUIET_WORKER_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # Ray Data's bars, or its ten-second progress blocks off a TTY
    # Ray Data's "Starting execution of Dataset", "Execution plan", "execution finished" lines. Read
    # each time Ray Data (re)configures its logger, which it does in workers for every dataset.
    "RAY_DATA_LOG_LEVEL": "WARNING",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar in every actor that loads a model
}


def verbose() -> bool:
    """True when Ray's own output is wanted: `syneg -v`, or SYNEG_VERBOSE=1 in the environment."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def setup_logging(verbose: bool = False) -> None:
    """One format for the whole package; Ray's own loggers stay at WARNING unless verbose.

    `verbose` also sets SYNEG_VERBOSE=1, which `init_ray` reads: the CLI's `-v` brings back Ray
    Data's progress output and Ray's INFO logs.

    Example:
        >>> setup_logging(verbose=False)  # INFO lines of syneg_ray, WARNING of Ray
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        for noisy in NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)


def smallest_node_cpus() -> float:
    """CPUs of the smallest alive Ray node that has any (a local Ray: this machine plus the spare);
    0 when this process has not started or joined Ray."""
    import ray

    if not ray.is_initialized():
        return 0.0
    sizes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return min((c for c in sizes if c > 0), default=0.0)


def shared_cores(n: int, smallest_node: float | None = None, cpu_max: str | Path = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores shared by `n` actors or workers, so that each one fits wherever Ray places it and
    its threads do not oversubscribe the node.

    The cores come from Ray's own resources when Ray runs: the CPU resource of the smallest node (what
    a pod's `ray start` was given, not the host's cores that os.cpu_count() sees inside a container).
    On a Ray of this machine alone (init_ray's local Ray, which adds a spare logical CPU), and when
    Ray is not running, this machine's usable cores cap it (`usable_cores`: affinity and cgroup quota).

    Args:
        n: actors or workers sharing the cores.
        smallest_node: CPUs of the smallest node of a local Ray (capped by this machine's cores);
            None asks the running Ray (smallest_node_cpus).
        cpu_max: the cgroup v2 CPU quota file that `usable_cores` reads.
    """
    if smallest_node is None:
        smallest = smallest_node_cpus()
        if smallest and not _single_node_ray():
            return max(1, int(smallest) // n)  # a cluster: the nodes' CPUs, whatever the driver's machine has
    else:
        smallest = smallest_node
    cores = min(usable_cores(cpu_max), smallest or float("inf"))
    return max(1, int(cores) // n)


def _single_node_ray() -> bool:
    """True when the Ray this process joined has one alive node (init_ray's local Ray, or a one-machine `ray start`)."""
    import ray

    return len([node for node in ray.nodes() if node.get("Alive")]) <= 1


def usable_cores(cpu_max: str | Path = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (`cpu.max`: "QUOTA PERIOD", or "max PERIOD" for none), then os.cpu_count(). In a container
    os.cpu_count() is the host's cores; the affinity or the quota is the container's share."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text(encoding="utf-8").split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, int(quota) // int(period)))  # floor: threads beyond the quota are throttled
    except (OSError, ValueError):  # no cgroup v2 quota file, or an unreadable one
        pass
    return max(1, cores)


def init_ray(cfg: PipelineConfig) -> None:
    """Starts a local Ray sized for this machine, or joins the cluster in `ray.address`.

    Inside `ray job submit` (RAY_ADDRESS set) it always joins the job's cluster. Unless verbose
    (`syneg -v`, SYNEG_VERBOSE=1), Ray's own output is off: its INFO logs, Ray Data's per-operator
    progress (and its ten-second progress blocks when stdout is not a terminal), and, in a local
    Ray's workers, Ray Data's and Hugging Face's progress bars (QUIET_WORKER_ENV). Warnings and
    errors still print; each stage prints its own progress and summary line.

    Example:
        >>> init_ray(load_config(None, ["ray.num_cpus=2"]))  # doctest: +SKIP
    """
    import ray

    if ray.is_initialized():
        return
    loud = verbose()
    # Ray 2.60 turns token auth on by default; a local, loopback-only Ray does not need it.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Workers inherit the driver's env: keep torch from oversubscribing cores inside each actor.
    env_vars = {"TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}
    runtime_env: dict = {"env_vars": {**env_vars, VERBOSE_ENV: "1"} if loud else {**env_vars, **QUIET_WORKER_ENV}}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    ours = signals.installed()  # ray.init replaces the SIGTERM handler: put the CLI's back after it
    # ray.init sets the "ray" logger to this level; WARNING drops "Started a local Ray instance" and the like
    logging_level = logging.INFO if loud else logging.WARNING
    if address:
        # On a cluster the job's runtime_env (jobs/runtime_env.yaml) governs; a second one would conflict.
        ray.init(address=address, log_to_driver=True, logging_level=logging_level)
        signals.keep(ours)
        quiet_ray_data(loud)
        return
    runtime_env["worker_process_setup_hook"] = "syneg_ray.runtime.quiet_worker_logs"
    ray.init(
        # One spare logical CPU: actor pools that reserve every core would otherwise starve Ray Data's
        # read and write tasks (a deadlock seen on 2 cores).
        num_cpus=cfg.ray.num_cpus or (os.cpu_count() or 1) + 1,
        object_store_memory=int(cfg.ray.object_store_gb * 1024**3),
        include_dashboard=cfg.ray.dashboard,
        runtime_env=runtime_env,
        log_to_driver=True,  # workers' warnings and errors still reach the terminal
        logging_level=logging_level,
        _system_config=_idle_worker_config(cfg.ray.idle_workers),
    )
    signals.keep(ours)  # Ray's processes are still stopped on exit, by the atexit hook ray.init registers
    quiet_ray_data(loud)


def quiet_worker_logs() -> None:
    """Runs first in every worker of a local Ray (its runtime_env's worker_process_setup_hook)."""
    # Ray Train's placement-group cleaner asks the State API every second whether the train
    # controller still lives. A local Ray without the dashboard does not serve that API, so every
    # check logged a warning: hundreds of lines per training run. Its job, freeing the placement
    # group of a controller that died, falls to the local cluster's own exit.
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    if not verbose():
        # the "Progress bars disabled" warning that RAY_DATA_DISABLE_PROGRESS_BARS brings, once per worker
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _idle_worker_config(idle_workers: int) -> dict:
    """Ray keeps up to one idle worker per CPU after tasks finish, each a full Python with Ray
    imported. On a laptop that memory is better spent on the stage's own actors; a worker that is
    needed again starts in a second or two."""
    if idle_workers < 0:
        return {}
    config: dict = {"num_workers_soft_limit": idle_workers}
    if idle_workers == 0:
        # Nor start them ahead of need: by default the first driver gets a worker per CPU at once,
        # which then sit idle beside the actors the stage starts (a 114 MB Python each).
        config |= {"prestart_worker_first_driver": False, "enable_worker_prestart": False}
    return config


def quiet_ray_data(loud: bool = False) -> None:
    """Ray Data's output in this process: the driver, where the stages' datasets execute.

    Quiet (the default): no per-operator progress; one overall bar per dataset on a terminal, and
    none off a terminal, where Ray Data would log a block of progress lines every ten seconds
    instead. Its INFO lines ("Starting execution of Dataset ...") are dropped. Loud (`syneg -v`):
    Ray Data's defaults.

    Example:
        >>> import ray.data
        >>> quiet_ray_data()
        >>> ray.data.DataContext.get_current().enable_operator_progress_bars
        False
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = loud  # the operator plan, printed at every execution
    ctx.enable_progress_bars = loud or sys.stdout.isatty()  # Ray Data's own test for its non-TTY progress log
    ctx.enable_operator_progress_bars = loud
    # Ray Data's logger does not propagate to ours: it has its own console handler and level
    # (DEBUG, for its session log file), set when ray.data is imported.
    logging.getLogger("ray.data").setLevel((os.environ.get("RAY_DATA_LOG_LEVEL") or logging.DEBUG) if loud else logging.WARNING)
    # "Progress bars disabled / for operators disabled" is a warning printed once; here it is the intent
    logging.getLogger("ray.data._internal.progress").setLevel(logging.NOTSET if loud else logging.ERROR)


def stage_dir(cfg: PipelineConfig, stage: str) -> Path:
    """The folder of one stage inside the run directory, with the resolved config saved beside it."""
    folder = Path(cfg.run.run_dir) / stage
    folder.mkdir(parents=True, exist_ok=True)
    (Path(cfg.run.run_dir) / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    return folder


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Runs `write` on a temporary file beside `path`, then renames it into place: a reader, or a
    rerun after a kill, never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    _replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_parquet_atomic(path: Path, table, row_group_size: int | None = None) -> None:  # table: pyarrow.Table
    """Writes a Parquet file through a temporary file and a rename (row groups of `row_group_size` rows)."""
    import pyarrow.parquet as pq

    _replace_atomically(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size))


def read_json(path: Path) -> dict | None:
    """The JSON record at `path`, or None when it is missing or unreadable (a run cut off while writing it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def link_folder(source: Path, link: Path) -> None:
    """Makes `link` a symbolic link to the folder `source` (read-only sharing of a stage's outputs
    between run directories); a link to another folder is replaced, a real folder is left alone."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() != source.resolve():
        link.unlink()
    if not link.exists():
        link.symlink_to(source.resolve(), target_is_directory=True)
