"""Cost of the environment: env step vs a plain SISS loop doing the same update, and reset vs step.

    python benchmarks/env_step.py --preset cpu --steps 30 --rounds 5 --json env_step.json

The plain loop is what one would write without Gymnasium: draw a batch, one forward and
two backward passes, combine the gradients and step AdamW, on its own copy of the base
model. Env and plain blocks alternate in rounds, and the median of the per-round
times is reported, so a passing load on the machine hits both alike.
Goals: the env adds at most 5 % over the plain loop; a reset costs less than one step.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch

from unlearn_env import siss
from unlearn_env.config import PRESETS, get_config, parse_overrides, positive_int
from unlearn_env.data import build_unlearning_data
from unlearn_env.diffusion import build_scheduler, noise_coefficients
from unlearn_env.env import UnlearningEnv
from unlearn_env.pretrain import load_base_unet

from timing import json_target, time_block


class PlainLoop:
    """The SISS update written directly, with no environment around it."""

    def __init__(self, env: UnlearningEnv) -> None:
        cfg = env.config
        self.cfg = cfg.unlearn
        self.device = env.device
        data = build_unlearning_data(cfg.data, cfg.model.image_size).to(self.device)
        self.data = data
        self.unet = load_base_unet(cfg, self.device).train()
        self.params = list(self.unet.parameters())
        self.optimizer = torch.optim.AdamW(
            self.params, lr=self.cfg.lr, betas=self.cfg.adam_betas, weight_decay=self.cfg.weight_decay, foreach=True
        )
        self.gamma, self.sigma = noise_coefficients(build_scheduler(cfg.model), self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(0)
        self.num_timesteps = cfg.model.num_train_timesteps
        self.lam = torch.tensor(0.5, device=self.device)

    def step(self) -> None:
        """One SISS update."""
        d = self.data
        batch = siss.draw_batch(
            d.retain_images, d.retain_labels, d.forget_images, d.forget_labels,
            self.cfg.batch_size, self.num_timesteps, self.generator,
        )
        m = siss.measure(self.unet, self.params, batch, self.lam, self.gamma, self.sigma)
        coef_r, coef_f = siss.update_coefficients(
            self.cfg.mode, m.norm_forget, d.n, d.k, self.cfg.superfactor, self.cfg.rescale_norm
        )
        siss.apply_update(self.optimizer, self.params, m.grad_retain, m.grad_forget, coef_r, coef_f, self.cfg.max_grad_norm)


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
    plain = PlainLoop(env)
    device = env.device
    action = np.array([0.5], dtype=np.float32)
    env.reset(seed=0)

    def env_step() -> None:
        env.step(action)

    def env_reset() -> None:
        env.reset(seed=0)

    for fn in (env_step, plain.step, env_reset):  # warm-up
        time_block(fn, 3, device)
    env.reset(seed=0)
    env_times, plain_times, reset_times = [], [], []
    for _ in range(args.rounds):
        env_times.append(time_block(env_step, args.steps, device))
        plain_times.append(time_block(plain.step, args.steps, device))
        reset_times.append(time_block(env_reset, max(1, args.steps // 4), device))
    step_s, plain_s, reset_s = (statistics.median(t) for t in (env_times, plain_times, reset_times))
    figures = {
        "preset": args.preset,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in env.params),
        "batch_size": env.config.unlearn.batch_size,
        "env_step_ms": 1e3 * step_s,
        "plain_step_ms": 1e3 * plain_s,
        "reset_ms": 1e3 * reset_s,
        "env_overhead": step_s / plain_s - 1.0,
        "reset_over_step": reset_s / step_s,
        "goal_overhead_at_most_5pct": step_s / plain_s - 1.0 <= 0.05,
        "goal_reset_below_step": reset_s < step_s,
    }
    print(f"preset {args.preset} on {figures['device']} ({figures['parameters']:,} parameters, batch {figures['batch_size']})")
    print(f"  env step     {figures['env_step_ms']:9.2f} ms")
    print(f"  plain step   {figures['plain_step_ms']:9.2f} ms")
    print(f"  env reset    {figures['reset_ms']:9.2f} ms")
    print(f"  env overhead {100 * figures['env_overhead']:+8.2f} %   (goal <= +5 %: {'met' if figures['goal_overhead_at_most_5pct'] else 'NOT met'})")
    print(f"  reset / step {figures['reset_over_step']:9.3f}     (goal < 1: {'met' if figures['goal_reset_below_step'] else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
