"""Recording benchmark results: one markdown table per section of docs/benchmarks.md."""

from __future__ import annotations

import platform
from pathlib import Path

from croco.utils.files import atomic_output

__all__ = ["BENCHMARKS_MD", "append_row", "cpu_flags", "cpu_name"]

BENCHMARKS_MD = Path(__file__).resolve().parents[3] / "docs" / "benchmarks.md"  # where every benchmark records


def append_row(path: Path, section: str, columns: list[str], row: list[str], intro: str | None = None) -> None:
    """Append ``row`` to the table under ``## section`` of ``path`` (after its last row, before any text that
    follows the table); other sections stay as they are.

    The file, the section (with ``intro`` under its heading) and the table header are created when missing;
    a changed column list starts a new table in the section. Written to a temporary file, then renamed."""
    heading = f"## {section}"
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    line = "| " + " | ".join(row) + " |"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nRows appended by `make bench` (`python -m croco.bench.*`).\n"
    lines = text.rstrip("\n").split("\n")
    if heading not in lines:
        lines += ["", heading, ""] + ([intro, ""] if intro else []) + [header, rule, line]
    else:
        start = lines.index(heading)
        end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        while end > start + 1 and not lines[end - 1].strip():
            end -= 1
        if header not in lines[start:end]:
            lines[end:end] = ["", header, rule]
            end += 3
        else:  # right under the table's last row: notes written after the table stay after it
            end = lines.index(header, start, end) + 1
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
        lines.insert(end, line)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(flags: tuple[str, ...] = ("avx512_bf16", "amx_bf16")) -> str:
    """What the model name may hide (virtual machines often report only "AMD EPYC"): the x86 family and model
    numbers and whether the flags that decide the bf16 matmul speed are there, e.g.
    ``family 25 model 17, avx512_bf16, no amx_bf16``; "" where /proc/cpuinfo is missing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    present = set(fields.get("flags", "").split())
    parts = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
    parts += [flag if flag in present else f"no {flag}" for flag in flags]
    return ", ".join(parts)
