"""What the Test page draws from an evaluation: the confusion matrix with the examples of a chosen cell, the
learning-curve chart and the live preview's bars.

The numbers are in `core.evaluation` and `core.insight`; this module only draws them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import data, evaluation, insight
from pages._explain import render_explain

GALLERY_SIZE = 12


def learning_curve_chart(curve: insight.LearningCurve) -> go.Figure:
    """Accuracy with its 95 % interval at each share of the labels, and the fitted trend out to twice the data."""
    sizes = [point.examples for point in curve.points]
    accuracies = [point.accuracy for point in curve.points]
    figure = go.Figure(go.Scatter(
        x=sizes, y=accuracies, mode="markers+lines", name="cross-validated accuracy",
        error_y={"type": "data", "symmetric": False,
                 "array": [point.interval95[1] - point.accuracy for point in curve.points],
                 "arrayminus": [point.accuracy - point.interval95[0] for point in curve.points]},
    ))
    if curve.trend is not None:
        grid = np.geomspace(min(sizes), 2 * curve.examples_now, 40)
        figure.add_trace(go.Scatter(x=grid, y=[curve.trend.accuracy(size) for size in grid], mode="lines",
                                    line={"dash": "dash"}, name="trend (power law)"))
    figure.update_layout(xaxis_title="labelled examples per model", yaxis_title="accuracy", yaxis_tickformat=".0%",
                         xaxis_type="log", height=320, margin={"t": 20, "b": 40, "l": 50, "r": 10})
    return figure


def live_bars(answer: pd.Series) -> go.Figure:
    """The top classes of one example as horizontal bars, the most likely on top: one row of `top_k_table`."""
    ranks = range(1, sum(column.startswith("class_") for column in answer.index) + 1)
    names = [str(answer[f"class_{rank}"]) for rank in ranks]
    shares = [float(answer[f"probability_{rank}"]) for rank in ranks]
    figure = go.Figure(
        go.Bar(x=shares, y=names, orientation="h", text=[f"{share:.0%}" for share in shares], textposition="auto",
               hovertemplate="%{y}: %{x:.1%}<extra></extra>")  # fmt: skip
    )
    figure.update_layout(
        xaxis={"title": "Probability", "tickformat": ".0%", "range": [0, 1]},
        yaxis={"autorange": "reversed"},
        height=80 + 40 * len(names),
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
    )
    return figure


def _count_ticks(largest: int, most: int = 6) -> list[int]:
    """Whole-number ticks from 0 to `largest` for a colour bar of counts (no "1.5 examples"), at most `most`."""
    step = max(1, -(-largest // (most - 1)))
    return list(range(0, largest + 1, step))


def _confusion_figure(result: evaluation.Evaluation, normalised: bool, chosen: tuple[str, str]) -> go.Figure:
    """A heatmap of the confusion matrix, with an invisible marker on every cell so that a click selects it, and
    the chosen (true, predicted) cell outlined: the one whose examples are shown below it.

    Streamlit's plotly selection returns nothing for heatmap traces, but it does for scatter markers.
    """
    names = result.classes
    values = result.confusion_normalised() if normalised else result.confusion
    text = [[f"{v:.0%}" if normalised else str(int(v)) for v in row] for row in values]
    largest = int(result.confusion.max())
    colour_bar = {"tickformat": ".0%"} if normalised else {"tickvals": _count_ticks(largest), "title": "examples"}
    figure = go.Figure(
        go.Heatmap(
            z=values.tolist(),
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalised else max(largest, 1),
            colorbar=colour_bar,
            hoverinfo="skip",
        )
    )
    true_name, predicted_name = chosen
    row, column = names.index(true_name), names.index(predicted_name)
    figure.add_shape(  # category axes place cell i at i, so the cell spans i - 0.5 to i + 0.5
        type="rect", x0=column - 0.5, x1=column + 0.5, y0=row - 0.5, y1=row + 0.5,
        line={"color": "#e67e22", "width": 4}, name="chosen cell",
    )
    cells_true = [true for true in names for _ in names]
    cells_predicted = [predicted for _ in names for predicted in names]
    counts = result.confusion.ravel().tolist()
    figure.add_trace(
        go.Scatter(
            x=cells_predicted,
            y=cells_true,
            mode="markers",
            marker={"symbol": "square", "size": 40, "color": "rgba(0,0,0,0)"},
            customdata=counts,
            hovertext=[data.plural(count, "example") for count in counts],
            hovertemplate="true %{y}, predicted %{x}: %{hovertext}<extra></extra>",
            showlegend=False,
        )
    )
    figure.update_layout(
        xaxis_title="Predicted class",
        yaxis_title="True class",
        yaxis_autorange="reversed",
        height=max(320, 60 * len(names) + 120),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        clickmode="event+select",
    )
    return figure


def _cell_from_selection(selection: Any, classes: list[str]) -> tuple[str, str] | None:
    """The (true, predicted) cell a click on the chart chose, read from the chart's selection state; None: none."""
    points = list((selection or {}).get("selection", {}).get("points", []) or [])
    for point in points:
        true, predicted = point.get("y"), point.get("x")
        if true in classes and predicted in classes:
            return str(true), str(predicted)
    return None


def render_confusion_section(result: evaluation.Evaluation, scratch: dict[str, Any], modality: str, model: Any,
                             preprocessor: Any, classes: list[str]) -> None:
    """The confusion matrix, a cell chosen by a click or two selects, and that cell's examples (gallery or table),
    most confident mistakes first, with their explanations."""
    st.subheader("Confusion matrix")
    normalised = st.toggle("Row-normalised (share of each true class)", key="test_normalised")
    # A click is read from the chart's state before the chart is drawn, so the chart drawn below outlines that cell. A
    # new outline makes a new chart (its selection starts empty), so clicking the same cell again later still counts.
    clicked = _cell_from_selection(st.session_state.get("test_confusion_chart"), result.classes)
    if clicked != scratch.get("seen_click"):
        scratch["seen_click"] = clicked
        if clicked is not None:
            st.session_state["test_true_class"], st.session_state["test_predicted_class"] = clicked
    for widget_key in ("test_true_class", "test_predicted_class"):
        if st.session_state.get(widget_key) not in result.classes:
            st.session_state.pop(widget_key, None)
    if "test_true_class" not in st.session_state:
        off_diagonal = result.confusion - np.diag(np.diag(result.confusion))
        true_index, predicted_index = np.unravel_index(int(off_diagonal.argmax()), off_diagonal.shape)
        st.session_state["test_true_class"] = result.classes[int(true_index)]
        st.session_state["test_predicted_class"] = result.classes[int(predicted_index)]
    chosen_cell = (st.session_state["test_true_class"], st.session_state["test_predicted_class"])
    st.plotly_chart(
        _confusion_figure(result, normalised, chosen_cell),
        key="test_confusion_chart",
        on_select="rerun",
        selection_mode="points",
    )

    st.caption("Click a cell, or choose it here, to see its examples (most confident mistakes first).")
    pick_true, pick_predicted = st.columns(2)
    true_name = pick_true.selectbox("True class", result.classes, key="test_true_class")
    predicted_name = pick_predicted.selectbox("Predicted class", result.classes, key="test_predicted_class")
    true_index, predicted_index = result.classes.index(true_name), result.classes.index(predicted_name)
    examples = result.examples(true_index, predicted_index)
    kind = "correct answer" if true_index == predicted_index else "mistake"
    count, noun = data.plural(len(examples), kind).split(" ", 1)
    st.markdown(f"**{count}** {noun}: true **{true_name}**, predicted **{predicted_name}**.")
    shown = examples.head(GALLERY_SIZE)
    _draw_examples(result, shown, modality)
    if len(examples) > GALLERY_SIZE:
        st.caption(f"Showing the {GALLERY_SIZE} most confident of {len(examples)}.")
    render_explain(model, preprocessor, classes, list(shown["item"]), "test_explain_gallery",
                   scored_answers=list(shown["predicted"]))


def _top_classes(result: evaluation.Evaluation, index: int, count: int = 3) -> str:
    """The `count` most likely classes of example `index` with their probabilities: "cat 81%, dog 12%, fox 4%"."""
    probabilities = result.probabilities[index]
    order = np.argsort(-probabilities)[:count]
    return ", ".join(f"{result.classes[i]} {probabilities[i]:.0%}" for i in order)


def _draw_examples(result: evaluation.Evaluation, shown: pd.DataFrame, modality: str) -> None:
    """The chosen cell's examples: a gallery of pictures or clips, or a table of texts, each with its top classes."""
    if shown.empty:
        st.caption("No test example falls in this cell.")
    elif modality == "image":
        grid = st.columns(4)
        for position, row in enumerate(shown.itertuples(index=False)):
            with grid[position % 4]:
                st.image(row.item, caption=_top_classes(result, int(row.index)), width="stretch")
    elif modality == "audio":
        grid = st.columns(4)
        for position, row in enumerate(shown.itertuples(index=False)):
            with grid[position % 4]:
                st.audio(row.item)
                st.caption(_top_classes(result, int(row.index)))
    else:
        st.dataframe(
            pd.DataFrame(
                {
                    "text": shown["item"],
                    "predicted probability": shown["confidence"],
                    "true-class probability": shown["true_probability"],
                    "top classes": [_top_classes(result, int(i)) for i in shown["index"]],
                }
            ),
            hide_index=True,
            column_config={
                "predicted probability": st.column_config.NumberColumn(format="percent"),
                "true-class probability": st.column_config.NumberColumn(format="percent"),
            },
        )
