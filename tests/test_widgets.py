"""companion.widgets: each widget carries its default output for pages without a kernel."""
import base64

import pytest

pytest.importorskip("ipywidgets")

from companion.widgets import VIEW, LiveView, interactive, sizing_calculator  # noqa: E402


def test_a_widget_shows_its_default_as_text_and_html_beside_the_live_view():
    bundle = sizing_calculator()._repr_mimebundle_()
    assert "compute-optimal model" in bundle["text/plain"]
    assert "VBox(" not in bundle["text/plain"]
    assert "compute-optimal model" in bundle["text/html"]
    assert VIEW in bundle  # a kernel still gets the live widget


def test_a_figure_default_reaches_the_pdf_as_one_png_with_its_text():
    # what a kernel records for `display(fig); print("rows 6")`
    view = LiveView(None, [{"data": {"image/png": base64.b64encode(_png()).decode(),
                                     "text/plain": "<Figure size 200x100>"}}, "rows 6\n"])
    bundle = view._static()
    assert bundle["text/plain"] == "rows 6"  # the figure's repr is not text worth printing
    assert bundle["text/html"].count("<img") == 1 and "rows 6" in bundle["text/html"]
    png = base64.b64decode(bundle["image/png"])
    figure = base64.b64decode(view.recorded[0]["data"]["image/png"])
    assert png.startswith(b"\x89PNG") and png != figure  # the text is drawn under the figure


def test_a_figure_alone_is_passed_through():
    png = _png()
    view = LiveView(None, [{"data": {"image/png": base64.b64encode(png).decode()}}])
    assert base64.b64decode(view._static()["image/png"]) == png


def test_interactive_records_the_functions_default():
    import ipywidgets as w

    view = interactive(lambda rows=6: print(f"rows {rows}"), rows=w.IntSlider(6, 1, 32))
    assert repr(view) == "rows 6"


def _png() -> bytes:
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
