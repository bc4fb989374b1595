"""Base model preparation (SPEC §1): the class-conditional DDPM that is later unlearned.

The model is trained on the augmented data X = retain + forget with the usual
epsilon-prediction loss and an EMA of its weights; the EMA weights are what gets
unlearned. Training checkpoints atomically and resumes where it stopped, and the
result is cached under the hash of the data, model and pretraining settings::

    <cache>/base-<hash>/base.pt        EMA weights (a UNet2DModel state_dict)
    <cache>/base-<hash>/config.json    the resolved ExperimentConfig
    <cache>/base-<hash>/samples.png    DDIM samples, one row per label 0..9

Command line::

    python -m unlearn_env.pretrain --preset cpu [--env-kwargs key=value ...] [--force] [--oracle]

``--oracle`` trains the retrain oracle instead: the same recipe and budget on the retain set
X\\A only (``train_on=retain``), cached under its own key. ``--tasks train`` (an instance set, or
comma-separated forget tasks; :mod:`unlearn_env.instances`) trains the one base model of those
tasks' family, and with ``--oracle`` the retrain oracle of each task of the set, one after another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from PIL import Image
from tqdm.auto import tqdm

from unlearn_env.cache import artifact_dir, artifact_lock, atomic_torch_save, atomic_write_json, check_may_build
from unlearn_env.config import PRESETS, ExperimentConfig, get_config, parse_overrides
from unlearn_env.data import build_training_data, to_uint8
from unlearn_env.diffusion import build_scheduler, build_unet, ddim_sample, image_grid, sampling_noise
from unlearn_env.instances import resolve_task_set

BASE_FILE = "base.pt"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
SAMPLES_FILE = "samples.png"
SAMPLES_PER_LABEL = 10
SAMPLE_DDIM_STEPS = 50
SAMPLE_SEED = 0


def base_model_dir(cfg: ExperimentConfig) -> Path:
    """Cache folder of the base model of ``cfg``: ``<cache>/base-<cfg.base_model_key()>``."""
    return artifact_dir(cfg.runtime, "base", cfg.base_model_key())


def random_hflip(images: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image whose ``mask`` entry is true with probability 1/2; the others stay untouched.

    A coin is drawn for every image, masked or not, so the generator advances the
    same way whatever the batch holds.
    """
    coins = torch.rand(len(images), generator=generator) < 0.5
    flip = (coins & mask).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def sample_grid(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    num_classes: int,
    per_label: int = SAMPLES_PER_LABEL,
    num_steps: int = SAMPLE_DDIM_STEPS,
    seed: int = SAMPLE_SEED,
) -> np.ndarray:
    """DDIM samples as one uint8 grid: row ``c`` holds ``per_label`` samples of label ``c``."""
    labels = torch.arange(num_classes).repeat_interleave(per_label)
    noise = sampling_noise(len(labels), unet.config.sample_size, seed)
    images = ddim_sample(unet, scheduler, labels, noise, num_steps=num_steps)
    return image_grid(to_uint8(images), rows=num_classes)


def training_set(cfg: ExperimentConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, labels and contaminant mask the model of ``cfg`` trains on: X, or X\\A for the oracle.

    X is the family's training set in its fixed order (:func:`~unlearn_env.data.build_training_data`),
    the same for every task of the family; the mask marks every Fashion-MNIST image (the ones
    ``hflip_forget`` mirrors), the companions' too.
    """
    data = build_training_data(cfg.data, cfg.model.image_size)
    keep = torch.ones(len(data.images), dtype=torch.bool)
    if cfg.pretrain.train_on == "retain":
        keep = ~data.rows_of(cfg.data.task())
    return data.images[keep], data.labels[keep], (data.owner >= 0)[keep]


def train_base_model(cfg: ExperimentConfig, progress: bool = True) -> Path:
    """Train the base model of ``cfg``, resuming from its checkpoint if one exists; return the path of base.pt."""
    out_dir = base_model_dir(cfg)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    device = cfg.runtime.torch_device()
    pcfg = cfg.pretrain

    images, labels, is_forget = training_set(cfg)

    # Seed the initialisation without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pcfg.train_seed)
        unet = build_unet(cfg.model)
    unet.to(device).train()
    scheduler = build_scheduler(cfg.model)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=pcfg.train_lr)
    ema = EMAModel(unet.parameters(), decay=pcfg.ema_decay)
    # One CPU generator drives batches, flips, timesteps and noise: runs are reproducible on any device.
    generator = torch.Generator().manual_seed(pcfg.train_seed)
    step = 0

    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        unet.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        ema.load_state_dict(checkpoint["ema"])
        ema.to(device)
        generator.set_state(checkpoint["generator"])
        step = checkpoint["step"]

    bar = tqdm(total=pcfg.train_steps, initial=step, desc="pretrain", disable=not progress)
    while step < pcfg.train_steps:
        idx = torch.randint(len(images), (pcfg.train_batch_size,), generator=generator)
        clean = images[idx]
        if pcfg.hflip_forget:
            clean = random_hflip(clean, is_forget[idx], generator)
        timesteps = torch.randint(cfg.model.num_train_timesteps, (len(idx),), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        clean, noise, timesteps = clean.to(device), noise.to(device), timesteps.to(device)

        noisy = scheduler.add_noise(clean, noise, timesteps)
        pred = unet(noisy, timesteps, class_labels=labels[idx].to(device)).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(unet.parameters())
        step += 1

        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % pcfg.checkpoint_every == 0:
            atomic_torch_save(
                {
                    "step": step,
                    "model": unet.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict(),
                    "generator": generator.get_state(),
                },
                checkpoint_path,
            )
    bar.close()

    ema.copy_to(unet.parameters())
    grid = sample_grid(unet, scheduler, cfg.model.num_classes, SAMPLES_PER_LABEL, SAMPLE_DDIM_STEPS, SAMPLE_SEED)
    Image.fromarray(grid).save(out_dir / SAMPLES_FILE)
    atomic_write_json(cfg.to_dict(), out_dir / CONFIG_FILE)
    # base.pt is written last: its presence marks a complete, cached base model.
    base_path = out_dir / BASE_FILE
    atomic_torch_save({name: tensor.cpu() for name, tensor in unet.state_dict().items()}, base_path)
    checkpoint_path.unlink(missing_ok=True)
    return base_path


def ensure_base_model(cfg: ExperimentConfig, progress: bool = True) -> Path:
    """Path of the cached base.pt of ``cfg``, training it first only if it is missing."""
    folder = base_model_dir(cfg)
    base_path = folder / BASE_FILE
    if base_path.exists():
        return base_path
    with artifact_lock(folder):
        if base_path.exists():  # another process built it while this one waited
            return base_path
        what = f"the {cfg.data.task()} oracle" if cfg.pretrain.train_on == "retain" else "the base model"
        check_may_build(f"{what} of preset {cfg.preset!r} (train seed {cfg.pretrain.train_seed})", base_path)
        return train_base_model(cfg, progress=progress)


def load_base_unet(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> UNet2DModel:
    """The base model of ``cfg`` with its EMA weights, on ``device`` and in train mode (training if needed)."""
    state = torch.load(ensure_base_model(cfg), map_location="cpu", weights_only=True)
    unet = build_unet(cfg.model)
    unet.load_state_dict(state)
    return unet.to(device)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: train (or find cached) the base model of a preset."""
    parser = argparse.ArgumentParser(
        prog="python -m unlearn_env.pretrain",
        description="Train the class-conditional DDPM base model of a preset (cached by config hash).",
    )
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument(
        "--env-kwargs",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. train_steps=1000 cache_dir=/tmp/cache",
    )
    parser.add_argument("--force", action="store_true", help="retrain from scratch even if cached")
    parser.add_argument("--oracle", action="store_true",
                        help="train the retrain oracle (the same recipe on the retain set X\\A only)")
    parser.add_argument("--tasks", default=None, metavar="SET|TASKS",
                        help="the base model of these forget tasks' family: an instance set (train, test) or "
                             "comma-separated tasks; with --oracle, the oracle of each task")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.env_kwargs)
        cfg = get_config(args.preset, **overrides)
        tasks = resolve_task_set(cfg, args.tasks, overrides)
    except (KeyError, ValueError) as err:
        parser.error(str(err.args[0]) if err.args else str(err))
    configs = [tasks.config_of(task, cfg) for task in tasks]
    # Every task of a family shares one base model; each has its own oracle.
    for config in [c.oracle() for c in configs] if args.oracle else configs[:1]:
        pretrain_one(config, args.force)


def pretrain_one(cfg: ExperimentConfig, force: bool) -> None:
    """Train (or find cached) the model of ``cfg`` and print where it is; exit 130 on Ctrl-C, keeping the checkpoint."""
    if force:
        for name in (BASE_FILE, CHECKPOINT_FILE):
            (base_model_dir(cfg) / name).unlink(missing_ok=True)
    try:
        base_path = ensure_base_model(cfg)
    except KeyboardInterrupt:
        checkpoint = base_model_dir(cfg) / CHECKPOINT_FILE
        kept = f"the checkpoint {checkpoint} is kept" if checkpoint.exists() else "no checkpoint was written yet"
        print(f"\ninterrupted: {kept} (every {cfg.pretrain.checkpoint_every} steps); run the same command to resume")
        raise SystemExit(130) from None
    label = f"{cfg.data.task()} oracle" if cfg.pretrain.train_on == "retain" else "base model"
    print(f"{label} (EMA weights): {base_path}")
    print(f"sample grid:              {base_path.parent / SAMPLES_FILE}")


if __name__ == "__main__":
    main()
