"""Forget tasks: typed, hashable descriptions of one unlearning request, with a text and a mapping form.

An ``instance`` task (the only kind so far) is SPEC §1's benchmark with its four numbers free:
the forget digit ``d``, whose label is contaminated in the training data with images of the
Fashion-MNIST class ``f`` at the ratio ``r`` (the share of label-d images that are class-f
images), drawn with the data seed ``s``. Its forget set A is those class-f images. The default
benchmark is ``ForgetTask(digit=1, fashion_class=1, ratio=0.2, seed=0)``.

Text form, ``<d>-<class>-<r>-s<s>``::

    1-trouser-0.2-s0        8-t-shirt-0.15-s0        4-ankle-boot-0.25-s0

The class is a name of :data:`FASHION_CLASSES` (any case; a space or ``_`` may stand for the
``-``) or its number (``1-1-0.2-s0`` is the default too); ``-s<s>`` may be left out for seed 0.
:attr:`ForgetTask.text` writes the canonical form (lower-case name, the ratio as Python's
shortest round-trip ``repr``), which parses back to an equal task. Mapping form, as in a YAML
instance file: ``{digit: 1, fashion_class: trouser, ratio: 0.2, seed: 0}`` (:meth:`ForgetTask.to_dict`
writes it, ``kind`` included). A bad string or mapping raises :class:`TaskError` naming the problem.

A ``class`` task (class unlearning, issue 14) gives the concept a label of its own instead of
mixing it into a digit's: its images carry label :data:`CLASS_LABEL` (10) in an 11-label base model,
as the T-shirts carry label 10 in SISS's MNIST T-shirt data (``claserken/mnist-with-tshirt``; the
model there is unconditional and the label only marks the deletion set), and the whole label is
forgotten: the forget set A is every label-10 image, the retain set the digits. Its ``digit`` is
:data:`CLASS_LABEL`, its ``ratio`` sizes the label: it holds r/(1-r) times as many images as an
average digit label (r = 0.5: as many), so r is the share the concept would have if it and an
average digit shared a label, as an instance task's r is. Text form ``class-<class>-<r>-s<s>``::

    class-trouser-0.5-s0        class-ankle-boot-0.3-s1

and mapping form ``{kind: class, fashion_class: trouser, ratio: 0.5, seed: 0}`` (``digit`` may be
left out or given as 10). What "forgotten" means for it: the label-10 samples are no longer judged
the concept; whatever they become instead is the method's choice (SFD's override makes them digits,
SISS's subtracted term only pushes them off the concept; the retrain oracle never saw the label, so
its label-10 samples are what an untrained label embedding gives). :func:`forget_digit_hits` counts
a class task's label-10 sample as "drawn as a digit" when it is judged any digit.

A **family** (:func:`check_family`) is a set of tasks that share one base model: its training
data carries all their contaminations at once, so their digits differ and their data seed is
one (:mod:`unlearn_env.data` builds it; :mod:`unlearn_env.instances` ships families as sets).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np

FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
"""Fashion-MNIST's class names, by label."""
CLASS_SLUGS: tuple[str, ...] = tuple(name.lower().replace(" ", "-") for name in FASHION_CLASSES)
"""The class names as a task's text writes them: ``t-shirt``, ``trouser``, ..., ``ankle-boot``."""
NUM_DIGITS = 10

TaskKind = Literal["instance", "class"]
TASK_KINDS: tuple[str, ...] = ("instance", "class")
"""The task kinds this version knows: a concept mixed into a digit's label, or a concept with a label of its own."""
CLASS_LABEL = NUM_DIGITS
"""The label of a ``class`` task's concept: the first label after the digits' (10)."""
CLASS_TASK_LABELS = CLASS_LABEL + 1
"""Labels of a ``class`` task's base model: the ten digits and the concept's own (11)."""

TASK_FEATURE_NAMES: tuple[str, ...] = (
    *(f"task_digit_{d}" for d in range(NUM_DIGITS)),
    *(f"task_class_{slug}" for slug in CLASS_SLUGS),
    "task_ratio",
)
"""Names of :meth:`ForgetTask.features`: one-hot forget digit, one-hot Fashion-MNIST class, ratio."""

_FIELDS: tuple[str, ...] = ("kind", "digit", "fashion_class", "ratio", "seed")
_TEXT = re.compile(r"^(?P<digit>\d+)-(?P<cls>.+?)-(?P<ratio>[0-9.eE+-]+?)(?:-s(?P<seed>\d+))?$")
_CLASS_TEXT = re.compile(r"^class-(?P<cls>.+?)-(?P<ratio>[0-9.eE+-]+?)(?:-s(?P<seed>\d+))?$", re.IGNORECASE)
_EXAMPLE = "1-trouser-0.2-s0"
_CLASS_EXAMPLE = "class-trouser-0.5-s0"


class TaskError(ValueError):
    """A task description (text, mapping, instance file or set) is malformed; the message names the problem."""


def fashion_class_index(value: str | int) -> int:
    """The label 0-9 of a Fashion-MNIST class given by name (``trouser``, ``T-shirt``, ``ankle boot``) or number."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        index = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value.strip())
    elif isinstance(value, str):
        slug = re.sub(r"[\s_]+", "-", value.strip().lower())
        if slug not in CLASS_SLUGS:
            raise TaskError(f"unknown Fashion-MNIST class {value!r}; the classes are {', '.join(CLASS_SLUGS)} "
                            f"(or their numbers 0-9)")
        return CLASS_SLUGS.index(slug)
    else:
        raise TaskError(f"a Fashion-MNIST class is a name or a number 0-9, got {value!r}")
    if not 0 <= index < len(FASHION_CLASSES):
        raise TaskError(f"Fashion-MNIST classes are numbered 0-9, got {index}")
    return index


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
        raise TaskError(f"{name} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise TaskError(f"{name} must be an integer, got {value!r}") from None


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating, str)):
        raise TaskError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise TaskError(f"{name} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class ForgetTask:
    """One unlearning request: forget the Fashion-MNIST class ``fashion_class`` mixed into digit ``digit``
    (``kind="instance"``), or carrying the label :data:`CLASS_LABEL` of its own (``kind="class"``).

    Frozen and hashable (a dict key, a set member); ``str(task)`` is its text form.
    :meth:`class_task` builds a ``class`` task.
    """

    digit: int
    """The label whose class-f images form the forget set: the contaminated digit d, or
    :data:`CLASS_LABEL` for a ``class`` task."""
    fashion_class: int
    """The contaminating Fashion-MNIST class f (0-9, :data:`FASHION_CLASSES`): the concept to forget."""
    ratio: float
    """Share of the label-d training images that are class-f images, in (0, 1)."""
    seed: int = 0
    """The data seed: which digits and which class-f images the training data holds."""
    kind: TaskKind = "instance"

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise TaskError(f"unknown task kind {self.kind!r}; this version knows {', '.join(TASK_KINDS)}")
        # Normalise numpy scalars and integral floats, so that equal tasks compare and hash equal.
        object.__setattr__(self, "digit", _integer(self.digit, "digit"))
        object.__setattr__(self, "fashion_class", fashion_class_index(self.fashion_class))
        object.__setattr__(self, "ratio", _number(self.ratio, "ratio"))
        object.__setattr__(self, "seed", _integer(self.seed, "seed"))
        if self.kind == "class" and self.digit != CLASS_LABEL:
            raise TaskError(f"a class task's concept carries label {CLASS_LABEL} (its own), got digit {self.digit}")
        if self.kind == "instance" and not 0 <= self.digit < NUM_DIGITS:
            raise TaskError(f"the forget digit must be 0-9, got {self.digit}")
        if not (math.isfinite(self.ratio) and 0.0 < self.ratio < 1.0):
            raise TaskError(f"the contamination ratio must lie in (0, 1), got {self.ratio}")
        if self.seed < 0:
            raise TaskError(f"the data seed must be >= 0, got {self.seed}")

    @property
    def concept(self) -> str:
        """The forget concept's class name as the text form writes it (``trouser``)."""
        return CLASS_SLUGS[self.fashion_class]

    @classmethod
    def class_task(cls, fashion_class: str | int, ratio: float, seed: int = 0) -> ForgetTask:
        """The ``class`` task of ``fashion_class`` (name or number): its images carry label :data:`CLASS_LABEL`."""
        return cls(CLASS_LABEL, fashion_class_index(fashion_class), ratio, seed, kind="class")

    @property
    def text(self) -> str:
        """The canonical text form, ``1-trouser-0.2-s0`` or ``class-trouser-0.5-s0``; :func:`parse_task` reads it back."""
        head = "class" if self.kind == "class" else str(self.digit)
        return f"{head}-{self.concept}-{self.ratio!r}-s{self.seed}"

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """The mapping form (YAML- and JSON-ready); :func:`parse_task` reads it back."""
        return {"kind": self.kind, "digit": self.digit, "fashion_class": self.concept, "ratio": self.ratio,
                "seed": self.seed}

    def features(self) -> np.ndarray:
        """The task as observation features (:data:`TASK_FEATURE_NAMES`): one-hot d, one-hot f, r; float32 in [0, 1].

        A ``class`` task contaminates no digit: its digit entries are all 0 (an instance task's hold one 1).
        """
        features = np.zeros(len(TASK_FEATURE_NAMES), dtype=np.float32)
        if self.kind == "instance":
            features[self.digit] = 1.0
        features[NUM_DIGITS + self.fashion_class] = 1.0
        features[-1] = self.ratio
        return features

    @classmethod
    def from_text(cls, text: str) -> ForgetTask:
        """Parse the text form (module docstring)."""
        match, kind = _CLASS_TEXT.match(text.strip()), "class"
        if match is None:
            match, kind = _TEXT.match(text.strip()), "instance"
        if match is None:
            raise TaskError(f"cannot read {text!r} as a forget task: write <digit>-<class>-<ratio>-s<seed>, "
                            f"e.g. {_EXAMPLE} (a class task: class-<class>-<ratio>-s<seed>, e.g. {_CLASS_EXAMPLE})")
        try:
            digit = CLASS_LABEL if kind == "class" else int(match["digit"])
            return cls(digit, fashion_class_index(match["cls"]), _number(match["ratio"], "ratio"),
                       int(match["seed"] or 0), kind)
        except TaskError as err:
            raise TaskError(f"forget task {text!r}: {err}") from None

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> ForgetTask:
        """Parse the mapping form: ``digit``, ``fashion_class`` (name or number), ``ratio``, optional ``seed``, ``kind``.

        A ``class`` task may leave ``digit`` out: it is :data:`CLASS_LABEL`.
        """
        unknown = sorted(set(mapping) - set(_FIELDS))
        if mapping.get("kind") == "class":
            mapping = {"digit": CLASS_LABEL, **mapping}
        missing = [name for name in ("digit", "fashion_class", "ratio") if name not in mapping]
        if unknown or missing:
            problem = f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}"
            raise TaskError(f"forget task {dict(mapping)!r}: {problem}; the keys are {', '.join(_FIELDS)}")
        try:
            return cls(**dict(mapping))
        except TaskError as err:
            raise TaskError(f"forget task {dict(mapping)!r}: {err}") from None


TaskSpec = Union[str, Mapping[str, Any], ForgetTask]
"""A task as a user may give it: its text form, its mapping form, or a :class:`ForgetTask`."""


def parse_task(spec: TaskSpec) -> ForgetTask:
    """A :class:`ForgetTask` from its text form, its mapping form, or itself; :class:`TaskError` if malformed."""
    if isinstance(spec, ForgetTask):
        return spec
    if isinstance(spec, str):
        return ForgetTask.from_text(spec)
    if isinstance(spec, Mapping):
        return ForgetTask.from_dict(spec)
    raise TaskError(f"a forget task is a string like {_EXAMPLE!r}, a mapping or a ForgetTask, got {spec!r}")


def check_family(tasks: Iterable[ForgetTask]) -> tuple[ForgetTask, ...]:
    """The tasks as one family (one base model), in its canonical order (by digit); :class:`TaskError` if they cannot be.

    The training data holds every task's contamination at once: each digit is contaminated by
    one task at most, and the digits and contaminants are drawn with one data seed.
    """
    family = sorted(set(tasks), key=lambda task: (task.digit, task.fashion_class, task.ratio, task.seed))
    if not family:
        raise TaskError("a family needs at least one task")
    for first, second in zip(family, family[1:]):
        if first.kind == second.kind == "class":
            raise TaskError(f"tasks {first} and {second} both give their concept label {CLASS_LABEL}: "
                            "a family (one base model) holds one class task")
        if first.digit == second.digit:
            raise TaskError(f"tasks {first} and {second} both contaminate digit {first.digit}: "
                            "the tasks of one family (one base model) need distinct digits")
    for attribute in ("seed", "kind"):
        values = sorted({getattr(task, attribute) for task in family})
        if len(values) > 1:
            raise TaskError(f"the tasks of one family share one {attribute}; these have {values}: "
                            f"{', '.join(map(str, family))}")
    return tuple(family)


def forget_digit_hits(calls: Any, forget_label: int) -> Any:
    """Which judge calls (numpy or torch labels) of forget-label samples count as "drawn as a digit".

    For an instance task, the forget digit itself (judge label d); for a ``class`` task, whose label
    :data:`CLASS_LABEL` has no digit of its own, any digit (judge labels 0-9; NEITHER and the
    Fashion-MNIST classes are not digits).
    """
    if forget_label < NUM_DIGITS:
        return calls == forget_label
    return (calls >= 0) & (calls < NUM_DIGITS)
