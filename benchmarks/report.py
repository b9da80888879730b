"""Collect figures, compare them with their goals, and print one table."""

from __future__ import annotations

from dataclasses import dataclass
import statistics


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class Row:
    section: str
    what: str
    measured: str
    goal: str = ""
    ok: bool | None = None  # None: a reference figure, no goal.


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(
        self, section: str, what: str, measured: str, goal: str = "", ok: bool | None = None
    ) -> None:
        self.rows.append(Row(section, what, measured, goal, ok))

    def render(self) -> str:
        header = ("section", "what", "measured", "goal", "")
        cells = [header] + [
            (
                row.section,
                row.what,
                row.measured,
                row.goal,
                {True: "ok", False: "MISSED", None: ""}[row.ok],
            )
            for row in self.rows
        ]
        widths = [max(len(cell[i]) for cell in cells) for i in range(len(header))]
        lines = [
            " | ".join(cell[i].ljust(widths[i]) for i in range(len(header))).rstrip()
            for cell in cells
        ]
        lines.insert(1, "-+-".join("-" * width for width in widths))
        return "\n".join(lines)
