"""The class-conditional diffusion model: UNet factory, noise schedule and DDIM sampler."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from unlearn_env.config import ModelConfig


def build_unet(cfg: ModelConfig) -> UNet2DModel:
    """A class-conditional ``UNet2DModel`` (one grey channel, ``num_class_embeds`` labels)."""
    levels = len(cfg.block_out_channels)
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(levels))
    # The up path mirrors the down path, so level i of the encoder is level (levels-1-i) of the decoder.
    up = tuple("AttnUpBlock2D" if levels - 1 - i in cfg.attention_levels else "UpBlock2D" for i in range(levels))
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        down_block_types=down,
        up_block_types=up,
        num_class_embeds=cfg.num_classes,
    )


def build_scheduler(cfg: ModelConfig) -> DDPMScheduler:
    """DDPM schedule of SPEC §2: linear betas 1e-4..0.02, epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
    )


def noise_coefficients(scheduler: DDPMScheduler, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-timestep ``gamma_t = sqrt(abar_t)`` and ``sigma_t = sqrt(1 - abar_t)`` on ``device``."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    return alphas_cumprod.sqrt(), (1.0 - alphas_cumprod).sqrt()


CPU_INFERENCE_BATCH = 64
"""Images per UNet forward pass without gradient on CPU. Larger batches overflow the caches: per image the
``cpu`` preset's UNet takes 1.10x the time at 256 and 1.46x at 512 (``benchmarks/inference_batch.py``,
torch 2.13, one thread). Batches of 16 or more give every image the same output bit for bit (one of 7
differed by 1e-6)."""


def inference_batch(device: torch.device, accelerator_batch: int) -> int:
    """Images per forward pass without gradient: :data:`CPU_INFERENCE_BATCH` on CPU, else ``accelerator_batch``."""
    return CPU_INFERENCE_BATCH if device.type == "cpu" else accelerator_batch


@torch.no_grad()
def ddim_sample(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    labels: torch.Tensor,
    noise: torch.Tensor,
    num_steps: int = 50,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) samples for ``labels`` from the given initial ``noise``.

    Same noise and labels give the same images, so methods can be compared on equal terms.
    Returns images in model space, ``(N, 1, S, S)`` float32 clamped to [-1, 1]. ``batch_size``
    (images per pass) defaults to :func:`inference_batch`'s, 256 on an accelerator.
    """
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(num_steps)
    device = next(unet.parameters()).device
    if batch_size is None:
        batch_size = inference_batch(device, 256)
    was_training = unet.training
    unet.eval()
    chunks = []
    for start in range(0, len(labels), batch_size):
        sample = noise[start : start + batch_size].to(device)
        label = labels[start : start + batch_size].to(device)
        for t in ddim.timesteps:
            eps = unet(sample, t.to(device), class_labels=label).sample
            sample = ddim.step(eps, t, sample, eta=0.0).prev_sample
        chunks.append(sample.clamp(-1.0, 1.0))
    unet.train(was_training)
    return torch.cat(chunks)


def sampling_noise(count: int, image_size: int, seed: int) -> torch.Tensor:
    """Initial DDIM noise that depends only on ``seed`` (CPU generator, so it is device-independent)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 1, image_size, image_size, generator=generator)


def image_grid(images: np.ndarray, rows: int) -> np.ndarray:
    """Tile ``(N, H, W)`` uint8 images into one ``(rows*H, cols*W)`` grid, row-major, 2-pixel gaps."""
    count, height, width = images.shape
    cols = -(-count // rows)
    gap = 2
    grid = np.zeros((rows * (height + gap) - gap, cols * (width + gap) - gap), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = image
    return grid
