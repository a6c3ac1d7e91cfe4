"""`realiz3d train` and `realiz3d eval`: train the embedded default model here, and evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="two-stage Realiz3D training (and the naive baseline) on data generated here",
        description="Stage 1 learns the Domain Shifter without controls; stage 2 the controls with the "
        "shifter frozen; naive = the same model and data with no domain covariate. 'all' runs stage 1, "
        "stage 2 and naive into OUT/stage1, OUT/stage2, OUT/naive. Each run writes OUT/checkpoint "
        "(resumable) and OUT/final (the model folder, EMA weights). See docs/training.md.",
    )
    p.add_argument("--stage", choices=["1", "2", "naive", "all"], required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder of this run")
    p.add_argument("--steps", type=int, default=5000, help="steps of this stage (all/naive: both stages)")
    p.add_argument(
        "--stage1-steps",
        type=int,
        default=None,
        help="all/naive: steps on stage-1 data before stage-2 data (default: 30%% of --steps)",
    )
    p.add_argument("--init", type=Path, default=None, help="model folder to start from (stage 2: stage 1's)")
    p.add_argument("--batch", type=int, default=2, help="synthetic objects per step (x 4 views)")
    p.add_argument("--batch-real", type=int, default=8, help="photographs per step")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--synthetic-objects", type=int, default=800, help="training objects (x 4 views)")
    p.add_argument("--photos", type=int, default=3200, help="training photographs")
    p.add_argument("--channels", default="32,64,64", help="UNet block widths of a fresh model")
    p.add_argument("--no-layer-aware", action="store_true", help="stage 2: let real samples train 'down'")
    p.add_argument("--reassign-prob", type=float, default=0.25, help="stage 2: domain reassignment rate")
    p.set_defaults(handler=run_train)

    e = sub.add_parser(
        "eval",
        help="realism / control adherence / cross-view consistency: naive vs Realiz3D step-splits",
    )
    e.add_argument("--model", type=Path, required=True, help="the Realiz3D model folder")
    e.add_argument("--baseline", type=Path, default=None, help="the naive baseline's model folder")
    e.add_argument("--out", type=Path, default=Path("docs/eval"))
    e.add_argument("--objects", type=int, default=12)
    e.add_argument("--steps", type=int, default=30)
    e.add_argument("--guidance", type=float, default=3.0)
    e.add_argument("--splits", default="0,0.2,0.4,0.6,1", help="comma-separated step splits")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--with-seeded", action="store_true", help="also score the untrained seeded default")
    e.set_defaults(handler=run_eval)


def _positive(name: str, value: int) -> int:
    from engines.errors import UserInputError

    if value < 1:
        raise UserInputError(f"{name} must be >= 1, got {value}")
    return value


def _model_folder(path: Path, flag: str) -> Path:
    from engines.errors import UserInputError

    if not (path / "realiz3d.json").is_file():
        raise UserInputError(f"{flag} {path}: not a model folder (no realiz3d.json)")
    return path


def _pixel_space_only(folder: Path) -> None:
    """Training runs in pixel space on 32 px procedural data for now: refuse a latent model cleanly."""
    import json

    from engines.errors import UserInputError

    if json.loads((folder / "realiz3d.json").read_text()).get("latent_space") == "vae":
        raise UserInputError(
            f"--init {folder}: a latent (VAE) model; training in its latent space is not supported yet "
            "(docs/bring-your-own-model.md)"
        )


def run_train(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError
    from engines.training.data import DataSpec
    from engines.training.train import TrainConfig, Trainer, train_all

    steps = _positive("--steps", args.steps)
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise UserInputError(f"--channels {args.channels!r}: expected comma-separated integers") from None
    if not 0 <= args.reassign_prob <= 1:
        raise UserInputError(f"--reassign-prob must be in [0, 1], got {args.reassign_prob}")
    stage1 = args.stage1_steps if args.stage1_steps is not None else max(1, int(0.3 * steps))
    if args.stage in ("all", "naive") and not 0 < stage1 < steps:
        raise UserInputError(f"--stage1-steps must be in [1, {steps - 1}], got {stage1}")
    if args.init is not None:
        _model_folder(args.init, "--init")
        _pixel_space_only(args.init)
    data = DataSpec(
        synthetic=_positive("--synthetic-objects", args.synthetic_objects),
        real=_positive("--photos", args.photos),
        seed=args.seed,
    )
    cfg = TrainConfig(
        stage="1" if args.stage == "all" else args.stage,
        steps=steps,
        seed=args.seed,
        batch_objects=_positive("--batch", args.batch),
        batch_real=_positive("--batch-real", args.batch_real),
        lr=args.lr,
        stage1_steps=stage1 if args.stage == "naive" else 0,
        checkpoint_every=_positive("--checkpoint-every", args.checkpoint_every),
        log_every=_positive("--log-every", args.log_every),
        data=data,
        channels=channels,
        layer_aware=not args.no_layer_aware,
        reassign_prob=args.reassign_prob,
    )
    if args.stage == "all":
        paths = train_all(cfg, args.out, stage1, args.resume, log=_log)
        for k, v in paths.items():
            print(f"{k}: {v}")
        return 0
    final = Trainer(cfg, args.out, init=args.init, resume=args.resume, log=_log).run()
    print(f"model folder: {final}")
    return 0


def _log(msg: str) -> None:
    print(msg, flush=True)


def run_eval(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError
    from engines.training.evaluate import EvalConfig, evaluate

    model = _model_folder(args.model, "--model")
    baseline = _model_folder(args.baseline, "--baseline") if args.baseline is not None else None
    try:
        splits = tuple(float(s) for s in args.splits.split(","))
    except ValueError:
        raise UserInputError(
            f"--splits {args.splits!r}: expected comma-separated numbers in [0, 1]"
        ) from None
    if not splits or any(not 0 <= s <= 1 for s in splits):
        raise UserInputError(f"--splits {args.splits!r}: every split must be in [0, 1]")
    cfg = EvalConfig(
        objects=_positive("--objects", args.objects),
        steps=_positive("--steps", args.steps),
        guidance=args.guidance,
        splits=splits,
        seed=args.seed,
        include_seeded=args.with_seeded,
    )
    result = evaluate(model, args.out, baseline, cfg, log=_log)
    print((args.out / "results.md").read_text())
    print(
        f"wrote {args.out}/results.md, results.json, samples_geometry.png, samples_text.png ({result['seconds']} s)"
    )
    return 0
