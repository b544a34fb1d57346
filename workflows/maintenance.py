"""Standing maintenance jobs on `nofx-maintenance`: verify the audit chain, retrain the detector,
put mitigated replicas back into their load balancer.

The audit trail is only worth something if tampering is noticed; the dev stack schedules its
verification, and a broken chain fails the run so it shows red in the Web UI. The learned anomaly
detector is retrained on a schedule too (and on demand, `nofx detect train`), from the faults and
incidents the platform recorded since. A traffic mitigation (weight 0, drain) ends when its
replica is well again: `TrafficReadmissionWorkflow` looks every 30 seconds.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities._support import ACTION_RETRY, STORE_RETRY
    from activities.readmission import ReadmissionActivities
    from activities.store import AuditActivities
    from activities.training import TrainingActivities
    from models.common import AuditVerdict
    from models.detection import DetectorModelReport, TrainDetectorInput
    from models.readmission import TrafficReadmissionInput, TrafficReadmissionReport
    from workflows.learning import train_once


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


@workflow.defn
class DetectorTrainingWorkflow:
    """Train the learned detector once; the report says whether it went live and why."""

    def __init__(self) -> None:
        self._step = "starting"

    @workflow.run
    async def run(self, inp: TrainDetectorInput) -> DetectorModelReport:
        self._step = "training"

        def skipped(why: str) -> DetectorModelReport:
            # A quiet fleet has nothing new to learn from: the scheduled run ends green.
            self._step = why
            return DetectorModelReport(verdict=why)

        report = await train_once(TrainingActivities.train_anomaly_detector, inp, skipped)
        if report.model_id is not None:
            self._step = f"done: {report.version} {'active' if report.active else 'kept inactive'}"
        return report

    @workflow.query
    def step(self) -> str:
        return self._step


@workflow.defn
class TrafficReadmissionWorkflow:
    """One pass over the traffic mitigations still in force; the report says who went back."""

    @workflow.run
    async def run(self, inp: TrafficReadmissionInput) -> TrafficReadmissionReport:
        return await workflow.execute_activity_method(
            ReadmissionActivities.readmit_traffic,
            inp,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=ACTION_RETRY,
        )
