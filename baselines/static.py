"""Static-lambda SISS (SPEC §3): the same lambda at every step, through the environment.

    python -m baselines.static --preset cpu --lambdas 0.1,0.3,0.5,0.7,0.9 --seeds 3 --out runs

Writes ``<out>/static/<preset>_lam<lambda>_<seed>/`` per episode (TensorBoard events with the
per-step scalars every method logs, and ``episode.json``) and ``<out>/static/<preset>_summary.json``
with the returns and final losses per lambda. Every lambda sees the same seeds, hence the same
batches, timesteps and noise: the comparison is paired.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym

from baselines.common import add_common_args, make_env, summarize, write_episode
from baselines.registry import register
from unlearn_env.episode import EpisodeLog, constant_lambda, run_episode

DEFAULT_LAMBDA = 0.5
"""The SISS paper's lambda."""


def run_static(env: gym.Env, lam: float = DEFAULT_LAMBDA, seed: int = 0) -> EpisodeLog:
    """One episode with lambda fixed to ``lam`` (clipped to the env's bounds by the env)."""
    return run_episode(env, constant_lambda(lam), seed)


@dataclass(frozen=True)
class StaticOptions:
    """The static method's one hyper-parameter (``static:0.5`` is ``static:lam=0.5``)."""

    lam: float = DEFAULT_LAMBDA
    """The constant lambda in (0, 1); the env clips it to [lambda_min, lambda_max]."""

    def __post_init__(self) -> None:
        if not 0.0 < self.lam < 1.0:
            raise ValueError(f"lam must lie in (0, 1), got {self.lam}")


def run_static_method(env: gym.Env, options: StaticOptions, seed: int) -> EpisodeLog:
    """The registry's runner: :func:`run_static` with ``options.lam``."""
    return run_static(env, options.lam, seed)


register("static", StaticOptions, run_static_method, data="retain+forget", passes="1F+2B",
         description="SISS with a constant lambda (the env's own update)")


def sweep_static(
    env: gym.Env, lambdas: list[float], seeds: list[int], out: Path | None = None
) -> dict[float, list[EpisodeLog]]:
    """An episode per (lambda, seed); with ``out``, each is written to ``out/<preset>_lam<lambda>_<seed>/``."""
    config = env.unwrapped.config
    results: dict[float, list[EpisodeLog]] = {}
    for lam in lambdas:
        for seed in seeds:
            log = run_static(env, lam, seed)
            results.setdefault(lam, []).append(log)
            if out is not None:
                meta = {"method": "static", "lambda": lam, "seed": seed, "env_config": config.to_dict()}
                write_episode(out / f"{config.preset}_lam{lam:g}_{seed}", log, meta)
    return results


def main(argv: list[str] | None = None) -> dict[float, list[EpisodeLog]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--lambdas", default=str(DEFAULT_LAMBDA), help="comma-separated lambdas, e.g. 0.1,0.5,0.9")
    args = parser.parse_args(argv)
    lambdas = [float(value) for value in args.lambdas.split(",") if value.strip()]

    env = make_env(args.preset, args.env_kwargs)
    out = args.out / "static"
    results = sweep_static(env, lambdas, list(range(args.seeds)), out)
    env.close()

    summary = {f"{lam:g}": summarize(logs) for lam, logs in results.items()}
    (out / f"{args.preset}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for lam, entry in summary.items():
        n = len(entry["seeds"])
        print(f"lambda={lam:>5}  mean return {entry['mean_return']:9.4f}  "
              f"final L_r {sum(entry['final_loss_retain']) / n:.4f}  final L_f {sum(entry['final_loss_forget']) / n:.4f}")
    return results


if __name__ == "__main__":
    main()
