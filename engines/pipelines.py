"""The engines' entry points: `multiview(request)` and `texture(request, mesh)`.

`Realiz3DPipeline` is the cog-style contract: `load()` once (model, backend, fused weight sets), then
`multiview()` / `texture()` per request, each with a progress callback and a cancel check polled every
denoising step. A caller that serves several configurations keeps one pipeline per configuration (the
worker keeps one).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from engines.errors import UserInputError
from engines.image_io import make_grid, save_png, tensor_to_uint8
from engines.models.default_model import default_model_dir
from engines.models.model_folder import load_model
from engines.models.realiz3d_model import Realiz3DModel
from engines.requests import (
    CancelCheck,
    GenerationParams,
    ModelCapabilities,
    MultiviewRequest,
    ProgressCallback,
    StageCallback,
    StageTimer,
    TextureRequest,
)
from engines.runtime.batching import StepBatcher, UNetCallObserver
from engines.runtime.cpu_setup import compute_threads, helper_thread
from engines.runtime.engine import EngineCore
from engines.runtime.factory import make_runner
from engines.runtime.step_costs import StepCosts
from engines.runtime.torch_runner import resolve_device
from engines.sampling.cameras import Camera, camera_embeddings, cameras_to_json, orbit_cameras
from engines.sampling.denoise import DenoiseJob, KnownRegion, make_scheduler
from engines.sampling.known import KnownViews
from engines.types import DomainSchedule

if TYPE_CHECKING:  # texturing imports trimesh: only inside texture()
    from engines.texturing.mesh_io import MeshLimits


@dataclass
class MultiviewResult:
    """Images (uint8 HxWx3, one per camera), the cameras, per-stage seconds and everything to reproduce."""

    images: list[np.ndarray]
    cameras: list[Camera]
    resolution: int
    seed: int
    timings: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write view_00.png..., grid.png, cameras.json, meta.json; return the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [save_png(img, out / f"view_{i:02d}.png") for i, img in enumerate(self.images)]
        paths.append(save_png(make_grid(self.images), out / "grid.png"))
        cams = out / "cameras.json"
        cams.write_text(json.dumps(cameras_to_json(self.cameras, self.resolution), indent=2))
        meta = out / "meta.json"
        meta.write_text(json.dumps({**self.meta, "seed": self.seed, "timings": self.timings}, indent=2))
        return [*paths, cams, meta]


@dataclass
class JobPlan:
    """A request turned into tensors: what `DenoiseJob` needs plus what the result reports."""

    job: DenoiseJob
    cameras: list[Camera]
    resolution: int
    seed: int
    schedule: DomainSchedule


class Realiz3DPipeline:
    """One loaded model + one UNet runner. Safe to call from several threads: without batching, jobs take
    turns on the runner; with `enable_batching()`, their denoising steps share batched UNet calls.

    A request reads request -> envelope check (once) -> plan (`DenoiseJob`) -> engine loop
    (engines/runtime/engine.py) -> decode -> result."""

    def __init__(
        self, model: Realiz3DModel, backend: str = "torch", adapters: str = "fused", **runner_kw: Any
    ):
        self.model = model
        self.runner = make_runner(model, backend=backend, adapters=adapters, **runner_kw)
        self.backend = backend
        self.adapters = adapters
        self.lock = threading.Lock()
        self.batcher: StepBatcher | None = None
        #: the most native-resolution images one UNet call or one VAE decode takes (None: no bound);
        #: larger calls are split (whole objects each), see `set_image_budget`
        self.max_images: int | None = None
        #: on_unet_call(images, jobs, seconds): observes every UNet call (service metrics hook).
        self.on_unet_call: UNetCallObserver | None = None
        #: what a step costs here, per image and step kind, measured by the engine loop (a worker
        #: publishes it with its heartbeat: service/eta.py)
        side = model.config.resolution // model.config.unet_input_factor
        self.step_costs = StepCosts(native_cells=side * side)

    def enable_batching(
        self, max_jobs: int = 8, max_wait_ms: float = 5.0, threads: int | None = None
    ) -> StepBatcher:
        """Let concurrent `multiview()`/`texture()` calls (from several threads) share UNet calls.

        The batcher's thread runs every UNet call with `threads` intra-op threads (default: the
        calling thread's count); callers' threads then use one (`engines/runtime/cpu_setup.py`)."""
        if self.batcher is None:
            self.batcher = StepBatcher(
                self.runner,
                max_jobs=max_jobs,
                max_wait_s=max_wait_ms / 1e3,
                on_unet_call=self._observe,
                threads=threads or compute_threads(),
                max_cells=self.max_cells,
                costs=self.step_costs,
            )
        return self.batcher

    def set_image_budget(self, max_images: int | None) -> None:
        """Bound every UNet call and VAE decode to `max_images` images at the model's native resolution
        (pixels count: one image at twice the size is four). Calls above it are split into several, each of
        whole objects; one object above it still runs as one call (its views attend to each other)."""
        if max_images is not None and max_images < 1:
            raise UserInputError("the image budget must be at least 1 image")
        self.max_images = max_images
        if self.batcher is not None:
            self.batcher.max_cells = self.max_cells

    @property
    def max_cells(self) -> int | None:
        """The budget in UNet-input cells (rows x H x W) per call."""
        if self.max_images is None:
            return None
        side = self.model.config.resolution // self.model.config.unet_input_factor
        return self.max_images * side * side

    def alive(self) -> bool:
        """False once the step batcher's thread has died: this pipeline can run no more jobs."""
        return self.batcher is None or self.batcher.alive()

    def _enter_job_thread(self) -> None:
        if self.batcher is not None:
            helper_thread()  # the batcher's thread computes; a team here would slow its team down

    def _observe(self, images: int, jobs: int, seconds: float) -> None:
        if self.on_unet_call is not None:
            self.on_unet_call(images, jobs, seconds)

    @classmethod
    def load(
        cls,
        model_dir: str | Path | None = None,
        backend: str = "torch",
        adapters: str = "fused",
        device: str = "auto",
        precision: str | None = None,
        engine_cache_dir: str | Path | None = None,
        max_objects: int = 4,
        engine_memory_budget_bytes: int | None = None,
        cuda_graphs: bool | None = None,
    ) -> Realiz3DPipeline:
        """Load a model folder (None = the embedded default) onto a device and prepare the backend.

        `precision`: None = the backend's default (`backend_names.DEFAULT_PRECISION`).
        `engine_cache_dir`: None = the one cache root rule (`engine_cache.cache_root`).
        `max_objects`: the most objects one UNet call serves where a backend is built for a largest
        batch (TensorRT's profile); a batching worker passes its `batch_max_jobs`.
        `engine_memory_budget_bytes`: TensorRT keeps its loaded engines within this (None: no bound).
        `cuda_graphs`: None = the backend's default; True/False forces CUDA graphs (compile, tensorrt)."""
        from engines.runtime.backend_names import default_precision
        from engines.runtime.torch_runner import PRECISIONS

        precision = precision or default_precision(backend)
        if precision not in PRECISIONS:
            raise UserInputError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        dev = resolve_device(device)
        if dev.type == "cpu" and precision == "fp16" and backend in ("torch", "compile"):
            # (the TensorRT backends refuse a CPU themselves, naming what they need)
            raise UserInputError("fp16 needs a GPU; use fp32 or bf16 on the CPU")
        dtype = PRECISIONS[precision] if backend == "torch" else torch.float32
        model = load_model(model_dir if model_dir is not None else default_model_dir(), dtype=dtype)
        model.to(dev, dtype)
        model.eval()
        return cls(
            model,
            backend=backend,
            adapters=adapters,
            precision=precision,
            engine_cache_dir=engine_cache_dir,
            max_objects=max_objects,
            engine_memory_budget_bytes=engine_memory_budget_bytes,
            cuda_graphs=cuda_graphs,
        )

    @property
    def config(self):
        return self.model.config

    # ---- planning ----------------------------------------------------------------------------------
    def capabilities(self) -> ModelCapabilities:
        """What this model can serve (workers advertise it; the gateway refuses the rest at submission)."""
        cfg = self.model.config
        step = self.model.resolution_step
        served = self.model.served_resolutions()
        return ModelCapabilities(
            name=cfg.name,
            resolution=cfg.resolution,
            resolution_step=step,
            geometry=cfg.geometry_channels > 0,
            block_sites=self.model.shifter.num_sites,
            resolutions=served if cfg.serving.resolutions is not None else None,
            max_resolution=served[-1] if served else step,
            views=cfg.serving.views,
        )

    def check_resolution(self, resolution: int) -> int:
        problem = self.capabilities().resolution_refusal(resolution)
        if problem is not None:
            raise UserInputError(problem)
        return resolution

    def unet_geometry(self, geometry: np.ndarray, resolution: int) -> torch.Tensor:
        """Geometry maps (V, G, res, res) at the view resolution -> the UNet's input resolution.

        A latent model's UNet sees one cell per `vae_scale_factor`^2 pixels: all channels are area-averaged
        over the cell (normals and positions weighted by coverage like the mask itself, which becomes the
        covered fraction), the same linear map for every channel, so they stay consistent."""
        cfg = self.model.config
        if not cfg.geometry_channels:
            raise UserInputError(f"model {cfg.name!r} takes no geometry conditioning")
        geom = torch.from_numpy(np.ascontiguousarray(geometry, dtype=np.float32))
        views = geom.shape[0] if geom.ndim == 4 else 0
        if geom.shape != (views, cfg.geometry_channels, resolution, resolution):
            raise UserInputError(
                f"geometry maps have shape {tuple(geom.shape)}, expected "
                f"{(views, cfg.geometry_channels, resolution, resolution)} (the view resolution)"
            )
        factor = cfg.unet_input_factor
        return F.avg_pool2d(geom, factor) if factor > 1 else geom

    @torch.no_grad()
    def plan(
        self,
        params: GenerationParams,
        cameras: list[Camera],
        resolution: int,
        geometry: np.ndarray | None,
        timer: StageTimer,
        known: KnownViews | None = None,
    ) -> JobPlan:
        """Encode text, draw the seeded noise and build the job's state (no UNet call yet). `known`: pixels
        the sampler holds at every step (inpainting), one image and mask per camera."""
        cfg = self.model.config
        seed = params.seed if params.seed is not None else secrets.randbits(31)
        schedule = params.schedule or cfg.default_schedule
        guidance = params.guidance_scale if params.guidance_scale is not None else cfg.default_guidance_scale
        dev = self.runner.device
        t0 = time.perf_counter()
        prompt_emb, negative_emb = self.model.text_encoder.encode(
            [params.prompt, params.negative_prompt]
        ).float()
        timer.add("text_encode", time.perf_counter() - t0)
        views = len(cameras)
        size = resolution // cfg.downsample_factor * cfg.patch_size
        channels = self.model.sample_channels
        # Noise drawn on the CPU from the job's own generator: same seed -> same images on any device.
        gen = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((views, channels, size, size), generator=gen, dtype=torch.float32)
        geom = None
        if geometry is not None:
            geom = self.unet_geometry(geometry, resolution).to(dev)
            if geom.shape[0] != views:
                raise UserInputError(f"geometry maps for {geom.shape[0]} views, {views} cameras")
        job = DenoiseJob(
            # the request's sampler, else the model's `default_scheduler` (realiz3d.json)
            scheduler=make_scheduler(params.scheduler or cfg.default_scheduler, self.model.scheduler_config),
            latents=noise.to(dev),
            text=prompt_emb.expand(views, -1, -1).to(dev),
            uncond_text=negative_emb.expand(views, -1, -1).to(dev),
            cameras=torch.from_numpy(camera_embeddings(cameras, cfg.camera.convention)).to(dev),
            geometry=geom,
            guidance_scale=guidance,
            schedule=schedule,
            num_steps=params.steps,
            known=None if known is None else self.known_region(known, noise.shape, seed),
            # step caching where the runner serves it (`step_cache`: torch, compile, onnx, tensorrt and
            # torch-tensorrt on block-shift models); others run every step whole
            cache_interval=params.cache_interval if getattr(self.runner, "step_cache", False) else 1,
        )
        return JobPlan(job, cameras, resolution, seed, schedule)

    @torch.no_grad()
    def known_region(self, known: KnownViews, shape: torch.Size, seed: int) -> KnownRegion:
        """Known views in the job's latent space: pixels as the model's [-1, 1] images, or for a latent
        model the VAE's encoding (mean) with a cell known only where all its pixels are."""
        cfg = self.model.config
        dev = self.runner.device
        images = (
            torch.from_numpy(np.ascontiguousarray(known.images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        )
        mask = torch.from_numpy(known.mask.astype(np.float32))[:, None]
        if self.model.vae is not None:
            vae = self.model.vae
            images = (
                vae.encode(images.to(dev, vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor
            )
            mask = (F.avg_pool2d(mask, cfg.vae_scale_factor) > 0.999).float()
        if tuple(images.shape) != tuple(shape) or mask.shape[-2:] != images.shape[-2:]:
            raise UserInputError(
                f"known views encode to {tuple(images.shape)}, the job's latents are {tuple(shape)}"
            )
        gen = torch.Generator("cpu").manual_seed(seed + 1)
        return KnownRegion(images.to(dev, torch.float32), mask.to(dev), gen)

    def decode_slice(self, height: int, width: int) -> int | None:
        """Latents one VAE decode takes at this latent size under the image budget (None: all at once)."""
        if self.max_images is None:
            return None
        native = (self.model.config.resolution // self.model.config.unet_input_factor) ** 2
        return max(1, self.max_images * native // (height * width))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        """Latents -> uint8 images; a VAE decodes in slices of at most the image budget (its activations
        at full resolution are the largest tensors of a job)."""
        if self.model.vae is not None:
            vae = self.model.vae
            latents = latents.to(vae.dtype) / vae.config.scaling_factor
            size = self.decode_slice(*latents.shape[-2:]) or latents.shape[0]
            latents = torch.cat([vae.decode(part).sample for part in latents.split(size)])
        return tensor_to_uint8(latents)

    def denoise(
        self,
        job: DenoiseJob,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> torch.Tensor:
        """A planned job through the engine loop: on the step batcher's thread with batching on, else on
        this thread, one job at a time (the same loop, `EngineCore.step`, driven by `run_alone`)."""
        if self.batcher is not None:
            return self.batcher.run(job, progress, should_cancel)
        with self.lock:
            engine = EngineCore(
                self.runner, self._observe, self.max_cells, background_builds=False, costs=self.step_costs
            )
            return engine.run_alone(job, progress, should_cancel)

    # ---- entry points ------------------------------------------------------------------------------
    def generate_views(
        self,
        params: GenerationParams,
        cameras: list[Camera],
        resolution: int | None = None,
        geometry: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        known: KnownViews | None = None,
    ) -> MultiviewResult:
        """Images of one object at `cameras`, optionally conditioned on geometry maps (V, 7, H, W);
        `known` holds given pixels of each view (inpainting: the rest is generated around them)."""
        self._enter_job_thread()
        start = time.perf_counter()
        resolution = resolution or self.model.config.resolution  # in the envelope: checked by the caller
        timer = StageTimer()
        plan = self.plan(params, cameras, resolution, geometry, timer, known)
        t0 = time.perf_counter()
        latents = self.denoise(plan.job, progress, should_cancel)
        timer.add("denoise", time.perf_counter() - t0)
        t0 = time.perf_counter()
        images = self.decode(latents)
        timer.add("decode", time.perf_counter() - t0)
        timer.add("total", time.perf_counter() - start)
        meta = {
            "model": self.model.config.name,
            "backend": self.backend,
            "adapters": self.adapters,
            "precision": str(self.runner.dtype).removeprefix("torch."),
            "device": str(self.runner.device),
            "schedule": plan.schedule.model_dump(exclude_defaults=True),
            "scheduler": params.scheduler or self.model.config.default_scheduler,
            "guidance_scale": plan.job.guidance_scale,
            "schedule_steps": [c.label() for c in plan.job.combos],
            "cache_interval": plan.job.cache_interval,
            "request": params.model_dump(mode="json"),
            "resolution": resolution,
        }
        return MultiviewResult(images, cameras, resolution, plan.seed, timer.seconds, meta)

    def multiview(
        self,
        request: MultiviewRequest,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> MultiviewResult:
        """Text-to-multiview: `request.num_views` views of one object on an orbit, or at `request.cameras`."""
        problem = self.capabilities().refusal("multiview", request.model_dump())
        if problem is not None:
            raise UserInputError(problem)
        cameras = request.explicit_cameras() or orbit_cameras(
            request.num_views, request.elevation_deg, request.azimuths_deg, request.radius, request.fov_deg
        )
        return self.generate_views(request, cameras, request.resolution, None, progress, should_cancel)

    def texture(
        self,
        request: TextureRequest,
        mesh_path: str | Path,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        limits: MeshLimits | None = None,
        stage_progress: StageCallback | None = None,
    ):
        """Texture a mesh: geometry maps -> geometry-conditioned views -> bake -> fill -> GLB.

        Geometry is rendered at the view resolution (baking uses it there) and area-averaged to the UNet's
        input resolution for latent models. `limits`: the caller's mesh limits (faces, bytes, unwrap
        timeout); the defaults when omitted."""
        from engines.texturing.pipeline import texture_mesh

        problem = self.capabilities().refusal("texture", request.model_dump())
        if problem is not None:
            raise UserInputError(problem)
        self._enter_job_thread()
        generated: list[MultiviewResult] = []

        done_steps = [0]  # steps of earlier calls: planned views' calls continue the count

        def call_progress(step: int, total: int) -> None:
            if progress is not None:
                progress(done_steps[0] + step, done_steps[0] + total)

        def generate_views(
            cameras: list[Camera], geometry: np.ndarray, resolution: int, known: KnownViews | None = None
        ) -> list[np.ndarray]:
            # planned views (known pixels held) take the request's inpaint_steps
            params = request if known is None else request.model_copy(update={"steps": request.inpaint_steps})
            result = self.generate_views(
                params, cameras, resolution, geometry, call_progress, should_cancel, known
            )
            done_steps[0] += params.steps
            generated.append(result)
            return result.images

        cfg = self.model.config
        served = cfg.serving.views
        # planned views are generated with earlier views as held context where views attend to each other
        per_call = (max(served) if served else 8) if cfg.multiview_attention else 1

        # Job progress counts denoising steps; the stages are reported by name through stage_progress.
        result = texture_mesh(
            request,
            mesh_path,
            generate_views,
            progress=None,
            should_cancel=should_cancel,
            limits=limits,
            resolution=self.model.config.resolution,
            cameras=request.explicit_cameras(),
            stage_progress=stage_progress,
            views_per_call=per_call,
            view_counts=served,
        )
        if generated:
            gen = generated[0]
            for stage in ("text_encode", "denoise", "decode"):
                result.timings[stage] = gen.timings[stage]
            result.meta.update(
                seed=gen.seed,
                model=self.model.config.name,
                backend=self.backend,
                adapters=self.adapters,
                schedule=gen.meta["schedule"],
                schedule_steps=gen.meta["schedule_steps"],
            )
        return result

    def warmup(self) -> None:
        """One tiny run so the first request pays no lazy initialisation (fusing, compiling, allocation).

        At the model's native view count and resolution: the shape `prepare` and `realiz3d build-engines`
        build, so a graph backend's warm-up adds no engine of another shape to the cache."""
        cfg = self.model.config
        schedule = cfg.default_schedule
        self.runner.prepare(sorted(set(schedule.combos(2))))
        request = MultiviewRequest(
            prompt="warmup", num_views=cfg.num_views, steps=2, seed=0, schedule=schedule
        )
        self.multiview(request)
