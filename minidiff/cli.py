"""The `minidiff` command line: train, sample, eval, presets, data.

Every error a user can cause (an unknown recipe, preset or key, an image size the model cannot take,
a missing or corrupt checkpoint, a diverging loss) ends in one line starting with `minidiff: error:`
that names the problem and the fix, and exit status 2 — never a traceback from inside torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_train(args) -> None:
    from minidiff.recipes import get_recipe, run_training
    from minidiff.training.distributed import init_from_environment, is_main

    if args.recipe is None:
        raise ValueError(f"name a recipe to train: {recipe_list()}")
    get_recipe(args.recipe)  # fail fast on an unknown name
    init_from_environment()  # several processes under torchrun; nothing otherwise
    out = Path(args.out or f"runs/{args.recipe}")
    metrics = run_training(args.recipe, out, args.preset, args.overrides, resume=args.resume,
                           evaluate_after=not args.no_eval, retrain_parts=args.retrain_parts)
    if is_main():
        print(f"run folder: {out}  (samples.png, checkpoint.safetensors, config.json, log.jsonl"
              f"{', metrics.json' if metrics else ''})")
        if metrics:
            print(json.dumps(metrics, indent=2))


def recipe_list() -> str:
    from minidiff.recipes import RECIPES

    return "; ".join(f"{name} (chapter {r.chapter})" for name, r in RECIPES.items())


def sampler_overrides(args, sections: dict) -> dict:
    """The sampler and guidance options given on the command line, checked against the run."""
    from minidiff.recipes import RUN_KINDS, get_recipe

    kind = RUN_KINDS[get_recipe(sections.recipe).kind]
    if "diffusion" not in sections:
        kind.sample(None, sections, 1)                      # raises the kind's own "does not sample" error
    num_steps = sections["diffusion"].num_steps
    if args.steps is not None and not 1 <= args.steps <= num_steps:
        raise ValueError(f"--steps must be between 1 and {num_steps}, got {args.steps}")
    overrides = {k: v for k, v in {"sampler": args.sampler, "sample_steps": args.steps,
                                   "eta": getattr(args, "eta", None)}.items() if v is not None}
    if args.sampler == "ddpm" and args.steps is None:
        overrides["sample_steps"] = num_steps
    text_options = {"guidance_scale": args.guidance, "negative_prompt": getattr(args, "negative_prompt", None)}
    text_options = {k: v for k, v in text_options.items() if v is not None}
    if text_options and not kind.prompts:
        raise ValueError(f"--guidance and --negative-prompt need a text-to-image run (sd-shapes); this run is "
                         f"{kind.what}: drop them")
    kind.sample_overrides(sections, {**overrides, **text_options})          # validates every value
    return {**overrides, **text_options}


def cmd_sample(args) -> None:
    from minidiff.plotting import image_grid, save_grid, save_image, save_points
    from minidiff.recipes import RUN_KINDS, get_recipe, load_run
    from minidiff.recipes.base import check_output_folder

    out = Path(args.out)
    check_output_folder(out)
    if args.n < 1:
        raise ValueError(f"-n must be at least 1, got {args.n}")
    model, sections = load_run(args.run_dir)
    kind = RUN_KINDS[get_recipe(sections.recipe).kind]
    overrides = sampler_overrides(args, sections)
    if args.prompt and not kind.prompts:
        raise ValueError(f"--prompt needs a text-to-image run (sd-shapes); this run is {kind.what}: drop it")
    samples = kind.sample(model, kind.sample_overrides(sections, overrides), args.n, seed=args.seed,
                          prompts=[args.prompt] * args.n if args.prompt else None)
    out.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:                                   # images (digits, Shapes); else 2D points
        for i, image in enumerate(samples):
            save_image(image_grid(image[None], nrow=1, pad=0), out / f"sample_{i:04d}.png", scale=4)
        save_grid(samples, out / "grid.png")
        print(f"wrote {args.n} images and grid.png to {out}")
    else:
        save_points(samples, out / "points.png")
        import numpy as np
        np.savetxt(out / "points.csv", samples.numpy(), delimiter=",", header="x,y", comments="")
        print(f"wrote {args.n} points to {out}/points.csv and points.png")


def cmd_eval(args) -> None:
    from minidiff.recipes import load_run, run_evaluation

    if args.n is not None and args.n < 1:
        raise ValueError(f"-n must be at least 1, got {args.n}")
    model, sections = load_run(args.run_dir)
    overrides = sampler_overrides(args, sections) if "diffusion" in sections else {}
    if "diffusion" not in sections and (args.sampler or args.steps is not None or args.guidance is not None):
        raise ValueError("--sampler, --steps and --guidance apply to diffusion runs; this run does not sample: "
                         "drop them")
    metrics = run_evaluation(args.run_dir, model=model, n=args.n, seed=args.seed, **overrides)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {Path(args.run_dir) / 'metrics.json'}")


def cmd_presets(args) -> None:
    from minidiff.models import PRESETS, count_parameters

    print(f"{'preset':<18}{'network':<20}{'parameters':>14}{'published':>14}")
    for name, (network, _, published) in PRESETS.items():
        count = count_parameters(name)
        published_text = f"{published:,}" if published else "-"
        print(f"{name:<18}{network.__name__:<20}{count:>14,}{published_text:>14}")


def cmd_data(args) -> None:
    from minidiff.data.shapes_dataset import build_shapes, split_sizes

    out = Path(args.out or f"data/shapes-{args.size}px-{args.n}")
    data = build_shapes(out, size=args.size, n=args.n, seed=args.seed, rebuild=args.rebuild)
    counts = ", ".join(f"{split} {len(data[split])}" for split in split_sizes(args.n))
    print(f"Shapes world at {args.size}x{args.size} in {out} ({counts}); open it with datasets.load_from_disk")


def build_parser() -> argparse.ArgumentParser:
    from minidiff.process import SAMPLERS
    from minidiff.recipes import RECIPES

    parser = argparse.ArgumentParser(prog="minidiff", description="Text-to-image diffusion from scratch.")
    sub = parser.add_subparsers(dest="command", required=True)

    recipes = "\n".join(f"  {name:<13} chapter {r.chapter}: {r.description}" for name, r in RECIPES.items())
    p = sub.add_parser("train", help=f"train a recipe ({', '.join(RECIPES)})", epilog=f"recipes:\n{recipes}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="what to train (listed below)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=500 lr=1e-3")
    p.add_argument("--preset", help="model preset (see `minidiff presets`)")
    p.add_argument("--out", help="run folder (default runs/RECIPE)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the metrics at the end")
    p.add_argument("--retrain-parts", action="store_true",
                   help="train the parts a run builds on (autoencoder, CLIP) from scratch in subfolders of --out, "
                        "instead of using the ones that ship with minidiff")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run_dir")
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--steps", type=int)
    p.add_argument("--eta", type=float)
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", help="text-to-image runs: what to draw")
    p.add_argument("--negative-prompt", help='text-to-image runs: what to steer away from (default "")')
    p.add_argument("--guidance", type=float, help="text-to-image runs: classifier-free guidance scale (1: off)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="sample a run and compute its metrics (writes RUN_DIR/metrics.json)")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, help="number of samples (default: the recipe's)")
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="text-to-image runs: classifier-free guidance scale (1: off)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="build a dataset: `minidiff data shapes --size 32 --n 20000 --out DIR`")
    p.add_argument("dataset", choices=["shapes"])
    p.add_argument("--size", type=int, default=32, help="image side in pixels, 16 to 256")
    p.add_argument("--n", type=int, default=20000, help="training examples (validation, test, held-out: n/10 each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder (default data/shapes-SIZEpx-N); an existing identical build is reused")
    p.add_argument("--rebuild", action="store_true", help="build again even if the folder holds this build")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("presets", help="list model presets with their parameter counts")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`train ddpm-digits --out runs/x steps=500`)
    if args.command == "train":
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if e not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except ValueError as e:  # every error minidiff raises for bad input is a ValueError subclass
        print(f"minidiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minidiff: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
