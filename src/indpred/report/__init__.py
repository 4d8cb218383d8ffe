"""Figures and a self-contained HTML report from evaluation arrays and metrics.

No model code: inputs are NumPy arrays and JSON-able dicts.
"""

from indpred.report.figures import (
    frames_to_rgb,
    label_width,
    plot_curves,
    plot_lagged_correlation,
    plot_matrix,
    save_frame_grid,
    save_gif,
)
from indpred.report.html import Figure, KeyValues, Section, Table, Text, render_report, write_report

__all__ = [
    "Figure",
    "KeyValues",
    "Section",
    "Table",
    "Text",
    "frames_to_rgb",
    "label_width",
    "plot_curves",
    "plot_lagged_correlation",
    "plot_matrix",
    "render_report",
    "save_frame_grid",
    "save_gif",
    "write_report",
]
