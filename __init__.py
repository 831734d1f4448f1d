"""Task Service: the coordination hub for teams of AI agents."""

__version__ = "0.1.0"
