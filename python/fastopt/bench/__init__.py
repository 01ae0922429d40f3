"""fastopt's benchmark harness: `fastopt bench --help`."""

from .harness import main

__all__ = ["main"]
