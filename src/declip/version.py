"""The package version, in a leaf module: the CLI's ``--version`` reads it without importing the API."""

__version__ = "0.1.0"
