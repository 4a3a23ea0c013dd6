"""The package's version, where every layer may read it (the package root imports all of them)."""

__version__ = "0.1.0"
