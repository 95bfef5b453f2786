"""matseg: which segmentation architecture to trust for your micrographs, and when to stop."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("matseg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
