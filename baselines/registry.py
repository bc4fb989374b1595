"""One registry of unlearning methods: a name, a hyper-parameter dataclass and a runner per method.

A method module registers itself when it is imported::

    from baselines.registry import register

    @dataclass(frozen=True)
    class MyOptions:
        scale: float = 1.0

    def run_mine(env, options: MyOptions, seed: int) -> EpisodeLog: ...

    register("mine", MyOptions, run_mine, data="forget only", passes="1F+1B",
             description="ascent on the forget loss")

and a caller (``evaluate.py``, a script, a notebook) turns a method spec into the entry and
its options without a branch per method::

    entry, options = parse_method_spec("neggrad:superfactor=0.1")
    log = entry.runner(env, options, seed)

Spec grammar: ``NAME[:VALUE][:KEY=VALUE]...``. A first option without ``=`` is the value of
the options dataclass's first field (``static:0.5`` is ``static:lam=0.5``); every value is
converted to its field's declared type (``Literal`` fields are checked against their values)
and the dataclass's own checks run. ``,`` separates specs on a command line, so a value
cannot contain one.

A runner is ``runner(env, options, seed) -> EpisodeLog``: ``env`` is the environment or a
wrapper that forwards ``reset`` and ``step_update`` (``env.unwrapped`` is what a runner steps,
as the VI baseline does); the model is left unlearned in the env. Methods outside this
package register the same way, from their own module, before the spec is parsed.

**Sampling hook.** Most methods unlearn the env's diffusion model, which the evaluation samples
with its own diffusion sampler. A method whose result is another kind of sampler (SFD's one-step
generator, ``baselines.sfd``) registers ``sample``: ``sample(env, options, labels, noise) ->
images``, called after the runner on the same ``env`` and ``options``, with the evaluation's
labels ``(N,)`` and its standard-normal noise ``(N, 1, S, S)`` (the same noise every method of
a seed gets), returning model-space images ``(N, 1, S, S)`` in [-1, 1] on the env's device,
deterministic in ``noise``. The runner leaves what the hook needs where the hook finds it (on
``env.unwrapped``), and in ``env.unet`` the diffusion model whose denoising losses stand for its
result in the data-level metrics (SFD: the generator's fake score network). ``MethodSpec.sample``
is ``None`` for every other method: sample ``env.unet`` with the evaluation's sampler. An
evaluation therefore draws a method's samples as::

    log = entry.runner(env, options, seed)
    if entry.sample is not None:
        samples = entry.sample(env, options, labels, noise)
    else:
        samples = sample(env.unwrapped.unet, scheduler, labels, noise, sampler)

Mid-episode probes sample ``env.unet`` with the diffusion sampler, so ``evaluate.py`` does not
probe a method that has its own sampler.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
from torch import Tensor

from unlearn_env.config import _coerce
from unlearn_env.episode import EpisodeLog

DataNeeds = Literal["retain+forget", "forget only", "retain only", "labels only", "forget+labels", "none"]
"""What a method reads of the data: both sets, the forget set A alone, the retain set X\\A alone, the retain
set's labels alone (no image: SFD draws its labels from their distribution), the forget set and the retain
labels, or nothing."""

Runner = Callable[[gym.Env, Any, int], EpisodeLog]
"""``runner(env, options, seed)``: one episode from the base model, returned as an :class:`EpisodeLog`."""

SampleHook = Callable[[gym.Env, Any, Tensor, Tensor], Tensor]
"""``sample(env, options, labels, noise) -> images``: a method's own sampler (module docstring)."""

BUILTIN_MODULES: tuple[str, ...] = (
    "baselines.static",
    "baselines.vi",
    "baselines.neyman",
    "baselines.naive",
    "baselines.neggrad",
    "baselines.erasediff",
    "baselines.siss_nois",
    "baselines.bernoulli",
    "baselines.vdu",
    "baselines.sfd",
    "baselines.sfd_multi",
    "baselines.sfd_siss",
)
"""The package's method modules; each registers its methods when imported (:func:`registered_methods` imports them)."""

_FORBIDDEN_IN_NAMES = ":,= "


class MethodSpecError(ValueError):
    """A method spec that names no registered method, an unknown option, or a value its field refuses."""


@dataclass(frozen=True)
class MethodSpec:
    """A registered unlearning method."""

    name: str
    options_cls: type
    """A dataclass of the method's hyper-parameters; its defaults are the method's defaults."""
    runner: Runner
    data: DataNeeds
    passes: str
    """Cost of one update in UNet passes over a minibatch, e.g. ``1F+2B`` (one forward, two backward)."""
    description: str
    sample: SampleHook | None = None
    """The method's own sampler (module docstring); ``None``: the evaluation's diffusion sampler on ``env.unet``."""

    def option_fields(self) -> list[dataclasses.Field]:
        """The options dataclass's fields, in declaration order (the first takes a positional value)."""
        return list(dataclasses.fields(self.options_cls))

    def parse_options(self, text: str) -> Any:
        """The options instance of ``VALUE:KEY=VALUE...`` (the part of a spec after ``NAME:``)."""
        fields = self.option_fields()
        hints = typing.get_type_hints(self.options_cls)
        values: dict[str, Any] = {}
        for position, part in enumerate(p for p in text.split(":") if p):
            key, sep, value = part.partition("=")
            if not sep:
                if position > 0 or not fields:
                    raise MethodSpecError(f"{self.name}: option {part!r} is not KEY=VALUE; {self.describe_options()}")
                key, value = fields[0].name, part
            key = key.strip()
            if key not in hints or key not in {f.name for f in fields}:
                raise MethodSpecError(f"{self.name} has no option {key!r}; {self.describe_options()}")
            if key in values:
                raise MethodSpecError(f"{self.name}: option {key!r} is given twice")
            try:
                values[key] = _coerce(f"{self.name}.{key}", value, hints[key])
            except ValueError as err:
                raise MethodSpecError(str(err)) from None
        try:
            return self.options_cls(**values)
        except (TypeError, ValueError) as err:
            raise MethodSpecError(f"bad {self.name} options {text!r}: {err}") from None

    def describe_options(self) -> str:
        """``its options are a (float, default 0.5), ...``, or that it has none."""
        fields = self.option_fields()
        if not fields:
            return f"{self.name} takes no options"
        hints = typing.get_type_hints(self.options_cls)
        items = [f"{f.name} ({_type_name(hints[f.name])}, default {_default(f)!r})" for f in fields]
        return "its options are " + ", ".join(items)

    def run_name(self, options: Any) -> str:
        """A file-safe name of the method with its non-default options, e.g. ``neggrad_superfactor0.1``."""
        default = self.options_cls()
        changed = [f"{f.name}{getattr(options, f.name)}" for f in self.option_fields()
                   if getattr(options, f.name) != getattr(default, f.name)]
        return "_".join([self.name.replace("-", "_"), *changed]).replace("/", "-")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str,
    options_cls: type,
    runner: Runner,
    *,
    data: DataNeeds = "retain+forget",
    passes: str = "1F+2B",
    description: str = "",
    sample: SampleHook | None = None,
    replace: bool = False,
) -> MethodSpec:
    """Add a method to the registry and return its entry.

    ``options_cls`` must be a dataclass whose fields all have defaults (``NAME`` alone is a valid
    spec). ``sample`` is the method's own sampler, if its result is not the env's diffusion model
    (module docstring). A name already registered is refused unless ``replace`` is true or it is
    the same definition imported again (same options class, runner, sampler, data and passes by name).
    """
    if not name or any(ch in name for ch in _FORBIDDEN_IN_NAMES):
        raise ValueError(f"method name {name!r} must be non-empty and contain none of {_FORBIDDEN_IN_NAMES!r}")
    if not (isinstance(options_cls, type) and dataclasses.is_dataclass(options_cls)):
        raise TypeError(f"{name}: options_cls must be a dataclass, got {options_cls!r}")
    missing = [f.name for f in dataclasses.fields(options_cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TypeError(f"{name}: every option needs a default, {missing} have none")
    if data not in typing.get_args(DataNeeds):
        raise ValueError(f"{name}: data must be one of {typing.get_args(DataNeeds)}, got {data!r}")
    entry = MethodSpec(name, options_cls, runner, data, passes, description, sample)
    if name in _REGISTRY and not replace and not _same_definition(_REGISTRY[name], entry):
        raise ValueError(f"a method named {name!r} is already registered (pass replace=True to replace it)")
    _REGISTRY[name] = entry
    return entry


def _same_definition(old: MethodSpec, new: MethodSpec) -> bool:
    """Whether ``new`` is ``old``'s module imported again (``python -m baselines.static`` imports it as ``__main__``)."""
    return (old.options_cls.__qualname__ == new.options_cls.__qualname__
            and getattr(old.runner, "__qualname__", None) == getattr(new.runner, "__qualname__", None)
            and getattr(old.sample, "__qualname__", None) == getattr(new.sample, "__qualname__", None)
            and (old.data, old.passes) == (new.data, new.passes))


def unregister(name: str) -> None:
    """Remove a method (a user's, typically) from the registry; unknown names raise KeyError."""
    del _REGISTRY[name]


def registered_methods() -> dict[str, MethodSpec]:
    """Every registered method by name, the package's own included (their modules are imported here)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> MethodSpec:
    """The entry of ``name``; an unknown name raises :class:`MethodSpecError` listing the valid ones."""
    methods = registered_methods()
    if name not in methods:
        raise MethodSpecError(f"unknown method {name!r}; registered methods are: {', '.join(methods)}")
    return methods[name]


def parse_method_spec(spec: str) -> tuple[MethodSpec, Any]:
    """``"neggrad:superfactor=0.1"`` -> (the ``neggrad`` entry, its options with superfactor=0.1)."""
    name, _, text = spec.strip().partition(":")
    entry = get_method(name.strip())
    return entry, entry.parse_options(text)
