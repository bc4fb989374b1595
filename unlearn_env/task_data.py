"""What an episode of one forget task needs, built once per task: data pools, n and k, the SISS rule, the judge.

:class:`~unlearn_env.env.UnlearningEnv` and :class:`~unlearn_env.vector_env.BatchedUnlearningEnv`
hold one :class:`TaskData` per task of their :class:`~unlearn_env.instances.TaskSet`; the tasks
share the family's base model, so switching task at reset switches only these tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from unlearn_env import probes, siss
from unlearn_env.config import ExperimentConfig, UnlearnConfig
from unlearn_env.data import UnlearningData, build_unlearning_data
from unlearn_env.tasks import ForgetTask
from unlearn_env.terminal import TerminalJudge


def split_pools(data: UnlearningData, cfg: UnlearnConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(update images, update labels, probe images, probe labels)``.

    The retain probe pool (``probe_holdout`` of X\\A, stratified, fixed by the data) is never drawn by
    an update; the updates draw x from the rest of X\\A (``retain_source="retain"``, as the official
    code) or from the rest of X (``"all"``).
    """
    held = probes.holdout_mask(data.retain_labels, cfg.probe_holdout, cfg.probe_size)
    update_images, update_labels = data.retain_images[~held], data.retain_labels[~held]
    if cfg.retain_source == "all":
        update_images = torch.cat([update_images, data.forget_images])
        update_labels = torch.cat([update_labels, data.forget_labels])
    return update_images, update_labels, data.retain_images[held], data.retain_labels[held]


@dataclass
class TaskData:
    """One task's episode data, on the env's device.

    ``retain_images`` are the pool the updates draw x from, ``probe_images`` the retain probe
    pool (:func:`split_pools`); ``n`` = |X| (the family's whole training set) and ``k`` = |A|.
    The retain pools hold the companions' contaminants as they are: pretraining mirrored them
    (``hflip_forget``), the SISS draws mirror only the forget images, as they do for digits.
    """

    task: ForgetTask
    config: ExperimentConfig
    """The experiment config of this task: its data section names the task and its companions."""
    n: int
    k: int
    forget_class: int
    forget_images: Tensor
    forget_labels: Tensor
    retain_images: Tensor
    retain_labels: Tensor
    probe_images: Tensor
    probe_labels: Tensor
    retain_classes: list[int]
    """The digit labels other than the forget digit, ascending."""
    update_rule: siss.UpdateRule
    features: np.ndarray
    """The task's observation features (:meth:`ForgetTask.features`)."""
    terminal_judge: TerminalJudge | None
    """The ``outcome`` reward's judge of this task's concept (``None`` in ``paper`` mode)."""

    @classmethod
    def build(cls, config: ExperimentConfig, device: torch.device, judge: torch.nn.Module | None = None) -> TaskData:
        """The data of the task ``config.data`` names; ``judge`` (already loaded) is shared instead of loaded again."""
        data = build_unlearning_data(config.data, config.model.image_size).to(device)
        retain_images, retain_labels, probe_images, probe_labels = split_pools(data, config.unlearn)
        retain_classes = sorted(set(data.retain_labels.tolist()) - {data.forget_class})
        terminal = None
        if config.reward.reward == "outcome":
            terminal = TerminalJudge(config, retain_classes, device, judge)
        return cls(
            task=config.data.task(),
            config=config,
            n=data.n,
            k=data.k,
            forget_class=data.forget_class,
            forget_images=data.forget_images,
            forget_labels=data.forget_labels,
            retain_images=retain_images,
            retain_labels=retain_labels,
            probe_images=probe_images,
            probe_labels=probe_labels,
            retain_classes=retain_classes,
            update_rule=siss.UpdateRule.from_config(config.unlearn, data.n, data.k, data.forget_images[0].numel()),
            features=config.data.task().features(),
            terminal_judge=terminal,
        )


def build_task_data(configs: list[ExperimentConfig], device: torch.device) -> list[TaskData]:
    """:meth:`TaskData.build` of every config, loading the judge (``outcome`` mode) once for all."""
    built: list[TaskData] = []
    for config in configs:
        judge = next((d.terminal_judge.judge for d in built if d.terminal_judge is not None), None)
        built.append(TaskData.build(config, device, judge))
    return built
