"""Composition root: settings, database, the Starlette app, the worker and the CLI."""
