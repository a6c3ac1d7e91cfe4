"""Every figure in the README's benchmark table is in the file its row names, and the row's command exists.

A figure is each decimal number of the *figure* column (1.009, 0.65, 2.44x) and each whole number of 4
digits or more (10752 B); it is found when a number in the named file(s) (`docs/benchmarks/X.md` or its
`.json`) rounds to it at the README's precision. The *command* column's `realiz3d ...` commands parse with
the CLI's own parser ("the same": the row above's).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "docs" / "benchmarks"


def table_rows() -> list[dict[str, str]]:
    text = (ROOT / "README.md").read_text()
    header = "| what | figure | goal | file | command |"
    assert header in text, "the README's benchmark table has its file and command columns"
    rows = []
    for line in text[text.index(header) :].splitlines()[2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        assert len(cells) == 5, line
        rows.append(dict(zip(("what", "figure", "goal", "file", "command"), cells, strict=True)))
    return rows


def file_numbers(names: list[str]) -> list[float]:
    text = ""
    for name in names:
        md = BENCH / name
        assert md.is_file(), f"docs/benchmarks/{name} is named in the README but does not exist"
        text += md.read_text()
        if md.with_suffix(".json").is_file():
            text += md.with_suffix(".json").read_text()
    return [float(x) for x in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?", text)]


def figures(cell: str) -> list[str]:
    decimals = re.findall(r"(?<![\w.^])\d+\.\d+(?![\w.])|(?<![\w.^])\d+\.\d+(?=x)", cell)
    large = re.findall(r"(?<![\w.^])\d{4,}(?![\w.^])", cell)
    return decimals + large


def test_every_readme_figure_is_in_its_file():
    rows = table_rows()
    assert len(rows) >= 10
    missing = []
    for row in rows:
        names = [n.strip() for n in row["file"].split(",")]
        numbers = file_numbers(names)
        for token in figures(row["figure"]):
            places = len(token.split(".")[1]) if "." in token else 0
            value = float(token)
            if not any(abs(round(n, places) - value) < 1e-9 for n in numbers):
                missing.append(f"{row['what'][:60]}: {token} is not in {', '.join(names)}")
    assert not missing, "\n".join(missing)


def test_every_row_names_a_command_that_exists():
    from service.cli import build_parser

    parser = build_parser()
    previous: list[str] = []
    for row in table_rows():
        commands = re.findall(r"`realiz3d ([^`]+)`", row["command"])
        if row["command"] == "the same":
            commands = previous
        assert commands, f"{row['what']}: no command"
        for command in commands:
            args = parser.parse_args(shlex.split(command))
            assert args.command == "bench", command
        previous = commands


def test_the_benchmark_index_lists_every_report_its_command_and_code():
    from service.cli import build_parser

    index = (BENCH / "README.md").read_text()
    rows = re.findall(r"^\| (`[^|]+`) \| `(realiz3d [^`]+)` \| ([^|]+) \|$", index, flags=re.M)
    assert rows
    listed = set()
    parser = build_parser()
    for reports, command, code in rows:
        listed |= set(re.findall(r"`([^`]+\.md)`", reports))
        assert parser.parse_args(shlex.split(command)[1:]).command == "bench", command
        for path in re.findall(r"`([^`]+\.py)`", code):
            assert (ROOT / path).is_file(), path
    reports_here = {p.name for p in BENCH.glob("*.md")} - {"README.md", "loadtest.md"}
    assert reports_here <= listed, sorted(reports_here - listed)


def test_every_benchmark_describes_its_machine_one_way():
    """Each module of engines/bench/ that writes a report takes the machine from engines.bench.machine."""
    import subprocess
    import sys

    writers = [
        p
        for p in (ROOT / "engines" / "bench").glob("*.py")
        if ".md" in p.read_text() and "write_text" in p.read_text()
    ]
    assert len(writers) >= 10
    for path in writers:
        text = path.read_text()
        assert "engines.bench.machine import" in text and "describe(" in text, path.name
    # torch-free: the gateway benchmarks describe the machine without importing torch
    code = "import sys; from engines.bench.machine import describe; print(describe()); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    line, torch_loaded = out.stdout.splitlines()
    assert "cores" in line and "Python" in line and torch_loaded == "False"


def test_every_report_states_its_machine_as_machine_py_describes_it():
    """Each report's markdown holds `describe()` of the machine its .json recorded (a string there: already
    described). The reports the index names as older (made before machine.py, not made again) are exempt."""
    from engines.bench.machine import describe

    index = (BENCH / "README.md").read_text()
    older = set(re.findall(r"`([^`]+\.md)`", index.split("Older reports:", 1)[1].split("\n\n", 1)[0]))
    missing = []
    for md in sorted(BENCH.glob("*.md")):
        if md.name == "README.md" or md.name in older:
            continue
        record = md.with_suffix(".json")
        machine = json.loads(record.read_text()).get("machine") if record.is_file() else None
        if machine is None:
            missing.append(f"{md.name}: its .json records no machine")
        elif (machine if isinstance(machine, str) else describe(machine)) not in md.read_text():
            missing.append(f"{md.name}: no `{machine if isinstance(machine, str) else describe(machine)}`")
    assert not missing, "\n".join(missing)
    for name in older:
        assert (BENCH / name).is_file(), name
