"""Serving the web view: ``tme-abm view PATH`` and ``tme-abm view --live CONFIG``.

The app is Solara's Starlette app run by uvicorn in this process. It binds to 127.0.0.1
unless told otherwise, since the page reads the files under PATH and runs models.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from pathlib import Path

from .app import LIVE_VARIABLE, PATH_VARIABLE

LOCAL = "127.0.0.1"


def free_port(host: str = LOCAL) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(path: Path | None = None, live: Path | None = None, host: str = LOCAL, port: int = 8765) -> None:
    """Serve the view of ``path`` (a run file or folder) or of the live model of the
    config ``live`` until interrupted; prints the address first."""
    import uvicorn  # noqa: PLC0415 - the web server loads with the view only

    if (path is None) == (live is None):
        raise ValueError("give a PATH or --live CONFIG, not both")
    os.environ["SOLARA_APP"] = "tme_abm.viz.web.app"
    os.environ.setdefault("SOLARA_TELEMETRY_MIXPANEL_ENABLE", "False")  # the view never calls home
    os.environ.pop(PATH_VARIABLE if live else LIVE_VARIABLE, None)
    os.environ[LIVE_VARIABLE if live else PATH_VARIABLE] = str(Path(live or path).resolve())
    if host not in (LOCAL, "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this machine on port {port} can read the "
              f"files under {path or live} and run models", file=sys.stderr)
    # Solara warns on every page served over http to a name other than "localhost" that it
    # cannot set cross-site cookies; the view is not embedded anywhere and needs none
    warnings.filterwarnings("ignore", message="Cookies with samesite=none require https")
    shown = f"[{host}]" if ":" in host else host
    print(f"tme_abm view of {path or live}: http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)
    uvicorn.run("solara.server.starlette:app", host=host, port=port, log_level="warning")
