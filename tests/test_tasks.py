"""Forget tasks and instance sets: descriptions, families and their data, multi-task envs, training across a set.

Everything runs on the ``test`` preset: its family's base model (five contaminations) trains in
seconds, once per test session.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import train_policy
from unlearn_env import ENV_ID
from unlearn_env.config import PRESETS, get_config
from unlearn_env.data import build_training_data, build_unlearning_data
from unlearn_env.env import OBS_NAMES, UnlearningEnv, observation_names
from unlearn_env.instances import (
    TaskSchedule,
    TaskSet,
    instance_sets,
    load_instance_file,
    preset_family,
    task_config,
    task_set,
)
from unlearn_env.tasks import TASK_FEATURE_NAMES, ForgetTask, TaskError, check_family, parse_task
from unlearn_env.vector_env import BatchedUnlearningEnv

DEFAULT = ForgetTask(digit=1, fashion_class=1, ratio=0.2, seed=0)
TRAIN = task_set("test", "train")
RTOL = 0.0 if not torch.cuda.is_available() else 1e-4


def rows(images: torch.Tensor) -> set[bytes]:
    """Each image's bytes: a set of them tells which images two tensors share."""
    return {image.numpy().tobytes() for image in images.cpu()}


# ---------------------------------------------------------------------- descriptions


@pytest.mark.parametrize("task", sorted({t for p in PRESETS for s in instance_sets(p).values() for t in s}
                                        | {ForgetTask(9, 9, 1e-5, 12), ForgetTask(0, 0, 0.123456789)}, key=str))
def test_a_task_round_trips_through_its_text_and_mapping_forms(task: ForgetTask) -> None:
    assert parse_task(task.text) == task and parse_task(task.text).text == task.text
    assert parse_task(task.to_dict()) == task
    assert parse_task(yaml.safe_load(yaml.safe_dump(task.to_dict()))) == task
    assert parse_task(json.loads(json.dumps(task.to_dict()))) == task
    assert str(task) == task.text and hash(parse_task(task.text)) == hash(task)


@pytest.mark.parametrize("spelling", [
    "1-trouser-0.2-s0", "1-Trouser-0.20-s0", " 1-trouser-0.2 ", "1-1-0.2-s0",
    {"digit": 1, "fashion_class": "trouser", "ratio": 0.2}, {"digit": "1", "fashion_class": 1, "ratio": "0.2", "seed": 0},
    {"kind": "instance", "digit": 1, "fashion_class": "TROUSER", "ratio": 0.2, "seed": 0}, DEFAULT,
])
def test_the_class_may_be_named_or_numbered_and_the_seed_left_out(spelling) -> None:
    assert parse_task(spelling) == DEFAULT
    assert DEFAULT.text == "1-trouser-0.2-s0" and get_config("cpu").data.task() == DEFAULT
    assert parse_task("8-T-shirt-0.15-s3") == ForgetTask(8, 0, 0.15, 3)
    assert parse_task("4-ankle boot-0.25") == parse_task("4-ankle_boot-0.25-s0") == ForgetTask(4, 9, 0.25)


@pytest.mark.parametrize(("spec", "message"), [
    ("1-trousers-0.2-s0", "unknown Fashion-MNIST class 'trousers'; the classes are t-shirt, trouser"),
    ("12-trouser-0.2-s0", "'12-trouser-0.2-s0': the forget digit must be 0-9, got 12"),
    ("1-trouser-1.5-s0", "the contamination ratio must lie in (0, 1), got 1.5"),
    ("1-trouser-0.2.1-s0", "ratio must be a number, got '0.2.1'"),
    ("1-11-0.2-s0", "Fashion-MNIST classes are numbered 0-9, got 11"),
    ("trouser", "cannot read 'trouser' as a forget task: write <digit>-<class>-<ratio>-s<seed>"),
    ("1-trouser-0.2-seed0", "cannot read"),
    ({"digit": 1, "fashion_class": 1}, "missing key(s) ['ratio']"),
    ({"digit": 1, "class": 1, "ratio": 0.2}, "unknown key(s) ['class']; the keys are kind, digit, fashion_class"),
    ({"digit": True, "fashion_class": 1, "ratio": 0.2}, "digit must be an integer, got True"),
    ({"digit": 1, "fashion_class": 1, "ratio": 0.2, "kind": "region"}, "unknown task kind 'region'"),
    (3, "a forget task is a string like '1-trouser-0.2-s0', a mapping or a ForgetTask, got 3"),
])
def test_a_malformed_task_is_an_error_naming_the_problem(spec, message: str) -> None:
    with pytest.raises(TaskError) as error:
        parse_task(spec)
    assert message in str(error.value)


def test_a_family_has_distinct_digits_and_one_seed() -> None:
    assert check_family([ForgetTask(5, 7, 0.3), DEFAULT, DEFAULT]) == (DEFAULT, ForgetTask(5, 7, 0.3))
    with pytest.raises(TaskError, match="1-trouser-0.2-s0 and 1-bag-0.1-s0 both contaminate digit 1"):
        check_family([DEFAULT, ForgetTask(1, 8, 0.1)])
    with pytest.raises(TaskError, match="share one seed"):
        check_family([DEFAULT, ForgetTask(3, 8, 0.1, seed=1)])
    # The config's companions: validated, in canonical form (by digit), refusing a clash with its own task.
    data = get_config("cpu", companions="5-Sneaker-0.30,3-bag-0.1-s0").data
    assert data.companions == ("3-bag-0.1-s0", "5-sneaker-0.3-s0")
    assert data.family() == (DEFAULT, ForgetTask(3, 8, 0.1), ForgetTask(5, 7, 0.3))
    with pytest.raises(ValueError, match="both contaminate digit 1"):
        get_config("cpu", companions="1-bag-0.1-s0")
    with pytest.raises(ValueError, match="companions holds the forgotten task 1-trouser-0.2-s0"):
        get_config("cpu", companions="1-trouser-0.2-s0")


# ---------------------------------------------------------------------- base models and data


def test_the_default_base_models_keep_their_cache_keys_and_a_family_shares_one() -> None:
    # The keys of the base models trained before tasks existed: they must not change.
    assert get_config("cpu").base_model_key() == "0f108af42109"
    assert get_config("cpu").oracle().base_model_key() == "a492bdf81eed"
    assert get_config("test").base_model_key() == "b7417301e932"
    for preset in PRESETS:
        config, family = get_config(preset), preset_family(preset)
        configs = [task_config(config, task, family) for task in family]
        assert len({c.base_model_key() for c in configs}) == 1  # one base model per family
        assert configs[0].base_model_key() != config.base_model_key()  # not the single-task model
        # The retrain oracle of each task leaves that task's images out: one oracle per task.
        assert len({c.oracle().base_model_key() for c in configs}) == len(family)
        assert configs[0].base_model_key() not in {c.oracle().base_model_key() for c in configs}


def test_the_shipped_sets_are_one_family_with_a_held_out_test_set() -> None:
    for preset in PRESETS:
        sets = instance_sets(preset)
        assert {"train", "test"} <= set(sets)
        train, test = sets["train"], sets["test"]
        for attribute in ("digit", "fashion_class", "ratio"):
            assert not {getattr(t, attribute) for t in train} & {getattr(t, attribute) for t in test}, attribute
        assert set(preset_family(preset)) == set(train) | set(test)
        assert get_config(preset).data.task() in train  # the preset's own task is a training task
    assert DEFAULT in instance_sets("cpu")["train"]


@pytest.mark.parametrize(("content", "message"), [
    ("train: [1-trouser-0.2-s0, 3-bag-0.1-s0]\ntest: [1-sandal-0.15-s0]", "both contaminate digit 1"),
    ("train: [1-trouser-0.2-s0]\ntest: [0-trouser-0.15-s0]", "the fashion_class of 0-trouser-0.15-s0 appears in 'train'"),
    ("train: [1-trouser-0.2-s0]\ntest: [0-sandal-0.2-s0]", "the ratio of 0-sandal-0.2-s0 appears in 'train'"),
    ("train: [1-trouser-0.2-s0, 1-trouser-0.2-s0]", "repeated: 1-trouser-0.2-s0"),
    ("train: [1-trouser-0.2-s0, 3-bagg-0.1-s0]", "set 'train', entry 2: forget task '3-bagg-0.1-s0': unknown"),
    ("train: []", "set 'train' must be a non-empty list of tasks"),
    ("- 1-trouser-0.2-s0", "an instance file maps set names to lists of tasks"),
    ("Train: [1-trouser-0.2-s0]", "set name 'Train' is not a lower-case identifier"),
])
def test_a_bad_instance_file_is_an_error_naming_file_set_and_entry(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "sets.yaml"
    path.write_text(content)
    with pytest.raises(TaskError) as error:
        load_instance_file(path)
    assert str(path) in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("preset", ["test", "cpu"])
def test_two_tasks_never_share_a_forget_image_and_a_retain_set_is_everything_else(preset: str) -> None:
    config, family = get_config(preset), preset_family(preset)
    # Two tasks of one class too: they take disjoint parts of the class's forget pool.
    same_class = (ForgetTask(2, 1, 0.3), ForgetTask(6, 1, 0.4))
    for tasks in (family, check_family((*family[:2], *same_class))):
        training = build_training_data(task_config(config, tasks[0], tasks).data, 28)
        forget_sets = {task: rows(training.images[training.rows_of(task)]) for task in tasks}
        for task in tasks:
            data = build_unlearning_data(task_config(config, task, tasks).data, 28)
            forget, retain = rows(data.forget_images), rows(data.retain_images)
            assert forget == forget_sets[task] and len(forget) == data.k
            assert (data.forget_labels == task.digit).all()
            assert not forget & retain  # the retain set holds no image of the forget set
            assert data.n == len(training.images)
            for other in tasks:
                if other != task:
                    assert not forget & forget_sets[other]  # tasks never share a forget image
                    assert forget_sets[other] <= retain  # the other contaminations stay in the retain set
            # Every digit of X is in the retain set, with its label, the companions' contaminants with theirs.
            assert torch.equal(data.retain_labels, training.labels[~training.rows_of(task)])


def test_task_sets_resolve_names_lists_and_saved_forms() -> None:
    family = preset_family("test")
    assert TRAIN.name == "train" and TRAIN.family == family and TRAIN.texts()[0] == "1-trouser-0.3-s0"
    listed = task_set("test", "4-t-shirt-0.35-s0, 1-trouser-0.3")
    assert listed.name is None and listed.family == family  # the preset's tasks: the preset's base model
    own = task_set("test", [ForgetTask(2, 3, 0.1), {"digit": 7, "fashion_class": 4, "ratio": 0.2}])
    assert own.family == (ForgetTask(2, 3, 0.1), ForgetTask(7, 4, 0.2))  # other tasks: a family of their own
    assert task_set("test", TRAIN.to_dict()) == TRAIN == task_set("test", TRAIN)
    with pytest.raises(TaskError, match="cannot read 'trainn'.*the test preset's sets are train, test"):
        task_set("test", "trainn")
    with pytest.raises(TaskError, match="not in the family"):
        TaskSet((DEFAULT,), (ForgetTask(3, 8, 0.1),))


def test_round_robin_visits_every_task_and_random_follows_the_seed() -> None:
    schedule = TaskSchedule(TRAIN)
    assert [schedule.next(seed=0)] + [schedule.next() for _ in range(5)] == [*TRAIN.tasks, *TRAIN.tasks]
    assert schedule.next(seed=9) == TRAIN.tasks[0]  # a seeded reset restarts it: reset(seed=s) is deterministic
    assert schedule.next(requested="5-sneaker-0.4-s0") == TRAIN.tasks[2] and schedule.next() == TRAIN.tasks[1]
    strided = TaskSchedule(TRAIN, start=1, stride=2)
    assert [strided.next() for _ in range(3)] == [TRAIN.tasks[1], TRAIN.tasks[0], TRAIN.tasks[2]]
    draws = {}
    for seed in (3, 3, 4):
        random = TaskSchedule(TRAIN, "random")
        draws.setdefault(seed, []).append([random.next(seed=seed)] + [random.next() for _ in range(29)])
    assert draws[3][0] == draws[3][1] != draws[4][0] and set(draws[3][0]) == set(TRAIN.tasks)
    with pytest.raises(ValueError, match="task_order must be one of"):
        TaskSchedule(TRAIN, "shuffled")


# ---------------------------------------------------------------------- the environment


@pytest.fixture(scope="module")
def multi_env() -> UnlearningEnv:
    return UnlearningEnv(preset="test", tasks="train", horizon=3)


def rollout(env: UnlearningEnv, actions: list[float], **reset) -> tuple[np.ndarray, list[float], list[str]]:
    obs, info = env.reset(**reset)
    observations, rewards, tasks = [obs], [], [info["task"]]
    for lam in actions:
        obs, reward, _, _, info = env.step(np.array([lam], dtype=np.float32))
        observations.append(obs)
        rewards.append(reward)
        tasks.append(info["task"])
    return np.stack(observations), rewards, tasks


def test_a_task_asked_for_gives_the_trajectory_of_an_env_built_for_it_alone(multi_env: UnlearningEnv) -> None:
    actions = [0.3, 0.8, 0.5]
    for task in TRAIN.tasks[1:]:
        alone = UnlearningEnv(config=task_config(get_config("test", horizon=3), task, TRAIN.family))
        expected = rollout(alone, actions, seed=5)
        for spec in (task, task.text, task.to_dict()):
            actual = rollout(multi_env, actions, seed=5, options={"task": spec})
            np.testing.assert_allclose(actual[0], expected[0], rtol=RTOL, atol=0)
            np.testing.assert_allclose(actual[1], expected[1], rtol=RTOL, atol=0)
            assert actual[2] == expected[2] == [task.text] * 4
        assert multi_env.config == alone.config and multi_env.task == task
        assert (multi_env.n, multi_env.k, multi_env.forget_class) == (alone.n, alone.k, task.digit)


def test_episodes_go_round_robin_and_an_unknown_task_is_a_clear_error(multi_env: UnlearningEnv) -> None:
    _, first = multi_env.reset(seed=0)
    seen = [first["task"]] + [multi_env.reset()[1]["task"] for _ in range(len(TRAIN) - 1)]
    assert seen == TRAIN.texts()
    _, info = multi_env.reset(seed=0)
    assert info["task"] == TRAIN.texts()[0]
    for unknown, message in [("0-sandal-0.25-s0", "task 0-sandal-0.25-s0 is not one of the tasks of set 'train'"),
                             ("1-trouser-0.2-s0", "task 1-trouser-0.2-s0 is not one of"),
                             ("1-trousr-0.3-s0", "unknown Fashion-MNIST class 'trousr'")]:
        with pytest.raises(TaskError) as error:
            multi_env.reset(seed=0, options={"task": unknown})
        assert message in str(error.value)
    with pytest.raises(ValueError, match="forget_class would be set twice"):
        UnlearningEnv(preset="test", tasks="train", forget_class=3)
    with pytest.raises(TaskError, match="cannot read 'trian'"):
        gym.make(ENV_ID, preset="test", tasks="trian")


def test_random_order_is_seeded_by_the_reset_seed() -> None:
    env = gym.make(ENV_ID, preset="test", tasks="train", task_order="random", horizon=1)
    sequences = []
    for seed in (4, 4):
        _, info = env.reset(seed=seed)
        sequences.append([info["task"]] + [env.reset()[1]["task"] for _ in range(11)])
    assert sequences[0] == sequences[1] and set(sequences[0]) == set(TRAIN.texts())


@pytest.mark.parametrize("task_features", [False, True])
def test_check_env_passes_with_task_features_on_and_off(task_features: bool) -> None:
    env = UnlearningEnv(preset="test", tasks="train", task_features=task_features, horizon=2)
    gym_check_env(env, skip_render_check=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*symmetric and normalized Box action space.*")
        sb3_check_env(env, warn=True)
    names = observation_names(env.config.unlearn)
    assert env.observation_space.shape == (len(names),)
    assert names == ((*OBS_NAMES, *TASK_FEATURE_NAMES) if task_features else OBS_NAMES)
    for task in TRAIN.tasks:
        obs, _ = env.reset(seed=1, options={"task": task})
        step_obs, *_ = env.step(0.5)
        if task_features:
            features = dict(zip(names, obs))
            assert features[f"task_digit_{task.digit}"] == 1.0 and features[f"task_class_{task.concept}"] == 1.0
            assert features["task_ratio"] == pytest.approx(task.ratio)
            assert sum(obs[len(OBS_NAMES):]) == pytest.approx(2.0 + task.ratio)
            np.testing.assert_array_equal(step_obs[len(OBS_NAMES):], task.features())


def test_a_single_task_env_is_unchanged() -> None:
    env = UnlearningEnv(preset="test")
    assert env.task_set.tasks == env.task_set.family == (get_config("test").data.task(),)
    obs, info = env.reset(seed=0)
    assert obs.shape == (len(OBS_NAMES),) and info["task"] == "1-trouser-0.3-s0"
    with pytest.raises(TaskError, match="task 3-bag-0.2-s0 is not one of the tasks"):
        env.reset(options={"task": "3-bag-0.2-s0"})


def test_the_terminal_judge_scores_each_task_s_concept() -> None:
    from evaluation.judge import concept_label

    env = UnlearningEnv(preset="test", tasks="train", reward="outcome", horizon=1)
    judges = {task: env.task_data[task].terminal_judge for task in TRAIN.tasks}
    assert len({id(judge.judge) for judge in judges.values()}) == 1  # one judge, loaded once
    for task, judge in judges.items():
        assert judge.concept == concept_label(task.fashion_class) and judge.forget_class == task.digit
        assert int(judge.is_forget.sum()) == env.config.reward.terminal_forget_samples
        assert task.digit not in judge.labels[~judge.is_forget].tolist()
        _, _, terminated, _, info = rollout_last(env, task)
        assert terminated and "terminal_concept" in info["reward_terms"] and info["task"] == task.text


def rollout_last(env: UnlearningEnv, task: ForgetTask) -> tuple:
    env.reset(seed=2, options={"task": task})
    return env.step(0.5)


@pytest.mark.parametrize("mode", ["rescale", "weights"])
def test_the_batched_env_steps_episodes_of_different_tasks_as_single_envs(mode: str) -> None:
    num_envs, horizon = 2, 2
    kwargs = dict(preset="test", tasks="train", horizon=horizon, mode=mode, task_features=True,
                  observation="extended")
    batched = BatchedUnlearningEnv(num_envs=num_envs, **kwargs)
    singles = [UnlearningEnv(**kwargs) for _ in range(num_envs)]
    order = TRAIN.tasks
    episodes = [0] * num_envs
    obs, infos = batched.reset(seed=[1, 2])
    for i, env in enumerate(singles):
        single_obs, info = env.reset(seed=i + 1, options={"task": order[i]})
        np.testing.assert_allclose(obs[i], single_obs, rtol=1e-4, atol=1e-6)
        assert infos["task"][i] == info["task"] == order[i].text
    visited: list[set[str]] = [set() for _ in range(num_envs)]
    done = np.zeros(num_envs, dtype=bool)
    rng = np.random.default_rng(0)
    for _ in range(3 * (horizon + 1) - 1):  # three episodes each, with the auto-reset steps between
        actions = rng.uniform(0.1, 0.9, size=(num_envs, 1)).astype(np.float32)
        obs, rewards, terminated, _, infos = batched.step(actions)
        for i, env in enumerate(singles):
            if done[i]:  # sub-environment i auto-reset: its next task in turn is i + N, i + 2N, ...
                episodes[i] += 1
                single_obs, info = env.reset(options={"task": order[(i + episodes[i] * num_envs) % len(order)]})
                reward = 0.0
            else:
                single_obs, reward, _, _, info = env.step(actions[i])
            np.testing.assert_allclose(obs[i], single_obs, rtol=1e-4, atol=1e-6)
            assert rewards[i] == pytest.approx(reward, rel=1e-4, abs=1e-6)
            assert infos["task"][i] == info["task"] == batched.task_of(i).task.text
            visited[i].add(info["task"])
        done = terminated
    assert all(v == set(TRAIN.texts()) for v in visited)  # each sub-environment ran every task
    obs, infos = batched.reset(seed=0, options={"tasks": [order[2], None]})
    assert list(infos["task"]) == [order[2].text, order[1].text]
    with pytest.raises(ValueError, match="one task \\(or None\\) for each of the 2 sub-environments"):
        batched.reset(options={"tasks": [order[0]]})


def test_pretrain_trains_a_family_s_one_base_model_and_each_task_s_oracle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from unlearn_env import pretrain

    monkeypatch.setattr(pretrain, "SAMPLE_DDIM_STEPS", 2)  # the sample grid's 50 steps would dominate
    fast = ["--env-kwargs", f"cache_dir={tmp_path}", "train_steps=2", "checkpoint_every=2"]
    config = get_config("test", cache_dir=str(tmp_path), train_steps=2, checkpoint_every=2)
    pretrain.main(["--preset", "test", "--tasks", "test", *fast])
    assert [p.name for p in tmp_path.glob("base-*")] == [f"base-{TRAIN.config_of(TRAIN.tasks[0], config).base_model_key()}"]
    pretrain.main(["--preset", "test", "--tasks", "train", "--oracle", *fast])
    for task in TRAIN:
        assert (pretrain.base_model_dir(TRAIN.config_of(task, config).oracle()) / pretrain.BASE_FILE).is_file()
    assert len(list(tmp_path.glob("base-*"))) == 1 + len(TRAIN)
    assert "3-bag-0.2-s0 oracle (EMA weights)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(["--preset", "test", "--tasks", "train", *fast, "contamination=0.1"])
    assert exit_info.value.code == 2 and "contamination would be set twice" in capsys.readouterr().err


# ---------------------------------------------------------------------- training across a set


def test_train_policy_trains_one_policy_across_a_set_and_resume_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def command(tasks: str, *extra: str) -> list[str]:
        return ["--algo", "ppo", "--preset", "test", "--tasks", tasks, "--out", str(tmp_path), "--no-progress-bar",
                "--hyperparams", "n_steps=8", "batch_size=8", "--env-kwargs", "horizon=2", "batch_size=4",
                "task_features=true", *extra]

    run_dir = train_policy.main(command("train", "--total-timesteps", "8"))
    assert run_dir == tmp_path / "ppo" / "test-train_0"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["tasks"] == {**TRAIN.to_dict(), "order": "round-robin"}
    assert config["env_config"]["unlearn"]["task_features"] is True

    def monitored_tasks() -> list[str]:
        with (run_dir / "monitor" / "0.monitor.csv").open() as handle:
            return [row["task"] for row in csv.DictReader(line for line in handle if not line.startswith("#"))]

    assert monitored_tasks() == [*TRAIN.texts(), TRAIN.texts()[0]]  # 4 episodes of 2 steps, in turn
    train_policy.main(command("train", "--total-timesteps", "16", "--resume"))
    assert len(monitored_tasks()) == 8 and set(monitored_tasks()) == set(TRAIN.texts())
    assert json.loads((run_dir / "config.json").read_text())["tasks"] == config["tasks"]

    with pytest.raises(SystemExit) as exit_info:
        train_policy.main(command("train", "--task-order", "random", "--resume"))
    differ = ("these differ: tasks (saved 1-trouser-0.3-s0, 3-bag-0.2-s0, 5-sneaker-0.4-s0, round-robin, "
              "given 1-trouser-0.3-s0, 3-bag-0.2-s0, 5-sneaker-0.4-s0, random)")
    assert exit_info.value.code == 2 and differ in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # another task list is another run (folder)
        train_policy.main(command("1-trouser-0.3-s0", "--resume"))
    assert exit_info.value.code == 2 and "-tasks" in (err := capsys.readouterr().err) and "holds no run" in err
    with pytest.raises(SystemExit) as exit_info:
        train_policy.main(command("trian"))
    assert exit_info.value.code == 2 and "cannot read 'trian'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # each task sets the task fields: a clash, not an override
        train_policy.main(command("test", "forget_class=3"))
    assert exit_info.value.code == 2 and "forget_class would be set twice" in capsys.readouterr().err
    assert not (tmp_path / "ppo" / "test-test_0" / "config.json").exists()
