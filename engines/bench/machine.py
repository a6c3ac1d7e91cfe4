"""The one description of the machine a benchmark ran on, for every report in docs/benchmarks.

`machine()` is torch-free (torch's version and thread count are added when torch is already imported, as
in the engine benchmarks; the gateway ones never import it); `describe()` is its one line in a report.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The CPU's model as Linux names it (`AMD EPYC, family 26 model 2`), or None where it does not
    (another OS). Two VMs that both say x86_64 may run on different processors; a ratio of two timings
    (a shallow step over a full one) moves with the processor, so reports name it."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return None
    if "cpu family" in fields and "model" in fields:
        return f"{name}, family {fields['cpu family']} model {fields['model']}"
    return name


def machine() -> dict[str, Any]:
    """CPU (architecture and model), cores (all and usable), OMP_NUM_THREADS, Python, torch (version and
    intra-op threads, when loaded) and the 1-minute load average now: what the timings depend on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def torch_machine() -> dict[str, Any]:
    """`machine()` with torch imported (the engine benchmarks' reports)."""
    import torch  # noqa: F401 - so machine() includes its version and threads

    return machine()


# Key names of reports written before this module (geometry, unwrap, backends): read as the ones above.
_OLDER_KEYS = {
    "processor": "cpu",
    "cpus_usable": "usable_cores",
    "omp_num_threads": "OMP_NUM_THREADS",
    "torch_threads": "threads",
    "load_average_1min_after": "load_average_1min",
}


def run_conditions(info: dict[str, Any]) -> dict[str, Any]:
    """What a report keeps of the machine of each run it pools or replaces: the load average, and the
    CPU model where it was recorded."""
    kept = {"load_average_1min": info.get("load_average_1min")}
    if info.get("cpu_model"):
        kept["cpu_model"] = info["cpu_model"]
    return kept


def describe_conditions(run: dict[str, Any], unrecorded: str = ", CPU model not recorded") -> str:
    """`, load average 0.5, CPU AMD EPYC, family 26 model 2` of a `run_conditions` record (`unrecorded` in
    place of the CPU for a run from before the model was recorded)."""
    load = f", load average {run['load_average_1min']}" if run.get("load_average_1min") else ""
    return load + (f", CPU {run['cpu_model']}" if run.get("cpu_model") else unrecorded)


def describe(info: dict[str, Any] | None = None) -> str:
    """`x86_64 (AMD EPYC, family 26 model 2), 2 cores (2 usable), OMP_NUM_THREADS=2, Python 3.11.7, torch
    2.13.0+cpu (2 threads), load average 1.7`; of a recorded `machine()` (or an older report's machine record), only what it holds."""
    m = dict(info if info is not None else machine())
    for old, key in _OLDER_KEYS.items():
        if old in m:
            m.setdefault(key, m[old])
    parts = [str(m.get("cpu", "?")) + (f" ({m['cpu_model']})" if m.get("cpu_model") else "")]
    if m.get("cores") is not None:
        parts[0] += f", {m['cores']} cores" + (
            f" ({m['usable_cores']} usable)" if "usable_cores" in m else ""
        )
    elif "usable_cores" in m:
        parts[0] += f", {m['usable_cores']} usable cores"
    if "OMP_NUM_THREADS" in m:  # machine() always records it (None: unset)
        parts.append(f"OMP_NUM_THREADS={m['OMP_NUM_THREADS'] or 'unset'}")
    if "python" in m:
        parts.append(f"Python {m['python']}")
    if "torch" in m:
        threads = m.get("threads")
        parts.append(f"torch {m['torch']}" + (f" ({threads} threads)" if threads is not None else ""))
    if "load_average_1min" in m:
        parts.append(f"load average {m['load_average_1min']}")
    return ", ".join(parts)
