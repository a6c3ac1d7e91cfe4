"""Ship a trained model folder as the embedded default: copy it to engines/models/default/ and write
engines/models/default.card.json (sha256 and size of every file, parameter count, provenance).

    python -m engines.training.ship RUN/stage2/final [--eval docs/eval/results.json] [--notes TEXT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from engines.models.default_model import SHIPPED_MODEL_DIR
from engines.models.model_folder import load_model

MAX_BYTES = 20 * 1024 * 1024


def file_table(folder: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[path.relative_to(folder).as_posix()] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
    return out


def ship(
    src: Path,
    dest: Path = SHIPPED_MODEL_DIR,
    provenance: dict | None = None,
    guidance_scale: float | None = None,
) -> dict:
    """Copy model folder `src` to `dest`, optionally setting its default guidance, and write its card."""
    model = load_model(src)  # refuse anything that does not load
    files = file_table(src)
    total = sum(f["bytes"] for f in files.values())
    if total > MAX_BYTES:
        raise ValueError(f"{src}: {total} bytes is over the {MAX_BYTES} byte budget of the shipped model")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    for path in [dest, *dest.rglob("*")]:  # save_model writes via a private temp dir (0700/0600)
        path.chmod(0o755 if path.is_dir() else 0o644)
    if guidance_scale is not None:
        config = model.config.model_copy(update={"default_guidance_scale": guidance_scale})
        (dest / "realiz3d.json").write_text(config.model_dump_json(indent=2))
    card = {
        "name": model.config.name,
        "format_version": model.config.format_version,
        "resolution": model.config.resolution,
        "parameters": model.parameter_count(),
        "dtype": "float32",
        "total_bytes": total,
        "files": file_table(dest),
        **(provenance or {}),
    }
    (dest.parent / f"{dest.name}.card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.training.ship")
    p.add_argument("src", type=Path)
    p.add_argument("--eval", type=Path, default=None, help="results.json of `realiz3d eval` to summarise")
    p.add_argument("--training", default="", help="how it was trained (commands), recorded in the card")
    p.add_argument(
        "--guidance",
        type=float,
        default=3.0,
        help="the model's default guidance (the toy model over-saturates at 7.5)",
    )
    args = p.parse_args(argv)
    prov: dict = {"training": args.training, "source": "trained here; see docs/training.md"}
    if args.eval is not None:
        res = json.loads(args.eval.read_text())
        prov["eval"] = {"classifier": res["classifier"], "rows": res["rows"]}
    card = ship(args.src, provenance=prov, guidance_scale=args.guidance)
    print(f"shipped {card['name']}: {card['total_bytes']} bytes, {card['parameters']} parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
