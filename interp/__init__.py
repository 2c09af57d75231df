"""interp: a stateful Python interpreter server for AI agents, over MCP.

This package root re-exports only; importing it must stay cheap because the forkserver
preload (`interp.preload` → `interp.worker`) imports it too.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
