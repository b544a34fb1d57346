"""Track C's standing maintenance job: verify the audit chain on a schedule.

The audit trail is only worth something if tampering is noticed; the dev stack schedules this
workflow, and a broken chain fails the run so it shows red in the Web UI.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities._support import STORE_RETRY
    from activities.store import AuditActivities
    from models.common import AuditVerdict

AUDIT_SCHEDULE_ID = "maintenance-audit-chain"


@workflow.defn
class AuditChainVerificationWorkflow:
    @workflow.run
    async def run(self) -> AuditVerdict:
        verdict = await workflow.execute_activity_method(
            AuditActivities.verify_audit_chain,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=None,
            retry_policy=STORE_RETRY,
        )
        if not verdict.ok:
            raise ApplicationError(
                f"audit chain broken at event {verdict.first_bad_id}: {verdict.problem}",
                verdict,
                type="AuditChainBroken",
                non_retryable=True,
            )
        return verdict
