"""Instance sets: named sets of forget tasks shipped with the package, and how episodes go through them.

As DACBench ships instance sets and CARL contexts, every preset has a file
``unlearn_env/instances/<preset>.yaml`` that maps set names to lists of tasks (text or mapping
form, :mod:`unlearn_env.tasks`)::

    train: [1-trouser-0.2-s0, 3-bag-0.1-s0, ...]
    test:  [0-sandal-0.15-s0, ...]
    class: [class-trouser-0.5-s0]

Checked when loaded (:class:`~unlearn_env.tasks.TaskError` naming the file, set and entry):

* every entry is a valid task, and no set is empty or repeats a task;
* the tasks of one kind across the file's sets form **one family**: their training data carries
  all their contaminations at once, so they share one base model (distinct digits, one data
  seed); a task's retain set holds the other tasks' contaminants;
* ``test`` is held out from ``train``: none of its digits, Fashion-MNIST classes or ratios
  appears in ``train``.

Every preset ships a set ``class`` (issue 14): one ``class`` task, trousers with a label of their
own (10) in an 11-label base model, a family of its own (:mod:`unlearn_env.tasks`).

:func:`task_set` turns what a user asks for (a set name, one task or a list of tasks, as text,
mappings or :class:`~unlearn_env.tasks.ForgetTask`) into a :class:`TaskSet`: the tasks and the
family whose base model they use. A list whose tasks all belong to the preset's family uses
that family (the shipped base model); any other list is a family of its own. :func:`task_config`
is the experiment config of one task of a family; :class:`TaskSchedule` picks the task of each
episode (``round-robin`` or ``random``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import yaml

from unlearn_env.config import TASK_FIELDS, DataConfig, ExperimentConfig
from unlearn_env.tasks import CLASS_TASK_LABELS, ForgetTask, TaskError, TaskSpec, check_family, parse_task

INSTANCES_DIR = Path(__file__).parent / "instances"
HELD_OUT_SETS: tuple[str, str] = ("train", "test")
"""(training set, held-out set): the second shares no digit, class or ratio with the first."""
TASK_STREAM = 0x7A5C
"""Mixed into a reset seed for the ``random`` task order, so the task draw is independent of the episode's draws."""
_SET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

TaskOrder = Literal["round-robin", "random"]
TASK_ORDERS: tuple[str, ...] = ("round-robin", "random")


@dataclass(frozen=True)
class TaskSet:
    """Tasks an environment runs, and the family (one base model) they belong to.

    ``tasks`` keeps the order given (the round-robin order); ``family`` is in canonical order
    (by digit) and holds every task of ``tasks``. ``name`` is the instance set's name, if any.
    """

    tasks: tuple[ForgetTask, ...]
    family: tuple[ForgetTask, ...]
    name: str | None = None

    def __post_init__(self) -> None:
        tasks = tuple(map(parse_task, self.tasks))
        if not tasks:
            raise TaskError("a task set needs at least one task")
        repeated = sorted({t.text for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise TaskError(f"a task set lists each task once; repeated: {', '.join(repeated)}")
        family = check_family(map(parse_task, self.family))
        outside = [t.text for t in tasks if t not in family]
        if outside:
            raise TaskError(f"tasks {', '.join(outside)} are not in the family {', '.join(map(str, family))}")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "family", family)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[ForgetTask]:
        return iter(self.tasks)

    def texts(self) -> list[str]:
        """The tasks' text forms, in order."""
        return [task.text for task in self.tasks]

    def find(self, spec: TaskSpec) -> ForgetTask:
        """The task ``spec`` describes; :class:`TaskError` if it is malformed or not one of this set's tasks."""
        task = parse_task(spec)
        if task not in self.tasks:
            raise TaskError(f"task {task} is not one of {self.describe()}")
        return task

    def describe(self) -> str:
        """E.g. ``the tasks of set 'train' (1-trouser-0.2-s0, 3-bag-0.1-s0)``, for messages."""
        named = f" of set {self.name!r}" if self.name else ""
        return f"the tasks{named} ({', '.join(self.texts())})"

    def config_of(self, task: TaskSpec, config: ExperimentConfig) -> ExperimentConfig:
        """``config`` with its data section set to ``task`` of this set, the rest of the family as companions."""
        return task_config(config, self.find(task), self.family)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (a run's ``config.json``); :func:`task_set` reads it back."""
        return {"name": self.name, "tasks": self.texts(), "family": [task.text for task in self.family]}


def task_config(config: ExperimentConfig, task: ForgetTask, family: Sequence[ForgetTask]) -> ExperimentConfig:
    """The experiment config of ``task`` in ``family``: the data fields name the task, the others are companions.

    Every task of a family gets the same base model (:meth:`ExperimentConfig.base_model_key`);
    a family of one task is today's single-task config. A ``class`` task's model gets the
    :data:`~unlearn_env.tasks.CLASS_TASK_LABELS` (11) labels it needs (more if ``config`` has more).
    """
    family = check_family(family)
    if task not in family:
        raise TaskError(f"task {task} is not in the family {', '.join(map(str, family))}")
    data = dataclasses.replace(
        config.data, forget_class=task.digit, fashion_class=task.fashion_class, contamination=task.ratio,
        data_seed=task.seed, companions=tuple(t.text for t in family if t != task),
    )
    model = config.model
    if task.kind == "class":
        model = dataclasses.replace(model, num_classes=max(model.num_classes, CLASS_TASK_LABELS))
    return dataclasses.replace(config, data=data, model=model)


def single_task_set(data: DataConfig) -> TaskSet:
    """The task set of a config without ``tasks``: its own task, in its family (itself and its companions)."""
    return TaskSet((data.task(),), data.family())


def load_instance_file(path: str | Path) -> dict[str, tuple[ForgetTask, ...]]:
    """The sets of an instance file, checked (module docstring)."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise TaskError(f"cannot read the instance file {path}: {err}") from None
    if not isinstance(content, Mapping) or not content:
        raise TaskError(f"{path}: an instance file maps set names to lists of tasks")
    sets: dict[str, tuple[ForgetTask, ...]] = {}
    for name, entries in content.items():
        if not isinstance(name, str) or not _SET_NAME.match(name):
            raise TaskError(f"{path}: set name {name!r} is not a lower-case identifier")
        if not isinstance(entries, list) or not entries:
            raise TaskError(f"{path}: set {name!r} must be a non-empty list of tasks")
        tasks = []
        for i, entry in enumerate(entries):
            try:
                tasks.append(parse_task(entry))
            except TaskError as err:
                raise TaskError(f"{path}: set {name!r}, entry {i + 1}: {err}") from None
        try:
            TaskSet(tuple(tasks), tuple(tasks), name)
        except TaskError as err:
            raise TaskError(f"{path}: set {name!r}: {err}") from None
        sets[name] = tuple(tasks)
    for kind in {task.kind for tasks in sets.values() for task in tasks}:
        try:
            check_family(task for tasks in sets.values() for task in tasks if task.kind == kind)
        except TaskError as err:
            raise TaskError(f"{path}: the {kind} tasks of all sets form one family (one base model): {err}") from None
    train, test = HELD_OUT_SETS
    if train in sets and test in sets:
        for attribute in ("digit", "fashion_class", "ratio"):
            seen = {getattr(task, attribute) for task in sets[train]}
            shared = [task.text for task in sets[test] if getattr(task, attribute) in seen]
            if shared:
                raise TaskError(f"{path}: set {test!r} must be held out from {train!r}, but the {attribute} of "
                                f"{', '.join(shared)} appears in {train!r}")
    return sets


@functools.lru_cache(maxsize=None)
def instance_sets(preset: str) -> dict[str, tuple[ForgetTask, ...]]:
    """The instance sets shipped for ``preset`` (``unlearn_env/instances/<preset>.yaml``), checked; empty if none."""
    path = INSTANCES_DIR / f"{preset}.yaml"
    return load_instance_file(path) if path.is_file() else {}


def preset_family(preset: str, kind: str = "instance") -> tuple[ForgetTask, ...]:
    """The family of ``preset``'s shipped tasks of ``kind``: the union of its sets (empty if it ships none)."""
    tasks = [task for tasks in instance_sets(preset).values() for task in tasks if task.kind == kind]
    return check_family(tasks) if tasks else ()


TaskSetSpec = Union[str, TaskSpec, Sequence[TaskSpec], TaskSet, Mapping[str, Any]]
"""What :func:`task_set` accepts: a set name, one task, a list of tasks, a :class:`TaskSet` or its ``to_dict``."""


def task_set(preset: str, spec: TaskSetSpec) -> TaskSet:
    """The :class:`TaskSet` ``spec`` names for ``preset``.

    * a set name (``"train"``): that shipped set, in the preset's family;
    * one task or a list of tasks (a string may list several, comma-separated): those tasks, in
      the preset's family if it holds them all, else in a family of their own;
    * a :class:`TaskSet`, or its :meth:`TaskSet.to_dict` (a saved run's), as it is.
    """
    if isinstance(spec, TaskSet):
        return spec
    if isinstance(spec, Mapping) and "tasks" in spec:
        unknown = sorted(set(spec) - {"name", "tasks", "family"})
        if unknown:
            raise TaskError(f"a task set mapping has the keys name, tasks, family; got unknown {unknown}")
        return TaskSet(tuple(spec["tasks"]), tuple(spec.get("family") or spec["tasks"]), spec.get("name"))
    sets = instance_sets(preset)
    if isinstance(spec, str) and spec.strip() in sets:
        name = spec.strip()
        return TaskSet(sets[name], preset_family(preset, sets[name][0].kind), name)
    if isinstance(spec, str):
        items: Sequence[TaskSpec] = [part for part in spec.split(",") if part.strip()]
    elif isinstance(spec, (Mapping, ForgetTask)):
        items = [spec]
    else:
        items = list(spec)
    try:
        tasks = tuple(parse_task(item) for item in items)
    except TaskError as err:
        names = f"the {preset} preset's sets are {', '.join(sets)}" if sets else f"the {preset} preset ships no sets"
        raise TaskError(f"{err} ({names}; a set name or tasks are expected)") from None
    if not tasks:
        raise TaskError(f"no task given in {spec!r}")
    family = preset_family(preset, tasks[0].kind)
    if not all(task in family for task in tasks):
        family = check_family(tasks)
    return TaskSet(tasks, family)


def resolve_task_set(config: ExperimentConfig, tasks: TaskSetSpec | None, overridden: Iterable[str] = ()) -> TaskSet:
    """The tasks of an env (or a pretraining) from ``config`` and ``tasks`` (``None``: the config's own task).

    With ``tasks``, each task sets the data section's task fields and companions, so overriding
    one of them as well (a key of ``overridden``) is refused as a contradiction.
    """
    if tasks is None:
        return single_task_set(config.data)
    clash = sorted(set(overridden) & {*TASK_FIELDS, "companions"})
    if clash:
        raise ValueError(f"{', '.join(clash)} would be set twice: each task of tasks= sets it; leave it out")
    return task_set(config.preset, tasks)


class TaskSchedule:
    """Which task each episode of one environment (or sub-environment) runs.

    ``round-robin`` (default): the tasks in order, episode j running ``tasks[(start + j * stride) % K]``
    (a batched env's sub-environment i uses ``start=i, stride=N``, so N concurrent episodes spread
    over the tasks). ``random``: a uniform draw per episode from a generator seeded by the reset
    seed (mixed with :data:`TASK_STREAM`, so the episode's own random draws stay those of a
    single-task env).

    A reset with a seed restarts the schedule (the round-robin at ``start``, the random stream
    from the seed), so that ``reset(seed=s)`` gives the same episode every time, as Gymnasium
    asks; resets without a seed go on (an agent's training seeds its env once, then auto-resets).
    A loop over seeded resets therefore runs one task: to run given tasks, ask for them
    (``options={"task": ...}``). A task asked for runs instead of the schedule's; it neither
    advances the round-robin nor draws from the random stream.
    """

    def __init__(self, tasks: TaskSet, order: TaskOrder = "round-robin", start: int = 0, stride: int = 1) -> None:
        if order not in TASK_ORDERS:
            raise ValueError(f"task_order must be one of {TASK_ORDERS}, got {order!r}")
        self.tasks = tasks
        self.order = order
        self._start = self._next = start
        self._stride = stride
        self._rng: np.random.Generator | None = None

    def next(self, seed: int | None = None, requested: TaskSpec | None = None) -> ForgetTask:
        """The task of the episode a reset (with ``seed``, and ``options["task"]`` as ``requested``) starts."""
        chosen = None if requested is None else self.tasks.find(requested)
        if seed is not None:
            self._next = self._start
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(None if seed is None else [TASK_STREAM, seed])
        if chosen is not None:
            return chosen
        if self.order == "random":
            return self.tasks.tasks[int(self._rng.integers(len(self.tasks)))]
        task = self.tasks.tasks[self._next % len(self.tasks)]
        self._next += self._stride
        return task
