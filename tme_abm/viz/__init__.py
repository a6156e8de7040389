"""Presentation: report figures of one run, and figures of sweeps and experiments drawn
from the tables the studies wrote. Uses matplotlib's Agg canvas (no display needed)."""
