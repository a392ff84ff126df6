"""Run every benchmark and write the table of ratios: ``python -m benchmarks [--quick] [--only app,op]``.

Each ``benchmarks/bench_*.py`` runs in its own process (one at a time, so they do not compete for
the CPU), prints its report and one ``BENCH_RESULT`` line (``benchmarks/results.py``); this collects
those lines into a markdown table of ratios with the machine's description and writes it to
``benchmarks/RESULTS.md`` (``--out``). Ratios compare two things measured side by side in the same
run, so they carry across machines far better than times do; still, run it on an otherwise idle
machine. ``--quick`` runs each benchmark with few repeats: it proves the pipeline, not the numbers,
and says so in the file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from results import parse  # noqa: E402

# Few repeats per benchmark, for --quick; a benchmark not listed runs with its defaults.
QUICK_ARGS = {
    "op": ["--repeats", "2"],
    "dcnv4": ["--repeats", "2"],
    "model": ["--repeats", "2"],
    "operators_models": ["--repeats", "2"],
    "app": ["--repeats", "2"],
    "video": ["--frames", "6", "--rounds", "1"],
    "toy": ["--moves", "3", "--fields", "0"],
    "lesson": ["--iterations", "20"],
    "server_path": ["--rounds", "2", "--clicks", "2"],
    "hover": ["--moves", "20"],
}


def discover() -> dict[str, Path]:
    """bench_<name>.py -> name, in name order."""
    return {path.stem[len("bench_") :]: path for path in sorted(HERE.glob("bench_*.py"))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> list[tuple[str, str]]:
    """What the numbers were measured on."""
    import torch
    import ultralytics

    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        physical, memory = None, "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        commit = "unknown"
    return [
        ("CPU", cpu_model()),
        (
            "cores",
            f"{usable} usable by this process, {os.cpu_count()} logical"
            + (f", {physical} physical" if physical else ""),
        ),
        ("memory", memory),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("torch", f"{torch.__version__} ({torch.get_num_threads()} threads by default)"),
        ("ultralytics", ultralytics.__version__),
        ("commit", commit),
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
    ]


def run(name: str, path: Path, quick: bool, timeout: float) -> dict:
    """One benchmark in its own process: its BENCH_RESULT rows, output and wall time."""
    command = [sys.executable, str(path), *(QUICK_ARGS.get(name, []) if quick else [])]
    env = {**os.environ, "YOLO_OFFLINE": "true", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        output, status = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as error:
        output, status = (
            (error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes) else (error.stdout or ""),
            f"timed out after {timeout:.0f} s",
        )
    rows = [row for payload in parse(output) for row in payload["rows"]]
    return {
        "name": name,
        "command": " ".join(["python", str(path.relative_to(ROOT)), *command[2:]]),
        "status": status,
        "rows": rows,
        "output": output,
        "seconds": time.perf_counter() - start,
    }


def _verdict(ok) -> str:
    return {True: "meets target", False: "**misses target**", None: "(no target)"}[ok]


def markdown(results: list[dict], quick: bool) -> str:
    lines = ["# Benchmark results", ""]
    if quick:
        lines += [
            "> **Quick run** (`python -m benchmarks --quick`): few repeats, to check that every benchmark",
            "> runs. These numbers are not a measurement; run `python -m benchmarks` on an idle machine.",
            "",
        ]
    lines += [
        "Written by `python -m benchmarks`. Every ratio compares two things measured side by side, interleaved,",
        "in one process (medians of repeats; video: best of rounds); see each `benchmarks/bench_*.py`.",
        "",
        "| machine | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in machine()]
    lines += ["", "| benchmark | measure | ratio | target | verdict |", "|---|---|---:|---|---|"]
    for result in results:
        if not result["rows"]:
            tail = result["output"].strip().splitlines()[-1:] or ["no output"]
            lines.append(f"| {result['name']} | no result (exit status {result['status']}: {tail[0][:120]}) | | | |")
        for row in result["rows"]:
            lines.append(
                f"| {result['name']} | {row['measure']} | {row['ratio']:.3f} | {row['target'] or ''} | "
                f"{_verdict(row['ok'])} |"
            )
    lines += ["", "Commands and wall times:", ""]
    lines += [f"- `{r['command']}`: {r['seconds']:.0f} s" for r in results]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: check the pipeline, not the numbers")
    parser.add_argument(
        "--only", help="comma-separated benchmark names (default: all of " + ", ".join(discover()) + ")"
    )
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="markdown file to write")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = parser.parse_args(argv)
    found = discover()
    names = args.only.split(",") if args.only else list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(found)}")
    results = []
    for name in names:
        print(f"== {name}: {found[name].name}", flush=True)
        result = run(name, found[name], args.quick, args.timeout)
        print(
            "\n".join(line for line in result["output"].splitlines() if not line.startswith("BENCH_RESULT")), flush=True
        )
        results.append(result)
    args.out.write_text(markdown(results, args.quick))
    print(f"wrote {args.out}")
    return 0 if all(r["rows"] and r["status"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
