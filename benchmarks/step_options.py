"""The environment step's compute options: bf16 autocast, channels-last, torch.compile, against fp32.

    python benchmarks/step_options.py --preset cpu --json step_options.json
    python benchmarks/step_options.py --preset paper --options fp32,bf16,bf16+channels_last

Each option (``RuntimeConfig.precision``, ``channels_last``, ``compile_unet``, alone or joined
with ``+``) is judged on two counts:

* speed: env steps per second, options timed in interleaved rounds (median of rounds), so a
  shared machine's load hits them alike; ``speedup`` is against ``fp32``;
* exactness: the same seed and actions for ``--check-steps`` steps, and the largest relative
  deviation of the measured state entries (L_r, L_f, ||grad L_r||, ||grad L_f||) from the fp32
  run's. An option is worth keeping where it is faster and within ``--tolerance``.

``compile_unet`` is refused by the environment when its gradients differ from eager mode on a
check batch; the table reports that instead of a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import numpy as np
import torch

from unlearn_env.config import PRESETS, get_config, parse_overrides, positive_int
from unlearn_env.env import UnlearningEnv

from timing import json_target, time_block

OPTION_FIELDS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile_unet": True},
}
DEFAULT_OPTIONS = "fp32,bf16,channels_last,bf16+channels_last,compile"


def option_overrides(option: str) -> dict[str, Any]:
    """Config overrides of ``a+b+...``, e.g. ``bf16+channels_last``."""
    overrides: dict[str, Any] = {}
    for part in option.split("+"):
        if part not in OPTION_FIELDS:
            raise ValueError(f"unknown option {part!r}; choose from {sorted(OPTION_FIELDS)}, joined with '+'")
        overrides.update(OPTION_FIELDS[part])
    return overrides


def trajectory(env: UnlearningEnv, steps: int) -> np.ndarray:
    """The measured state entries of a fixed episode prefix: seed 0, lambda sweeping [0.3, 0.7]."""
    obs, _ = env.reset(seed=0)
    rows = [obs[:4]]
    for lam in np.linspace(0.3, 0.7, steps):
        obs, *_ = env.step(np.array([lam], dtype=np.float32))
        rows.append(obs[:4])
    return np.array(rows, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--options", default=DEFAULT_OPTIONS, help="comma-separated; join options with '+'")
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps per block, at least")
    parser.add_argument("--min-block-seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--check-steps", type=positive_int, default=10, help="steps compared with the fp32 trajectory")
    parser.add_argument("--tolerance", type=float, default=0.05, help="largest acceptable relative state deviation")
    parser.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=json_target, help="also write the figures here")
    args = parser.parse_args()

    options = [o.strip() for o in args.options.split(",") if o.strip()]
    if "fp32" not in options:
        options.insert(0, "fp32")
    base = get_config(args.preset, horizon=10**9, **parse_overrides(args.env_kwargs))
    envs: dict[str, UnlearningEnv] = {}
    refused: dict[str, str] = {}
    for option in options:
        try:
            envs[option] = UnlearningEnv(config=base, **option_overrides(option))
        except RuntimeError as err:
            refused[option] = str(err)
    device = envs["fp32"].device
    print(f"preset {args.preset} on {device if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")

    reference = trajectory(envs["fp32"], args.check_steps)
    deviation = {
        name: float((np.abs(trajectory(env, args.check_steps) - reference) / np.abs(reference)).max())
        for name, env in envs.items()
    }

    action = np.array([0.5], dtype=np.float32)
    steppers = {}
    for name, env in envs.items():
        env.reset(seed=0)
        steppers[name] = lambda env=env: env.step(action)
        time_block(steppers[name], 2, device)  # warm-up (and compilation)
    times: dict[str, list[float]] = {name: [] for name in envs}
    for round_index in range(args.rounds):
        names = list(envs)
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            times[name].append(time_block(steppers[name], args.steps, device, args.min_block_seconds))

    fp32_s = statistics.median(times["fp32"])
    results = []
    print(f"{'option':<22}{'ms / step':>12}{'steps/s':>10}{'speedup':>10}{'max rel dev':>14}  verdict")
    for option in options:
        if option in refused:
            results.append({"option": option, "refused": refused[option]})
            print(f"{option:<22}{'refused: gradients differ from eager mode':>46}")
            continue
        seconds = statistics.median(times[option])
        exact = deviation[option] <= args.tolerance
        keep = option == "fp32" or (exact and seconds < fp32_s)
        verdict = "reference" if option == "fp32" else ("keep" if keep else ("not exact" if not exact else "slower"))
        results.append({
            "option": option, "ms_per_step": 1e3 * seconds, "steps_per_second": 1.0 / seconds,
            "speedup_vs_fp32": fp32_s / seconds, "max_relative_state_deviation": deviation[option],
            "within_tolerance": exact, "verdict": verdict,
        })
        print(f"{option:<22}{1e3 * seconds:>12.1f}{1.0 / seconds:>10.2f}{fp32_s / seconds:>10.2f}"
              f"{deviation[option]:>14.2e}  {verdict}")
    print(f"(deviation: largest relative difference of L_r, L_f and the gradient norms over {args.check_steps} "
          f"steps from fp32's; tolerance {args.tolerance})")
    if args.json:
        args.json.write_text(json.dumps({
            "preset": args.preset, "device": str(device), "torch_threads": torch.get_num_threads(),
            "tolerance": args.tolerance, "check_steps": args.check_steps, "results": results,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
