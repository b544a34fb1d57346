"""The operations of NOFX Autonomy, one module per track: the CLI and the Python client (and the
HTTP API later) are thin faces over them. Requests and responses are pydantic models
(`models.*`); failures are the typed errors of `nofx.operations.errors`."""
