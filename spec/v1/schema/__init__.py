"""The JSON Schemas of spec v1, shipped inside the package as ``tracespec.schema``."""
