"""Shared helpers of the service tests (not fixtures): metrics parsing, small meshes."""

from __future__ import annotations

import io

from prometheus_client.parser import text_string_to_metric_families


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of samples called `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def box_glb() -> bytes:
    import trimesh

    mesh = trimesh.creation.box(extents=(1.0, 0.6, 0.8))
    buf = io.BytesIO()
    mesh.export(buf, file_type="glb")
    return buf.getvalue()
