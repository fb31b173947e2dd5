"""The toolkit version recorded in provenance and score files."""
from importlib import metadata

try:
    __version__ = metadata.version("refsav")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
