"""An assessment written out: JSON and CSV tables for tools, a one-page report (Markdown or HTML)
with an error-matrix heat map and an area chart for people."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.assess.assessment import Assessment
from pipeline.assess.estimators import Z95
from pipeline.assess.tables import write_table
from timesenclip.common.atomic import atomic_path, write_text_atomic
from timesenclip.common.version import package_version


def write_assessment(assessment: Assessment, out_dir: Path | str, fmt: str = "md") -> list[Path]:
    """Write every output of an assessment into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = per_class_table(assessment)
    paths = [
        write_text_atomic(out_dir / "assessment.json", json.dumps(_document(assessment), indent=1)),
        write_table(per_class, out_dir / "per_class.csv"),
        write_table(
            _matrix(assessment, assessment.accuracy.counts), out_dir / "error_matrix_counts.csv"
        ),
        write_table(
            _matrix(assessment, assessment.accuracy.proportions), out_dir / "error_matrix_area.csv"
        ),
        write_table(_excluded(assessment), out_dir / "excluded_points.csv"),
        _heat_map(assessment, out_dir / "error_matrix.png"),
        _area_chart(assessment, per_class, out_dir / "areas.png"),
    ]
    blocks = _report_blocks(assessment, per_class)
    text = _markdown(blocks) if fmt == "md" else _html(blocks)
    paths.append(write_text_atomic(out_dir / f"report.{fmt}", text))
    return paths


def per_class_table(assessment: Assessment) -> pd.DataFrame:
    """One row per class: mapped and error-adjusted areas, user's and producer's accuracy, each
    estimate with its standard error and 95 % interval."""
    acc = assessment.accuracy
    columns = {"class": list(acc.classes), "mapped_pixels": assessment.mapped_pixels}
    columns["mapped_ha"] = assessment.mapped_ha
    for name, value, se in (
        ("area_ha", assessment.area_ha, assessment.area_se_ha),
        ("area_proportion", acc.area, acc.area_se),
        ("users_accuracy", acc.users, acc.users_se),
        ("producers_accuracy", acc.producers, acc.producers_se),
    ):
        columns[name] = value
        columns[f"{name}_se"] = se
        columns[f"{name}_ci_low"] = value - Z95 * se
        columns[f"{name}_ci_high"] = value + Z95 * se
    columns["sample_mapped"] = acc.counts.sum(1).astype(int)
    columns["sample_reference"] = acc.counts.sum(0).astype(int)
    return pd.DataFrame(columns)


def _matrix(assessment: Assessment, values: np.ndarray) -> pd.DataFrame:
    classes = list(assessment.accuracy.classes)
    table = pd.DataFrame(values, index=classes, columns=classes)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    return table.rename_axis("map \\ reference").reset_index()


def _excluded(assessment: Assessment) -> pd.DataFrame:
    points = assessment.points
    return points[points["excluded"] != ""].rename_axis("row").reset_index()


def _interval(value: float, se: float) -> list[float] | None:
    return None if math.isnan(se) else [value - Z95 * se, value + Z95 * se]


def _estimate(value: float, se: float) -> dict:
    return {"estimate": _number(value), "se": _number(se), "ci95": _interval(value, se)}


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _document(assessment: Assessment) -> dict:
    acc = assessment.accuracy
    excluded = assessment.points["excluded"]
    return {
        "timesenclip": package_version(),
        "map": str(assessment.map_path),
        "method": assessment.method,
        "pixel_size": assessment.pixel_size,
        "points": {
            "read": len(excluded),
            "used": int((excluded == "").sum()),
            "excluded": excluded[excluded != ""].value_counts().to_dict(),
        },
        "estimated_area_ha": assessment.estimated_total_ha,
        "classes": list(acc.classes),
        "error_matrix": {
            "rows": "map class",
            "columns": "reference class",
            "counts": acc.counts.astype(int).tolist(),
            "area_proportions": acc.proportions.tolist(),
        },
        "overall_accuracy": _estimate(acc.overall, acc.overall_se),
        "per_class": [
            {
                "class": name,
                "mapped_pixels": int(assessment.mapped_pixels[k]),
                "mapped_ha": float(assessment.mapped_ha[k]),
                "area_ha": _estimate(assessment.area_ha[k], assessment.area_se_ha[k]),
                "area_proportion": _estimate(acc.area[k], acc.area_se[k]),
                "users_accuracy": _estimate(acc.users[k], acc.users_se[k]),
                "producers_accuracy": _estimate(acc.producers[k], acc.producers_se[k]),
            }
            for k, name in enumerate(acc.classes)
        ],
        "notes": list(assessment.notes),
    }


def _pct(value: float, se: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{100 * value:.1f} %" + ("" if math.isnan(se) else f" ± {100 * Z95 * se:.1f}")


def _ha(value: float, se: float | None = None) -> str:
    text = f"{value:,.0f}"
    return text if se is None or math.isnan(se) else f"{text} ± {Z95 * se:,.0f}"


def _report_blocks(assessment: Assessment, per_class: pd.DataFrame) -> list[tuple]:
    acc = assessment.accuracy
    excluded = assessment.points["excluded"]
    reasons = excluded[excluded != ""].value_counts()
    used = int((excluded == "").sum())
    blocks: list[tuple] = [
        ("h1", f"Accuracy and area of {assessment.map_path.name}"),
        (
            "p",
            f"Estimator: {assessment.method}. Pixels of {assessment.pixel_size}; "
            f"{_ha(assessment.estimated_total_ha)} ha assessed. Intervals are 95 % "
            f"(estimate ± {Z95:.2f} standard errors).",
        ),
        (
            "p",
            f"Reference points: {len(excluded)} read, {used} used, {len(excluded) - used} left "
            "out"
            + (": " + "; ".join(f"{r} ({n})" for r, n in reasons.items()) if len(reasons) else "")
            + ".",
        ),
        ("p", f"Overall accuracy: {_pct(acc.overall, acc.overall_se)}."),
        ("h2", "Classes"),
        (
            "table",
            [
                "class",
                "mapped ha",
                "error-adjusted ha",
                "user's accuracy",
                "producer's accuracy",
                "points (map / ref.)",
            ],
            [
                [
                    row["class"],
                    _ha(row["mapped_ha"]),
                    _ha(row["area_ha"], row["area_ha_se"]),
                    _pct(row["users_accuracy"], row["users_accuracy_se"]),
                    _pct(row["producers_accuracy"], row["producers_accuracy_se"]),
                    f"{row['sample_mapped']} / {row['sample_reference']}",
                ]
                for _, row in per_class.iterrows()
            ],
        ),
        ("img", "mapped and error-adjusted areas", "areas.png"),
        ("h2", "Error matrix (rows map, columns reference)"),
        ("p", "In estimated proportions of area:"),
        _matrix_table(acc.classes, acc.proportions, "{:.4f}"),
        ("img", "error matrix", "error_matrix.png"),
        ("p", "In sample points:"),
        _matrix_table(acc.classes, acc.counts, "{:.0f}"),
        (
            "p",
            "Every estimate with its standard error and interval: per_class.csv and "
            "assessment.json.",
        ),
    ]
    if assessment.notes:
        blocks += [("h2", "Notes"), ("ul", list(assessment.notes))]
    if len(reasons):
        blocks += [("h2", "Points left out"), _excluded_table(assessment.points)]
    return blocks


def _matrix_table(classes: Sequence[str], matrix: np.ndarray, number: str) -> tuple:
    rows = [
        [name, *map(number.format, row), number.format(row.sum())]
        for name, row in zip(classes, matrix, strict=True)
    ]
    totals = ["total", *map(number.format, matrix.sum(0)), number.format(matrix.sum())]
    return ("table", ["map \\ reference", *classes, "total"], [*rows, totals])


def _excluded_table(points: pd.DataFrame, most: int = 20) -> tuple:
    left_out = points[points["excluded"] != ""]
    rows = [
        [str(i), f"{r.lon:.6f}", f"{r.lat:.6f}", r.label, r.excluded]
        for i, r in left_out.head(most).iterrows()
    ]
    if len(left_out) > most:
        rows.append(["...", "", "", "", f"{len(left_out) - most} more in excluded_points.csv"])
    return ("table", ["row", "lon", "lat", "label", "why"], rows)


def _markdown(blocks: Sequence[tuple]) -> str:
    lines = []
    for kind, *parts in blocks:
        if kind in ("h1", "h2"):
            lines += [f"{'#' * int(kind[1])} {parts[0]}", ""]
        elif kind == "p":
            lines += [parts[0], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in parts[0]] + [""]
        elif kind == "img":
            lines += [f"![{parts[0]}]({parts[1]})", ""]
        else:
            header, rows = parts
            cells = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
            lines += [f"| {' | '.join(cells[0])} |", "|" + "---|" * len(header)]
            lines += [f"| {' | '.join(row)} |" for row in cells[1:]] + [""]
    return "\n".join(lines)


def _html(blocks: Sequence[tuple]) -> str:
    body = []
    for kind, *parts in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{html.escape(parts[0])}</{kind}>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in parts[0]) + "</ul>")
        elif kind == "img":
            body.append(f'<img alt="{html.escape(parts[0])}" src="{parts[1]}">')
        else:
            header, rows = parts
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
            cells = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                for row in rows
            )
            body.append(f"<table><tr>{head}</tr>{cells}</table>")
    title = html.escape(blocks[0][1])
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px;"
        "text-align:right}td:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)
    return path


def _heat_map(assessment: Assessment, path: Path) -> Path:
    plt = _pyplot()
    acc = assessment.accuracy
    k = len(acc.classes)
    size = max(4.5, 0.6 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(acc.proportions, cmap="YlGnBu", vmin=0)
    for (i, j), p in np.ndenumerate(acc.proportions):
        if p > 0:
            colour = "white" if p > 0.6 * acc.proportions.max() else "black"
            ax.text(j, i, f"{p:.4f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(k), acc.classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), acc.classes, fontsize=8)
    ax.set(xlabel="reference class", ylabel="map class", title="Estimated area proportions")
    fig.colorbar(image, ax=ax, fraction=0.046, label="proportion of area")
    fig.tight_layout()
    return _save(fig, path)


def _area_chart(assessment: Assessment, per_class: pd.DataFrame, path: Path) -> Path:
    plt = _pyplot()
    k = len(per_class)
    x = np.arange(k)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * k + 2), 4.5))
    ax.bar(x - 0.2, per_class["mapped_ha"], 0.4, label="mapped (pixel count)", color="#9e9e9e")
    ax.bar(
        x + 0.2,
        per_class["area_ha"],
        0.4,
        yerr=Z95 * per_class["area_ha_se"].fillna(0),
        capsize=4,
        label="error-adjusted, 95 % interval",
        color="#2b7bba",
    )
    ax.set_xticks(x, per_class["class"], rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="hectares", title="Class areas")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
