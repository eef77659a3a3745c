"""The book's figure conventions, as save_figure checks them, on hand-made figures."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from moebackdoor import reporting, style  # noqa: E402

RATES = [0.5, 1, 2, 5, 10]


def _rates_plot():
    fig, ax = plt.subplots()
    ax.plot(RATES, [10, 40, 80, 95, 99], marker="o", label="square")
    ax.set(xlabel="poison rate (%)", ylabel="ASR (%)")
    return fig, ax


def test_plain_rate_ticks_pass_and_scientific_ones_fail():
    fig, ax = _rates_plot()
    ax.set_xscale("log")
    assert any("scientific ticks" in p for p in style.figure_problems(fig))
    style.rate_axis(ax, RATES)
    assert style.figure_problems(fig) == []
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "1", "2", "5", "10"]
    plt.close(fig)


def test_an_axis_with_ticks_needs_a_label_and_an_image_does_not():
    fig, (a, b) = plt.subplots(1, 2)
    a.plot([0, 1], [0, 1])
    a.set_xlabel("x")
    b.imshow(np.zeros((4, 4)))
    b.set_xticks([]), b.set_yticks([])
    assert style.figure_problems(fig) == ["panel 1: the y axis has ticks but no label"]
    plt.close(fig)


def test_layers_take_integer_ticks():
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2, 3], [5, 60, 40, 5])
    ax.set(xlabel="layer", ylabel="ASR (%)")
    ax.set_xticks([0, 0.5, 1, 1.5, 2, 2.5, 3])
    assert any("non-integer" in p for p in style.figure_problems(fig))
    style.integer_axis(ax)
    assert style.figure_problems(fig) == []
    plt.close(fig)


def test_a_legend_over_the_data_fails_and_one_outside_passes():
    fig, ax = plt.subplots()
    x = np.linspace(0, 1, 200)
    for k in range(3):  # fill the axes, so that no corner is free
        ax.scatter(x, (x * 7 + k / 3) % 1, s=4, label=f"set {k}")
    ax.set(xlabel="x", ylabel="y")
    ax.legend(loc="upper left")
    assert any("legend covers" in p for p in style.figure_problems(fig))
    style.legend_outside(ax)
    assert style.figure_problems(fig) == []
    plt.close(fig)


def test_save_figure_refuses_a_figure_that_breaks_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEBD_OUTPUT_DIR", str(tmp_path))
    fig, ax = _rates_plot()
    ax.set_xscale("log")
    with pytest.raises(ValueError, match="'bad'.*scientific ticks"):
        reporting.save_figure(fig, "bad")
    assert not list(tmp_path.rglob("*.png"))
    plt.close(fig)
