"""A payload that does not fit its contract ends the run at once, naming every wrong field.

The SDK treats a workflow's arguments that fail to decode (a bad datetime, a missing field, a
wrong enum value) or that are missing altogether as a failed workflow *task*, and Temporal retries
a workflow task forever: one malformed `temporal workflow start` stays Running, holds its
workflow id, and the monitor's USE_EXISTING start joins it instead of healing. A decode failure
that is an `ApplicationError` fails the workflow instead (the SDK re-raises a `FailureError` out
of argument decoding), so the worker's payload converter turns pydantic's `ValidationError` into
a non-retryable `InvalidInput` that lists each field with pydantic's loc and message. The same
error then rejects an update before it reaches history and fails a query; a signal that does
not decode is dropped and logged by the SDK, as before, and never crashes the run.

An argument that is missing (or one too many) never reaches the converter, so the worker's
workflow runner checks the count on the first activation and, when it is wrong, hands the SDK a
marker payload the converter refuses with the same typed error.

Only workers use these (`workers.common.build_worker`); clients keep the plain pydantic
converter. Activity payloads keep the SDK's own handling: an activity result that no longer fits
its model is a deployment mismatch that a fixed worker resolves on the task's next attempt.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any, Self

from pydantic import ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    SerializationContext,
    StorageDriverStoreContext,
)
from temporalio.exceptions import ApplicationError
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.workflow import Info, _Definition

INVALID_INPUT = "InvalidInput"
# Stands in for the arguments of a start whose argument count is wrong; carries the message.
_WRONG_ARITY = b"binary/nofx-wrong-arity"
_SHOWN_INPUT_CHARS = 60


def field_errors(err: ValidationError) -> list[str]:
    """One line per wrong field: `detected_at: Input should be a valid datetime ... (got 'x')`."""
    lines = []
    for e in err.errors(include_url=False):
        line = f"{'.'.join(str(p) for p in e['loc']) or '(input)'}: {e['msg']}"
        if e["type"] != "missing" and e["loc"]:
            line += f" (got {repr(e['input'])[:_SHOWN_INPUT_CHARS]})"
        lines.append(line)
    return lines


def invalid_input(message: str, *details: Any) -> ApplicationError:
    """A payload that can never be accepted: fail now, with the reason, never retried."""
    return ApplicationError(message, *details, type=INVALID_INPUT, non_retryable=True)


class ContractPayloadConverter(PydanticPayloadConverter):
    """pydantic's converter that refuses a payload not fitting its model as `InvalidInput`."""

    _context: SerializationContext | None = None

    def with_context(self, context: SerializationContext) -> Self:
        bound = super().with_context(context)
        if bound is self:
            bound = copy.copy(self)
        bound._context = context
        return bound

    def from_payloads(
        self, payloads: Sequence[Payload], type_hints: list[type] | None = None
    ) -> list[Any]:
        for payload in payloads:
            if payload.metadata.get("encoding") == _WRONG_ARITY:
                raise invalid_input(payload.data.decode())
        try:
            return super().from_payloads(payloads, type_hints)
        except ValidationError as err:
            if isinstance(self._context, ActivitySerializationContext):
                raise
            problems = field_errors(err)
            raise invalid_input(f"invalid {err.title}: {'; '.join(problems)}", problems) from None


def contract_data_converter(base: DataConverter) -> DataConverter:
    """`base` (its codec and failure converter) with the contract-checking payload converter."""
    return dataclasses.replace(base, payload_converter_class=ContractPayloadConverter)


def _arity_problem(defn: _Definition, given: int) -> str | None:
    """Why `given` arguments cannot start this workflow, or None when the count fits."""
    if defn.name is None or defn.run_fn is None:  # dynamic workflows take whatever comes
        return None
    params = list(inspect.signature(defn.run_fn).parameters.values())[1:]  # without self
    required = sum(p.default is inspect.Parameter.empty for p in params)
    if required <= given <= len(params):
        return None
    wanted = ", ".join(getattr(t, "__name__", str(t)) for t in defn.arg_types or []) or "none"
    return (
        f"{defn.name} takes {len(params)} argument(s) ({wanted}), got {given}:"
        " give its input as one JSON object"
    )


class _ArityCheckedInstance(WorkflowInstance):
    """Delegates to the real instance; a start with the wrong argument count gets the marker."""

    def __init__(self, inner: WorkflowInstance, defn: _Definition) -> None:
        self._inner = inner
        self._defn = defn

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        for job in act.jobs:
            if not job.HasField("initialize_workflow"):
                continue
            init = job.initialize_workflow
            problem = _arity_problem(self._defn, len(init.arguments))
            if problem is not None:
                marker = Payload(metadata={"encoding": _WRONG_ARITY}, data=problem.encode())
                del init.arguments[:]
                init.arguments.extend([marker] * max(1, len(self._defn.arg_types or [])))
        return self._inner.activate(act)

    def get_serialization_context(self, command_info: Any) -> SerializationContext | None:
        return self._inner.get_serialization_context(command_info)

    def get_external_store_context(self, command_info: Any) -> StorageDriverStoreContext:
        return self._inner.get_external_store_context(command_info)

    def get_info(self) -> Info:
        return self._inner.get_info()

    def get_thread_id(self) -> int | None:
        return self._inner.get_thread_id()


class ContractWorkflowRunner(WorkflowRunner):
    """The sandboxed runner, with every start's argument count checked against the workflow."""

    def __init__(self, inner: WorkflowRunner | None = None) -> None:
        self._inner = inner or SandboxedWorkflowRunner()

    def prepare_workflow(self, defn: _Definition) -> None:
        self._inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _ArityCheckedInstance(self._inner.create_instance(det), det.defn)

    def set_worker_level_failure_exception_types(
        self, types: Sequence[type[BaseException]]
    ) -> None:
        self._inner.set_worker_level_failure_exception_types(types)
