"""The shipped embedded default: present, within its size budget, matching its card, loadable, used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from engines.models.default_model import SHIPPED_MODEL_DIR, default_model_dir

CARD = SHIPPED_MODEL_DIR.parent / "default.card.json"
MAX_BYTES = 20 * 1024 * 1024

pytestmark = pytest.mark.skipif(
    not (SHIPPED_MODEL_DIR / "realiz3d.json").is_file(), reason="no trained model shipped in this checkout"
)


def test_checksums_match_the_card():
    card = json.loads(CARD.read_text())
    files = {
        p.relative_to(SHIPPED_MODEL_DIR).as_posix(): p for p in SHIPPED_MODEL_DIR.rglob("*") if p.is_file()
    }
    assert set(files) == set(card["files"]), "the card must list exactly the folder's files"
    total = 0
    for rel, path in files.items():
        data = path.read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == card["files"][rel]["sha256"], rel
        assert len(data) == card["files"][rel]["bytes"], rel
    assert total == card["total_bytes"] <= MAX_BYTES


def test_shipped_model_loads_and_is_the_default():
    from engines.models.model_folder import load_model

    assert default_model_dir() == SHIPPED_MODEL_DIR
    model = load_model(SHIPPED_MODEL_DIR)
    card = json.loads(CARD.read_text())
    assert model.config.name == card["name"]
    assert model.parameter_count() == card["parameters"]


def test_generate_uses_the_shipped_model(tmp_path: Path):
    from service.cli import main

    out = tmp_path / "out"
    assert main(["generate", "a red cube", "--steps", "2", "--views", "2", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == json.loads(CARD.read_text())["name"]
