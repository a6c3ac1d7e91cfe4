"""A gateway-only install (`.[gateway]`) has no torch: the gateway's import path must not need it."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = ("torch", "diffusers", "trimesh", "embreex", "xatlas", "cv2", "scipy", "safetensors")

SCRIPT = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
from service.settings import Settings
from service.api.app import create_app
from service.cli import build_parser
from engines.texturing.mesh_io import validate_mesh_bytes
assert 'serve' in build_parser()._subparsers._group_actions[0].choices
print('ok')
"""


def test_gateway_and_cli_import_without_compute_dependencies():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
