"""`realiz3d train`, `realiz3d dataset` and `realiz3d eval`: train a model on a DATA_DIR (or the toy data made
here), write/check data sets, and evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="two-stage Realiz3D training (and the naive baseline) on a DATA_DIR or the toy data",
        description="base = the pre-trained image model (photos only, no shifter); stage 1 trains only "
        "the Domain Shifter (backbone frozen, empty controls); stage 2 the controls with the shifter "
        "frozen, real samples reassigning the first i ~ U{0..tau_B} sites to synthetic; naive = the "
        "same base and data with no domain covariate. 'all' runs base, stage 1, stage 2 and naive into "
        "OUT/base, OUT/stage1, OUT/stage2, OUT/naive (and OUT/lora/... with --with-lora); '1+2' (the "
        "default with --init) runs stage 1 and stage 2 from a pre-trained model. Each run "
        "writes OUT/checkpoint (resumable) and OUT/final (the model folder, EMA weights); with "
        "--checkpoint-minutes also OUT/latest while it runs. See docs/training.md.",
    )
    p.add_argument(
        "--stage",
        choices=["base", "1", "2", "naive", "all", "1+2"],
        default=None,
        help="default: 1+2 with --init (stage 1 into OUT/stage1, then stage 2 into OUT/stage2)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="DATA_DIR in the training data set format (docs/training.md); default: the toy data",
    )
    p.add_argument(
        "--train",
        choices=["adapters", "unet", "all"],
        default=None,
        help="what trains: adapters (the Domain Shifter: stage 1), unet (stage 2, naive), all (UNet + "
        "text encoder: base); default: the stage's own set",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute UNet blocks in backward (less memory)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder of this run")
    p.add_argument(
        "--steps", type=int, default=5000, help="steps of this stage (all/naive: stage 1 + stage 2)"
    )
    p.add_argument(
        "--stage1-steps",
        type=int,
        default=None,
        help="all/naive/1+2: steps on stage-1 data before stage-2 data (default: 30%% of --steps)",
    )
    p.add_argument("--base-steps", type=int, default=1500, help="all: steps of the base stage")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="model folder to start from (stage 1 and naive: the base's; stage 2: stage 1's)",
    )
    p.add_argument(
        "--form", choices=["block-shift", "lora"], default="block-shift", help="Domain Shifter form"
    )
    p.add_argument("--with-lora", action="store_true", help="all: also train the lora form (OUT/lora)")
    p.add_argument(
        "--tau-blocks", type=int, default=None, help="stage 2: i ~ U{0..tau_B} (default: the shifter's)"
    )
    p.add_argument("--batch", type=int, default=2, help="synthetic objects per step (x 4 views)")
    p.add_argument("--batch-real", type=int, default=8, help="photographs per step")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget of the whole command: shared among its stages by their work; each stage "
        "fits its steps (and learning-rate schedule) to its share and stops there (default: no limit)",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=None,
        help="also write OUT/checkpoint and OUT/latest (the EMA weights as a model folder) every that many "
        "minutes of wall time, so a run killed from outside leaves usable weights (default: off)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=32,
        help="image size of a fresh model (base, all) and of the toy data (the shipped model: 32)",
    )
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--synthetic-objects", type=int, default=800, help="toy data: objects (x 4 views)")
    p.add_argument("--photos", type=int, default=3200, help="toy data: photographs")
    p.add_argument("--channels", default="32,64,64", help="UNet block widths of a fresh model")
    p.add_argument(
        "--no-layer-aware",
        action="store_true",
        help="stage 2: let real samples train the reassigned first i sites too",
    )
    p.set_defaults(handler=run_train)

    d = sub.add_parser("dataset", help="training data sets: write the toy one, check one")
    dsub = d.add_subparsers(dest="dataset_command", required=True)
    toy = dsub.add_parser("toy", help="write the procedural toy data as a DATA_DIR")
    toy.add_argument("--out", type=Path, required=True)
    toy.add_argument("--synthetic-objects", type=int, default=800)
    toy.add_argument("--photos", type=int, default=3200)
    toy.add_argument("--resolution", type=int, default=32)
    toy.add_argument("--seed", type=int, default=0)
    toy.set_defaults(handler=run_dataset_toy)
    check = dsub.add_parser("check", help="read every file of a DATA_DIR as training would")
    check.add_argument("data", type=Path)
    check.add_argument("--model", type=Path, default=None, help="read at this model folder's resolution")
    check.set_defaults(handler=run_dataset_check)

    e = sub.add_parser(
        "eval",
        help="realism / control adherence / cross-view consistency: naive vs Realiz3D step-splits",
    )
    e.add_argument("--model", type=Path, required=True, help="the Realiz3D model folder (its own form)")
    e.add_argument("--lora", type=Path, default=None, help="a lora-form Realiz3D model folder to compare")
    e.add_argument("--baseline", type=Path, default=None, help="the naive baseline's model folder")
    e.add_argument("--out", type=Path, default=Path("docs/eval"))
    e.add_argument("--objects", type=int, default=48)
    e.add_argument("--steps", type=int, default=30)
    e.add_argument("--guidance", type=float, default=3.0)
    e.add_argument("--splits", default="0,0.4,1", help="comma-separated step splits")
    e.add_argument(
        "--block-splits", default="", help="comma-separated block splits K (schedule 0,blocks=K), e.g. 4,9"
    )
    e.add_argument(
        "--cache-intervals",
        default="",
        help="comma-separated step-caching intervals N > 1, each scored at split 0.4 against N=1, e.g. 2,3,5",
    )
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    e.add_argument("--no-text", action="store_true", help="score only the geometry-conditioned task")
    e.add_argument("--batch-jobs", type=int, default=8, help="objects generated together (step batcher)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--with-seeded", action="store_true", help="also score the untrained seeded default")
    e.set_defaults(handler=run_eval)


def _csv_values(flag: str, text: str, cast, kind: str, ok, rule: str, required: bool = False) -> tuple:  # noqa: ANN001
    """A comma-separated flag's values; one line (exit 2) for a value that does not parse, one out of range
    (`rule`), or none when `required`."""
    from engines.errors import UserInputError

    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserInputError(f"{flag} {text!r}: expected comma-separated {kind}") from None
    if (required and not values) or not all(ok(v) for v in values):
        raise UserInputError(f"{flag} {text!r}: {rule}")
    return values


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


def run_train(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError
    from engines.training.data import DataSpec
    from engines.training.train import TrainConfig, Trainer, train_all, train_from_pretrained

    if args.stage is None:
        if args.init is None:
            raise UserInputError("--stage is required without --init (base, 1, 2, naive, all or 1+2)")
        args.stage = "1+2"
    if args.stage == "1+2" and args.init is None:
        raise UserInputError(
            "--stage 1+2 needs --init, the pre-trained model folder (e.g. from realiz3d import)"
        )
    if args.data is not None and not (args.data / "dataset.json").is_file():
        raise UserInputError(f"--data {args.data}: not a data set (no dataset.json; see docs/training.md)")
    steps = _positive("--steps", args.steps)
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise UserInputError(f"--channels {args.channels!r}: expected comma-separated integers") from None
    stage1 = args.stage1_steps if args.stage1_steps is not None else max(1, int(0.3 * steps))
    if args.stage in ("all", "naive", "1+2") and not 0 < stage1 < steps:
        raise UserInputError(f"--stage1-steps must be in [1, {steps - 1}], got {stage1}")
    if args.init is not None:
        _model_folder(args.init, "--init")
    data = DataSpec(
        synthetic=_positive("--synthetic-objects", args.synthetic_objects),
        real=_positive("--photos", args.photos),
        seed=args.seed,
        resolution=_positive("--resolution", args.resolution),
    )
    cfg = TrainConfig(
        stage={"all": "base", "1+2": "2"}.get(args.stage, args.stage),  # 1+2: stage 1 resets --train
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
        tau_blocks=args.tau_blocks,
        shifter_form=args.form,
        data_dir=str(args.data) if args.data is not None else None,
        train=args.train if args.stage not in ("all", "1+2") else _later_stages(args.train),
        gradient_checkpointing=args.gradient_checkpointing,
        precision=args.precision,
        resolution=args.resolution,
        max_seconds=args.max_minutes * 60 if args.max_minutes is not None else None,
        checkpoint_seconds=args.checkpoint_minutes * 60 if args.checkpoint_minutes is not None else None,
    )
    if args.stage == "1+2":
        paths = train_from_pretrained(cfg, args.out, args.init, stage1, args.resume, log=_log)
        for k, v in paths.items():
            print(f"{k}: {v}")
        return 0
    if args.stage == "all":
        forms = ("block-shift", "lora") if args.with_lora else ("block-shift",)
        base_steps = _positive("--base-steps", args.base_steps)
        paths = train_all(cfg, args.out, base_steps, stage1, args.resume, forms=forms, log=_log)
        for k, v in paths.items():
            print(f"{k}: {v}")
        return 0
    final = Trainer(cfg, args.out, init=args.init, resume=args.resume, log=_log).run()
    print(f"model folder: {final}")
    return 0


def _later_stages(train: str | None) -> str | None:
    """all / 1+2: --train applies to the stages after stage 1 (which always trains only the shifter)."""
    from engines.errors import UserInputError

    if train == "adapters":
        raise UserInputError(
            "--train adapters is stage 1's own set; with --stage all or 1+2 give unet or all"
        )
    return train


def run_dataset_toy(args: argparse.Namespace) -> int:
    from engines.training.data import DataSpec
    from engines.training.toy_dataset import write_toy_dataset

    spec = DataSpec(
        synthetic=_positive("--synthetic-objects", args.synthetic_objects),
        real=_positive("--photos", args.photos),
        seed=args.seed,
        resolution=_positive("--resolution", args.resolution),
    )
    print(f"wrote {write_toy_dataset(spec, args.out)}")
    return 0


def run_dataset_check(args: argparse.Namespace) -> int:
    from engines.models.config import ModelConfig
    from engines.training.dataset import Layout, open_dataset

    if args.model is not None:
        config = ModelConfig.model_validate_json(
            (_model_folder(args.model, "--model") / "realiz3d.json").read_text()
        )
        layout = Layout(config.resolution, config.unet_input_factor, config.camera.convention)
    else:
        layout = Layout(32)
    data = open_dataset(args.data, layout)
    for part in (data.synthetic, data.real):
        for i in range(len(part) if part is not None else 0):
            part.load(i)  # decode every image and geometry map
    print(data.describe())
    return 0


def _log(msg: str) -> None:
    print(msg, flush=True)


def run_eval(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError
    from engines.models.model_folder import load_model
    from engines.training.evaluate import EvalConfig, evaluate

    model = _model_folder(args.model, "--model")
    models = {load_model(model).shifter.form: model}
    if args.lora is not None:
        lora = _model_folder(args.lora, "--lora")
        if load_model(lora).shifter.form != "lora":
            raise UserInputError(f"--lora {lora}: its Domain Shifter is not the lora form")
        models["lora"] = lora
    baseline = _model_folder(args.baseline, "--baseline") if args.baseline is not None else None
    splits = _csv_values(
        "--splits",
        args.splits,
        float,
        "numbers in [0, 1]",
        lambda v: 0 <= v <= 1,
        "every split must be in [0, 1]",
        True,
    )
    block_splits = _csv_values(
        "--block-splits", args.block_splits, int, "integers", lambda v: v >= 0, "every K must be >= 0"
    )
    cache_intervals = _csv_values(
        "--cache-intervals", args.cache_intervals, int, "integers", lambda v: v >= 1, "every N must be >= 1"
    )
    cfg = EvalConfig(
        objects=_positive("--objects", args.objects),
        steps=_positive("--steps", args.steps),
        guidance=args.guidance,
        splits=splits,
        block_splits=block_splits,
        cache_intervals=cache_intervals,
        bootstrap=_positive("--bootstrap", args.bootstrap),
        text=not args.no_text,
        batch_jobs=_positive("--batch-jobs", args.batch_jobs),
        seed=args.seed,
        include_seeded=args.with_seeded,
    )
    result = evaluate(models, args.out, baseline, cfg, log=_log)
    print((args.out / "results.md").read_text())
    print(
        f"wrote {args.out}/results.md, results.json, samples_geometry.png, samples_text.png ({result['seconds']} s)"
    )
    return 0
