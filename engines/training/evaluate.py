"""`realiz3d eval`: realism, control adherence and cross-view consistency of naive vs Realiz3D's
block-shift and lora forms.

For a fixed set of held-out objects (the `eval` split's seed; chromatic colours only, so the colour
metrics are defined) every condition generates, with the same seeds:
- geometry-conditioned views (the object's 4 orbit cameras + its geometry maps: the texturing task),
- text-to-multiview views (the same cameras, no geometry),
and is scored with `metrics.py`, the domain classifier (`domain_classifier.py`) and KID on that
classifier's standardised features against held-out photographs and renders (`kid.py`), with object-bootstrap 95%
intervals and paired differences against the naive baseline. Conditions: the naive baseline, and each
Realiz3D model at step splits (0 = all real ... 1 = all synthetic) and block splits (`blocks=K` after a
step split of 0). Reference rows score the data itself to calibrate the metrics.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines.image_io import make_grid, save_png
from engines.sampling.cameras import Camera
from engines.training.data import DataSpec, load_datasets
from engines.training.domain_classifier import (
    DomainClassifier,
    FeatureRealism,
    evaluate_classifier,
    train_domain_classifier,
)
from engines.training.kid import (
    KIDReference,
    ObjectKernels,
    bootstrap_weights,
    kid_with_interval,
    mean_with_interval,
    paired_difference,
    paired_mean_difference,
)
from engines.training.metrics import colour_mask, cross_view_error, dominant_colour, mask_iou
from engines.training.shapes import CHROMATIC, ObjectSpec, random_spec
from engines.training.synthetic_data import object_cameras, render_object
from engines.types import DomainSchedule

METRIC_KEYS = (
    "p_real_geo",
    "p_real_text",
    "feat_real_geo",
    "feat_real_text",
    "mask_iou",
    "colour_hit_geo",
    "colour_hit_text",
    "xview_err",
)


@dataclass
class EvalConfig:
    objects: int = 48
    steps: int = 30
    guidance: float = 3.0
    splits: tuple[float, ...] = (0.0, 0.4, 1.0)
    block_splits: tuple[int, ...] = ()  # blocks=K conditions (after a step split of 0)
    #: step caching conditions: each model at step split 0.4 with cache_interval N (paired with N=1)
    cache_intervals: tuple[int, ...] = ()
    bootstrap: int = 1000
    text: bool = True  # also score text-to-multiview (False: the text columns repeat the geometry task)
    batch_jobs: int = 8  # objects generated together through the step batcher
    seed: int = 0
    views: int = 4
    metric_resolution: int = 32
    classifier_objects: int = 150
    classifier_photos: int = 600
    classifier_steps: int = 300
    eval_photos: int = 200
    grid_objects: int = 3
    include_seeded: bool = False  # also score the untrained seeded default (the shipping bar)
    data_seed: int = 0


@dataclass
class EvalObject:
    spec: ObjectSpec
    cameras: list[Camera]
    seed: int
    renders: np.ndarray = field(repr=False)  # (V, H, W, 3) uint8 at metric resolution
    geometry: np.ndarray = field(repr=False)  # (V, 7, H, W) at metric resolution


def eval_objects(cfg: EvalConfig) -> list[EvalObject]:
    rng = np.random.default_rng([cfg.seed, 0xE7A1])
    out = []
    for k in range(cfg.objects):
        spec = random_spec(rng, colours=CHROMATIC)
        cams = object_cameras(rng, cfg.views)
        renders, geom = render_object(spec, cams, cfg.metric_resolution)
        out.append(EvalObject(spec, cams, cfg.seed * 1000 + k, renders, geom))
    return out


def _resize(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    if images[0].shape[0] == size:
        return images
    return [np.asarray(Image.fromarray(a).resize((size, size), Image.BOX)) for a in images]


def score_views(
    obj: EvalObject, images: list[np.ndarray], clf: DomainClassifier, geometric: bool
) -> dict[str, float]:
    colour = obj.spec.colour
    scores = {"p_real": float(clf.p_real(np.stack(images)).mean())}
    hits = [dominant_colour(im) == colour for im in images]
    scores["colour_hit"] = float(np.mean(hits))
    if geometric:
        ious = [mask_iou(colour_mask(im, colour), obj.geometry[v, 6] > 0.5) for v, im in enumerate(images)]
        scores["mask_iou"] = float(np.mean(ious))
        scores["xview_err"] = cross_view_error(images, obj.geometry, obj.cameras)
    return scores


@torch.no_grad()
def generate(
    pipe, params, cameras: list[Camera], resolution: int, geometry: np.ndarray | None
) -> list[np.ndarray]:
    """`Realiz3DPipeline.generate_views` with the guidance conditioning set explicitly: the prompt is the
    conditional branch and the negative prompt the unconditional one (independent of how the pipeline
    version at hand assigns them)."""
    from engines.requests import StageTimer
    from engines.runtime.cpu_setup import helper_thread

    if pipe.batcher is not None:
        helper_thread()  # the batcher's thread computes; a team here would slow its team down
    plan = pipe.plan(params, cameras, resolution, geometry, StageTimer())
    job = plan.job
    emb = pipe.model.text_encoder.encode([params.prompt, params.negative_prompt]).float()
    views, dev = len(cameras), job.latents.device
    job.text = emb[0:1].expand(views, -1, -1).to(dev)
    job.uncond_text = emb[1:2].expand(views, -1, -1).to(dev)
    latents = pipe.denoise(job)  # several objects' steps share UNet calls when batching is on
    return pipe.decode(latents)


def run_condition(
    pipe,
    schedule: DomainSchedule,
    objects: list[EvalObject],
    cfg: EvalConfig,
    clf,
    feat,
    kid_features,
    cache_interval: int = 1,
):
    from concurrent.futures import ThreadPoolExecutor

    from engines.requests import GenerationParams

    res = pipe.config.resolution
    per_obj, samples_geo, samples_text = [], [], []
    jobs = []
    for obj in objects:
        _, geom_native = render_object(obj.spec, obj.cameras, res)
        params = GenerationParams(
            prompt=obj.spec.caption,
            steps=cfg.steps,
            guidance_scale=cfg.guidance,
            seed=obj.seed,
            schedule=schedule,
            cache_interval=cache_interval,
        )
        jobs.append((params, obj.cameras, geom_native))
    with ThreadPoolExecutor(max(1, cfg.batch_jobs)) as pool:
        geos = list(pool.map(lambda j: generate(pipe, j[0], j[1], res, j[2]), jobs))
        txts = list(pool.map(lambda j: generate(pipe, j[0], j[1], res, None), jobs)) if cfg.text else geos
    for obj, geo, txt in zip(objects, geos, txts, strict=True):
        geo, txt = _resize(geo, cfg.metric_resolution), _resize(txt, cfg.metric_resolution)
        g, t = score_views(obj, geo, clf, True), score_views(obj, txt, clf, False)
        per_obj.append(
            {
                "p_real_geo": g["p_real"],
                "p_real_text": t["p_real"],
                "mask_iou": g["mask_iou"],
                "colour_hit_geo": g["colour_hit"],
                "colour_hit_text": t["colour_hit"],
                "xview_err": g["xview_err"],
            }
        )
        per_obj[-1]["_feat_geo"] = kid_features(np.stack(geo))
        per_obj[-1]["_feat_text"] = kid_features(np.stack(txt))
        samples_geo.append(geo)
        samples_text.append(txt)
    mean = _mean([{k: v for k, v in r.items() if not k.startswith("_")} for r in per_obj])
    mean["feat_real_geo"] = round(feat(np.stack([im for s in samples_geo for im in s])), 4)
    mean["feat_real_text"] = round(feat(np.stack([im for s in samples_text for im in s])), 4)
    return mean, per_obj, samples_geo, samples_text


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(float(np.nanmean([r[k] for r in rows])), 4) for k in rows[0]}


def reference_rows(objects: list[EvalObject], photos, clf: DomainClassifier, feat) -> list[dict]:
    rows = [score_views(o, list(o.renders), clf, True) for o in objects]
    renders = np.stack([im for o in objects for im in o.renders])
    syn = {
        "p_real_geo": float(np.mean([r["p_real"] for r in rows])),
        "feat_real_geo": feat(renders),
        "mask_iou": float(np.mean([r["mask_iou"] for r in rows])),
        "colour_hit_geo": float(np.mean([r["colour_hit"] for r in rows])),
        "xview_err": float(np.mean([r["xview_err"] for r in rows])),
    }
    chromatic = [i for i, c in enumerate(photos.colours) if c in CHROMATIC]
    real = {
        "p_real_text": float(clf.p_real(photos.images).mean()),
        "feat_real_text": feat(photos.images),
        "colour_hit_text": float(
            np.mean([dominant_colour(photos.images[i]) == photos.colours[i] for i in chromatic])
        ),
    }
    rng = np.random.default_rng(0)
    noisy = renders.astype(np.float32) + rng.normal(0, 0.1 * 127.5, renders.shape)
    noisy = np.clip(noisy, 0, 255).astype(np.uint8)
    return [
        {
            "condition": "reference: synthetic renders (eval objects)",
            **{k: round(v, 4) for k, v in syn.items()},
        },
        {
            "condition": "reference: synthetic renders + noise (sigma 0.1)",
            "p_real_geo": round(float(clf.p_real(noisy).mean()), 4),
            "feat_real_geo": round(feat(noisy), 4),
        },
        {"condition": "reference: photographs (eval split)", **{k: round(v, 4) for k, v in real.items()}},
    ]


def _upscale(images: list[np.ndarray], factor: int = 3) -> list[np.ndarray]:
    return [np.kron(a, np.ones((factor, factor, 1), np.uint8)) for a in images]


@dataclass
class Condition:
    name: str
    method: str  # "naive", "block-shift", "lora", "seeded"
    folder: Path
    schedule: DomainSchedule
    cache_interval: int = 1


def conditions_for(
    models: dict[str, Path], baseline_dir: Path | None, cfg: EvalConfig, seeded: Path | None = None
) -> list[Condition]:
    """naive at domain real, then every Realiz3D model at each step split and block split."""
    out: list[Condition] = []
    if seeded is not None:
        out.append(
            Condition("seeded untrained default (split 0.4)", "seeded", seeded, DomainSchedule(split=0.4))
        )
    if baseline_dir is not None:
        out.append(
            Condition("naive baseline (no covariate)", "naive", baseline_dir, DomainSchedule(domain="real"))
        )
    for method, folder in models.items():
        for s in cfg.splits:
            out.append(
                Condition(f"{method}, step split {s:g}", method, folder, DomainSchedule(split=float(s)))
            )
        for k in cfg.block_splits:
            out.append(
                Condition(f"{method}, 0,blocks={k}", method, folder, DomainSchedule(split=0.0, blocks=k))
            )
        for n in cfg.cache_intervals:
            if n > 1:
                name = f"{method}, step split 0.4, cache_interval {n}"
                out.append(Condition(name, method, folder, DomainSchedule(split=0.4), n))
    return out


def evaluate(
    model_dir: Path | dict[str, Path],
    out_dir: Path,
    baseline_dir: Path | None = None,
    cfg: EvalConfig | None = None,
    log=print,
) -> dict:
    """Score every condition; `model_dir` is one Realiz3D model folder or {method: folder}."""
    from engines.models.model_folder import load_model
    from engines.pipelines import Realiz3DPipeline

    cfg = cfg or EvalConfig()
    models = (
        model_dir if isinstance(model_dir, dict) else {load_model(model_dir).shifter.form: Path(model_dir)}
    )
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    res = cfg.metric_resolution
    c_syn, c_real = load_datasets(
        DataSpec(cfg.classifier_objects, cfg.classifier_photos, cfg.data_seed, res, cfg.views, "classifier")
    )
    e_syn, e_real = load_datasets(
        DataSpec(max(1, cfg.eval_photos // cfg.views), cfg.eval_photos, cfg.data_seed, res, cfg.views, "eval")
    )
    clf = train_domain_classifier(
        c_real.images, c_syn.images.reshape(-1, res, res, 3), seed=cfg.seed, steps=cfg.classifier_steps
    )
    e_renders = e_syn.images.reshape(-1, res, res, 3)
    clf_report = evaluate_classifier(clf, e_real.images, e_renders)
    log(f"domain classifier: held-out accuracy {clf_report['accuracy']:.3f}")
    objects = eval_objects(cfg)
    feat = FeatureRealism(clf, c_real.images, c_syn.images.reshape(-1, res, res, 3))
    # KID on the judge's features standardised by its training data (mean 0, std 1 per dimension), so
    # the cubic kernel's x.y/d is O(1) as for Inception features; references: the held-out eval split.
    train_feats = np.concatenate(
        [clf.features(c_real.images), clf.features(c_syn.images.reshape(-1, res, res, 3))]
    )
    mu, sd = train_feats.mean(0), train_feats.std(0) + 1e-6

    def kid_features(images: np.ndarray) -> np.ndarray:
        return (clf.features(images) - mu) / sd

    ref_real, ref_syn = KIDReference(kid_features(e_real.images)), KIDReference(kid_features(e_renders))
    weights = bootstrap_weights(len(objects), cfg.bootstrap, seed=cfg.seed)

    tmp = None
    seeded = None
    if cfg.include_seeded:
        from engines.models.default_model import build_model
        from engines.models.model_folder import save_model

        tmp = Path(tempfile.mkdtemp(prefix="realiz3d-seeded-"))
        seeded = save_model(build_model(), tmp / "seeded")
    conditions = conditions_for(models, baseline_dir, cfg, seeded)

    rows, per_object, grids_geo, grids_text = [], {}, [], []
    kernels: dict[str, dict[str, ObjectKernels]] = {}
    per_obj_metrics: dict[str, dict[str, np.ndarray]] = {}
    pipes: dict[Path, object] = {}
    try:
        for c in conditions:
            t0 = time.perf_counter()
            if c.folder not in pipes:
                pipes[c.folder] = Realiz3DPipeline.load(c.folder, device="cpu")
                if cfg.batch_jobs > 1:
                    pipes[c.folder].enable_batching(max_jobs=cfg.batch_jobs, max_wait_ms=50)
            mean, objs, sg, st = run_condition(
                pipes[c.folder], c.schedule, objects, cfg, clf, feat, kid_features, c.cache_interval
            )
            k = {
                f"{task}_{ref}": ObjectKernels.build(
                    np.concatenate([o[f"_feat_{task}"] for o in objs]), cfg.views, r
                )
                for task in ("geo", "text")
                for ref, r in (("real", ref_real), ("syn", ref_syn))
            }
            kernels[c.name] = k
            per_obj_metrics[c.name] = {
                m: np.array([o[m] for o in objs]) for m in ("mask_iou", "colour_hit_geo")
            }
            stats = {f"kid_{key}": _scaled(kid_with_interval(v, weights)) for key, v in k.items()}
            stats["mask_iou_ci"] = mean_with_interval(per_obj_metrics[c.name]["mask_iou"], weights)
            rows.append(
                {
                    "condition": c.name,
                    "method": c.method,
                    "model": str(c.folder),
                    "schedule": c.schedule.describe(),
                    **mean,
                    **stats,
                }
            )
            per_object[c.name] = [{m: v for m, v in o.items() if not m.startswith("_")} for o in objs]
            n = min(cfg.grid_objects, len(objects))
            grids_geo.append([im for j in range(n) for im in sg[j]])
            grids_text.append([im for j in range(n) for im in st[j]])
            log(
                f"{c.name}: KID real geo {stats['kid_geo_real']['kid']:.2f} text {stats['kid_text_real']['kid']:.2f} "
                f"(x1e3), mask IoU {mean['mask_iou']:.3f} ({time.perf_counter() - t0:.0f} s)"
            )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    comparisons = compare(conditions, kernels, per_obj_metrics, weights)
    rows += reference_rows(objects, e_real, clf, feat)

    n = min(cfg.grid_objects, len(objects))
    ref = [im for k in range(n) for im in objects[k].renders]
    cols = n * cfg.views
    save_png(
        make_grid(_upscale([im for row in [ref, *grids_geo] for im in row]), cols),
        out_dir / "samples_geometry.png",
    )
    save_png(
        make_grid(_upscale([im for row in [ref, *grids_text] for im in row]), cols),
        out_dir / "samples_text.png",
    )
    result = {
        "config": asdict(cfg),
        "models": {k: str(v) for k, v in models.items()},
        "baseline": str(baseline_dir) if baseline_dir else None,
        "classifier": clf_report,
        "objects": [o.spec.caption for o in objects],
        "rows": rows,
        "comparisons": comparisons,
        "per_object": per_object,
        "grid_rows": ["reference renders"] + [c.name for c in conditions],
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    (out_dir / "results.md").write_text(markdown(result))
    return result


def _scaled(d: dict[str, float]) -> dict[str, float]:
    """KID x 1000, the usual reporting scale."""
    return {k: round(v * 1e3, 3) for k, v in d.items()}


def compare(
    conditions: list[Condition],
    kernels: dict[str, dict[str, ObjectKernels]],
    metrics: dict[str, dict[str, np.ndarray]],
    weights: np.ndarray,
) -> list[dict]:
    """Paired differences: every Realiz3D condition against the naive baseline, block-shift against
    lora at the same schedule, and each form's other schedules against that form at step split 0
    (domain real throughout: what the schedule buys). KID differences x 1000 (negative = closer to
    the photographs)."""
    pairs: list[tuple[str, str]] = []
    forms = ("block-shift", "lora")
    naive = next((c.name for c in conditions if c.method == "naive"), None)
    for c in conditions:
        if c.method in forms and naive is not None:
            pairs.append((c.name, naive))
    by_schedule: dict[str, dict[str, str]] = {}
    for c in conditions:
        if c.cache_interval == 1:
            by_schedule.setdefault(c.schedule.describe(), {})[c.method] = c.name
    for methods in by_schedule.values():
        if "block-shift" in methods and "lora" in methods:
            pairs.append((methods["block-shift"], methods["lora"]))
    all_real = by_schedule.get(DomainSchedule(split=0.0).describe(), {})
    for c in conditions:
        if c.cache_interval != 1:  # step caching against full compute, same model and schedule
            full = by_schedule.get(c.schedule.describe(), {}).get(c.method)
            if full is not None:
                pairs.append((c.name, full))
        elif c.method in forms and c.method in all_real and c.name != all_real[c.method]:
            pairs.append((c.name, all_real[c.method]))
    out = []
    for a, b in pairs:
        row: dict = {"a": a, "b": b}
        for key in ("geo_real", "text_real"):
            d = paired_difference(kernels[a][key], kernels[b][key], weights)
            row[f"kid_{key}"] = {k: (round(v * 1e3, 3) if isinstance(v, float) else v) for k, v in d.items()}
        row["mask_iou"] = paired_mean_difference(metrics[a]["mask_iou"], metrics[b]["mask_iou"], weights)
        out.append(row)
    return out


def _ci(d: dict, key: str = "kid") -> str:
    return f"{d[key]:.2f} [{d['lo']:.2f}, {d['hi']:.2f}]"


def _diff(d: dict) -> str:
    mark = " **sig.**" if d["significant"] else ""
    return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{mark}"


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        "# Evaluation: naive vs Realiz3D block-shift and lora (generated by `realiz3d eval`)",
        "",
        f"{cfg['objects']} held-out objects, {cfg['views']} views each, {cfg['steps']} DDIM steps, guidance "
        f"{cfg['guidance']}, metrics at {cfg['metric_resolution']} px. *geo* = geometry-conditioned "
        "(texturing task), *text* = text-to-multiview. **KID real**: kernel inception distance x 1000 between "
        "the generated views and held-out photographs on the domain classifier's features (lower = more "
        "photographic); **KID syn**: the same against held-out renders. Brackets: 95% object-bootstrap "
        f"intervals ({cfg['bootstrap']} resamples). Domain classifier held-out accuracy "
        f"{result['classifier']['accuracy']:.3f} (P(real) on photos {result['classifier']['p_real_on_real']:.3f}, "
        f"on renders {result['classifier']['p_real_on_synthetic']:.3f}).",
        "",
        "| condition | schedule | KID real geo | KID real text | KID syn geo | KID syn text | mask IoU "
        "| colour hit geo | colour hit text | cross-view err | P(real) geo |",
        "|" + "---|" * 11,
    ]
    text = cfg.get("text", True)  # without the text task its columns say "not run"
    for r in result["rows"]:
        if "kid_geo_real" not in r:
            continue
        kid_text_real = _ci(r["kid_text_real"]) if text else "not run"
        kid_text_syn = _ci(r["kid_text_syn"]) if text else "not run"
        hit_text = f"{r['colour_hit_text']:.3f}" if text else "not run"
        lines.append(
            f"| {r['condition']} | {r['schedule']} | {_ci(r['kid_geo_real'])} | {kid_text_real} "
            f"| {_ci(r['kid_geo_syn'])} | {kid_text_syn} | {_ci(r['mask_iou_ci'], 'mean')} "
            f"| {r['colour_hit_geo']:.3f} | {hit_text} | {r['xview_err']:.3f} | {r['p_real_geo']:.3f} |"
        )
    lines += [
        "",
        "## Paired differences (a - b, same objects and seeds; **sig.** = 95% interval excludes 0)",
        "",
        "| a | b | KID real geo | KID real text | mask IoU |",
        "|---|---|---|---|---|",
    ]
    for c in result["comparisons"]:
        kid_text = _diff(c["kid_text_real"]) if text else "not run"
        lines.append(
            f"| {c['a']} | {c['b']} | {_diff(c['kid_geo_real'])} | {kid_text} | {_diff(c['mask_iou'])} |"
        )
    lines += [
        "",
        "## Reference rows (the data itself)",
        "",
        "| row | P(real) geo | P(real) text | feature realism geo | feature realism text |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "kid_geo_real" in r:
            continue
        cells = [
            f"{r[k]:.3f}" if isinstance(r.get(k), float) else "–"
            for k in ("p_real_geo", "p_real_text", "feat_real_geo", "feat_real_text")
        ]
        lines.append(f"| {r['condition']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Sample grids: `samples_geometry.png`, `samples_text.png` (rows: "
        + "; ".join(result["grid_rows"])
        + f"; columns: the first {cfg['grid_objects']} objects x {cfg['views']} views).",
        "",
    ]
    return "\n".join(lines)
