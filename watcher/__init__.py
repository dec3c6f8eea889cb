"""cbr-watcher: watch Huawei Cloud CBR tasks until they finish."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cbr-watcher")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
