"""One benchmark report: each bench script hands its figures here and gets a JSON file (every
figure, machine-readable) and a Markdown table under one results folder, stamped with the
machine (CPU model and the flags that matter for inference, cores), the thread counts and the
commit, so figures from two machines can be put side by side.

    python bench/report.py compare results/a/inference.json results/b/inference.json

prints the two runs' tables one above the other with each machine's stamp. The results folder
is `bench/results/` unless FTOPS_BENCH_RESULTS names another (`make bench` sets one per commit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith(key)), "")
    except OSError:
        return ""


def machine() -> dict:
    """What makes two runs comparable: the CPU, its vector flags, the cores and the commit."""
    flags = set(_cpuinfo("flags").split())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": _cpuinfo("model name") or platform.machine(), "flags": [f for f in FLAGS if f in flags],
            "cores": os.cpu_count(), "commit": commit + ("+dirty" if dirty else ""),
            "python": platform.python_version(), "host": platform.node(),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def stamp(info: dict) -> str:
    return (f"{info['cpu']} ({info['cores']} cores; {', '.join(info['flags']) or 'no AVX flags'}), "
            f"commit {info['commit']}, {info['date']}")


def results_dir() -> Path:
    return Path(os.environ.get("FTOPS_BENCH_RESULTS") or ROOT / "bench" / "results")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return "" if value is None else str(value)


def markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write(name: str, rows: list[dict], settings: dict, notes: list[str] = (),
          columns: list[str] | None = None) -> tuple[Path, Path]:
    """`<results>/<name>.json` and `<name>.md`; returns both paths (and says where they are)."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    info = machine()
    body = {"benchmark": name, "machine": info, "settings": settings, "rows": rows, "notes": list(notes)}
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    md_path.write_text(_render(body) + "\n")
    print(f"report: {json_path} and {md_path}")
    return json_path, md_path


def _render(body: dict) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in body["settings"].items())
    parts = [f"# {body['benchmark']}", "", f"Machine: {stamp(body['machine'])}", "", f"Settings: {settings}", "",
             markdown(body["rows"])]
    if body["notes"]:
        parts += ["", *[f"- {note}" for note in body["notes"]]]
    return "\n".join(parts)


def compare(paths: list[Path]) -> str:
    return "\n\n".join(_render(json.loads(path.read_text())) for path in paths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="print the tables of several JSON results, each with its machine")
    cmp.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        sys.exit(f"no such result file: {', '.join(missing)} (bench scripts write them under {results_dir()})")
    print(compare(args.results))


if __name__ == "__main__":
    main()
