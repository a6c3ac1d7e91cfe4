"""An upload reads nothing but itself, and a few bytes cannot make us allocate gigabytes (issue 22).

Each hostile file of `engines.bench.hostile_uploads` goes through the gateway's check
(`validate_mesh_bytes`), the worker's load (`load_mesh` of the stored upload with the service's limits)
and the CLI's load (files beside allowed): all refuse it with an `invalid_mesh` naming the reference or
the limit, and no message names a server path. The allocation bombs run in a subprocess whose peak RSS
is read back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from engines.bench import hostile_uploads as hostile
from engines.bench.job_memory import HOSTILE_CASES
from engines.errors import MeshError
from engines.texturing.mesh_io import load_mesh, load_mesh_bytes, validate_mesh_bytes
from engines.texturing.uv_layout import ensure_layout
from service.settings import Settings

WORKER = Settings().mesh_limits()  # what the service's worker loads an upload with
CLI = replace(WORKER, files_beside=True)  # what `realiz3d texture FILE` loads a file of the user's with
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def secret(tmp_path):
    """A server file an attacker wants, and the job's input folder beside it."""
    path = tmp_path / "secret.txt"
    path.write_bytes(b"REALIZ3D_WEBHOOK_SECRET=hunter2" * 4)
    inputs = tmp_path / "jobs" / "abc" / "_inputs"
    inputs.mkdir(parents=True)
    return path, inputs


def _targets(secret_path: Path) -> list[str]:
    return [
        str(secret_path),
        "/proc/self/environ",
        "/etc/passwd",
        "../../../secret.txt",
        "file://" + str(secret_path),
        "%2Fetc%2Fpasswd",
        "..%2F..%2F..%2Fsecret.txt",
        "C:\\Windows\\win.ini",
    ]


def _refused_everywhere(name: str, data: bytes, inputs: Path, must_name: str) -> None:
    stored = inputs / ("mesh" + Path(name).suffix)
    stored.write_bytes(data)
    for what, load in (
        ("gateway", lambda: validate_mesh_bytes(data, name, WORKER)),
        ("worker", lambda: load_mesh(stored, WORKER)),
        ("bytes", lambda: load_mesh_bytes(data, name, WORKER)),
        ("cli", lambda: load_mesh(stored, CLI)),
    ):
        with pytest.raises(MeshError) as err:
            load()
        message = str(err.value)
        assert must_name[:60] in message, (what, message)
        # The caller's own reference may be echoed; no path of the server's is.
        assert str(inputs.parent.parent.parent) not in message.replace(must_name, ""), (what, message)


@pytest.mark.parametrize("builder", [hostile.glb_reading, hostile.glb_image_reading])
def test_a_glb_never_reads_a_server_file(secret, builder):
    secret_path, inputs = secret
    for target in _targets(secret_path):
        name, data = builder(target)
        _refused_everywhere(name, data, inputs, target)


def test_obj_mtllib_mtl_maps_and_ply_texture_files_stay_inside_the_upload(secret):
    secret_path, inputs = secret
    for target in _targets(secret_path):
        for name, data in (
            hostile.obj_reading(target),
            hostile.zip_obj_with_mtl_reading(target),
            hostile.ply_reading(target),
        ):
            _refused_everywhere(name, data, inputs, target.strip())


def test_worker_reads_nothing_beside_the_stored_upload(secret):
    # A relative name of a file that exists next to the stored upload: the upload did not carry it.
    secret_path, inputs = secret
    (inputs / "secret.bin").write_bytes(secret_path.read_bytes())
    name, data = hostile.glb_reading("secret.bin")
    stored = inputs / "mesh.glb"
    stored.write_bytes(data)
    with pytest.raises(MeshError, match="'secret.bin', which is not in the upload"):
        load_mesh(stored, WORKER)
    # A lone OBJ naming an MTL beside it loads without the MTL, and says so.
    (inputs / "box.mtl").write_bytes(b"newmtl m\nmap_Kd secret.bin\n")
    name, obj = hostile.obj_reading("box.mtl")
    (inputs / "mesh.obj").write_bytes(obj)
    mesh = load_mesh(inputs / "mesh.obj", WORKER)
    assert mesh.texture is None and any("'box.mtl' is not in the upload" in n for n in mesh.notes)


def test_cli_reads_its_folder_but_not_above_it_nor_through_a_link(tmp_path, secret):
    secret_path, _ = secret
    folder = tmp_path / "asset"
    folder.mkdir()
    (folder / "link.bin").symlink_to(secret_path)
    name, data = hostile.glb_reading("link.bin")
    (folder / name).write_bytes(data)
    with pytest.raises(MeshError, match="'link.bin', which is outside the upload"):
        load_mesh(folder / name, CLI)


# ---- allocation bombs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "match"),
    [
        (hostile.glb_huge_count, "6666666 faces, over the limit of 500000"),
        (lambda: hostile.glb_count(1_600_000), "accessor 0 declares 1600000 elements, over the limit"),
        (hostile.glb_sparse_instanced, "draws 20000000 vertices"),
        (hostile.glb_huge_image, "13370x13370 pixels, over the limit"),
        (hostile.zip_deep_gltf, "nests deeper than 64 levels"),
        (lambda: hostile.glb_count(-3), "count is negative"),
        (lambda: hostile.glb_count(2**62), "declares 4611686018427387904 elements"),
        (lambda: hostile.glb_count(1.5), "is not a whole number"),
    ],
)
def test_allocation_bombs_are_refused_from_the_document(builder, match):
    name, data = builder()
    assert len(data) < 100_000
    with pytest.raises(MeshError, match=match):
        validate_mesh_bytes(data, name, WORKER)
    with pytest.raises(MeshError, match=match):
        load_mesh_bytes(data, name, WORKER)


def test_a_zip_whose_size_fields_lie_is_an_invalid_mesh():
    name, data = hostile.zip_lying_sizes()
    with pytest.raises(MeshError, match="cannot unpack 'box.glb'"):
        load_mesh_bytes(data, name, WORKER)


def test_a_percent_encoded_data_uri_decodes_in_linear_memory():
    name, data = hostile.gltf_percent_encoded(megabytes=4)
    mesh = load_mesh_bytes(data, name, WORKER)  # a valid, if wasteful, file
    assert mesh.num_faces == 12


def test_the_memory_budget_refuses_by_name():
    name, data = hostile.glb_sparse_instanced(vertices=100_000, nodes=5)  # 500k vertices drawn: allowed
    tight = replace(WORKER, max_memory_bytes=64 * 1024 * 1024)
    with pytest.raises(MeshError, match="over this deployment's budget of 64 MB per job"):
        validate_mesh_bytes(data, name, tight)


def test_coordinates_near_float32_max_unwrap_within_the_timeout():
    name, data = hostile.glb_far_coordinates()
    mesh = ensure_layout(load_mesh_bytes(data, name, WORKER), timeout_s=30)
    assert mesh.uv is not None and len(mesh.faces) == 12


_PEAK = textwrap.dedent(
    """
    import json, resource, sys
    from engines.errors import MeshError
    from engines.texturing.mesh_io import load_mesh_bytes
    from service.settings import Settings
    from engines.bench import hostile_uploads as hostile
    limits = Settings().mesh_limits()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    name, data = getattr(hostile, sys.argv[1])()
    try:
        load_mesh_bytes(data, name, limits)
        outcome = "loaded"
    except MeshError as e:
        outcome = type(e).__name__
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "extra_mb": (peak - base) / 1024}))
    """
)

#: Stated bound: no hostile upload makes a load grow the process by more than this.
PEAK_BOUND_MB = 256


@pytest.mark.parametrize("bomb", HOSTILE_CASES)  # the same cases `realiz3d bench memory` reports
def test_no_hostile_upload_grows_a_process_past_the_stated_bound(bomb):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, bomb], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["extra_mb"] < PEAK_BOUND_MB, result
