"""Report: figure files and exact frame layouts, HTML escaping and self-containment, and a
real headless-browser render (Debian's chromium via playwright) of a report that uses every
figure function and every section type."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indpred.report import (
    Figure,
    KeyValues,
    Table,
    Text,
    frames_to_rgb,
    label_width,
    plot_curves,
    plot_lagged_correlation,
    plot_matrix,
    render_report,
    save_frame_grid,
    save_gif,
    write_report,
)
from indpred.report.figures import SEPARATOR
from indpred.report.html import format_value
from tests.browser import render

NASTY = "<script>alert('x')</script> & \"quotes\""


def moving_squares(R: int, T: int, C: int = 2, H: int = 16, W: int = 16) -> np.ndarray:
    """(R, T, C, H, W) in [0, 1]: row r shows a square in channel r % C moving right by one px a step."""
    rows = np.zeros((R, T, C, H, W))
    for r in range(R):
        for t in range(T):
            x = (2 * r + t) % (W - 4)
            rows[r, t, r % C, 4:9, x:x + 4] = 1.0
    return rows


# --------------------------------------------------------------------------- frames_to_rgb

def test_frames_to_rgb_grey_is_copied_to_three_channels():
    frames = np.array([[[[0.0, 1.0], [0.2, 0.6]]]])  # (1, 1, 2, 2)
    rgb = frames_to_rgb(frames)
    assert rgb.shape == (1, 2, 2, 3) and rgb.dtype == np.uint8
    expected = np.array([[0, 255], [51, 153]], dtype=np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(rgb[0, :, :, c], expected)


def test_frames_to_rgb_two_channels_get_a_zero_blue_channel():
    frames = np.stack([np.full((2, 3), 0.2), np.full((2, 3), 1.0)])  # (C=2, H=2, W=3)
    rgb = frames_to_rgb(frames)
    assert rgb.shape == (2, 3, 3)
    assert (rgb[..., 0] == 51).all() and (rgb[..., 1] == 255).all() and (rgb[..., 2] == 0).all()


def test_frames_to_rgb_three_channels_move_to_last_axis_and_clip():
    frames = np.zeros((4, 5, 3, 2, 2))  # batch dims are kept
    frames[1, 2, 0, 0, 1] = 1.0
    frames[1, 2, 1, 1, 0] = 0.4
    frames[1, 2, 2, 1, 1] = 7.0  # clipped to 1
    frames[0, 0, 0, 0, 0] = -3.0  # clipped to 0
    frames[0, 0, 1, 0, 0] = np.nan  # becomes 0
    rgb = frames_to_rgb(frames)
    assert rgb.shape == (4, 5, 2, 2, 3)
    np.testing.assert_array_equal(rgb[1, 2], [[[0, 0, 0], [255, 0, 0]], [[0, 102, 0], [0, 0, 255]]])
    assert rgb[0, 0].sum() == 0
    assert rgb.sum() == 255 + 102 + 255


def test_frames_to_rgb_rejects_other_channel_counts():
    with pytest.raises(ValueError, match="C in 1, 2, 3"):
        frames_to_rgb(np.zeros((4, 8, 8)))


# --------------------------------------------------------------------------- grids and GIFs

def test_frame_grid_has_exact_layout(tmp_path):
    R, T, C, H, W, scale = 3, 5, 2, 6, 7, 3
    rows = np.random.default_rng(0).random((R, T, C, H, W))
    labels = ["truth", "factor 0", "factor 1"]
    path = save_frame_grid(rows, row_labels=labels, out_path=tmp_path / "grid.png", scale=scale)
    image = np.asarray(Image.open(path).convert("RGB"))
    lw = label_width(labels)
    assert lw > 0
    assert image.shape == (R * H * scale + (R + 1) * SEPARATOR, lw + T * W * scale + (T + 1) * SEPARATOR, 3)
    # Cell (r, t) holds the frame upscaled by nearest neighbour; separators are white.
    rgb = frames_to_rgb(rows)
    r, t = 1, 2
    top = SEPARATOR + r * (H * scale + SEPARATOR)
    left = lw + SEPARATOR + t * (W * scale + SEPARATOR)
    cell = image[top:top + H * scale, left:left + W * scale]
    np.testing.assert_array_equal(cell, rgb[r, t].repeat(scale, 0).repeat(scale, 1))
    assert (image[top - SEPARATOR:top, left:left + W * scale] == 255).all()
    assert (image[top:top + H * scale, left - SEPARATOR:left] == 255).all()
    # The label column has ink (dark pixels) for each row.
    for r in range(R):
        band = image[SEPARATOR + r * (H * scale + SEPARATOR):(r + 1) * (H * scale + SEPARATOR), :lw]
        assert band.min() < 128


def test_frame_grid_without_labels(tmp_path):
    rows = moving_squares(2, 4, C=1, H=8, W=8)
    path = save_frame_grid(rows, row_labels=None, out_path=tmp_path / "g.png", scale=1)
    assert Image.open(path).size == (4 * 8 + 5 * SEPARATOR, 2 * 8 + 3 * SEPARATOR)
    with pytest.raises(ValueError, match="row labels"):
        save_frame_grid(rows, row_labels=["only one"], out_path=tmp_path / "h.png")
    with pytest.raises(ValueError, match=r"\(R, T, C, H, W\)"):
        save_frame_grid(rows[0], row_labels=None, out_path=tmp_path / "h.png")


def test_gif_has_one_frame_per_step_and_loops(tmp_path):
    R, T, scale = 3, 7, 2
    rows = moving_squares(R, T, C=2)
    rows[2] = rows[2, :1]  # a static row must not make Pillow merge frames
    path = save_gif(rows, out_path=tmp_path / "a.gif", scale=scale, duration_ms=120,
                    row_labels=["truth", "f0", "f1"])
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == T
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 120
        size = gif.size
        assert size[1] > R * 16 * scale + (R + 1) * SEPARATOR  # frames stacked, plus a header line
    # Identical rows at every step still give T frames (the header numbers them).
    static = np.repeat(rows[:, :1], T, axis=1)
    with Image.open(save_gif(static, out_path=tmp_path / "s.gif")) as gif:
        assert gif.n_frames == T


def test_gif_frame_shows_each_rows_frame_t(tmp_path):
    R, T, H, W = 2, 4, 16, 16
    rows = moving_squares(R, T, C=2, H=H, W=W)
    path = save_gif(rows, out_path=tmp_path / "a.gif", scale=1)
    with Image.open(path) as gif:
        gif.seek(2)
        frame = np.asarray(gif.convert("RGB"))
    # Rows sit at the bottom, stacked, each with a separator below it.
    rgb = frames_to_rgb(rows)
    for r in range(R):
        bottom = frame.shape[0] - SEPARATOR - (R - 1 - r) * (H + SEPARATOR)
        np.testing.assert_array_equal(frame[bottom - H:bottom, SEPARATOR:SEPARATOR + W], rgb[r, 2])


# --------------------------------------------------------------------------- matplotlib figures

def _check_plot(paths, tmp_path, stem):
    assert [p.name for p in paths] == [f"{stem}.png", f"{stem}.svg"]
    png, svg = paths
    with Image.open(png) as im:
        assert 250 <= im.size[0] <= 2500 and 200 <= im.size[1] <= 2500
        assert np.asarray(im.convert("L")).std() > 5  # not blank
    assert "<svg" in svg.read_text()[:2000]


def test_plot_lagged_correlation(tmp_path):
    rng = np.random.default_rng(0)
    C = np.clip(np.eye(8) * 0.9 + rng.normal(0, 0.1, (8, 8)), -1, 1)
    C[3] = np.nan  # a dead unit
    paths = plot_lagged_correlation(C, factors=2, factor_dim=4, out_stem=tmp_path / "corr.v1")
    _check_plot(paths, tmp_path, "corr.v1")
    with pytest.raises(ValueError, match="expected"):
        plot_lagged_correlation(C, factors=3, factor_dim=4, out_stem=tmp_path / "x")


def test_plot_matrix_and_curves(tmp_path):
    M = np.array([[0.9, 0.1, np.nan], [0.2, 0.8, 0.05]])
    paths = plot_matrix(M, row_labels=["f0", "f1"], col_labels=["a", "b", "c"], out_stem=tmp_path / "m",
                        title="R", vmin=0, vmax=1)
    _check_plot(paths, tmp_path, "m")
    with pytest.raises(ValueError, match="labels"):
        plot_matrix(M, row_labels=["f0"], col_labels=["a", "b", "c"], out_stem=tmp_path / "n", title="R")
    x = np.arange(1, 11)
    paths = plot_curves(x, {"mean rollout": 1 / x, "best of 8": 0.5 / x}, xlabel="step", ylabel="MSE",
                        out_stem=tmp_path / "sub" / "c", title="prediction")
    _check_plot(paths, tmp_path, "c")
    with pytest.raises(ValueError, match="shape"):
        plot_curves(x, {"bad": x[:3]}, xlabel="s", ylabel="y", out_stem=tmp_path / "d", title="t")


# --------------------------------------------------------------------------- HTML

def tiny_png(path: Path) -> Path:
    Image.fromarray(np.full((4, 6, 3), 200, dtype=np.uint8)).save(path)
    return path


def test_html_escapes_all_text(tmp_path):
    png = tiny_png(tmp_path / "x.png")
    page = render_report(NASTY, [
        Table(NASTY, [NASTY, "v"], [[NASTY, 1.5]], note=NASTY),
        Figure(NASTY, png, caption=NASTY),
        Text(NASTY, f"{NASTY}\n\n- {NASTY}"),
        KeyValues(NASTY, {NASTY: NASTY}),
    ], config={"k": NASTY, NASTY: "</pre></details><script>"})
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "</pre></details><script>" not in page


def test_html_is_self_contained_and_markdownish(tmp_path):
    png = tiny_png(tmp_path / "x.png")
    out = write_report(tmp_path / "r" / "report.html", title="T", sections=[
        Figure("fig", png),
        Text("notes", "A `kl` term and **bold**.\nSecond line.\n\n- one\n- two"),
        Table("t", ["model", "MI (bits)", "n"], [["factored", np.float64(4.6123), np.int64(3)]]),
    ], config={"seed": 0})
    page = out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left behind
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert "<code>kl</code>" in page and "<strong>bold</strong>" in page
    assert "<ul><li>one</li><li>two</li></ul>" in page
    assert '<td class="num">4.612</td>' in page and '<td class="num">3</td>' in page
    assert "<details>" in page and '&quot;seed&quot;: 0' in page


def test_html_rejects_bad_sections(tmp_path):
    with pytest.raises(ValueError, match="cells"):
        render_report("T", [Table("t", ["a", "b"], [[1]])])
    with pytest.raises(TypeError, match="unknown report section"):
        render_report("T", ["not a section"])  # type: ignore[list-item]
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ValueError, match="cannot embed"):
        render_report("T", [Figure("f", tmp_path / "x.bmp")])


def test_format_value():
    assert format_value(4.61234) == "4.612"
    assert format_value(-2902.35) == "-2902.3"
    assert format_value(np.float32(0.5)) == "0.5"
    assert format_value(np.int64(7)) == "7"
    assert format_value(float("nan")) == "nan"
    assert format_value(True) == "True"
    assert format_value({"a": [1, 2]}) == '{"a": [1, 2]}'


# --------------------------------------------------------------------------- real browser

@pytest.fixture(scope="module")
def sample_report(tmp_path_factory) -> Path:
    """A report using every figure function and every section type, from synthetic arrays."""
    out = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    K, d = 2, 4
    C = np.clip(np.kron(np.eye(K), np.full((d, d), 0.3)) + np.eye(K * d) * 0.6
                + rng.normal(0, 0.05, (K * d, K * d)), -1, 1)
    corr = plot_lagged_correlation(C, factors=K, factor_dim=d, out_stem=out / "corr")
    mi = plot_matrix(np.array([[4.6, 0.7], [0.8, 4.5]]), row_labels=["f0", "f1"],
                     col_labels=["f0", "f1"], out_stem=out / "mi", title="MI (bits)")
    x = np.arange(1, 11)
    curves = plot_curves(x, {"mean rollout": 0.02 * np.sqrt(x), "best of 8": 0.012 * np.sqrt(x)},
                         xlabel="step", ylabel="MSE", out_stem=out / "pred", title="prediction error")
    rows = moving_squares(3, 8, C=2)
    grid = save_frame_grid(rows, row_labels=["truth", "factor 0", "factor 1"], out_path=out / "gen.png")
    gif = save_gif(rows, out_path=out / "gen.gif", row_labels=["truth", "factor 0", "factor 1"])
    return write_report(out / "report.html", title=NASTY, sections=[
        KeyValues("summary", {"ELBO per frame (nats)": -2902.4, "K": K, "d": d}),
        Table("mutual information", ["model", "same (bits)", "cross (bits)"],
              [["factored", 4.61, 0.75], ["entangled", 4.66, 2.61]], note="KSG, k = 3"),
        Text("notes", "Each factor should carry its own future.\n\n- one\n- `two`"),
        Figure("lagged correlation", corr[0]),
        Figure("mutual information", mi[0], caption="same-factor on the diagonal"),
        Figure("prediction", curves[0]),
        Figure("independent generations", grid),
        Figure("independent generations (animated)", gif),
    ], config={"model": {"factors": K, "factor_dim": d}, "seed": 0})


def test_report_renders_in_headless_chromium(sample_report, tmp_path):
    page = render(sample_report, tmp_path)
    assert page.errors == []
    assert all(u == sample_report.as_uri() or u.startswith("data:") for u in page.requests), page.requests
    assert len(page.images) == 5
    assert all(complete and w > 0 and h > 0 for complete, w, h in page.images), page.images
    assert page.heading == NASTY and page.scripts == 0  # the title's <script> is text, not a script
    assert json.loads(page.config_text)["model"]["factors"] == 2
    assert page.screenshot.shape[0] > 900  # full page, longer than the viewport
    assert not page.is_blank()
