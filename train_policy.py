"""Train a lambda-policy on ``SISSUnlearning-v0``: SB3 PPO, A2C, DDPG, TD3, SAC or our REINFORCE.

    python train_policy.py --algo ppo --preset cpu --total-timesteps 3000 --seed 0 --out runs
    python train_policy.py --algo sac --preset test --env-kwargs horizon=16 lambda_max=0.8 --out runs
    python train_policy.py --algo ppo --preset cpu --seed 0 --out runs --resume --total-timesteps 6000
    python train_policy.py --algo ppo --preset cpu --tasks train --env-kwargs task_features=true --out runs
    python train_policy.py --algo ppo --preset cpu --seeds 0-4 --workers 2 --out runs

``--tasks`` trains one policy across a set of forget tasks (:mod:`unlearn_env.instances`): an
instance set's name (``train``) or comma-separated tasks (``1-trouser-0.2-s0,3-bag-0.1-s0``); the
env's episodes go through them in turn (``--task-order round-robin``, the default) or at random
(``--task-order random``); the task of an episode is named in the Monitor CSV and its return is
logged under ``task/<task>/return``. ``task_features=true`` shows the task to the policy.

Writes ``<out>/<algo>/<preset>_<seed>/`` (``<preset>-<set>_<seed>/`` with ``--tasks``; see
:mod:`agents.runs`): the model, its VecNormalize
statistics, ``config.json`` (everything needed to rebuild the run), ``command.txt``, periodic
checkpoints, Monitor CSVs and TensorBoard events with the per-step lambda, losses, gradient
norms and reward terms and the per-episode return. Ctrl-C stops training, saves, and exits
with status 130, so that a calling script stops too. A mistake in the settings (an unknown
key, a bad value, a missing data folder) exits with status 2 and one line, before the run's
config.json is written: the corrected command starts the run afresh. One process trains into a folder
at a time.

``--resume`` continues a run from its latest snapshot that reads back, with its saved
settings: repeating the original command line plus ``--resume`` is fine, and so is a value
equal to the saved one once resolved (``horizon=8`` where the preset's 8 was used); a
different value is refused, except in the ``runtime`` section (device, cache folder). The task
set is saved resolved (tasks and family) and a resumed run trains on it, whatever the instance
files say meanwhile.
``--total-timesteps`` is the run's total, so a resumed run trains the difference.

``--seeds 0-4`` (or ``0,2,5``) trains several seeds, each into its own run folder, with the
same settings: one after another, or at the same time as tasks on Ray workers with ``--workers N``
(a local Ray instance) or ``--ray-address ADDR`` (a cluster; :mod:`evaluation.grid`, which also
says what ``--cpus-per-run``, ``--gpus-per-run`` and ``--retries`` do). Every seed's settings are
checked before the first one trains. A seed whose worker died is trained again from its latest
snapshot. With ``--resume`` every seed that has a run continues it and the others start one, so
an interrupted command is picked up by the same command plus ``--resume``. On a cluster ``--out``
must be a folder every node shares: the workers write the run folders.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, ProgressBarCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.algos import ALGOS
from agents.callbacks import StepScalarsCallback
from agents.envs import make_lambda_vec_env
from agents.hyperparams import (
    check_rollout_length,
    constructor_defaults,
    is_off_policy,
    load_hyperparams,
    model_kwargs,
    parse_hyperparams,
    vecnormalize_kwargs,
)
from agents.runs import (
    CHECKPOINT_PREFIX,
    TB_LOG_NAME,
    RunError,
    RunLayout,
    Snapshot,
    latest_snapshot,
    run_lock,
    save_atomically,
)
from evaluation import grid
from unlearn_env.cache import atomic_write_json
from unlearn_env.config import (
    PRESETS,
    SECTIONS,
    TASK_FIELDS,
    ExperimentConfig,
    config_hash,
    get_config,
    parse_overrides,
    positive_int,
)
from unlearn_env.data import DataError
from unlearn_env.instances import TASK_ORDERS, TaskSet, task_set
from unlearn_env.seeds import training_env_seed

INTERRUPTED = 130
"""Exit status after Ctrl-C, once saved: 128 + SIGINT, as a shell reports it, so ``set -e`` stops."""

USAGE_ERROR = 2
"""Exit status of a mistake in the settings, as argparse gives for one on the command line."""


def seed_list(text: str) -> list[int]:
    """argparse type of ``--seeds``: ``0-4`` (inclusive), ``0,2,5`` or a mix, without repeats."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            first, dash, last = part.partition("-")
            seeds += range(int(first), int(last) + 1) if dash else [int(part)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds such as 0-4 or 0,2,5, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative seeds such as 0-4 or 0,2,5, got {text!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: a seed's command (command.txt) is the command line less --seeds and the grid's options.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--algo", required=True, choices=sorted(ALGOS))
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--total-timesteps", type=positive_int, default=None,
                        help="env steps of the whole run (default: n_timesteps of the hyper-parameter file)")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default 0)")
    parser.add_argument("--seeds", type=seed_list, default=None, metavar="SEEDS",
                        help="train these seeds, each into its own run folder: 0-4, 0,2,5 (at once with --workers)")
    parser.add_argument("--n-envs", type=positive_int, default=None,
                        help="environment copies (default: n_envs of the file)")
    parser.add_argument("--vec-env", choices=("dummy", "subproc", "batched"), default=None,
                        help="step the copies in turn (dummy, the default), in one process each (subproc), "
                             "or in one batched computation (batched)")
    parser.add_argument("--batched", dest="vec_env", action="store_const", const="batched",
                        help="same as --vec-env batched")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment config overrides, e.g. horizon=30 alpha=0.5")
    parser.add_argument("--hyperparams", nargs="*", default=[], metavar="KEY=VALUE",
                        help="hyper-parameter overrides (YAML values), e.g. learning_rate=1e-3")
    parser.add_argument("--tasks", default=None, metavar="SET|TASKS",
                        help="train across forget tasks: an instance set of the preset (train, test) or "
                             "comma-separated tasks such as 1-trouser-0.2-s0 (default: the config's one task)")
    parser.add_argument("--task-order", choices=TASK_ORDERS, default=None,
                        help="how episodes go through the tasks (default: round-robin)")
    parser.add_argument("--save-freq", type=positive_int, default=None,
                        help="checkpoint every this many env steps (default: every 5 episodes)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest snapshot")
    parser.add_argument("--device", default="cpu", help="device of the agent's networks (the env has its own)")
    parser.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    parser.add_argument("--verbose", type=int, default=0)
    grid.add_arguments(parser)
    return parser


def saved_env_overrides(env_config: dict[str, Any]) -> dict[str, Any]:
    """Every field of a saved resolved env config, as flat overrides of its preset."""
    return {key: value for section in SECTIONS for key, value in env_config[section].items()}


def resolve_env_config(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset with ``overrides`` applied, as saved in ``config.json`` (tuples as lists)."""
    env_config = get_config(preset, **overrides)
    try:
        env_config.runtime.torch_device()  # an unavailable device fails here, in one line
    except RuntimeError as err:
        raise ValueError(str(err)) from None
    return json.loads(json.dumps(env_config.to_dict()))


def tasks_setting(args: argparse.Namespace, preset: str) -> dict[str, Any] | None:
    """The ``tasks`` entry of a run's config: the resolved task set (:meth:`TaskSet.to_dict`) and its order."""
    if args.tasks is None:
        if args.task_order is not None:
            raise ValueError("--task-order needs --tasks")
        return None
    return {**task_set(preset, args.tasks).to_dict(), "order": args.task_order or "round-robin"}


def task_arguments(tasks: dict[str, Any] | None) -> dict[str, Any]:
    """The env's ``tasks`` and ``task_order`` arguments of a run's ``tasks`` setting (none without one)."""
    if tasks is None:
        return {}
    return {"tasks": TaskSet(tuple(tasks["tasks"]), tuple(tasks["family"]), tasks["name"]),
            "task_order": tasks["order"]}


def _describe_tasks(tasks: dict[str, Any] | None) -> str:
    return "the config's one task" if tasks is None else f"{', '.join(tasks['tasks'])}, {tasks['order']}"


def run_name(args: argparse.Namespace) -> str:
    """The run folder's name: ``<preset>_<seed>``, ``<preset>-<set>_<seed>`` with ``--tasks``."""
    if args.tasks is None:
        return f"{args.preset}_{args.seed}"
    tasks = task_set(args.preset, args.tasks)
    label = tasks.name or f"tasks{config_hash(tasks.texts())[:8]}"
    return f"{args.preset}-{label}_{args.seed}"


def new_config(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of a new run: the command line over the preset and its hyper-parameter file."""
    env_kwargs = parse_overrides(args.env_kwargs)
    hyperparams = load_hyperparams(args.algo, args.preset, parse_hyperparams(args.hyperparams))
    return {
        "algo": args.algo,
        "preset": args.preset,
        "seed": args.seed,
        "n_envs": hyperparams.get("n_envs", 1) if args.n_envs is None else args.n_envs,
        "vec_env": args.vec_env or "dummy",
        "total_timesteps": hyperparams["n_timesteps"] if args.total_timesteps is None else args.total_timesteps,
        "env_kwargs": env_kwargs,
        "hyperparams": hyperparams,
        "env_config": resolve_env_config(args.preset, env_kwargs),
        "tasks": tasks_setting(args, args.preset),
    }


def resumed_config(args: argparse.Namespace, layout: RunLayout) -> dict[str, Any]:
    """The saved settings of a run, with the command line's step budget, vector env and runtime section.

    The command line's other settings are resolved on top of the saved ones and must leave them
    as they are: a different environment or agent would not be the same run.
    """
    config = layout.read_config()
    saved_env, saved_hp = config["env_config"], config["hyperparams"]
    env_config = resolve_env_config(config["preset"], saved_env_overrides(saved_env) | parse_overrides(args.env_kwargs))
    hyperparams = saved_hp | parse_hyperparams(args.hyperparams)
    differ = [f"{key} (saved {value!r}, given {env_config[section].get(key)!r})"
              for section in SECTIONS if section != "runtime"  # where the run is computed may change
              for key, value in saved_env[section].items() if env_config[section].get(key) != value]
    # A key the run left out had the constructor's default: giving that value changes nothing.
    defaults = constructor_defaults(ALGOS[args.algo])
    differ += [f"{key} (saved {saved_hp.get(key, defaults.get(key))!r}, given {value!r})"
               for key, value in hyperparams.items() if saved_hp.get(key, defaults.get(key)) != value]
    if args.n_envs is not None and args.n_envs != config["n_envs"]:
        differ.append(f"n_envs (saved {config['n_envs']}, given {args.n_envs})")
    saved_tasks = config.get("tasks")
    given_tasks = saved_tasks
    if args.tasks is not None:
        order = (saved_tasks or {}).get("order", "round-robin")
        given_tasks = {**task_set(config["preset"], args.tasks).to_dict(), "order": order}
    if args.task_order is not None:
        if given_tasks is None:
            raise ValueError("--task-order needs --tasks")
        given_tasks = {**given_tasks, "order": args.task_order}
    if given_tasks != saved_tasks:
        differ.append(f"tasks (saved {_describe_tasks(saved_tasks)}, given {_describe_tasks(given_tasks)})")
    if differ:
        raise ValueError(f"--resume continues {layout.root} with its saved settings; these differ: {'; '.join(differ)}")
    config["env_config"] = env_config
    if args.total_timesteps is not None:
        config["total_timesteps"] = args.total_timesteps
    if args.vec_env is not None:
        config["vec_env"] = args.vec_env
    return config


def run_settings(args: argparse.Namespace, layout: RunLayout) -> dict[str, Any]:
    """The run's settings: new, or the saved ones checked against the command line (``--resume``).

    Raises ``KeyError``, ``ValueError`` or ``DataError`` for a mistake in them.
    """
    config = resumed_config(args, layout) if args.resume else new_config(args)
    check_rollout_length(args.algo, config["hyperparams"], config["env_config"]["unlearn"]["horizon"])
    return config


def build_model(
    args: argparse.Namespace, config: dict[str, Any], layout: RunLayout, vec_env: VecEnv, snapshot: Snapshot | None
) -> BaseAlgorithm:
    """A fresh model on ``vec_env``, or the one of ``snapshot`` with its VecNormalize statistics and replay buffer."""
    algo_cls = ALGOS[args.algo]
    normalize = vecnormalize_kwargs(config["hyperparams"])
    if snapshot is None:
        if args.resume:
            print(f"{layout.root} has no snapshot yet: starting from scratch")
        if normalize is not None:
            vec_env = VecNormalize(vec_env, **normalize)
        kwargs = model_kwargs(config["hyperparams"], action_dim=vec_env.action_space.shape[0])
        model = algo_cls(env=vec_env, seed=config["seed"], tensorboard_log=str(layout.root),
                         verbose=args.verbose, device=args.device, **kwargs)
        # The networks are initialised from the run seed; the episodes come from the training seed
        # namespace, so that no training episode is an evaluation episode (unlearn_env.seeds).
        model.set_random_seed(training_env_seed(config["seed"]))
        return model
    print(f"resuming {layout.root} from {snapshot.model.name} at {snapshot.num_timesteps} steps")
    if snapshot.vecnormalize is not None:
        vec_env = VecNormalize.load(str(snapshot.vecnormalize), vec_env)
    model = algo_cls.load(snapshot.model, env=vec_env, device=args.device,
                          tensorboard_log=str(layout.root), verbose=args.verbose)
    if snapshot.replay_buffer is not None:
        model.load_replay_buffer(snapshot.replay_buffer)
    # New episodes after a resume: reseed from the step count, not the run's first seed.
    model.set_random_seed(training_env_seed(config["seed"], model.num_timesteps))
    return model


def usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exit with status 2 and one line: argparse's ``error`` would add the whole usage block."""
    parser.exit(USAGE_ERROR, f"{parser.prog}: error: {message}\n")


def _message(err: Exception) -> str:
    """An exception's message; a KeyError's ``str`` would wrap it in quotes."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def train(args: argparse.Namespace, layout: RunLayout, parser: argparse.ArgumentParser, argv: list[str]) -> Path:
    """Train (or resume) the run in ``layout``, whose lock the caller holds."""
    # 1. Settings, environments and model. A mistake in the settings ends here, in one line and
    # before config.json exists, so that the corrected command starts the run afresh.
    if not args.resume and layout.config.exists():
        usage_error(parser, f"{layout.root} already holds a run: pass --resume to continue it")
    vec_env: VecEnv | None = None
    try:
        config = run_settings(args, layout)
        horizon = config["env_config"]["unlearn"]["horizon"]
        normalized = vecnormalize_kwargs(config["hyperparams"]) is not None
        snapshot = latest_snapshot(layout, normalized) if args.resume else None
        # A resumed run rebuilds its env from the saved resolved config: presets may change meanwhile.
        env_kwargs = saved_env_overrides(config["env_config"]) if args.resume else config["env_kwargs"]
        if args.resume and config.get("tasks"):  # its tasks set the task fields, whose saved values are the preset's
            env_kwargs = {key: value for key, value in env_kwargs.items() if key not in (*TASK_FIELDS, "companions")}
        env_kwargs = {**env_kwargs, **task_arguments(config.get("tasks"))}
        vec_env = make_lambda_vec_env(config["preset"], env_kwargs, config["n_envs"], layout.monitor,
                                      config["vec_env"], append_monitor=args.resume)
        model = build_model(args, config, layout, vec_env, snapshot)
    except (KeyError, ValueError, DataError) as err:  # TaskError is a ValueError
        if vec_env is not None:
            vec_env.close()
        usage_error(parser, _message(err))
    atomic_write_json(config, layout.config)
    with layout.command.open("a") as handle:
        handle.write(shlex.join(["python", "train_policy.py", *argv]) + "\n")

    # 2. Train until the run's total, with checkpoints, per-step TensorBoard scalars and a bar.
    save_freq = 5 * horizon if args.save_freq is None else args.save_freq
    callbacks = [
        CheckpointCallback(
            save_freq=max(save_freq // config["n_envs"], 1),
            save_path=str(layout.checkpoints),
            name_prefix=CHECKPOINT_PREFIX,
            save_replay_buffer=is_off_policy(args.algo),
            save_vecnormalize=True,
        ),
        StepScalarsCallback(),
    ]
    if args.progress_bar:
        callbacks.append(ProgressBarCallback())
    remaining = config["total_timesteps"] - model.num_timesteps
    interrupted = False
    if remaining <= 0:
        print(f"{layout.root} already has {model.num_timesteps} of {config['total_timesteps']} steps")
        if snapshot is not None and snapshot.model == layout.model:
            # Saving again would change model.zip's bytes (SB3 stores the time) and so its identity.
            model.get_env().close()
            return layout.root
    else:
        try:
            model.learn(remaining, callback=CallbackList(callbacks), tb_log_name=TB_LOG_NAME,
                        reset_num_timesteps=snapshot is None)
        except KeyboardInterrupt:
            interrupted = True
            print(f"\ninterrupted at {model.num_timesteps} steps: saving to {layout.root}")

    # 3. Save: companions first and the model last, each atomically, so model.zip implies them.
    if model.get_vec_normalize_env() is not None:
        save_atomically(layout.vecnormalize, lambda p: model.get_vec_normalize_env().save(str(p)))
    if is_off_policy(args.algo):
        save_atomically(layout.replay_buffer, model.save_replay_buffer)
    save_atomically(layout.model, model.save)
    model.get_env().close()
    print(f"saved {layout.model} ({model.num_timesteps} steps)")
    if interrupted:
        resume = argv if args.resume else [*argv, "--resume"]
        print(f"to continue: {shlex.join(['python', 'train_policy.py', *resume])}")
        raise SystemExit(INTERRUPTED)
    return layout.root


def train_one(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> Path:
    """Train (or resume) the run of ``args.seed`` in this process; return its folder."""
    try:
        layout = RunLayout(args.out / args.algo / run_name(args))
    except ValueError as err:  # a malformed --tasks
        usage_error(parser, str(err))
    if args.resume and not layout.config.exists():
        usage_error(parser, f"--resume: {layout.root} holds no run")
    try:
        with run_lock(layout):
            return train(args, layout, parser, argv)
    except RunError as err:  # the folder is busy, or none of its snapshots reads back
        raise SystemExit(str(err)) from None


# ------------------------------------------------------------------------------ several seeds

GRID_FLAGS = ("--seeds", "--workers", "--ray-address", "--cpus-per-run", "--gpus-per-run", "--retries")
"""Options of the whole command, not of one seed's run (each takes a value)."""


@dataclass(frozen=True)
class SeedJob:
    """One seed of ``--seeds``: its arguments and its command line (as ``command.txt`` records it)."""

    seed: int
    args: argparse.Namespace
    argv: list[str]


@dataclass(frozen=True)
class SeedResult:
    """What a worker reports of one seed: its folder, or why it failed."""

    seed: int
    folder: str
    host: str
    seconds: float
    error: str = ""


def seed_argv(argv: list[str], seed: int, resume: bool) -> list[str]:
    """The command line of one seed's run: ``argv`` less the grid's options (and ``--resume`` for a new run)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in GRID_FLAGS or token == "--seed":
            skip = True
        elif token.split("=", 1)[0] not in (*GRID_FLAGS, "--seed") and (resume or token != "--resume"):
            out.append(token)
    return [*out, "--seed", str(seed)]


def seed_job(args: argparse.Namespace, argv: list[str], seed: int, on_grid: bool,
             parser: argparse.ArgumentParser) -> tuple[SeedJob, dict[str, Any]]:
    """One seed's run and its settings, checked: a mistake exits with status 2 before any seed trains.

    With ``--resume``, a seed without a run starts one.
    """
    one = argparse.Namespace(**{**vars(args), "seed": seed, "seeds": None,
                                "progress_bar": args.progress_bar and not on_grid})
    try:
        layout = RunLayout(args.out / args.algo / run_name(one))
    except ValueError as err:  # a malformed --tasks
        usage_error(parser, str(err))
    one.resume = args.resume and layout.config.exists()
    if not one.resume and layout.config.exists():
        usage_error(parser, f"{layout.root} already holds a run: pass --resume to continue it")
    try:
        settings = run_settings(one, layout)
    except (KeyError, ValueError, DataError) as err:
        usage_error(parser, _message(err))
    return SeedJob(seed, one, seed_argv(argv, seed, one.resume)), settings


def env_configs(config: dict[str, Any]) -> list[ExperimentConfig]:
    """The env configs of a run's settings: its one task's, or every task's of its set."""
    env = get_config(config["preset"], **saved_env_overrides(config["env_config"]))
    tasks = task_arguments(config.get("tasks")).get("tasks")
    return [env] if tasks is None else [tasks.config_of(task, env) for task in tasks]


def no_state() -> None:
    """A training worker keeps nothing between seeds."""


def train_seed(_: None, job: SeedJob) -> SeedResult:
    """Train one seed in a worker; a failure is reported, not raised, so that the other seeds go on."""
    args, argv = job.args, job.argv
    layout = RunLayout(args.out / args.algo / run_name(args))
    if not args.resume and layout.config.exists():
        # The driver found no run here: the attempt of a worker that died wrote it. Continue that one.
        args = argparse.Namespace(**{**vars(args), "resume": True})
        argv = [*argv, "--resume"]
    start, error = time.perf_counter(), ""
    try:
        with run_lock(layout):
            train(args, layout, build_parser(), argv)
    except SystemExit as stop:  # a settings mistake (its line is in the worker's log) or Ctrl-C there
        error = str(stop.code) if isinstance(stop.code, str) else f"train_policy.py exited with status {stop.code}"
    except Exception as err:  # noqa: BLE001 - one seed's failure is reported, the others go on
        error = f"{type(err).__name__}: {err}"
    return SeedResult(job.seed, str(layout.root), socket.gethostname(), time.perf_counter() - start, error)


def train_seeds(args: argparse.Namespace, argv: list[str], options: grid.GridOptions,
                parser: argparse.ArgumentParser) -> list[Path]:
    """Every seed of ``--seeds``: one after another in-process, or at once on Ray workers. Exits 1 if one failed."""
    seeds = args.seeds if args.seeds is not None else [args.seed]
    checked = [seed_job(args, argv, seed, options.enabled, parser) for seed in seeds]
    jobs = [job for job, _ in checked]
    if not options.enabled:
        return [train_one(job.args, parser, job.argv) for job in jobs]
    try:
        configs = [config for _, settings in checked for config in env_configs(settings)]
        roles = ("judge",) if any(c.reward.reward == "outcome" for c in configs) else ()
        bundle = grid.bundle_of(grid.prepare_artifacts(configs, roles), configs[0].runtime)
    except DataError as err:
        usage_error(parser, str(err))
    folders: dict[int, Path] = {}
    progress = grid.GridProgress(len(jobs), 0, f"train {args.algo}", args.progress_bar)

    def on_result(job: SeedJob, result: SeedResult) -> bool:
        if result.error:
            progress.write(f"seed {job.seed} FAILED on {result.host}: {result.error}")
            return True
        folder = Path(result.folder)
        elsewhere = "" if RunLayout(folder).model.exists() else (
            f"; its files are on {result.host}, not here: use an --out that every node shares")
        progress.write(f"seed {job.seed}: {folder} ({result.seconds:.0f} s{elsewhere})")
        folders[job.seed] = folder
        return False

    def on_lost(job: SeedJob, why: str) -> None:
        progress.write(f"seed {job.seed} FAILED: {why}")

    try:
        grid.run_grid(jobs, setup=no_state, work=train_seed, options=options, bundle=bundle,
                      cache_dir=configs[0].runtime.cache_dir, describe=lambda job: f"seed {job.seed}",
                      on_result=on_result, on_lost=on_lost, progress=progress)
    except KeyboardInterrupt:
        progress.write(f"interrupted: {len(folders)} of {len(jobs)} seeds trained; the others keep their latest "
                       "snapshots: rerun with --resume to continue them")
        raise SystemExit(INTERRUPTED) from None
    except grid.GridError as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        progress.close()
    if len(folders) < len(jobs):
        raise SystemExit(1)
    return [folders[seed] for seed in seeds]


def main(argv: list[str] | None = None) -> Path | list[Path]:
    """Train (or resume) one run and return its folder, or with ``--seeds`` or a grid every seed's folder.

    Exits with status 130 after Ctrl-C, once saved; with several seeds, 1 if one failed.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.seed is not None and args.seeds is not None:
        usage_error(parser, "give --seed or --seeds, not both")
    args.seed = 0 if args.seed is None else args.seed
    options = grid.options_of(args, parser)
    if args.seeds is None and not options.enabled:
        return train_one(args, parser, argv)
    return train_seeds(args, argv, options, parser)


if __name__ == "__main__":
    main()
