"""The model comparison report, as Markdown with linked figures and as one HTML file.

Both take the same inputs:

- ``tasks``: ``{task_name: {model_name: metrics}}``, where ``metrics`` is an
  entry of metrics.json, e.g. from
  :func:`stepbystep.evaluation.metrics.classification_metrics`.
- ``figures``: ``{section_name: [png_path, ...]}``. A section named like a
  task follows that task's table, and other sections (plots of activation
  functions, say) come after all tasks, in mapping order.

Each task's table lists its models best first by the primary metric: ROC AUC,
highest first, when every model has ``roc_auc``, or validation MSE, lowest
first, when every model has ``mse``. Ties keep alphabetical order and every
tied best model gets the best marker. Values compare after rounding to the
significant digits that metrics.json keeps, so the ranking matches the file.
The HTML embeds every figure as a base64 data URI and needs no other file.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from stepbystep.evaluation.writers import atomic_write_text, round_significant

TaskMetrics = Mapping[str, Mapping[str, Mapping[str, Any]]]
Figures = Mapping[str, Sequence[str | os.PathLike[str]]]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BEST_MARKER = "(best)"
MISSING_VALUE = "n/a"


@dataclass(frozen=True)
class TaskKind:
    """Ranking rule and table columns of one kind of task."""

    name: str
    primary_metric: str
    higher_is_better: bool
    columns: tuple[str, ...]


CLASSIFICATION = TaskKind(
    name="classification",
    primary_metric="roc_auc",
    higher_is_better=True,
    columns=(
        "roc_auc",
        "pr_auc",
        "average_precision",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "val_loss",
        "n_parameters",
    ),
)
REGRESSION = TaskKind(
    name="regression",
    primary_metric="mse",
    higher_is_better=False,
    columns=("mse", "rmse", "mae", "r2", "val_loss", "n_parameters"),
)


@dataclass(frozen=True)
class RankedModel:
    """One table row: a model with its rank and whether it shares the best primary value."""

    rank: int
    name: str
    metrics: Mapping[str, Any]
    is_best: bool


# --- ranking ---------------------------------------------------------------


def task_kind(task: str, models: Mapping[str, Mapping[str, Any]]) -> TaskKind:
    """Tell whether a task's models are classifiers or regressors from their metrics.

    Raises:
        ValueError: the task has no models, or its models do not all carry
            ``roc_auc`` or all carry ``mse``.
    """
    if not models:
        raise ValueError(f"task {task!r} has no models")
    for kind in (CLASSIFICATION, REGRESSION):
        if all(kind.primary_metric in metrics for metrics in models.values()):
            return kind
    raise ValueError(
        f"task {task!r} mixes or lacks primary metrics: every model needs "
        f"'{CLASSIFICATION.primary_metric}' (classification) or "
        f"'{REGRESSION.primary_metric}' (regression); models: {sorted(models)}"
    )


def rank_models(task: str, models: Mapping[str, Mapping[str, Any]]) -> list[RankedModel]:
    """Sort a task's models best first by its primary metric, see the module docstring."""
    kind = task_kind(task, models)
    sign = -1.0 if kind.higher_is_better else 1.0

    def primary(name: str) -> float:
        return round_significant(float(models[name][kind.primary_metric]))

    ordered = sorted(models, key=lambda name: (sign * primary(name), name))
    best_value = primary(ordered[0])
    return [
        RankedModel(
            rank=index + 1,
            name=name,
            metrics=models[name],
            is_best=primary(name) == best_value,
        )
        for index, name in enumerate(ordered)
    ]


def merge_task_metrics(tasks: TaskMetrics) -> dict[str, dict[str, Any]]:
    """Merge ``{task: {model: metrics}}`` into the metrics.json layout ``{model: metrics}``.

    Raises:
        ValueError: two tasks name the same model, which would overwrite one entry.
    """
    merged: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    for task, models in tasks.items():
        for model, metrics in models.items():
            if model in merged:
                raise ValueError(
                    f"model {model!r} appears in tasks {owner[model]!r} and {task!r}; "
                    "model names must be unique across tasks"
                )
            merged[model] = dict(metrics)
            owner[model] = task
    return merged


def format_value(value: Any) -> str:
    """Format a table cell: ints as they are, floats with 4 significant digits."""
    if value is None:
        return MISSING_VALUE
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)


def _columns(kind: TaskKind, models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Keep the kind's columns that at least one model fills."""
    filled = set()
    for metrics in models.values():
        filled.update(metrics)
    return [column for column in kind.columns if column in filled]


def _sections(tasks: TaskMetrics, figures: Figures) -> list[str]:
    return list(tasks) + [name for name in figures if name not in tasks]


def _sort_note(kind: TaskKind) -> str:
    order = "higher" if kind.higher_is_better else "lower"
    return f"sorted by {kind.primary_metric}, {order} is better"


# --- Markdown --------------------------------------------------------------

# Backslash escapes work on any ASCII punctuation in CommonMark. These are the
# characters that can start emphasis, code, links, HTML or a table cell border.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!])")


def escape_markdown(text: str) -> str:
    """Escape text for a Markdown table cell or heading, on one line."""
    one_line = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", one_line)


def _relative_url(figure: str | os.PathLike[str], base: Path) -> str:
    relative = os.path.relpath(Path(figure), base)
    return quote(PurePath(relative).as_posix())


def _markdown_table(task: str, models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    kind = task_kind(task, models)
    columns = _columns(kind, models)
    lines = [
        "| rank | model | " + " | ".join(columns) + " |",
        "|---:|---|" + "---:|" * len(columns),
    ]
    for row in rank_models(task, models):
        name = escape_markdown(row.name)
        cell = f"**{name}** {BEST_MARKER}" if row.is_best else name
        values = [format_value(row.metrics.get(column)) for column in columns]
        lines.append(f"| {row.rank} | {cell} | " + " | ".join(values) + " |")
    return lines


def render_comparison_markdown(
    tasks: TaskMetrics,
    figures: Figures,
    report_dir: str | os.PathLike[str],
    *,
    title: str = "Model comparison",
) -> str:
    """Render the comparison as Markdown, with figures linked relative to ``report_dir``.

    ``report_dir`` is the folder the Markdown file will live in.
    """
    base = Path(report_dir)
    lines = [f"# {escape_markdown(title)}", ""]
    for section in _sections(tasks, figures):
        lines += [f"## {escape_markdown(section)}", ""]
        if section in tasks:
            kind = task_kind(section, tasks[section])
            lines += [f"{kind.name.capitalize()}, {_sort_note(kind)}.", ""]
            lines += _markdown_table(section, tasks[section])
            lines.append("")
        for figure in figures.get(section, ()):
            name = escape_markdown(Path(figure).stem)
            lines += [f"![{name}]({_relative_url(figure, base)})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_comparison_markdown(
    path: str | os.PathLike[str],
    tasks: TaskMetrics,
    figures: Figures,
    *,
    title: str = "Model comparison",
) -> Path:
    """Write :func:`render_comparison_markdown` to ``path`` atomically, linking from its folder."""
    target = Path(path)
    text = render_comparison_markdown(tasks, figures, target.parent, title=title)
    return atomic_write_text(target, text)


# --- HTML ------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.best { background: #e8f5e9; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9rem; }
""".strip()


def png_data_uri(path: str | os.PathLike[str]) -> str:
    """Read a PNG file and return it as a ``data:image/png;base64,`` URI.

    Raises:
        ValueError: the file does not start with the PNG signature.
    """
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file; only PNG figures can be embedded")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _html_table(task: str, models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    kind = task_kind(task, models)
    columns = _columns(kind, models)
    header = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    lines = ["<table>", f"<thead><tr><th>rank</th><th>model</th>{header}</tr></thead>", "<tbody>"]
    for row in rank_models(task, models):
        name = html.escape(row.name)
        cell = f"<strong>{name}</strong> {BEST_MARKER}" if row.is_best else name
        values = "".join(
            f'<td class="number">{html.escape(format_value(row.metrics.get(column)))}</td>'
            for column in columns
        )
        row_class = ' class="best"' if row.is_best else ""
        rank = f'<td class="number">{row.rank}</td>'
        lines.append(f"<tr{row_class}>{rank}<td>{cell}</td>{values}</tr>")
    lines += ["</tbody>", "</table>"]
    return lines


def render_report_html(
    tasks: TaskMetrics, figures: Figures, *, title: str = "Model comparison"
) -> str:
    """Render the comparison as one self-contained HTML page with embedded figures.

    The page has inline CSS, no scripts and no reference to any other file or URL.
    """
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in _sections(tasks, figures):
        lines += ["<section>", f"<h2>{html.escape(section)}</h2>"]
        if section in tasks:
            kind = task_kind(section, tasks[section])
            note = f"{kind.name.capitalize()}, {_sort_note(kind)}."
            lines.append(f"<p>{html.escape(note)}</p>")
            lines += _html_table(section, tasks[section])
        for figure in figures.get(section, ()):
            caption = html.escape(Path(figure).stem)
            lines += [
                "<figure>",
                f'<img src="{png_data_uri(figure)}" alt="{caption}">',
                f"<figcaption>{caption}</figcaption>",
                "</figure>",
            ]
        lines.append("</section>")
    lines += ["</body>", "</html>"]
    return "\n".join(lines) + "\n"


def write_report_html(
    path: str | os.PathLike[str],
    tasks: TaskMetrics,
    figures: Figures,
    *,
    title: str = "Model comparison",
) -> Path:
    """Write :func:`render_report_html` to ``path`` atomically."""
    return atomic_write_text(path, render_report_html(tasks, figures, title=title))
