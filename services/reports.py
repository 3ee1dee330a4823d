"""The summary report as a user takes it away: terminal tables, CSV, Parquet, one HTML file.

The figures are `projections.report.Summary`; this module only lays them out. CSV
and Parquet are long tables, one row per figure: `section`, `name`, `detail`,
`value` (Parquet keeps `on` and `as_of_seq` in its metadata, CSV as its first
rows). The HTML report is one self-contained file: inline CSS and SVG charts, a
few lines of inline script that only check the charts were laid out, no fonts,
images or scripts from anywhere else, so it opens offline and can be mailed.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from projections import snapshot
from projections.report import Summary, summary


def decode(answer: dict[str, Any]) -> Summary:
    return msgspec.convert(answer, Summary)


def from_snapshot(directory: Path, on: dt.date | None) -> Summary:
    """The report from a snapshot (a `seq-N` directory, or the snapshots directory: its newest)."""
    manifest = snapshot.read(directory) if (directory / snapshot.MANIFEST).exists() else snapshot.latest(directory)
    if manifest is None:
        raise ValueError(f"no snapshot in {directory}")
    con = duckdb.connect(manifest.duckdb, read_only=True)
    try:
        return summary(con.cursor(), on=on, today=dt.datetime.now(dt.timezone.utc).date())
    finally:
        con.close()


# -- long rows (CSV, Parquet)


def long_rows(s: Summary) -> list[tuple[str, str, str, float | None]]:
    rows: list[tuple[str, str, str, float | None]] = [("cases", "all", "", s.cases)]
    rows += [("cases_by_custody_stage", r.custody, r.stage, r.cases) for r in s.by_custody_stage]
    rows.append(("political_prisoners_in_custody", "all organisations", "", s.political_prisoners_in_custody))
    rows += [("political_prisoners_in_custody", r.organization, "", r.cases) for r in s.political_prisoners_by_organization]
    rows += [("charges_by_article", f"{r.code} {r.article}", "", r.cases) for r in s.charges_by_article]
    rows += [("detentions_per_month", m.month, "", m.detentions) for m in s.per_month]
    rows += [("sentences_per_month", m.month, "", m.sentences) for m in s.per_month]
    p = s.pretrial_custody
    rows += [
        ("pretrial_custody_days", name, "", value)
        for name, value in (
            ("cases", p.cases), ("median", p.median_days), ("q1", p.q1_days), ("q3", p.q3_days),
            ("min", p.min_days), ("max", p.max_days),
        )
    ]
    return rows


def render(s: Summary, fmt: str) -> bytes:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["section", "name", "detail", "value"])
        writer.writerow(["report", "on", "", s.on])
        writer.writerow(["report", "as_of_seq", "", s.as_of_seq])
        writer.writerows(["" if v is None else v for v in row] for row in long_rows(s))
        return buffer.getvalue().encode()
    if fmt == "parquet":
        rows = long_rows(s)
        table = pa.table(
            {
                "section": [r[0] for r in rows],
                "name": [r[1] for r in rows],
                "detail": [r[2] for r in rows],
                "value": pa.array([None if r[3] is None else float(r[3]) for r in rows], pa.float64()),
            }
        ).replace_schema_metadata({"on": s.on, "as_of_seq": str(s.as_of_seq)})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    if fmt == "html":
        return html_report(s).encode()
    raise ValueError(f"unknown format {fmt!r}")


# -- the terminal


def print_tables(s: Summary, console: Console) -> None:
    console.print(f"[bold]Summary on {s.on}[/bold]: {s.cases:,} cases (log seq {s.as_of_seq:,})", highlight=False)
    t = Table("custody", "stage", "cases", title="Cases by custody and stage")
    for r in s.by_custody_stage:
        t.add_row(r.custody, r.stage, f"{r.cases:,}")
    console.print(t)
    t = Table("organisation", "cases", title=f"Recognised political prisoners in custody: {s.political_prisoners_in_custody:,}")
    for r in s.political_prisoners_by_organization:
        t.add_row(r.organization, f"{r.cases:,}")
    console.print(t)
    t = Table("code", "article", "cases", title="Charges by article")
    for r in s.charges_by_article:
        t.add_row(r.code, r.article, f"{r.cases:,}")
    console.print(t)
    t = Table("month", "detentions", "sentences", title="Detentions and sentences per month")
    for m in s.per_month:
        t.add_row(m.month, f"{m.detentions:,}", f"{m.sentences:,}")
    console.print(t)
    p = s.pretrial_custody
    console.print(
        f"Pre-trial custody ({p.cases:,} cases sentenced after custody): median {_days(p.median_days)}, "
        f"quartiles {_days(p.q1_days)} to {_days(p.q3_days)}, range {_days(p.min_days)} to {_days(p.max_days)}",
        highlight=False,
    )


def _days(value: float | int | None) -> str:
    return "-" if value is None else f"{value:,.0f} days"


# -- HTML with inline SVG charts

PALETTE = ["#1f5f8b", "#d1495b", "#edae49", "#00798c", "#6b4e71", "#8d9f87", "#30343f", "#e07a5f"]
STAGES = ["investigation", "trial", "sentenced", "closed", "unknown"]
_e = html.escape


def _bars(items: list[tuple[str, float]], name: str, width: int = 640, colour: str = PALETTE[0]) -> str:
    """A horizontal bar chart, labelled, one bar per item."""
    if not items:
        return f'<p class="empty" data-chart="{name}">No cases.</p>'
    bar, gap, label_w = 22, 6, 200
    top = max(v for _, v in items) or 1
    height = len(items) * (bar + gap) + gap
    parts = [f'<svg class="chart" data-chart="{name}" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    for i, (label, value) in enumerate(items):
        y = gap + i * (bar + gap)
        w = max(1.0, (width - label_w - 70) * value / top)
        parts.append(f'<text x="{label_w - 8}" y="{y + bar * 0.7}" text-anchor="end">{_e(label)}</text>')
        parts.append(f'<rect class="mark" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colour}"><title>{_e(label)}: {value:,.0f}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + bar * 0.7}">{value:,.0f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _stacked(s: Summary, width: int = 640) -> str:
    """Cases by custody (bars) and stage (segments)."""
    by: dict[str, dict[str, int]] = {}
    for r in s.by_custody_stage:
        by.setdefault(r.custody, {})[r.stage] = r.cases
    if not by:
        return '<p class="empty" data-chart="custody_stage">No cases.</p>'
    order = sorted(by, key=lambda c: -sum(by[c].values()))
    stages = [st for st in STAGES if any(st in by[c] for c in order)] + sorted(
        {st for c in order for st in by[c]} - set(STAGES)
    )
    bar, gap, label_w = 24, 8, 130
    top = max(sum(v.values()) for v in by.values())
    legend_h = 28
    height = legend_h + len(order) * (bar + gap) + gap
    parts = [f'<svg class="chart" data-chart="custody_stage" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    x = label_w
    for i, stage in enumerate(stages):
        parts.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text x="{x + 16}" y="16">{_e(stage)}</text>')
        x += 30 + 8 * len(stage)
    for row, custody in enumerate(order):
        y = legend_h + gap + row * (bar + gap)
        parts.append(f'<text x="{label_w - 8}" y="{y + bar * 0.7}" text-anchor="end">{_e(custody.replace("_", " "))}</text>')
        x = float(label_w)
        for i, stage in enumerate(stages):
            value = by[custody].get(stage, 0)
            if not value:
                continue
            w = (width - label_w - 70) * value / top
            parts.append(f'<rect class="mark" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{PALETTE[i % len(PALETTE)]}">'
                         f'<title>{_e(custody)}, {_e(stage)}: {value:,}</title></rect>')
            x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + bar * 0.7}">{sum(by[custody].values()):,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _months(s: Summary, width: int = 760, height: int = 260) -> str:
    """Detentions and sentences per month: two lines over time."""
    months = s.per_month
    if not months:
        return '<p class="empty" data-chart="per_month">No detentions or sentences.</p>'
    left, right, top_pad, bottom = 48, 40, 30, 36
    top = max(max(m.detentions, m.sentences) for m in months) or 1
    span = max(1, len(months) - 1)

    def x(i: int) -> float:
        return left + (width - left - right) * i / span

    def y(v: int) -> float:
        return height - bottom - (height - bottom - top_pad) * v / top

    parts = [f'<svg class="chart" data-chart="per_month" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    for k in range(5):
        v = top * k / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    step = max(1, len(months) // 8)
    for i in range(0, len(months), step):
        parts.append(f'<text x="{x(i):.1f}" y="{height - bottom + 18}" text-anchor="middle">{_e(months[i].month)}</text>')
    for series, colour, label, offset in (("detentions", PALETTE[1], "detentions", 0), ("sentences", PALETTE[0], "sentences", 110)):
        points = " ".join(f"{x(i):.1f},{y(getattr(m, series)):.1f}" for i, m in enumerate(months))
        parts.append(f'<polyline class="mark" points="{points}" fill="none" stroke="{colour}" stroke-width="2"><title>{label} per month</title></polyline>')
        parts.append(f'<rect x="{left + offset}" y="6" width="12" height="12" fill="{colour}"/><text x="{left + offset + 16}" y="16">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _box(s: Summary, width: int = 640, height: int = 90) -> str:
    """Pre-trial custody in days: minimum, quartiles, median, maximum."""
    p = s.pretrial_custody
    if not p.cases or p.max_days is None:
        return '<p class="empty" data-chart="pretrial">No case sentenced after custody yet.</p>'
    left, right = 20, 20
    top = max(1, p.max_days)

    def x(v: float) -> float:
        return left + (width - left - right) * v / top

    q1, med, q3 = p.q1_days or 0, p.median_days or 0, p.q3_days or 0
    mid = 40
    return (
        f'<svg class="chart" data-chart="pretrial" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f'<line x1="{x(p.min_days or 0):.1f}" x2="{x(p.max_days):.1f}" y1="{mid}" y2="{mid}" stroke="#30343f"/>'
        f'<rect class="mark" x="{x(q1):.1f}" y="{mid - 16}" width="{max(1.0, x(q3) - x(q1)):.1f}" height="32" fill="{PALETTE[2]}" stroke="#30343f">'
        f'<title>middle half: {q1:,.0f} to {q3:,.0f} days</title></rect>'
        f'<line x1="{x(med):.1f}" x2="{x(med):.1f}" y1="{mid - 16}" y2="{mid + 16}" stroke="#30343f" stroke-width="3"/>'
        f'<text x="{min(max(x(med), left + 60), width - right - 60):.1f}" y="{mid + 34}" text-anchor="middle">median {med:,.0f} days</text>'
        f'<text x="{left}" y="{mid - 22}">{p.min_days:,}</text>'
        f'<text x="{width - right}" y="{mid - 22}" text-anchor="end">{p.max_days:,} days</text>'
        "</svg>"
    )


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(f'{v:,}' if isinstance(v, int) else str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:Georgia,'Times New Roman',serif;max-width:820px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
.meta{color:#555}.figure{font-size:2.4em;font-weight:bold;color:#d1495b}
svg.chart{display:block;max-width:100%;height:auto;font:12px Helvetica,Arial,sans-serif;fill:#222;margin:.6em 0}
table{border-collapse:collapse;font:13px Helvetica,Arial,sans-serif;margin:.4em 0}
td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left}td:last-child{text-align:right}
details{margin:.3em 0}.note{font-size:.9em;color:#555}
@media print{details{display:none}}
"""

# Only checks that every chart was laid out (the marks have a size); loads nothing.
_SCRIPT = """
(function(){var n=0;document.querySelectorAll('svg.chart').forEach(function(svg){
var marks=svg.querySelectorAll('.mark'),ok=marks.length>0;marks.forEach(function(m){var b=m.getBBox();if(!(b.width>0||b.height>0))ok=false;});
if(ok){n++;svg.setAttribute('data-drawn','yes');}});document.body.setAttribute('data-charts-drawn',String(n));})();
"""


def html_report(s: Summary) -> str:
    p = s.pretrial_custody
    org_rows = [[r.organization, r.cases] for r in s.political_prisoners_by_organization]
    articles = s.charges_by_article
    sections = [
        f"<h2>Recognised political prisoners in custody</h2><p class=\"figure\">{s.political_prisoners_in_custody:,}</p>"
        "<p class=\"note\">People in custody on this day whom at least one organisation recognises as a political "
        "prisoner (its latest word on the case is a recognition). By organisation (a person recognised by two "
        "counts for each):</p>"
        + _bars([(r.organization, r.cases) for r in s.political_prisoners_by_organization], "political_prisoners", colour=PALETTE[1])
        + f"<details><summary>Numbers</summary>{_table(['organisation', 'people in custody'], org_rows)}</details>",
        "<h2>Cases by custody and stage</h2>"
        + _stacked(s)
        + f"<details><summary>Numbers</summary>{_table(['custody', 'stage', 'cases'], [[r.custody, r.stage, r.cases] for r in s.by_custody_stage])}</details>",
        "<h2>Detentions and sentences per month</h2>"
        + _months(s)
        + f"<details><summary>Numbers</summary>{_table(['month', 'detentions', 'sentences'], [[m.month, m.detentions, m.sentences] for m in s.per_month])}</details>",
        "<h2>Charges by article</h2><p class=\"note\">Cases whose current charges include the article"
        + (f" (the 15 most frequent of {len(articles)})" if len(articles) > 15 else "")
        + ".</p>"
        + _bars([(f"{r.code} {r.article}", r.cases) for r in articles[:15]], "charges", colour=PALETTE[3])
        + f"<details><summary>Numbers</summary>{_table(['code', 'article', 'cases'], [[r.code, r.article, r.cases] for r in articles])}</details>",
        "<h2>Pre-trial custody</h2>"
        f"<p class=\"note\">Days from a person's first custody (detention, or remand in custody) to their first sentence, "
        f"for the {p.cases:,} people sentenced after being held.</p>"
        + _box(s)
        + _table(["", "days"], [[k, "-" if v is None else f"{v:,.0f}"] for k, v in (
            ("median", p.median_days), ("lower quartile", p.q1_days), ("upper quartile", p.q3_days),
            ("shortest", p.min_days), ("longest", p.max_days))]),
    ]
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>Political prosecutions: summary on {_e(s.on)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Political prosecutions: summary on {_e(s.on)}</h1>"
        f"<p class=\"meta\">{s.cases:,} cases in the record as it stood on {_e(s.on)}; computed from the case log up to "
        f"record {s.as_of_seq:,} (casetrail). Every figure is derived from dated, sourced events; corrections "
        "known today are applied.</p>"
        + "".join(sections)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )
