"""The model: :class:`TMEModel` (a ``mesa.Model``) assembles the engine and the biology
from a config and steps them; what it reports and its checkpoint state sit beside it."""

from .model import TMEModel
from .readouts import REPORTED, cell_table, column_attrs, rows
from .state import get_state, set_state

__all__ = ["REPORTED", "TMEModel", "cell_table", "column_attrs", "get_state", "rows", "set_state"]
