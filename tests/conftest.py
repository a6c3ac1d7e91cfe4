"""Test session setup: cap threads (2-core CI), keep everything offline and in temp dirs."""

from __future__ import annotations

import os
import tempfile

# Before torch is imported anywhere: oversubscribed threads make 2-core timings collapse.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("REALIZ3D_DEBUG", "1")
# The embedded default model is built on first use; keep it out of the user's cache during tests.
os.environ.setdefault("REALIZ3D_HOME", tempfile.mkdtemp(prefix="realiz3d-test-home-"))

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.redis_server", "tests.fixtures.s3_server"]
