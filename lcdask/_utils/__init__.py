"""Helpers shared by several modules of lcdask (private to the package: no public API)."""
