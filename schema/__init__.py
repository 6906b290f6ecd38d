"""Strawberry types, inputs, enums and filters of the Deskbill graph.

No database code lives here: nested fields reach their data through
``info.context.loaders`` (built per request in ``resolvers``), and plain columns are
plain fields with no resolver, which keeps the hot read paths cheap.
"""
