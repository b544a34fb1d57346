"""`POST /api/alerts/alertmanager`: Alertmanager's webhook (`nofx.operations.alerts`).

Point a receiver at it with a token of an operator holding `alerts:ingest`:

    receivers:
      - name: nofx
        webhook_configs:
          - url: http://127.0.0.1:8400/api/alerts/alertmanager
            http_config:
              authorization: {type: Bearer, credentials: nofx_...}
"""

from __future__ import annotations

from fastapi import APIRouter

from models.operations import AlertmanagerWebhook, AlertsReceived
from nofx.api.app import Ctx, Who, audited, require
from nofx.operations.alerts import AlertOperations

router = APIRouter(prefix="/api/alerts", tags=["alerts"])

INGEST = "alerts:ingest"


@router.post("/alertmanager", response_model=AlertsReceived)
async def alertmanager(body: AlertmanagerWebhook, ctx: Ctx, who: Who) -> AlertsReceived:
    """Open or join the incident of each firing alert (labels: the service, `nofx_pattern`);
    keep resolved alerts as evidence. A malformed payload is refused whole, field by field."""
    require(who, INGEST, "send alerts")
    ops = AlertOperations(ctx.temporal, ctx.engine)
    received = await ops.alertmanager(body, received_by=who.name)
    opened = [a.workflow_id for a in received.alerts if a.outcome in ("opened", "joined")]
    await audited(
        ctx, who, "alerts.alertmanager", "alerts", body.groupKey or "-", {"incidents": opened}
    )
    return received
