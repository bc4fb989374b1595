"""Cost of the environment: env step vs a plain SISS loop doing the same update, probes, reset, terminal score.

    python benchmarks/env_step.py --preset cpu --steps 30 --rounds 5 --json env_step.json

The plain loop is what one would write without Gymnasium: draw a batch, one forward and
two backward passes, combine the gradients and step AdamW, on its own copy of the base
model. "Plain + probe" adds the probe pass the env makes after every update (one forward
pass without gradient on the episode's probe set, for the reward). Env and plain blocks
alternate in rounds, and the median of the per-round times is reported, so a passing load
on the machine hits all alike. The ``outcome`` reward's terminal judge score (sampling the
final model once per episode) is timed too, and reported per episode and per step.
Goals: the probe pass adds at most 25 % to the plain loop; the env adds at most 5 % over
plain + probe; a reset costs less than one step.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch
from torch import Tensor, nn

from unlearn_env import probes, siss
from unlearn_env.config import PRESETS, get_config, parse_overrides, positive_int
from unlearn_env.data import build_unlearning_data
from unlearn_env.diffusion import build_scheduler, noise_coefficients
from unlearn_env.env import UnlearningEnv
from unlearn_env.pretrain import load_base_unet
from unlearn_env.task_data import split_pools
from unlearn_env.terminal import TerminalJudge

from timing import json_target, time_block


class PlainLoop:
    """The SISS update written directly, with no environment around it."""

    def __init__(self, env: UnlearningEnv, probe: bool) -> None:
        cfg = env.config
        self.cfg = cfg.unlearn
        self.device = env.device
        data = build_unlearning_data(cfg.data, cfg.model.image_size).to(self.device)
        self.pools = split_pools(data, self.cfg)
        self.forget = data.forget_images, data.forget_labels
        self.rule = siss.UpdateRule.from_config(self.cfg, data.n, data.k, data.forget_images[0].numel())
        self.hflip = cfg.pretrain.hflip_forget
        self.probe_set = probes.draw_probe_set(
            self.pools[2], self.pools[3], *self.forget, self.cfg.probe_size, cfg.model.num_train_timesteps,
            self.hflip, torch.Generator().manual_seed(0),
        ) if probe else None
        self.unet = load_base_unet(cfg, self.device).train()
        self.params = list(self.unet.parameters())
        self.optimizer = torch.optim.AdamW(
            self.params, lr=self.cfg.lr, betas=self.cfg.adam_betas, weight_decay=self.cfg.weight_decay, foreach=True
        )
        self.gamma, self.sigma = noise_coefficients(build_scheduler(cfg.model), self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(0)
        self.num_timesteps = cfg.model.num_train_timesteps
        self.lam = torch.tensor(0.5, device=self.device)

    def draw(self) -> siss.SISSBatch:
        """The next minibatch of the loop's stream."""
        return siss.draw_batch(
            self.pools[0], self.pools[1], *self.forget, self.cfg.batch_size, self.num_timesteps, self.generator,
            self.hflip,
        )

    def update(self, batch: siss.SISSBatch, unet: nn.Module, optimizer: torch.optim.Optimizer, lam: Tensor) -> None:
        """One SISS update of ``unet`` (whose parameters ``optimizer`` holds) with ``lam`` on ``batch``."""
        params = optimizer.param_groups[0]["params"]
        m = siss.measure(unet, params, batch, lam, self.gamma, self.sigma)
        coef_r, coef_f = self.rule.coefficients(m.norm_forget)
        siss.apply_update(optimizer, params, m.grad_retain, m.grad_forget, coef_r, coef_f, self.rule.max_grad_norm)

    def step(self) -> None:
        """One SISS update (and the probe pass after it)."""
        self.update(self.draw(), self.unet, self.optimizer, self.lam)
        if self.probe_set is not None:
            probes.probe_losses(self.unet, self.probe_set, self.gamma, self.sigma).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps per block")
    parser.add_argument("--rounds", type=positive_int, default=5, help="alternating env/plain rounds")
    parser.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=json_target, help="also write the figures here")
    args = parser.parse_args()

    # A long horizon so that the timed env steps never hit an episode end.
    overrides = {"horizon": 10**9, **parse_overrides(args.env_kwargs)}
    env = UnlearningEnv(config=get_config(args.preset), **overrides)
    plain, probed = PlainLoop(env, probe=False), PlainLoop(env, probe=True)
    device = env.device
    action = np.array([0.5], dtype=np.float32)
    env.reset(seed=0)

    def env_step() -> None:
        env.step(action)

    def env_reset() -> None:
        env.reset(seed=0)

    terminal = TerminalJudge(env.config, env.retain_classes, device)
    terminal_noise = terminal.draw_noise(torch.Generator().manual_seed(0))

    def terminal_score() -> None:
        terminal.score(env.unet, env.scheduler, terminal_noise)

    for fn in (env_step, plain.step, probed.step, env_reset, terminal_score):  # warm-up
        time_block(fn, 1 if fn is terminal_score else 3, device)
    env.reset(seed=0)
    env_times, plain_times, probed_times, reset_times, terminal_times = [], [], [], [], []
    for _ in range(args.rounds):
        env_times.append(time_block(env_step, args.steps, device))
        plain_times.append(time_block(plain.step, args.steps, device))
        probed_times.append(time_block(probed.step, args.steps, device))
        reset_times.append(time_block(env_reset, max(1, args.steps // 4), device))
        terminal_times.append(time_block(terminal_score, 1, device))
    step_s, plain_s, probed_s, reset_s, terminal_s = (
        statistics.median(t) for t in (env_times, plain_times, probed_times, reset_times, terminal_times)
    )
    horizon = get_config(args.preset, **parse_overrides(args.env_kwargs)).unlearn.horizon
    figures = {
        "preset": args.preset,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in env.params),
        "batch_size": env.config.unlearn.batch_size,
        "probe_size": env.config.unlearn.probe_size,
        "env_step_ms": 1e3 * step_s,
        "plain_step_ms": 1e3 * plain_s,
        "plain_probe_step_ms": 1e3 * probed_s,
        "reset_ms": 1e3 * reset_s,
        "terminal_score_ms": 1e3 * terminal_s,
        "terminal_per_step": terminal_s / (horizon * step_s),
        "probe_overhead": probed_s / plain_s - 1.0,
        "env_overhead": step_s / probed_s - 1.0,
        "reset_over_step": reset_s / step_s,
        "goal_probe_overhead_at_most_25pct": probed_s / plain_s - 1.0 <= 0.25,
        "goal_overhead_at_most_5pct": step_s / probed_s - 1.0 <= 0.05,
        "goal_reset_below_step": reset_s < step_s,
    }

    def verdict(goal: str) -> str:
        return "met" if figures[goal] else "NOT met"

    print(f"preset {args.preset} on {figures['device']} ({figures['parameters']:,} parameters, batch "
          f"{figures['batch_size']}, probe {figures['probe_size']} + {figures['probe_size']} images)")
    print(f"  env step       {figures['env_step_ms']:9.2f} ms")
    print(f"  plain step     {figures['plain_step_ms']:9.2f} ms")
    print(f"  plain + probe  {figures['plain_probe_step_ms']:9.2f} ms")
    print(f"  env reset      {figures['reset_ms']:9.2f} ms")
    print(f"  terminal score {figures['terminal_score_ms']:9.2f} ms per episode ({100 * figures['terminal_per_step']:.1f} % "
          f"of a {horizon}-step episode's steps; outcome reward only)")
    print(f"  probe overhead {100 * figures['probe_overhead']:+8.2f} %   (goal <= +25 %: "
          f"{verdict('goal_probe_overhead_at_most_25pct')})")
    print(f"  env overhead   {100 * figures['env_overhead']:+8.2f} %   (over plain + probe; goal <= +5 %: "
          f"{verdict('goal_overhead_at_most_5pct')})")
    print(f"  reset / step   {figures['reset_over_step']:9.3f}     (goal < 1: {verdict('goal_reset_below_step')})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
