"""Step caching on the compile backend: a full step's graph also outputs the deep feature, a shallow
step's graph takes it as an input; two graphs per shape serve every schedule and mixed batches.

Dynamo's graphs with the `eager` compiler backend (what is traced and guarded is the same as with
Inductor, minus minutes of CPU codegen); the Inductor path is the one `test_runtime_compile.py` covers
for the plain step."""

from __future__ import annotations

import numpy as np
import torch

from engines.pipelines import Realiz3DPipeline
from engines.runtime.compile_runner import CompileRunner
from engines.types import DomainCombo, uniform_combo
from tests.test_engine_batching import req
from tests.test_runtime_compile import unet_inputs

REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")
BLOCKS = DomainCombo("real", "real", "real", 6)


def test_two_graphs_per_shape_serve_full_and_shallow_steps_under_every_schedule(tiny_model_dir):
    eager = Realiz3DPipeline.load(tiny_model_dir, device="cpu")
    model = Realiz3DPipeline.load(tiny_model_dir, device="cpu").model
    runner = CompileRunner(model, compile_backend="eager")
    assert runner.step_cache
    x = unet_inputs(4, 2)
    full, deep = runner.run_step(x, REAL)
    shallow, _ = runner.run_step(x, REAL, deep)  # the two graphs of this shape
    with torch.compiler.set_stance("fail_on_recompile"):
        for domains in (SYN, BLOCKS, [REAL, REAL, BLOCKS, BLOCKS]):
            want, want_deep = eager.runner.run_step(x, domains)
            got, got_deep = runner.run_step(x, domains)
            assert (got - want).abs().max().item() <= 1e-5 and (got_deep - want_deep).abs().max() <= 1e-5
            got_shallow, _ = runner.run_step(x, domains, deep)
            want_shallow, _ = eager.runner.run_step(x, domains, deep)
            assert (got_shallow - want_shallow).abs().max().item() <= 1e-5


def test_a_compiled_pipeline_caches_steps_like_the_eager_one(tiny_model_dir):
    eager = Realiz3DPipeline.load(tiny_model_dir, device="cpu")
    pipe = Realiz3DPipeline.load(tiny_model_dir, device="cpu")
    pipe.runner = CompileRunner(pipe.model, compile_backend="eager")
    # 3 views x CFG = 2 objects of 3 rows: the compile runner pads to 4 objects (rows and cached features)
    padded = req(9, steps=4, num_views=3, cache_interval=2)
    a, b = eager.multiview(padded), pipe.multiview(padded)
    assert a.meta["cache_interval"] == b.meta["cache_interval"] == 2
    diff = max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a.images, b.images, strict=True))
    assert diff <= 2
