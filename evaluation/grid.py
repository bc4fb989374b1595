"""Grids of runs on Ray: a local instance started for the purpose, or a running cluster.

    python evaluate.py --preset cpu --workers 2                      # two workers on this machine
    python evaluate.py --preset paper --ray-address HEAD:6379 --gpus-per-run 0.5
    python train_policy.py --algo ppo --preset cpu --seeds 0-4 --workers 2

Ray is an optional extra (``pip install -e ".[ray]"``): nothing imports it until a grid starts,
and without ``--workers``, ``--ray-address`` or ``$RAY_ADDRESS`` everything runs in-process.

**Workers.** A worker is a Ray actor holding ``--cpus-per-run`` CPUs and ``--gpus-per-run`` GPUs
(a fraction lets several workers share one GPU). It pins torch to that many threads, builds
its state once (``evaluate.py``: the bench with its judge, envs and scorers) and then runs one
run after another. ``--workers N`` starts a local instance with room for N workers;
``--ray-address`` attaches to a cluster, where N defaults to as many as its resources hold.

**Results.** The driver, the process the command started, hands out the runs, receives each
result and writes it itself (records, samples, ``results.csv``): a worker writes no record, so
a run is recorded whole or not at all, and a grid resumes like an in-process command. A run does
not depend on the runs before it in the same process, so the records equal the in-process ones
(on CPU at the same torch thread count, bit for bit).

**Artefacts.** Before the first run the driver builds (or finds in its cache) every base model,
oracle and classifier the runs load, and ships their files through Ray's object store; each
worker writes those its own cache lacks (none where ``$UNLEARN_ENV_CACHE`` is one folder shared
by every node). Workers run with ``$UNLEARN_ENV_NO_BUILD`` set: one that still misses an
artefact fails the run with a message naming it, and never trains its own copy
(:mod:`unlearn_env.cache`). Code, data and policy files are not shipped: every node needs the
project installed, the data folders, and RL methods' policies at the driver's paths (a shared
filesystem or one image); a worker runs in the driver's working directory where its node has
one, so relative paths mean there what they mean on the driver.

**Faults.** A worker that dies mid-run (killed, out of memory, its node lost) is replaced, and its
run handed out again up to ``--retries`` more times, then recorded as failed. An error a run
cannot record (a missing data folder) stops the grid, as it stops an in-process command. Ctrl-C
stops the grid: finished runs stay recorded, the command exits with status 130, and rerunning
it runs the rest.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from unlearn_env.cache import NO_BUILD_ENV_VAR, ArtifactBundle, cache_root
from unlearn_env.config import ExperimentConfig, RuntimeConfig, number_argument, positive_int

ADDRESS_ENV_VAR = "RAY_ADDRESS"
"""Ray's own variable for the cluster to attach to; ``--ray-address`` overrides it."""
DEFAULT_RETRIES = 2
INTERRUPTED = 130
"""Exit status after Ctrl-C: 128 + SIGINT, as a shell reports it."""
CONNECT_TIMEOUT_S = 5.0

Job = TypeVar("Job")
State = TypeVar("State")
Result = TypeVar("Result")


class GridError(RuntimeError):
    """The grid cannot start or go on: no Ray, no cluster at the address, no room for one run."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained to it as its cause (so both are printed)."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


# ------------------------------------------------------------------------------------- options

@dataclass(frozen=True)
class GridOptions:
    """Where a grid runs and what each of its runs holds."""

    workers: int | None = None
    """Workers at a time; ``None``: in-process without an address, as many as fit on a cluster."""
    address: str | None = None
    """The Ray cluster to attach to (``--ray-address`` or ``$RAY_ADDRESS``); ``None``: a local instance."""
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    retries: int = DEFAULT_RETRIES
    """How many more times a run whose worker died is handed out."""

    @property
    def enabled(self) -> bool:
        """Whether the runs go to Ray workers (else in-process, as without this module)."""
        return self.workers is not None or self.address is not None

    @property
    def threads(self) -> int:
        """Torch threads of a worker: its whole CPUs, at least one."""
        return max(1, math.floor(self.cpus_per_run))


_positive_float = number_argument(float, lambda value: value > 0, "a positive number")
# Ray schedules a fraction of one GPU, or whole GPUs.
_gpus = number_argument(
    float, lambda value: value >= 0 and (value <= 1 or value.is_integer()), "0, a fraction of one GPU or whole GPUs"
)
_count = number_argument(int, lambda value: value >= 0, "a whole number")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workers``, ``--ray-address``, ``--cpus-per-run``, ``--gpus-per-run`` and ``--retries``."""
    group = parser.add_argument_group("grid on Ray (pip install -e '.[ray]'; evaluation.grid)")
    group.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="run N at a time on Ray workers: a local Ray instance, or the cluster of --ray-address "
                            "(default there: as many as its resources hold)")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help=f"attach to a running Ray cluster, e.g. HEAD:6379 (default: ${ADDRESS_ENV_VAR})")
    group.add_argument("--cpus-per-run", type=_positive_float, default=None, metavar="C",
                       help="CPUs a worker holds, and its torch threads (default 1)")
    group.add_argument("--gpus-per-run", type=_gpus, default=None, metavar="G",
                       help="GPUs a worker holds; a fraction shares one GPU (default 0: CPU)")
    group.add_argument("--retries", type=_count, default=None,
                       help=f"hand out a run whose worker died this many more times (default {DEFAULT_RETRIES})")


def options_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> GridOptions:
    """The grid options of parsed arguments; a usage error for a resource flag without a grid."""
    address = args.ray_address or os.environ.get(ADDRESS_ENV_VAR) or None
    options = GridOptions(workers=args.workers, address=address,
                          cpus_per_run=1.0 if args.cpus_per_run is None else args.cpus_per_run,
                          gpus_per_run=0.0 if args.gpus_per_run is None else args.gpus_per_run,
                          retries=DEFAULT_RETRIES if args.retries is None else args.retries)
    given = [flag for flag, value in (("--cpus-per-run", args.cpus_per_run), ("--gpus-per-run", args.gpus_per_run),
                                      ("--retries", args.retries)) if value is not None]
    if given and not options.enabled:
        parser.error(f"{', '.join(given)} need a grid: --workers N or --ray-address ADDR")
    try:  # before anything is built or trained
        if options.enabled:
            _ray()
        if options.address is not None:
            check_listening(options.address)
    except GridError as err:
        raise SystemExit(f"error: {err}") from None
    return options


# ------------------------------------------------------------------------------------ progress

class GridProgress:
    """One bar for a grid: runs done of all (the skipped ones count as done), with how many failed and run now."""

    def __init__(self, total: int, done: int, desc: str, enabled: bool = True) -> None:
        self.bar = tqdm(total=total, initial=done, desc=desc, unit="run", disable=not enabled, dynamic_ncols=True)
        self.failed = self.running = 0
        self._show()

    def _show(self, current: str = "") -> None:
        self.bar.set_postfix_str(f"failed {self.failed}, running {self.running}" + (f": {current}" if current else ""))

    def set_running(self, running: int, current: str = "") -> None:
        """How many runs run now (``current``: which one, in-process)."""
        self.running = running
        self._show(current)

    def finished(self, failed: bool) -> None:
        """One more run done (``failed``: and failed)."""
        self.failed += failed
        self.bar.update(1)
        self._show()

    @staticmethod
    def write(line: str) -> None:
        """A line above the bar."""
        tqdm.write(line)

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------- Ray

def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise GridError("--workers and --ray-address need Ray, an optional extra: pip install -e '.[ray]'") from None
    return ray


def check_listening(address: str) -> None:
    """Fail at once if nothing listens at ``host:port`` (or ``ray://host:port``), where Ray would wait a minute."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local": Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise GridError(f"no Ray cluster at {address} ({err.strerror or err}): start one there (ray start --head) or "
                        f"correct --ray-address / ${ADDRESS_ENV_VAR}") from None


@contextmanager
def ray_session(options: GridOptions, jobs: int) -> Iterator[int]:
    """Ray, started locally or attached to the cluster, for ``jobs`` runs; yields the number of workers.

    Raises :class:`GridError` when Ray is missing, nothing listens at the address, or no run fits.
    """
    ray = _ray()
    quiet = {"logging_level": "WARNING", "include_dashboard": False}
    if options.address is not None:
        check_listening(options.address)
        try:
            ray.init(address=options.address, **quiet)
        except (ConnectionError, RuntimeError) as err:
            raise GridError(f"cannot attach to the Ray cluster at {options.address}: {err}") from None
    else:
        # "local": a new instance even when another runs on this machine or $RAY_ADDRESS names one.
        assert options.workers is not None
        ray.init(address="local", num_cpus=math.ceil(options.workers * options.cpus_per_run), **quiet)
    try:
        yield _workers(options, jobs, ray.cluster_resources())
    finally:
        ray.shutdown()


def _workers(options: GridOptions, jobs: int, resources: dict[str, float]) -> int:
    """Workers to start: ``--workers`` or as many as the resources hold now, never more than the runs."""
    fits = [resources.get("CPU", 0.0) / options.cpus_per_run]
    if options.gpus_per_run:
        fits.append(resources.get("GPU", 0.0) / options.gpus_per_run)
    fit = math.floor(min(fits) + 1e-9)
    where = f"the Ray cluster at {options.address}" if options.address else "this machine"
    held = f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
    if fit < 1 and (options.workers is None or options.address is None):
        raise GridError(f"{where} has {held}: not enough for one run of {options.cpus_per_run:g} CPUs and "
                        f"{options.gpus_per_run:g} GPUs (--cpus-per-run, --gpus-per-run)")
    if options.workers is not None and options.workers > fit:
        # An autoscaling cluster may add nodes: the extra workers wait for them.
        tqdm.write(f"grid: {where} has {held}, room for {fit} run(s) at a time now; the other workers wait for room")
    return max(1, min(options.workers or fit, jobs))


# ---------------------------------------------------------------------------------- workers

class Worker:
    """A Ray actor that builds its state once (``setup()``) and then runs jobs on it (``work(state, job)``)."""

    def __init__(self, setup: Callable[[], State], work: Callable[[State, Job], Result], bundle: ArtifactBundle,
                 cache_dir: str | None, threads: int, cwd: str) -> None:
        import torch

        os.environ[NO_BUILD_ENV_VAR] = "1"  # an artefact the driver did not ship is an error, not a training run
        torch.set_num_threads(threads)
        if Path(cwd).is_dir():
            os.chdir(cwd)
        bundle.install(cache_root(RuntimeConfig(cache_dir=cache_dir)))
        self.setup, self.work = setup, work
        self.state: Any = None

    def run(self, job: Any) -> Any:
        """``work`` on the state, which is built on the first job: an error building it reaches the driver."""
        if self.state is None:
            self.state = self.setup()
        return self.work(self.state, job)


def _short(err: BaseException) -> str:
    """What a Ray error says of its cause in a sentence: it goes on for a page of possible causes."""
    text = str(err)
    detail = re.search(r"Worker exit detail: (.+?\.)", text)
    if detail:
        return detail.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def run_grid(jobs: Sequence[Job], *, setup: Callable[[], State], work: Callable[[State, Job], Result],
             options: GridOptions, bundle: ArtifactBundle, cache_dir: str | None, describe: Callable[[Job], str],
             on_result: Callable[[Job, Result], bool], on_lost: Callable[[Job, str], None],
             progress: GridProgress) -> None:
    """Run every job on Ray workers, calling ``on_result(job, result)`` (True: a failed run) as each finishes.

    A job whose worker died goes to a fresh worker, at most ``options.retries`` more times; then
    ``on_lost(job, why)``. An exception raised in a worker (by ``setup`` or ``work``) stops the grid
    and is raised here. Ctrl-C stops the grid (``KeyboardInterrupt`` propagates); the workers end with it.
    """
    if not jobs:
        return
    with ray_session(options, len(jobs)) as count:
        ray = _ray()
        actor_cls = ray.remote(Worker).options(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run)
        args = (setup, work, ray.put(bundle), cache_dir, options.threads, os.getcwd())
        idle = [actor_cls.remote(*args) for _ in range(count)]
        live = set(idle)
        queue = deque(range(len(jobs)))
        deaths = [0] * len(jobs)
        running: dict[Any, tuple[Any, int]] = {}
        try:
            while queue or running:
                while queue and idle:
                    actor, index = idle.pop(), queue.popleft()
                    running[actor.run.remote(jobs[index])] = (actor, index)
                progress.set_running(len(running))
                [ref], _ = ray.wait(list(running), num_returns=1)
                actor, index = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    ray.kill(actor, no_restart=True)
                    live.discard(actor)
                    fresh = actor_cls.remote(*args)
                    live.add(fresh)
                    idle.append(fresh)
                    deaths[index] += 1
                    job = jobs[index]
                    if deaths[index] <= options.retries:
                        progress.write(f"{describe(job)}: its worker died ({_short(err)}); "
                                       f"handed out again ({deaths[index]} of {options.retries})")
                        queue.appendleft(index)
                    else:
                        on_lost(job, f"its worker died {deaths[index]} times ({_short(err)})")
                        progress.finished(failed=True)
                    continue
                except ray.exceptions.RayTaskError as err:
                    cause = err.cause if isinstance(err.cause, Exception) else GridError(_short(err))
                    raise cause from RemoteTraceback(f"in the worker running {describe(jobs[index])}:\n"
                                                     f"{err.traceback_str}")
                idle.append(actor)
                progress.finished(failed=on_result(jobs[index], result))
        finally:
            for actor in live:
                ray.kill(actor, no_restart=True)


# -------------------------------------------------------------------------------- artefacts

def prepare_artifacts(configs: Iterable[ExperimentConfig], roles: Sequence[str] = ("judge", "validator")
                      ) -> list[Path]:
    """Build (or find) the base model of every config and its classifiers of ``roles``; their folders.

    Runs on the driver, before any worker starts, so that each artefact is trained once.
    """
    from evaluation.judge import classifier_dir, ensure_classifier
    from unlearn_env.pretrain import ensure_base_model

    folders: dict[Path, None] = {}  # insertion-ordered, without repeats
    for config in configs:
        folders[ensure_base_model(config).parent] = None
        for role in roles:
            ensure_classifier(config, role)  # type: ignore[arg-type]
            folders[classifier_dir(config, role)] = None  # type: ignore[arg-type]
    return list(folders)


def bundle_of(folders: Sequence[Path], runtime: RuntimeConfig) -> ArtifactBundle:
    """The artefact folders' files, by their path under the driver's cache root."""
    return ArtifactBundle.of(folders, cache_root(runtime))


def evaluation_artifacts(configs: Iterable[ExperimentConfig], methods: Sequence[Any]) -> list[Path]:
    """Build (or find) what ``evaluate.py``'s runs of ``methods`` load on tasks of ``configs``; their folders.

    Each task's base model, judge and validator, and what a method loads of its own: the retrain
    oracle (``oracle``), VDU's ensemble of base models (``vdu:precision=ensemble``).
    """
    from baselines.vdu import VDUOptions, ensemble_configs

    configs = list(configs)
    extra = []
    for method in methods:
        if method.entry.name == "oracle":
            extra += [config.oracle() for config in configs]
        elif isinstance(method.options, VDUOptions) and method.options.precision == "ensemble":
            extra += [c for config in configs for c in ensemble_configs(config, method.options.ensemble_size)]
    return prepare_artifacts(configs) + prepare_artifacts(extra, roles=())
