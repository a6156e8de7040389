"""The Solara app that ``tme-abm view`` serves (``SOLARA_APP=tme_abm.viz.web.app``).

The command passes what to show through the environment of the server process:
``TME_ABM_VIEW_PATH`` (a run file or a folder: nothing outside it can be opened) or
``TME_ABM_VIEW_LIVE`` (a config for the live model).
"""

from __future__ import annotations

import os
from pathlib import Path

import solara

from .live import live_page
from .pages import ErrorLine, PathView

PATH_VARIABLE = "TME_ABM_VIEW_PATH"
LIVE_VARIABLE = "TME_ABM_VIEW_LIVE"


@solara.component
def Page():
    live = os.environ.get(LIVE_VARIABLE)
    path = os.environ.get(PATH_VARIABLE)
    solara.Title("tme_abm")
    if live:
        live_page(live)
    elif path:
        with solara.Column(style={"padding": "12px"}):
            PathView(Path(path))
    else:
        ErrorLine(f"nothing to show: start the view with tme-abm view PATH ({PATH_VARIABLE} is not set)")
