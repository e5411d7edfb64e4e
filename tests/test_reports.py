"""Check the figures, the network helpers behind them and the comparison report."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stepbystep.evaluation.network import ACTIVATIONS, activation, equivalent_linear_weight
from stepbystep.reports import comparison, figures, network_figures


def _moons_like(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    points = rng.normal(size=(n, 2)) + labels[:, None] * np.array([1.5, -1.0])
    return points, labels


def _logistic(points: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(points @ np.array([1.18, -1.87]) - 0.06)))


def _scores() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    points, labels = _moons_like()
    noisy = np.clip(_logistic(points) + np.random.default_rng(1).normal(0, 0.2, labels.size), 0, 1)
    return {"logistic": (labels, _logistic(points)), "noisy": (labels, noisy)}


def _assert_png(path: Path, width: int, height: int) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (width, height)
    assert os.listdir(path.parent) == [path.name], "a temporary file was left behind"


# --- figures ----------------------------------------------------------------


def test_loss_curves_png(tmp_path):
    losses = {
        "relu": {"train_loss": [0.7, 0.5, 0.4], "val_loss": [0.72, 0.55, 0.45]},
        "sigmoid": {"train_loss": np.array([0.7, 0.69, 0.68])},
    }

    path = figures.plot_loss_curves(losses, tmp_path / "loss.png", title="Activations", log_scale=True)

    _assert_png(path, 2 * 450, 350)


def test_loss_curves_reject_length_mismatch(tmp_path):
    losses = {"relu": {"train_loss": [0.7, 0.5], "val_loss": [0.7]}}

    with pytest.raises(ValueError, match="2 train_loss values but 1 val_loss values"):
        figures.plot_loss_curves(losses, tmp_path / "loss.png")


def test_roc_and_pr_curves_png(tmp_path):
    roc = figures.plot_roc_curves(_scores(), tmp_path / "roc" / "moons_roc.png")
    pr = figures.plot_pr_curves(_scores(), tmp_path / "pr" / "moons_pr.png")

    _assert_png(roc, 500, 500)
    _assert_png(pr, 500, 500)


def test_decision_boundary_with_feature_map(tmp_path):
    points, labels = _moons_like()
    received = []

    def predict_proba(grid: np.ndarray) -> np.ndarray:
        received.append(grid.shape)
        # An added x1 * x2 feature, applied inside the callable as a model with a feature map would.
        features = np.column_stack([grid, grid[:, 0] * grid[:, 1]])
        logits = features @ np.array([1.0, -1.5, 0.8])
        return (1.0 / (1.0 + np.exp(-logits)))[:, None]

    path = figures.plot_decision_boundary(
        predict_proba, points, labels, tmp_path / "boundary.png", resolution=50
    )

    _assert_png(path, 550, 450)
    assert received == [(50 * 50, 2)]


def test_decision_boundary_without_boundary_line(tmp_path):
    points, labels = _moons_like()

    path = figures.plot_decision_boundary(
        lambda grid: np.full(len(grid), 0.9), points, labels, tmp_path / "boundary.png", resolution=20
    )

    _assert_png(path, 550, 450)


@pytest.mark.parametrize(
    ("predict_proba", "message"),
    [
        (lambda grid: np.full((len(grid), 2), 0.5), r"returned shape \(400, 2\)"),
        (lambda grid: np.full(len(grid), 1.5), r"probabilities in \[0, 1\]"),
        (lambda grid: np.full(len(grid), np.nan), r"probabilities in \[0, 1\]"),
    ],
)
def test_decision_boundary_rejects_invalid_output(tmp_path, predict_proba, message):
    points, labels = _moons_like()

    with pytest.raises(ValueError, match=message):
        figures.plot_decision_boundary(predict_proba, points, labels, tmp_path / "b.png", resolution=20)

    assert not (tmp_path / "b.png").exists()


def test_decision_boundary_rejects_invalid_points(tmp_path):
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\)"):
        figures.plot_decision_boundary(_logistic, np.zeros((4, 3)), [0, 1, 0, 1], tmp_path / "b.png")


def test_regression_fit_png(tmp_path):
    rng = np.random.default_rng(42)
    x = rng.random((100, 1))
    y = 1 + 2 * x + 0.1 * rng.normal(size=(100, 1))

    path = figures.plot_regression_fit(
        x, y, tmp_path / "fit.png", learned=(1.0233, 1.9414), true=(1.0, 2.0)
    )

    _assert_png(path, 500, 400)


def test_figures_are_byte_identical(tmp_path):
    points, labels = _moons_like()
    paths = []
    for index in range(2):
        folder = tmp_path / str(index)
        boundary = figures.plot_decision_boundary(
            _logistic, points, labels, folder / "boundary.png", resolution=40
        )
        roc = figures.plot_roc_curves(_scores(), folder / "roc.png")
        paths.append((boundary, roc))

    assert paths[0][0].read_bytes() == paths[1][0].read_bytes()
    assert paths[0][1].read_bytes() == paths[1][1].read_bytes()


def test_figures_ignore_local_style(tmp_path):
    import matplotlib

    baseline = figures.plot_roc_curves(_scores(), tmp_path / "baseline.png")
    with matplotlib.rc_context({"lines.linewidth": 5.0, "axes.facecolor": "black"}):
        styled = figures.plot_roc_curves(_scores(), tmp_path / "styled.png")

    assert baseline.read_bytes() == styled.read_bytes()


def _savefig_png(figure, path):
    """Write ``figure`` with a plain ``savefig`` call, which draws it twice when it has a layout engine."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figures.DPI, metadata={"Software": None})
    path = Path(path)
    path.write_bytes(buffer.getvalue())
    return path


_GRADIENTS = {
    "sigmoid": {"hidden0": [1e-3, 5e-4, 2e-4], "output": [1e-2, 8e-3, 6e-3]},
    "relu": {"hidden0": [0.0, 0.0, 0.0], "output": [2e-2, 1e-2, 5e-3]},
}
_LOSSES = {
    "relu": {"train_loss": [0.7, 0.5, 0.4], "val_loss": [0.72, 0.55, 0.45]},
    "tanh": {"train_loss": [0.69, 0.6, 0.58], "val_loss": [0.7, 0.62, 0.6]},
}
_DRAWINGS = {
    "loss_curves": lambda path: figures.plot_loss_curves(_LOSSES, path, title="Losses"),
    "roc": lambda path: figures.plot_roc_curves(_scores(), path),
    "pr": lambda path: figures.plot_pr_curves(_scores(), path),
    "decision_boundary": lambda path: figures.plot_decision_boundary(_logistic, *_moons_like(), path, resolution=40),
    "regression_fit": lambda path: figures.plot_regression_fit(
        np.arange(5.0), 1 + 2 * np.arange(5.0), path, learned=(1.1, 1.9), true=(1.0, 2.0)
    ),
    "filters": lambda path: network_figures.plot_filters(np.random.default_rng(0).normal(size=(5, 25)), path),
    "weight_images": lambda path: network_figures.plot_weight_images(
        {"a": np.linspace(-1, 1, 25), "b": np.linspace(0, 0.01, 25)}, path, shared_scale=False
    ),
    "activation_functions": lambda path: network_figures.plot_activation_functions(path),
    "gradients": lambda path: network_figures.plot_gradient_magnitudes(_GRADIENTS, path),
}


@pytest.mark.parametrize("name", sorted(_DRAWINGS))
def test_save_png_matches_savefig(tmp_path, monkeypatch, name):
    one_draw = _DRAWINGS[name](tmp_path / "one_draw.png")
    monkeypatch.setattr(figures, "save_png", _savefig_png)
    monkeypatch.setattr(network_figures, "save_png", _savefig_png)
    two_draws = _DRAWINGS[name](tmp_path / "savefig.png")

    assert one_draw.read_bytes() == two_draws.read_bytes()


def test_save_png_draws_once(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    draws = []
    draw = Figure.draw

    def counting_draw(self, renderer):
        draws.append(self)
        return draw(self, renderer)

    monkeypatch.setattr(Figure, "draw", counting_draw)

    figures.plot_loss_curves(_LOSSES, tmp_path / "loss.png")

    assert len(draws) == 1


def test_save_png_other_dpi(tmp_path):
    with figures.default_style():
        figure = figures.new_figure()
        figure.set_dpi(50)
        figure.subplots().plot([0, 1], [1, 0])
        path = figures.save_png(figure, tmp_path / "line.png")

    _assert_png(path, 450, 350)


def test_drawing_leaves_pyplot_alone(tmp_path):
    code = f"""
import sys
import stepbystep.reports
print('matplotlib' in sys.modules)
from stepbystep.reports import figures
figures.plot_roc_curves({{"m": ([0, 1, 1, 0], [0.2, 0.8, 0.6, 0.4])}}, {str(tmp_path / "roc.png")!r})
print('matplotlib.pyplot' in sys.modules)
"""
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    imported_on_import, pyplot_imported = output.stdout.split()
    assert imported_on_import == "False"
    assert pyplot_imported == "False"
    _assert_png(tmp_path / "roc.png", 500, 500)


# --- chapter 4 figures and their helpers ------------------------------------


def test_filters_png(tmp_path):
    weight = np.random.default_rng(0).normal(size=(5, 25))

    path = network_figures.plot_filters(weight, tmp_path / "filters.png")

    _assert_png(path, 5 * 260, 290)


def test_filters_reject_non_square_rows(tmp_path):
    with pytest.raises(ValueError, match="26 weights, which is not a square image"):
        network_figures.plot_filters(np.zeros((5, 26)), tmp_path / "filters.png")


@pytest.mark.parametrize("shared_scale", [True, False])
def test_weight_images_png(tmp_path, shared_scale):
    rng = np.random.default_rng(0)
    deep_weights = [rng.normal(size=(5, 25)), rng.normal(size=(3, 5)), rng.normal(size=(1, 3))]
    weights = {
        "logistic": rng.normal(size=(1, 25)),
        "deep linear": equivalent_linear_weight(deep_weights),
    }

    path = network_figures.plot_weight_images(weights, tmp_path / "weights.png", shared_scale=shared_scale)

    _assert_png(path, 2 * 260, 290)


def test_activation_functions_png(tmp_path):
    path = network_figures.plot_activation_functions(tmp_path / "activations.png")

    _assert_png(path, 5 * 320, 300)


@pytest.mark.parametrize(
    "relu_first_layer",
    [[0.1, 0.05, 0.02], [0.0, 0.0, 0.0]],
    ids=["positive", "dead_layer"],
)
def test_gradient_magnitudes_png(tmp_path, relu_first_layer):
    gradients = {
        "sigmoid": {"hidden0": [1e-3, 5e-4, 2e-4], "output": [1e-2, 8e-3, 6e-3]},
        "relu": {"hidden0": relu_first_layer, "output": [2e-2, 1e-2, 5e-3]},
    }

    path = network_figures.plot_gradient_magnitudes(gradients, tmp_path / "gradients.png")

    _assert_png(path, 2 * 400, 350)


def test_gradient_magnitudes_reject_nan(tmp_path):
    with pytest.raises(ValueError, match="NaN or infinite"):
        network_figures.plot_gradient_magnitudes({"relu": {"hidden0": [0.1, float("nan")]}}, tmp_path / "g.png")


def test_equivalent_weight_matches_torch():
    torch.manual_seed(17)
    model = torch.nn.Sequential(
        torch.nn.Linear(25, 5, bias=False),
        torch.nn.Linear(5, 3, bias=False),
        torch.nn.Linear(3, 1, bias=False),
    )
    weights = [layer.weight.detach().numpy() for layer in model]
    inputs = torch.randn(8, 25)

    combined = equivalent_linear_weight(weights)

    assert combined.shape == (1, 25)
    with torch.no_grad():
        expected = model(inputs).numpy()
    np.testing.assert_allclose(inputs.numpy() @ combined.T, expected, rtol=1e-5, atol=1e-6)


def test_equivalent_weight_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"layer 1 has weight shape \(3, 4\)"):
        equivalent_linear_weight([np.zeros((5, 25)), np.zeros((3, 4))])


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_matches_torch_autograd(name):
    modules = {
        "sigmoid": torch.nn.Sigmoid(),
        "tanh": torch.nn.Tanh(),
        "relu": torch.nn.ReLU(),
        "leaky_relu": torch.nn.LeakyReLU(negative_slope=0.01),
        "prelu": torch.nn.PReLU(init=0.25),
    }
    z = torch.tensor([-40.0, -3.0, -0.5, 0.0, 0.5, 3.0, 40.0], dtype=torch.float64, requires_grad=True)
    output = modules[name].double()(z)
    output.sum().backward()

    values, derivatives = activation(name, z.detach().numpy())

    np.testing.assert_allclose(values, output.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(derivatives, z.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_activation_rejects_unknown_name():
    with pytest.raises(ValueError, match="activation must be one of sigmoid"):
        activation("gelu", np.zeros(3))


# --- comparison report ------------------------------------------------------


def _classifier(roc_auc: float, **extra) -> dict:
    return {"roc_auc": roc_auc, "pr_auc": 0.9, "accuracy": 0.85, "val_loss": 0.4, "n_parameters": 3} | extra


def _tasks() -> dict:
    return {
        "moons": {
            "logistic": _classifier(0.94),
            "squared | features": _classifier(0.97),
            "deep": _classifier(0.91),
        },
        "regression": {
            "linear_gd": {"mse": 0.0091, "rmse": 0.095, "r2": 0.98, "val_loss": 0.0091, "n_parameters": 2},
            "linear_sgd": {"mse": 0.0082, "rmse": 0.091, "r2": 0.99, "val_loss": 0.0082, "n_parameters": 2},
        },
    }


def _table_rows(markdown: str, heading: str) -> list[str]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    return [line for line in lines if line.startswith("| ") and not line.startswith("| rank")]


def test_markdown_orders_classifiers_by_roc_auc():
    markdown = comparison.render_comparison_markdown(_tasks(), {}, "reports")

    rows = _table_rows(markdown, "moons")

    assert len(rows) == 3
    assert rows[0].startswith("| 1 | **squared \\| features** (best) | 0.97 |")
    assert rows[1].startswith("| 2 | logistic | 0.94 |")
    assert rows[2].startswith("| 3 | deep | 0.91 |")
    assert markdown.count("(best)") == 2


def test_markdown_orders_regression_by_mse():
    markdown = comparison.render_comparison_markdown(_tasks(), {}, "reports")

    rows = _table_rows(markdown, "regression")

    assert rows[0].startswith("| 1 | **linear\\_sgd** (best) | 0.0082 |")
    assert rows[1].startswith("| 2 | linear\\_gd | 0.0091 |")
    assert "sorted by mse, lower is better" in markdown


def test_markdown_table_columns():
    markdown = comparison.render_comparison_markdown(_tasks(), {}, "reports")

    header = next(line for line in markdown.splitlines() if line.startswith("| rank"))

    assert header == "| rank | model | roc_auc | pr_auc | accuracy | val_loss | n_parameters |"
    assert "| 3 |" in _table_rows(markdown, "moons")[2]
    assert _table_rows(markdown, "moons")[2].endswith("| 0.4 | 3 |")


def test_markdown_marks_every_tied_best():
    tasks = {"moons": {"b": _classifier(0.95), "a": _classifier(0.95), "c": _classifier(0.9)}}

    rows = _table_rows(comparison.render_comparison_markdown(tasks, {}, "."), "moons")

    assert rows[0].startswith("| 1 | **a** (best)")
    assert rows[1].startswith("| 2 | **b** (best)")
    assert "(best)" not in rows[2]


def test_markdown_fills_missing_values():
    tasks = {"moons": {"a": _classifier(0.9), "b": {"roc_auc": 0.8}}}

    rows = _table_rows(comparison.render_comparison_markdown(tasks, {}, "."), "moons")

    assert rows[1] == "| 2 | b | 0.8 | n/a | n/a | n/a | n/a |"


def test_markdown_links_figures_relative(tmp_path):
    figure = tmp_path / "reports" / "figures" / "moons roc.png"
    extra = tmp_path / "reports" / "figures" / "activations.png"

    markdown = comparison.render_comparison_markdown(
        _tasks(), {"moons": [figure], "activations": [extra]}, tmp_path / "reports"
    )

    assert "![moons roc](figures/moons%20roc.png)" in markdown
    assert markdown.index("## activations") > markdown.index("## regression")
    assert "![activations](figures/activations.png)" in markdown
    assert str(tmp_path) not in markdown


def test_task_kind_rejects_mixed_models():
    tasks = {"mixed": {"a": _classifier(0.9), "b": {"mse": 0.1}}}

    with pytest.raises(ValueError, match="task 'mixed' mixes or lacks primary metrics"):
        comparison.render_comparison_markdown(tasks, {}, ".")


def test_merge_task_metrics_rejects_duplicates():
    tasks = {"moons": {"logistic": _classifier(0.9)}, "images": {"logistic": _classifier(0.8)}}

    with pytest.raises(ValueError, match="model 'logistic' appears in tasks 'moons' and 'images'"):
        comparison.merge_task_metrics(tasks)


def test_merge_task_metrics_layout():
    merged = comparison.merge_task_metrics(_tasks())

    assert sorted(merged) == ["deep", "linear_gd", "linear_sgd", "logistic", "squared | features"]
    assert merged["linear_sgd"]["mse"] == 0.0082


def _write_figures(folder: Path) -> dict[str, list[Path]]:
    moons = [
        figures.plot_roc_curves(_scores(), folder / "moons_roc.png"),
        figures.plot_pr_curves(_scores(), folder / "moons_pr.png"),
    ]
    activations = [network_figures.plot_activation_functions(folder / "activations.png")]
    return {"moons": moons, "activations": activations}


def test_html_embeds_every_figure(tmp_path):
    figure_paths = _write_figures(tmp_path / "figures")

    path = comparison.write_report_html(tmp_path / "report.html", _tasks(), figure_paths)

    text = path.read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 3
    assert text.count("data:image/png;base64,") == 3
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    embedded = [base64.b64decode(source.split(",", 1)[1]) for source in sources]
    expected = [figure.read_bytes() for paths in figure_paths.values() for figure in paths]
    assert embedded == expected


def test_html_is_self_contained(tmp_path):
    figure_paths = _write_figures(tmp_path / "figures")

    text = comparison.render_report_html(_tasks(), figure_paths)

    assert "http://" not in text
    assert "https://" not in text
    assert "<script" not in text
    assert "<link" not in text
    assert "href=" not in text
    assert "url(" not in text


def test_html_escapes_names():
    tasks = {"a<b>": {"<script>alert(1)</script>": _classifier(0.9), "x & y": _classifier(0.8)}}

    text = comparison.render_report_html(tasks, {}, title="Models & <more>")

    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "x &amp; y" in text
    assert "<h2>a&lt;b&gt;</h2>" in text
    assert "<title>Models &amp; &lt;more&gt;</title>" in text


def test_html_marks_best_row():
    text = comparison.render_report_html(_tasks(), {})

    best_rows = re.findall(r'<tr class="best">.*?</tr>', text)

    assert len(best_rows) == 2
    assert "<strong>squared | features</strong> (best)" in best_rows[0]
    assert "<strong>linear_sgd</strong> (best)" in best_rows[1]


def test_html_rejects_non_png(tmp_path):
    fake = tmp_path / "figure.png"
    fake.write_bytes(b"GIF89a")

    with pytest.raises(ValueError, match="is not a PNG file"):
        comparison.render_report_html(_tasks(), {"moons": [fake]})


def test_report_files_are_byte_identical(tmp_path):
    figure_paths = _write_figures(tmp_path / "figures")
    outputs = []
    for index in range(2):
        markdown_path = tmp_path / f"comparison_{index}.md"
        html_path = tmp_path / f"report_{index}.html"
        markdown = comparison.write_comparison_markdown(markdown_path, _tasks(), figure_paths)
        page = comparison.write_report_html(html_path, _tasks(), figure_paths)
        outputs.append((markdown.read_bytes(), page.read_bytes()))

    assert outputs[0] == outputs[1]
    assert sorted(os.listdir(tmp_path)) == [
        "comparison_0.md", "comparison_1.md", "figures", "report_0.html", "report_1.html",
    ]  # fmt: skip
