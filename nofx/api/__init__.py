"""The HTTP API: a thin face over `nofx.operations`, with tokens that act as operators."""
