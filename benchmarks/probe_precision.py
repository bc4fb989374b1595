"""How precisely a probe of p images per side resolves an action's effect on the reward, and what it costs.

    python benchmarks/probe_precision.py --preset cpu --sizes 8,16,32,64 --draws 40 --json probe_precision.json

The ``paper`` reward's ``siss`` term is -L_SISS on the episode's probe set after the update, so
what an action changes in it is measured on p retain + p forget probe images. From states
theta_t of a static-lambda episode (the plain SISS loop of ``env_step.py``, its optimiser state
included), one update is applied with lambda = 0.1 and with lambda = 0.9 on the same minibatch
(common random numbers), and the difference of the two models' ``siss`` terms is measured on
``--draws`` probe sets of each size p, drawn as the env draws them (fresh timesteps, noise and
images per draw; both models meet the same probe set, as two actions of one episode do).

Per state and size it prints the mean and spread of that difference over probe draws, their
ratio (signal to noise), the share of draws whose sign agrees with the mean over every draw of
every size (the best estimate of the true effect's sign), and the probe pass's time per step.
The probe overhead goal of ``env_step.py`` (<= 25 % of a plain step) bounds p; this shows what a
smaller p gives up.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
from torch import nn

from unlearn_env import probes, siss
from unlearn_env.config import PRESETS, get_config, number_argument
from unlearn_env.env import UnlearningEnv

from env_step import PlainLoop
from timing import json_target, positive_int_list, time_block

LAMBDAS = (0.1, 0.9)
"""The two actions whose effects are compared: the ends of the range the benchmark's frontier spans."""


non_negative_int = number_argument(int, lambda value: value >= 0, "a non-negative integer")
draw_count = number_argument(int, lambda value: value >= 2, "at least 2 draws (a spread needs two)")


def states_argument(text: str) -> list[int]:
    """``0,20,40`` -> [0, 20, 40]: update counts, sorted."""
    states = sorted(non_negative_int(part.strip()) for part in text.split(",") if part.strip())
    if not states:
        raise argparse.ArgumentTypeError(f"expected comma-separated update counts, got {text!r}")
    return states


def updated_copy(loop: PlainLoop, batch: siss.SISSBatch, lam: float) -> nn.Module:
    """The loop's model after one SISS update with ``lam`` on ``batch``; the loop itself is left as it was."""
    unet = copy.deepcopy(loop.unet)
    optimizer = torch.optim.AdamW(unet.parameters(), foreach=True)
    optimizer.load_state_dict(copy.deepcopy(loop.optimizer.state_dict()))
    loop.update(batch, unet, optimizer, torch.tensor(lam, device=loop.device))
    return unet


def siss_term(model: nn.Module, probe: probes.ProbeSet, loop: PlainLoop) -> float:
    """The ``paper`` reward's ``siss`` term of ``model`` on ``probe``: -L_SISS of its probe losses."""
    loss_retain, loss_forget = probes.probe_losses(model, probe, loop.gamma, loop.sigma).tolist()
    return -float(siss.siss_objective(loss_retain, loss_forget, loop.rule.n, loop.rule.k, loop.rule.superfactor))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--sizes", type=positive_int_list, default=[8, 16, 32, 64], help="probe sizes per side")
    parser.add_argument("--draws", type=draw_count, default=40, help="probe sets drawn per size and state")
    parser.add_argument("--states", type=states_argument, default=[0, 20, 40],
                        help="update counts t of the states theta_t the actions start from")
    parser.add_argument("--lambda-before", default=0.5,
                        type=number_argument(float, lambda value: 0.0 <= value <= 1.0, "a lambda in [0, 1]"),
                        help="static lambda of the updates that lead to theta_t")
    parser.add_argument("--json", type=json_target, help="also write the figures here")
    args = parser.parse_args()

    env = UnlearningEnv(config=get_config(args.preset))
    loop = PlainLoop(env, probe=False)
    loop.lam = torch.tensor(args.lambda_before, device=loop.device)
    cfg = env.config
    probe_pool = (loop.pools[2], loop.pools[3], *loop.forget)
    draw_generator = torch.Generator().manual_seed(0)
    rows = []
    done = 0
    for state in args.states:
        for _ in range(state - done):
            loop.step()
        done = state
        batch = loop.draw()
        low, high = (updated_copy(loop, batch, lam) for lam in LAMBDAS)
        differences: dict[int, list[float]] = {}
        for size in args.sizes:
            differences[size] = []
            for _ in range(args.draws):
                probe = probes.draw_probe_set(*probe_pool, size, cfg.model.num_train_timesteps, loop.hflip,
                                              draw_generator)
                differences[size].append(siss_term(high, probe, loop) - siss_term(low, probe, loop))
        pooled = statistics.fmean(d for values in differences.values() for d in values)
        for size, values in differences.items():
            probe = probes.draw_probe_set(*probe_pool, size, cfg.model.num_train_timesteps, loop.hflip,
                                          torch.Generator().manual_seed(1))
            probe_ms = 1e3 * statistics.median(
                time_block(lambda: probes.probe_losses(high, probe, loop.gamma, loop.sigma), 3, loop.device)
                for _ in range(3)
            )
            mean, spread = statistics.fmean(values), statistics.stdev(values)
            rows.append({
                "state": state, "probe_size": size, "draws": len(values), "mean_difference": mean,
                "sd_difference": spread, "signal_to_noise": abs(mean) / spread if spread > 0 else float("inf"),
                "sign_agreement": sum((d > 0) == (pooled > 0) for d in values) / len(values),
                "pooled_mean_difference": pooled, "probe_ms": probe_ms,
            })

    print(f"preset {args.preset}: siss term after lambda = {LAMBDAS[1]} minus after lambda = {LAMBDAS[0]}, "
          f"{args.draws} probe draws per size, from theta_t of a static lambda = {args.lambda_before} loop")
    print(f"{'t':>4} {'p':>4} {'mean diff':>11} {'sd':>10} {'|mean|/sd':>9} {'sign agrees':>11} {'probe ms':>9}")
    for row in rows:
        print(f"{row['state']:>4} {row['probe_size']:>4} {row['mean_difference']:>+11.2e} {row['sd_difference']:>10.2e} "
              f"{row['signal_to_noise']:>9.2f} {row['sign_agreement']:>11.2f} {row['probe_ms']:>9.1f}")
    if args.json:
        figures = {"preset": args.preset, "torch_threads": torch.get_num_threads(), "lambdas": list(LAMBDAS),
                   "lambda_before": args.lambda_before, "rows": rows}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
