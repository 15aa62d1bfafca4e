"""The package version, in one place (read by hatchling and the User-Agent)."""

from typing import Final

__version__: Final = "0.1.0"
