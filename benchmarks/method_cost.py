"""Cost per update of every unlearning method: forward/backward passes and measured milliseconds per step.

    python benchmarks/method_cost.py --preset cpu --steps 10 --rounds 3 --json method_cost.json

Each method runs short episodes (``--steps`` updates) through its registered runner on the same
environment; the time per update is the episode's wall time (one-time preparation such as VDU's
Fisher excluded, as the episode log excludes it) less one reset, divided by the steps, and the
median over rounds is reported. Every step includes the env's probe pass. Methods run in
interleaved rounds so a passing load on the machine hits them alike. The ratio column is the
method's time over static SISS's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from baselines.registry import parse_method_spec
from unlearn_env.config import PRESETS, get_config, parse_overrides, positive_int
from unlearn_env.env import UnlearningEnv

from timing import json_target

DEFAULT_METHODS = ("static:0.5,neyman,vi,vi:objective=lookahead,naive,neggrad,erasediff,siss-nois,bernoulli,vdu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated method specs")
    parser.add_argument("--steps", type=positive_int, default=10, help="updates per timed episode")
    parser.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds")
    parser.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=json_target, help="also write the figures here")
    args = parser.parse_args()

    overrides = {**parse_overrides(args.env_kwargs), "horizon": args.steps}
    env = UnlearningEnv(config=get_config(args.preset), **overrides)
    specs = [s.strip() for s in args.methods.split(",") if s.strip()]
    methods = {spec: parse_method_spec(spec) for spec in specs}
    start = time.perf_counter()
    for _ in range(3):
        env.reset(seed=0)
    reset_s = (time.perf_counter() - start) / 3
    for entry, options in methods.values():  # warm-up, and one-time preparation (VDU's Fisher)
        entry.runner(env, options, 0)
    times: dict[str, list[float]] = {spec: [] for spec in specs}
    for round_ in range(args.rounds):
        for spec, (entry, options) in methods.items():
            log = entry.runner(env, options, round_ + 1)
            times[spec].append(max(log.wall_seconds - reset_s, 0.0) / args.steps)
    reference = statistics.median(times[specs[0]])
    rows = []
    print(f"preset {args.preset}, {args.steps} updates per episode, {args.rounds} rounds, torch threads "
          f"{torch.get_num_threads()}, reset {1e3 * reset_s:.0f} ms")
    print(f"{'method':28s} {'passes':>40s} {'ms/update':>10s} {'ratio':>7s}  data")
    for spec, (entry, _) in methods.items():
        ms = 1e3 * statistics.median(times[spec])
        row = {"method": spec, "passes": entry.passes, "data": entry.data, "ms_per_update": ms,
               "ratio_to_first": ms / (1e3 * reference)}
        rows.append(row)
        print(f"{spec:28s} {entry.passes:>40s} {ms:10.1f} {row['ratio_to_first']:7.2f}  {entry.data}")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "steps": args.steps, "rounds": args.rounds,
                                         "torch_threads": torch.get_num_threads(), "methods": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
