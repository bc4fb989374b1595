"""Environment steps per second: the batched vector env vs SyncVectorEnv vs the plain SISS loop.

    python benchmarks/throughput.py                                  # test + cpu presets (+ paper on a GPU)
    python benchmarks/throughput.py --presets cpu --num-envs 1,8 --json throughput.json

For each preset and N, four ways to run N independent unlearning runs:

* ``batched-vmap``, ``batched-loop``: :class:`~unlearn_env.vector_env.BatchedUnlearningEnv` with
  ``forward="vmap"`` / ``"loop"``; its default (``auto``) is vmap on CUDA and the loop on CPU,
  marked ``*`` in the table;
* ``sync``: ``gymnasium.vector.SyncVectorEnv`` of N :class:`~unlearn_env.env.UnlearningEnv`;
* ``plain``: N SISS loops written directly with ``siss.draw_batch``, ``measure`` and
  ``apply_update``, one after another, no environment.

``floor`` times one forward and two backward passes of one model on one minibatch alone: the
arithmetic a SISS step cannot avoid.

Timing: one process per (preset, N) builds every method and times them in ``--rounds``
rounds of short blocks, in a rotating order, so that the load of a shared machine hits all
methods alike. A figure is N / (median over rounds of the seconds per vector step):
environment steps (SISS updates) per second, warm-up steps excluded, no episode end inside.
Memory: one process per (preset, method), N increasing, a warm-up and one step each, so the
peak after N is N's own: ``torch.cuda.max_memory_allocated`` on a GPU (reset for each N), the
process's peak RSS on CPU (``ru_maxrss``: Python, torch and the data included).

Goals (checked where the device allows): on a GPU, batched N = 8 gives at least 5x the
steps per second of N = 1 on the cpu preset; on CPU the batched env (its default forward)
is never slower than SyncVectorEnv; on a GPU a paper-scale SISS step (N = 1) takes at most
2x the floor. A preset whose base model is not cached runs on a one-step stand-in (same
architecture; throughput does not depend on the weights) unless ``--train-base``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from unlearn_env import siss
from unlearn_env.config import PRESETS, ExperimentConfig, get_config, parse_overrides, positive_int
from unlearn_env.data import build_unlearning_data
from unlearn_env.diffusion import build_scheduler, build_unet, noise_coefficients
from unlearn_env.env import UnlearningEnv
from unlearn_env.pretrain import BASE_FILE, base_model_dir, load_base_unet
from unlearn_env.task_data import split_pools
from unlearn_env.vector_env import BatchedUnlearningEnv

from timing import json_target, positive_int_list, time_block

METHODS: tuple[str, ...] = ("batched-vmap", "batched-loop", "sync", "plain")
FOREVER = 10**9
"""Horizon of the timed environments: no episode ends while they are timed."""


class PlainSISS:
    """N plain SISS runs, one after another: the update written directly with ``siss.py``."""

    def __init__(self, config: ExperimentConfig, num_runs: int) -> None:
        self.cfg = config.unlearn
        self.num_timesteps = config.model.num_train_timesteps
        device = config.runtime.torch_device()
        data = build_unlearning_data(config.data, config.model.image_size).to(device)
        self.n, self.k = data.n, data.k
        self.pools = (*split_pools(data, self.cfg)[:2], data.forget_images, data.forget_labels)
        self.rule = siss.UpdateRule.from_config(self.cfg, data.n, data.k, data.forget_images[0].numel())
        self.hflip = config.pretrain.hflip_forget
        self.gamma, self.sigma = noise_coefficients(build_scheduler(config.model), device)
        self.models = [load_base_unet(config, device).train() for _ in range(num_runs)]
        self.params = [list(model.parameters()) for model in self.models]
        self.optimizers = [
            torch.optim.AdamW(
                p, lr=self.cfg.lr, betas=self.cfg.adam_betas, weight_decay=self.cfg.weight_decay, foreach=True
            )
            for p in self.params
        ]
        self.generators = [torch.Generator(device=device).manual_seed(i) for i in range(num_runs)]
        self.lam = torch.tensor(0.5, device=device)

    def step(self) -> None:
        """One SISS update of every run."""
        cfg = self.cfg
        for model, params, optimizer, generator in zip(self.models, self.params, self.optimizers, self.generators):
            batch = siss.draw_batch(*self.pools, cfg.batch_size, self.num_timesteps, generator, self.hflip)
            m = siss.measure(model, params, batch, self.lam, self.gamma, self.sigma)
            coef_r, coef_f = self.rule.coefficients(m.norm_forget)
            siss.apply_update(optimizer, params, m.grad_retain, m.grad_forget, coef_r, coef_f, self.rule.max_grad_norm)


class ForwardBackwardFloor:
    """One forward and two backward passes of one model on a fixed minibatch, nothing else."""

    def __init__(self, config: ExperimentConfig) -> None:
        device = config.runtime.torch_device()
        self.model = load_base_unet(config, device).train()
        self.params = list(self.model.parameters())
        generator = torch.Generator(device=device).manual_seed(0)
        size, side = config.unlearn.batch_size, config.model.image_size
        self.m_t, self.target_x, self.target_a = (
            torch.randn(size, 1, side, side, generator=generator, device=device) for _ in range(3)
        )
        self.timesteps = torch.randint(config.model.num_train_timesteps, (size,), generator=generator, device=device)
        self.labels = torch.randint(config.model.num_classes, (size,), generator=generator, device=device)

    def step(self) -> None:
        """Forward, then the gradients of two losses sharing it."""
        eps = self.model(self.m_t, self.timesteps, class_labels=self.labels).sample
        loss_r = (eps - self.target_x).square().mean()
        loss_f = (eps - self.target_a).square().mean()
        torch.autograd.grad(loss_r, self.params, retain_graph=True)
        torch.autograd.grad(loss_f, self.params)


def make_runner(method: str, config: ExperimentConfig, num_envs: int) -> Callable[[], None]:
    """A function doing one vector step (N environment steps) of ``method``."""
    if method == "plain":
        return PlainSISS(config, num_envs).step
    if method == "floor":
        return ForwardBackwardFloor(config).step
    if method == "sync":
        import gymnasium as gym

        envs = gym.vector.SyncVectorEnv([partial(UnlearningEnv, config=config) for _ in range(num_envs)])
    else:
        envs = BatchedUnlearningEnv(num_envs=num_envs, config=config, forward=method.removeprefix("batched-"))
    envs.reset(seed=0)
    actions = np.full((num_envs, 1), 0.5, dtype=np.float32)
    return lambda: envs.step(actions)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method of ``spec`` at one N, timed in interleaved rounds."""
    config = get_config(spec["preset"], **spec["overrides"])
    device = config.runtime.torch_device()
    num_envs = spec["num_envs"]
    steps = {method: make_runner(method, config, num_envs) for method in spec["methods"]}
    for step in steps.values():
        time_block(step, spec["warmup"], device)
    rounds: dict[str, list[float]] = {method: [] for method in steps}
    order = list(steps)
    for r in range(spec["rounds"]):
        for method in order[r % len(order):] + order[: r % len(order)]:
            rounds[method].append(time_block(steps[method], spec["steps"], device, spec["min_block_seconds"]))
    parameters = sum(p.numel() for p in build_unet(config.model).parameters())
    return [
        {
            "preset": spec["preset"],
            "method": method,
            "num_envs": 1 if method == "floor" else num_envs,
            "env_steps_per_s": (1 if method == "floor" else num_envs) / statistics.median(seconds),
            "vector_step_ms": 1e3 * statistics.median(seconds),
            "rounds_ms": [1e3 * t for t in seconds],
            "load_avg_1min": os.getloadavg()[0],
            "parameters": parameters,
            "batch_size": config.unlearn.batch_size,
        }
        for method, seconds in rounds.items()
    ]


def memory_worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Peak memory of one method for each N (increasing), one warm-up and one step each."""
    config = get_config(spec["preset"], **spec["overrides"])
    device = config.runtime.torch_device()
    results = []
    for num_envs in sorted(spec["num_envs"]):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = make_runner(spec["method"], config, num_envs)
        time_block(step, 2, device)
        if device.type == "cuda":
            memory, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
        else:
            memory, kind = peak_rss_mb(), "process_peak_rss"
        results.append({"preset": spec["preset"], "method": spec["method"], "num_envs": num_envs,
                        "peak_memory_mb": memory, "memory_kind": kind})
        del step
        gc.collect()
    return results


def run_in_child(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one worker in a fresh process; a failure becomes entries with ``error``."""
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    error = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    methods = spec.get("methods") or [spec["method"]]
    sizes = spec["num_envs"] if isinstance(spec["num_envs"], list) else [spec["num_envs"]]
    return [{"preset": spec["preset"], "method": m, "num_envs": n, "error": error} for m in methods for n in sizes]


def entry(results: list[dict[str, Any]], preset: str, method: str, num_envs: int, key: str) -> Any:
    """``key`` of one measured configuration, or None."""
    for r in results:
        if (r["preset"], r["method"], r["num_envs"]) == (preset, method, num_envs) and key in r:
            return r[key]
    return None


def check_goals(results: list[dict[str, Any]], on_gpu: bool, auto: str) -> dict[str, Any]:
    """The three goals of the issue, each with its figures and whether it was met (None: not measurable here)."""
    rate = partial(entry, results, key="env_steps_per_s")
    n8, n1 = rate("cpu", auto, 8), rate("cpu", auto, 1)
    speedup = n8 / n1 if n8 and n1 else None
    ratios = {}
    for preset, n in sorted({(r["preset"], r["num_envs"]) for r in results}):
        mine, sync = rate(preset, auto, n), rate(preset, "sync", n)
        if mine and sync:
            ratios[f"{preset}/N={n}"] = mine / sync
    step_ms = partial(entry, results, "paper", num_envs=1, key="vector_step_ms")
    step, floor = step_ms(auto), step_ms("floor")
    over_floor = step / floor if step and floor else None
    return {
        "gpu_batched_n8_at_least_5x_n1_on_cpu_preset": {
            "speedup": speedup,
            "met": speedup >= 5.0 if on_gpu and speedup else None,
        },
        "cpu_batched_never_slower_than_sync": {
            "batched_over_sync": ratios,
            "min_ratio": min(ratios.values()) if ratios else None,
            "met": min(ratios.values()) >= 1.0 if ratios and not on_gpu else None,
        },
        "gpu_paper_step_within_2x_of_forward_and_two_backward": {
            "step_over_floor": over_floor,
            "met": over_floor <= 2.0 if on_gpu and over_floor else None,
        },
    }


def print_table(preset: str, results: list[dict[str, Any]], num_envs: list[int], auto: str) -> None:
    """One preset's figures: steps/s and peak memory per method and N."""
    shape = next((r for r in results if r["preset"] == preset and "parameters" in r), None)
    about = f" ({shape['parameters'] / 1e6:.2f} M parameters, batch {shape['batch_size']})" if shape else ""
    print(f"\n{preset}{about}: environment steps per second (peak memory MiB); * = the batched env's default")
    columns = "".join(f"{m + ('*' if m == auto else ''):>22}" for m in METHODS)
    print(f"{'N':>4}{columns}{'*/sync':>9}{'*/N=1':>8}")
    rate = partial(entry, results, preset, key="env_steps_per_s")
    for n in num_envs:
        cells = ""
        for method in METHODS:
            value, memory = rate(method, n), entry(results, preset, method, n, "peak_memory_mb")
            memory_text = f"{memory:>6.0f}" if memory else f"{'-':>6}"
            if value:
                cells += f"{value:>13.2f} ({memory_text})"
            else:
                cells += f"{'error' if entry(results, preset, method, n, 'error') else '-':>22}"
        mine, sync, one = rate(auto, n), rate("sync", n), rate(auto, 1)
        cells += f"{mine / sync:>9.2f}" if mine and sync else f"{'-':>9}"
        cells += f"{mine / one:>8.2f}" if mine and one else f"{'-':>8}"
        print(f"{n:>4}{cells}")
    step_ms = partial(entry, results, preset, num_envs=1, key="vector_step_ms")
    floor, step = step_ms("floor"), step_ms(auto)
    if floor:
        ratio = f"; batched N=1 step / floor = {step / floor:.2f}" if step else ""
        print(f"  floor (1 forward + 2 backward, one model): {floor:.1f} ms{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=None, help="comma-separated (default: test,cpu; plus paper on a GPU)")
    parser.add_argument("--num-envs", type=positive_int_list, default="1,2,4,8,16", help="comma-separated N")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--rounds", type=positive_int, default=3, help="interleaved timing rounds; the median counts")
    parser.add_argument("--steps", type=positive_int, default=1, help="vector steps per timed block, at least")
    parser.add_argument("--min-block-seconds", type=float, default=0.5, help="each timed block lasts at least this")
    parser.add_argument("--warmup", type=positive_int, default=1, help="untimed vector steps of each method first")
    parser.add_argument("--paper-max-envs-cpu", type=positive_int, default=2, help="largest N for the paper preset on CPU")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--train-base", action="store_true", help="train missing base models instead of stand-ins")
    parser.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for all presets")
    parser.add_argument("--json", type=json_target, help="also write every figure here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(time_worker(spec) if spec["kind"] == "time" else memory_worker(spec)))
        return

    overrides = {**parse_overrides(args.env_kwargs), "horizon": FOREVER}
    device = get_config("test", **overrides).runtime.torch_device()
    on_gpu = device.type == "cuda"
    auto = "batched-vmap" if on_gpu else "batched-loop"
    presets = (args.presets or ("test,cpu,paper" if on_gpu else "test,cpu")).split(",")
    num_envs = args.num_envs
    methods = args.methods.split(",")
    unknown = sorted(set(presets) - set(PRESETS)) + sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown preset(s) or method(s): {unknown}")

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()
    device_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    print(f"device {device_name}, torch threads {torch.get_num_threads()}, "
          f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    preset_overrides: dict[str, dict[str, Any]] = {}
    stand_ins: list[str] = []
    for preset in presets:
        preset_overrides[preset] = dict(overrides)
        if not args.train_base and not (base_model_dir(get_config(preset, **overrides)) / BASE_FILE).exists():
            preset_overrides[preset]["train_steps"] = 1
            stand_ins.append(preset)
        # In a child process: a worker's ru_maxrss starts at its parent's peak, which must stay small.
        pairs = [f"{key}={value}" for key, value in preset_overrides[preset].items()]
        subprocess.run([sys.executable, "-m", "unlearn_env.pretrain", "--preset", preset, "--env-kwargs", *pairs],
                       check=True, capture_output=True)
    if stand_ins:
        print(f"stand-in base models (one training step; same architecture) for: {', '.join(stand_ins)}")

    results: list[dict[str, Any]] = []
    for preset in presets:
        sizes = [n for n in num_envs if on_gpu or preset != "paper" or n <= args.paper_max_envs_cpu]
        common = {"preset": preset, "overrides": preset_overrides[preset]}
        for n in sizes:
            # The floor is timed alongside the smallest N, under the same load.
            timed = methods + (["floor"] if n == sizes[0] else [])
            spec = {**common, "kind": "time", "num_envs": n, "methods": timed, "rounds": args.rounds,
                    "steps": args.steps, "min_block_seconds": args.min_block_seconds, "warmup": args.warmup}
            for result in run_in_child(spec):
                results.append(result)
                shown = result.get("error") or f"{result['env_steps_per_s']:.2f} steps/s"
                print(f"  {preset:>5} N={result['num_envs']:<3} {result['method']:<13} {shown}", flush=True)
        if not args.no_memory:
            for method in methods:
                results += run_in_child({**common, "kind": "memory", "method": method, "num_envs": sizes})

    for preset in presets:
        print_table(preset, results, num_envs, auto)
    goals = check_goals(results, on_gpu, auto)
    load_end = os.getloadavg()
    print(f"\nload average at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    for name, goal in goals.items():
        state = {True: "met", False: "NOT met", None: "not measurable on this device"}[goal["met"]]
        print(f"goal {name}: {state}")
    if args.json:
        report = {
            "started": started,
            "device": device_name,
            "torch_threads": torch.get_num_threads(),
            "load_avg_start": load_start,
            "load_avg_end": load_end,
            "batched_default": auto,
            "stand_in_base_models": stand_ins,
            "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "json")},
            "results": results,
            "goals": goals,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
