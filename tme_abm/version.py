"""The installed version of tme_abm (written into every run file)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tme-abm")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
