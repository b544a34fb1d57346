"""Track A worker: decisions (`nofx-decisions`), and the notifications every track sends when a
person is needed (`NotifyWorkflow` runs here: registered once, so replayers can list every
track's workflows together)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from activities.decisions import DecisionActivities
from activities.notify import NotifyActivities
from activities.store import StoreActivities
from nofx.settings import TASK_QUEUE_DECISIONS
from workers.common import Dependencies, serve
from workflows.decisions import DecisionWorkflow, PlaybookDecisionWorkflow, TrainingWorkflow
from workflows.notify import NotifyWorkflow

TASK_QUEUE = TASK_QUEUE_DECISIONS
WORKFLOWS: list[type] = [
    DecisionWorkflow,
    PlaybookDecisionWorkflow,
    TrainingWorkflow,
    NotifyWorkflow,
]


def activities(deps: Dependencies) -> Sequence[Callable[..., object]]:
    store = StoreActivities(deps.engine)
    decisions = DecisionActivities(deps.engine)
    notify = NotifyActivities(deps.settings)
    return [
        decisions.analyse_context,
        decisions.plan_candidates,
        decisions.evaluate,
        decisions.save_decision,
        decisions.add_feedback,
        decisions.load_operators,
        decisions.record_outcome,
        decisions.train_success_model,
        store.load_playbooks,
        store.service_capabilities,
        store.record_decision,
        store.append_audit_event,
        notify.send_webhook,
        notify.send_email,
    ]


if __name__ == "__main__":
    asyncio.run(serve(TASK_QUEUE, WORKFLOWS, activities))
