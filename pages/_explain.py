"""The "Why this prediction?" control of the Test page: under the confusion-cell gallery and under new predictions.

One example at a time (Grad-CAM of a CNN takes a second or so on CPU, word attributions a few): pick it, press
Explain, and see the heat map over the picture the network saw, or the words coloured by how much they counted.
Always labelled approximate. Backbones whose explanation is known to mislead (vision transformers) get the reason
instead of a control. The work is in `core.explain`; this module only draws it.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from core import explain
from pages._ui import get_state

log = logging.getLogger(__name__)

CAPTION = "⚠️ " + explain.APPROXIMATE_NOTE.capitalize() + "."
_KEPT = 24  # explanations remembered per session (a heat map and its picture are ~1 MB)


def _label(name: str, position: int) -> str:
    """How an example is named in the picker: the file's name, or the start of the text."""
    shown = Path(name).name if Path(name).suffix else name
    return f"{position + 1} · {shown[:70]}{'…' if len(shown) > 70 else ''}"


def _explained(model: Any, preprocessor: Any, classes: Sequence[str], item: str) -> explain.Explanation:
    """The explanation of `item` by the session's model, computed once per run and item."""
    state = get_state()
    cache: dict[str, explain.Explanation] = state.scratch.setdefault("explanations", {})
    key = f"{state.run_dir}|{item}"
    if key not in cache:
        with st.spinner("Looking at what the model weighed…"):
            cache[key] = explain.explain(model, preprocessor, item, classes)
        while len(cache) > _KEPT:
            cache.pop(next(iter(cache)))
    return cache[key]


def _words_html(words: Sequence[tuple[str, float]]) -> str:
    """The text with each word's background green (for the class) or red (against), stronger for larger scores."""
    spans = []
    for word, score in words:
        colour = "34,139,34" if score >= 0 else "200,40,40"
        spans.append(f'<span title="{score:+.2f}" style="background: rgba({colour},{abs(score) * 0.6:.2f}); '
                     f'padding: 1px 3px; border-radius: 3px">{html.escape(word)}</span>')
    return '<div class="explain-words" style="line-height: 2">' + " ".join(spans) + "</div>"


def _show(explanation: explain.Explanation, scored_answer: str | None) -> None:
    st.markdown(f"The model answers **{explanation.class_name}** ({explanation.probability:.0%}); "
                f"{explanation.method}.")
    if scored_answer is not None and scored_answer != explanation.class_name:
        st.caption(f"The delivered model answers {explanation.class_name} here, not {scored_answer} as above: the "
                   "answer above came from a model that did not train on this example (a cross-validation fold, or "
                   "the model before its refit), the delivered one did. This explains the delivered model's answer.")
    if explanation.heat is not None:
        seen, heat = st.columns(2)
        seen.image(explanation.picture, caption="What the network saw (resized, cropped)", width="stretch")
        heat.image(explanation.overlay(), caption=f"Where it looked for “{explanation.class_name}”", width="stretch")
    else:
        st.markdown(_words_html(explanation.words), unsafe_allow_html=True)
        st.caption("Green: words that pushed towards this class; red: words that pushed away. Hover for the score.")
    if explanation.flat:
        st.caption("Nothing stood out: the method found no region or word that raised this class's score.")
    st.caption(CAPTION)


def render_explain(
    model: Any,
    preprocessor: Any,
    classes: Sequence[str],
    items: Sequence[str],
    key: str,
    names: Sequence[str] | None = None,
    scored_answers: Sequence[str] | None = None,
) -> None:
    """Draw the Explain control for `items` (file paths or texts), keyed `key` so that two on a page stay apart.

    Args:
        names: what the user calls each item (an upload's file name); default the items themselves.
        scored_answers: the answer the page showed for each item, when it came from another model than the delivered
            one (out-of-fold predictions of cross-validation); a different delivered answer is said plainly.
    """
    if not items:
        return
    spec = getattr(getattr(model, "backbone", None), "spec", None)
    if spec is None:
        return
    ok, reason = explain.supported(spec)
    if not ok:
        st.caption(f"Why this prediction? Not offered for this model. {reason}")
        return
    with st.container(key=key):  # `.st-key-<key>`: one block to find (the e2e walk screenshots it)
        _control(model, preprocessor, classes, items, key, list(names if names is not None else items), scored_answers)


def _control(model: Any, preprocessor: Any, classes: Sequence[str], items: Sequence[str], key: str,
             names: Sequence[str], scored_answers: Sequence[str] | None) -> None:
    picker, button = st.columns([4, 1], vertical_alignment="bottom")
    position = picker.selectbox("Why this prediction? Example to explain", range(len(items)),
                                format_func=lambda index: _label(str(names[index]), index), key=f"{key}_example")
    item = str(items[position])
    opened = st.session_state.setdefault(f"{key}_opened", [])
    if button.button("Explain", key=f"{key}_button"):
        opened.append(item)
    if item not in opened:
        return
    try:
        explanation = _explained(model, preprocessor, classes, item)
    except (explain.ExplanationUnsupported, ValueError, OSError, RuntimeError) as error:
        log.exception("Explaining %s failed", item)
        st.error(f"This prediction could not be explained: {error}")
        return
    _show(explanation, scored_answers[position] if scored_answers is not None else None)
