"""Cost per image of the forward passes without gradient (sampling, denoising gap, judge) by batch size.

    python benchmarks/inference_batch.py --preset cpu --images 1024 --rounds 3 --json inference_batch.json

Sampling and the denoising gap run the preset's UNet, the evaluation's scores the judge, each over
many images in batches (``unlearn_env.diffusion.CPU_INFERENCE_BATCH`` and
``evaluation.judge.SCORING_BATCH`` on CPU). For every batch size this times one pass over the same
``--images`` inputs (random weights and inputs: the cost depends on neither), reports ms per image
and the ratio to the default batch, and checks that every image's output is the one the largest
batch gave, bit for bit. Batch sizes alternate in rounds and the median per-round time is reported,
so a passing load hits all alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch

from evaluation.judge import SCORING_BATCH, JudgeNet, default_config
from unlearn_env.config import PRESETS, get_config, positive_int
from unlearn_env.diffusion import CPU_INFERENCE_BATCH, build_unet

from timing import json_target, positive_int_list, time_block


def batched(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: torch.Tensor,
            conditions: torch.Tensor, batch: int) -> torch.Tensor:
    """``forward(inputs, conditions)`` in batches of ``batch`` images, without gradient."""
    with torch.no_grad():
        return torch.cat([forward(x, c) for x, c in zip(inputs.split(batch), conditions.split(batch))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--images", type=positive_int, default=1024, help="images per timed pass")
    parser.add_argument("--batches", type=positive_int_list, default=[32, 64, 128, 256, 512, 1024],
                        help="batch sizes to time")
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds")
    parser.add_argument("--json", type=json_target, help="also write the figures here")
    args = parser.parse_args()

    cfg = get_config(args.preset)
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    unet = build_unet(cfg.model).eval()
    judge = JudgeNet(default_config(args.preset)).eval()
    side = cfg.model.image_size
    # The UNet's conditioning per image: (class label, timestep).
    conditions = torch.stack([torch.randint(cfg.model.num_classes, (args.images,), generator=generator),
                              torch.randint(cfg.model.num_train_timesteps, (args.images,), generator=generator)], 1)
    models = {
        "unet": (lambda x, c: unet(x, c[:, 1], class_labels=c[:, 0]).sample,
                 torch.randn(args.images, 1, side, side, generator=generator), conditions, CPU_INFERENCE_BATCH),
        "judge": (lambda x, _: judge(x), torch.rand(args.images, 1, 28, 28, generator=generator) * 2 - 1,
                  torch.zeros(args.images, 1, dtype=torch.long), SCORING_BATCH),
    }
    rows = []
    for name, (forward, inputs, conditions, default) in models.items():
        reference = batched(forward, inputs, conditions, max(args.batches))
        seconds: dict[int, list[float]] = {batch: [] for batch in args.batches}
        for _ in range(args.rounds):
            for batch in args.batches:
                seconds[batch].append(time_block(lambda: batched(forward, inputs, conditions, batch), 1, device))
        default_ms = None
        if default in seconds:
            default_ms = 1e3 * statistics.median(seconds[default]) / args.images
        for batch in args.batches:
            ms = 1e3 * statistics.median(seconds[batch]) / args.images
            rows.append({
                "model": name, "batch": batch, "ms_per_image": ms, "default_batch": default,
                "time_over_default": ms / default_ms if default_ms else None,
                "same_outputs_as_largest": bool(torch.equal(batched(forward, inputs, conditions, batch), reference)),
            })

    print(f"preset {args.preset}: forward passes without gradient over {args.images} images, "
          f"{torch.get_num_threads()} torch thread(s), median of {args.rounds} rounds")
    print(f"{'model':>6} {'batch':>6} {'ms/image':>9} {'x default':>9} {'same outputs':>12}")
    for row in rows:
        ratio = f"{row['time_over_default']:.2f}" if row["time_over_default"] else "-"
        mark = " (default)" if row["batch"] == row["default_batch"] else ""
        print(f"{row['model']:>6} {row['batch']:>6} {row['ms_per_image']:>9.3f} {ratio:>9} "
              f"{str(row['same_outputs_as_largest']):>12}{mark}")
    if args.json:
        figures = {"preset": args.preset, "images": args.images, "torch_threads": torch.get_num_threads(),
                   "rounds": args.rounds, "rows": rows}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
