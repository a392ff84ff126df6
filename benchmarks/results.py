"""The one machine-readable line each benchmark prints after its human-readable report.

``emit("app", [("click / first run", 0.04, "<= 0.1"), ...])`` prints
``BENCH_RESULT {"benchmark": "app", "rows": [{"measure", "ratio", "target", "ok"}]}``;
``python -m benchmarks`` collects these lines into benchmarks/RESULTS.md. A target is a comparison
(``"<= 1.2"``, ``">= 2"``) or None for a ratio reported without one.
"""

from __future__ import annotations

import json
import operator

PREFIX = "BENCH_RESULT "
_COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def meets(ratio: float, target: str | None) -> bool | None:
    """Whether ``ratio`` meets ``target`` ("<= 1.2"); None without a target."""
    if not target:
        return None
    sign, bound = target.split()
    return _COMPARE[sign](ratio, float(bound))


def emit(benchmark: str, rows: list[tuple[str, float, str | None]]) -> None:
    payload = {
        "benchmark": benchmark,
        "rows": [
            {"measure": measure, "ratio": round(float(ratio), 4), "target": target, "ok": meets(ratio, target)}
            for measure, ratio, target in rows
        ],
    }
    print(PREFIX + json.dumps(payload), flush=True)


def parse(output: str) -> list[dict]:
    """Every BENCH_RESULT payload in a benchmark's output."""
    return [json.loads(line[len(PREFIX) :]) for line in output.splitlines() if line.startswith(PREFIX)]
