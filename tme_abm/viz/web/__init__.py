"""The web view (``tme-abm view``): Solara pages of a run file, a folder of runs, a sweep
or an experiment, and a live model in Mesa's SolaraViz. ``data`` reads (under one root
only), ``figures`` draws, ``pages`` and ``live`` lay out, ``app`` is what Solara serves
and ``server`` starts it."""

import warnings

# Solara's hook checker warns about a hook in Mesa's own ComponentsView when Mesa's
# visualization loads: nothing a user of the view can act on
warnings.filterwarnings("ignore", message=r".*ComponentsView: `use_state` found despite early return",
                        category=UserWarning)
