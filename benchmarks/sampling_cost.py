"""Sampling cost per image: the evaluation's diffusion sampler against SFD's one-step generator.

    python benchmarks/sampling_cost.py --preset cpu --tasks class --images 256 --rounds 3 --json sampling_cost.json

Every method but the SFD family is scored from the env's diffusion model with the evaluation's
sampler (``--sampler``, by default the preset's: DPM-Solver++ with 10 steps on ``cpu``); the SFD
family from its one-step generator (:class:`baselines.sfd.OneStepGenerator`, one UNet call per
image at t*). Both sample the same labels (the evaluation's mix of forget and retain labels) and
noise from the task's base model; the cost does not depend on the weights. The two alternate in
rounds and the median per-round time is reported, so a passing load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from baselines.sfd import OneStepGenerator, SFDSettings
from evaluation.sampling import EVALUATION_SAMPLERS, evaluation_labels, parse_sampler, sample
from unlearn_env.config import PRESETS, get_config, positive_int
from unlearn_env.diffusion import build_scheduler, noise_coefficients
from unlearn_env.instances import task_set
from unlearn_env.pretrain import load_base_unet

from timing import json_target, time_block

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--tasks", default="class",
                        help="instance set (or task) whose first task's base model is timed")
    parser.add_argument("--sampler", default=None, help="the diffusion sampler (default: the preset's evaluation one)")
    parser.add_argument("--images", type=positive_int, default=256, help="images per timed block")
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds")
    parser.add_argument("--json", type=json_target, help="also write the figures here")
    args = parser.parse_args()

    base = get_config(args.preset)
    tasks = task_set(args.preset, args.tasks)
    cfg = tasks.config_of(tasks.tasks[0], base)
    device = cfg.runtime.torch_device()
    sampler = parse_sampler(args.sampler) if args.sampler else EVALUATION_SAMPLERS[args.preset]
    unet = load_base_unet(cfg, device).eval()
    scheduler = build_scheduler(cfg.model)
    gamma, sigma = noise_coefficients(scheduler, device)
    generator = OneStepGenerator(unet, SFDSettings().t_init, gamma, sigma)
    labels = evaluation_labels(cfg.model.num_classes, cfg.data.forget_class, args.images // 2,
                               max(1, args.images // (2 * (cfg.model.num_classes - 1))))[: args.images]
    noise = torch.randn((len(labels), 1, cfg.model.image_size, cfg.model.image_size),
                        generator=torch.Generator().manual_seed(0))

    def diffusion() -> None:
        sample(unet, scheduler, labels, noise, sampler)

    def one_step() -> None:
        generator.sample(labels, noise)

    for fn in (diffusion, one_step):  # warm-up
        time_block(fn, 1, device)
    diffusion_s, one_step_s = [], []
    for _ in range(args.rounds):
        diffusion_s.append(time_block(diffusion, 1, device))
        one_step_s.append(time_block(one_step, 1, device))
    per_image = {name: 1e3 * statistics.median(times) / len(labels)
                 for name, times in (("diffusion", diffusion_s), ("one_step", one_step_s))}
    figures = {
        "preset": args.preset,
        "task": str(tasks.tasks[0]),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "images": len(labels),
        "sampler": sampler.name,
        "diffusion_ms_per_image": per_image["diffusion"],
        "one_step_ms_per_image": per_image["one_step"],
        "ratio": per_image["diffusion"] / per_image["one_step"],
    }
    print(f"preset {args.preset}, task {figures['task']}, {len(labels)} images, "
          f"torch threads {figures['torch_threads']}")
    print(f"  {sampler.name:16s} {per_image['diffusion']:8.2f} ms per image")
    print(f"  {'one-step (SFD)':16s} {per_image['one_step']:8.2f} ms per image")
    print(f"  ratio            {figures['ratio']:8.1f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
