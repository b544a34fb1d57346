"""Track A worker: decisions (`nofx-decisions`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from activities.store import StoreActivities
from nofx.settings import TASK_QUEUE_DECISIONS
from workers.common import Dependencies, serve
from workflows.decisions import PlaybookDecisionWorkflow

TASK_QUEUE = TASK_QUEUE_DECISIONS
WORKFLOWS: list[type] = [PlaybookDecisionWorkflow]


def activities(deps: Dependencies) -> Sequence[Callable[..., object]]:
    store = StoreActivities(deps.engine)
    return [
        store.load_playbooks,
        store.service_capabilities,
        store.record_decision,
        store.append_audit_event,
    ]


if __name__ == "__main__":
    asyncio.run(serve(TASK_QUEUE, WORKFLOWS, activities))
