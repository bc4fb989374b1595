"""Does DPM-Solver++ at few steps draw what DDIM-50 draws? Checked with the judge on a preset's base model.

    python benchmarks/sampler_check.py --preset cpu --forget-samples 256 --per-retain 32 --json sampler_check.json
    python benchmarks/sampler_check.py --reference dpmsolver++-50 --samplers ddim-50,dpmsolver++-10,dpmsolver++-15

Every sampler starts from the same noise (seed ``--seed``) and labels: ``--forget-samples`` of the
forget label and ``--per-retain`` of every other label. Per sampler:

* ``forget_rate`` (share the judge calls the concept, with its Wilson 95 % interval),
  ``forget_digit_share`` and ``neither_forget`` on the forget-label samples, ``neither_retain`` on the others;
* ``kid_retain``: KID of the retain samples to the held-out real digits;
* ``kid_to_ref``: KID between its samples and the reference sampler's (``--reference``, DDIM-50), all labels;
* ``same_call``: share of samples (same noise, same label) the judge calls alike under both;
* ``rmse_to_ref``: root mean square pixel difference to the reference's image from the same noise;
* ``s_per_image``: sampling seconds per image.

The yardstick of sampling error is a second draw of the reference from other noise (seed + 1),
the row ``<reference> (seed+1)``: two sample sets that differ by sampling alone. A sampler matches
the reference when its forget rate lies in the reference's interval and its ``kid_to_ref`` and
``kid_retain`` are within what the independent draw gives. The script names the first of
``--samplers`` (fewest steps first) that does.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from evaluation.judge import NEITHER, classify, ensure_judge
from evaluation.metrics import RealReference, forget_calls, kid, make_feature_extractor
from evaluation.sampling import DDIM_50, Sampler, evaluation_labels, parse_sampler, sample
from unlearn_env.config import PRESETS, get_config, parse_overrides, positive_int
from unlearn_env.diffusion import build_scheduler, sampling_noise
from unlearn_env.pretrain import BASE_FILE, base_model_dir, load_base_unet

from timing import json_target


def sampler_list(text: str) -> list[Sampler]:
    """argparse type: comma-separated sampler names."""
    try:
        return [parse_sampler(name) for name in text.split(",") if name.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--reference", type=parse_sampler, default=DDIM_50, help="e.g. ddim-50 or dpmsolver++-50")
    parser.add_argument("--samplers", type=sampler_list, default=[Sampler("dpmsolver++", n) for n in (10, 15, 20, 25)],
                        help="comma-separated samplers to compare, e.g. dpmsolver++-10,dpmsolver++-15")
    parser.add_argument("--forget-samples", type=positive_int, default=256)
    parser.add_argument("--per-retain", type=positive_int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kid-subsets", type=positive_int, default=100)
    parser.add_argument("--allow-training", action="store_true",
                        help="train the base model if it is not cached (by default a missing one is an error)")
    parser.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=json_target, help="also write the figures here")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Sample every sampler from the same noise and score each against the reference sampler."""
    cfg = get_config(args.preset, **parse_overrides(args.env_kwargs))
    if not args.allow_training and not (base_model_dir(cfg) / BASE_FILE).is_file():
        raise SystemExit(f"the {args.preset} base model is not cached: run `python -m unlearn_env.pretrain "
                         f"--preset {args.preset}` first, or pass --allow-training")
    unet, scheduler = load_base_unet(cfg), build_scheduler(cfg.model)
    judge = ensure_judge(cfg)
    real = RealReference.build(cfg.data)
    features = real.feature_extractor(make_feature_extractor(judge))
    labels = evaluation_labels(cfg.model.num_classes, cfg.data.forget_class, args.forget_samples, args.per_retain)
    forget = labels == cfg.data.forget_class

    def draw(sampler: Sampler, seed: int) -> tuple[torch.Tensor, float]:
        noise = sampling_noise(len(labels), cfg.model.image_size, seed)
        start = time.perf_counter()
        images = sample(unet, scheduler, labels, noise, sampler).cpu()
        return images, (time.perf_counter() - start) / len(labels)

    reference, reference_seconds = draw(args.reference, args.seed)
    reference_calls = classify(judge, reference)
    runs: list[tuple[str, Sampler, torch.Tensor, float]] = [(args.reference.name, args.reference, reference,
                                                             reference_seconds)]
    independent, seconds = draw(args.reference, args.seed + 1)
    runs.append((f"{args.reference.name} (seed+1)", args.reference, independent, seconds))
    for sampler in args.samplers:
        images, seconds = draw(sampler, args.seed)
        runs.append((sampler.name, sampler, images, seconds))

    rows = []
    for name, sampler, images, seconds in runs:
        calls = forget_calls(images[forget], judge, cfg.data)
        row = {
            "sampler": name,
            "steps": sampler.steps,
            **{k: calls[k] for k in ("forget_rate", "forget_rate_lo", "forget_rate_hi", "forget_digit_share",
                                     "neither_forget")},
            "neither_retain": float((classify(judge, images[~forget]) == NEITHER).float().mean()),
            "kid_retain": kid(real.retain_digits, images[~forget], features, args.kid_subsets, seed=args.seed)[0],
            "kid_to_ref": kid(reference, images, features, args.kid_subsets, seed=args.seed)[0],
            "same_call": float((classify(judge, images) == reference_calls).float().mean()),
            "rmse_to_ref": float((images - reference).square().mean().sqrt()),
            "s_per_image": seconds,
        }
        rows.append(row)
    return {"preset": args.preset, "seed": args.seed, "forget_samples": args.forget_samples,
            "per_retain": args.per_retain, "threads": torch.get_num_threads(), "rows": rows,
            "recommendation": recommend(rows)}


def recommend(rows: list[dict[str, Any]]) -> str:
    """The first compared sampler that matches the reference within what an independent reference draw differs by."""
    reference, independent = rows[0], rows[1]
    kid_noise = abs(independent["kid_to_ref"])
    retain_noise = abs(independent["kid_retain"] - reference["kid_retain"])
    for row in rows[2:]:
        rate_ok = reference["forget_rate_lo"] <= row["forget_rate"] <= reference["forget_rate_hi"]
        retain_ok = abs(row["kid_retain"] - reference["kid_retain"]) <= retain_noise
        if rate_ok and retain_ok and row["kid_to_ref"] <= kid_noise:
            return row["sampler"]
    return f"none: keep {rows[0]['sampler']}"


def print_table(result: dict[str, Any]) -> None:
    """The rows as a fixed-width table, KIDs x 10^3."""
    header = (f"{'sampler':24s} {'forget rate [95 % CI]':>24s} {'digit':>6s} {'neither':>7s} {'n.ret':>6s} "
              f"{'KIDret':>7s} {'KIDref':>7s} {'same':>6s} {'rmse':>6s} {'s/img':>7s}")
    print(header)
    for r in result["rows"]:
        rate = f"{r['forget_rate']:.3f} [{r['forget_rate_lo']:.3f}, {r['forget_rate_hi']:.3f}]"
        print(f"{r['sampler']:24s} {rate:>24s} {r['forget_digit_share']:6.3f} {r['neither_forget']:7.3f} "
              f"{r['neither_retain']:6.3f} "
              f"{1e3 * r['kid_retain']:7.2f} {1e3 * r['kid_to_ref']:7.2f} {r['same_call']:6.3f} "
              f"{r['rmse_to_ref']:6.3f} {r['s_per_image']:7.4f}")
    print(f"recommendation: {result['recommendation']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = check(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
