"""One operation, its faces: the operations layer, the CLI (`--json`), the HTTP API and the
Python client answer the same, field for field, and refuse the same way (the CLI with exit 1 and
the message, the API with the status and the same detail)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from temporalio.client import Client

from models.decisions import Operator
from nofx import inventory
from nofx.api import tokens
from nofx.api.app import ApiContext, create_app
from nofx.client import NofxClient
from nofx.decisions import store
from nofx.operations.controls import ControlsOperations
from nofx.operations.errors import NotFound
from nofx.operations.healing import HealingOperations
from nofx.settings import get_settings


def dumped(value: Any) -> Any:
    if isinstance(value, list):
        return [v.model_dump(mode="json") for v in value]
    return value.model_dump(mode="json")


async def test_layer_cli_and_api_give_the_same_answers_and_the_same_refusals(
    client: Client, fresh_engine: Engine, fresh_database_url: str, nofx_cli: Any
) -> None:
    service = {"name": "api", "endpoint": "http://127.0.0.1:1"}
    inventory.apply(fresh_engine, inventory.parse({"services": [service]}))
    store.add_operator(fresh_engine, Operator(name="reader", permissions=[]), actor="t")
    token = tokens.issue(fresh_engine, "reader", actor="test")[1]
    healing = HealingOperations(fresh_engine)
    controls = ControlsOperations(fresh_engine)
    app = create_app(ApiContext(client, fresh_engine, get_settings()))
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}

    async def cli(*args: str) -> Any:
        # the CLI runs its own event loop, as from a shell: in a thread of its own here
        ran = await asyncio.to_thread(nofx_cli, fresh_database_url, *args)
        assert ran.exit_code == 0, ran.output
        return json.loads(ran.output)

    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:

        async def api(path: str) -> Any:
            answered = await http.get(path, headers=headers)
            assert answered.status_code == 200, (path, answered.text)
            return answered.json()

        faces = [
            (
                dumped(await healing.playbooks()),
                await cli("healing", "playbooks", "list", "--json"),
                await api("/api/healing/playbooks"),
            ),
            (
                dumped(await healing.playbooks("service_down")),
                await cli("healing", "playbooks", "list", "--type", "service_down", "--json"),
                await api("/api/healing/playbooks?incident_type=service_down"),
            ),
            (
                dumped(await healing.playbook("restart-service")),
                await cli("healing", "playbooks", "show", "restart-service"),
                await api("/api/healing/playbooks/restart-service"),
            ),
            (
                dumped(await healing.patterns()),
                await cli("healing", "patterns", "--json"),
                await api("/api/healing/patterns"),
            ),
            (
                dumped(await healing.status()),
                await cli("healing", "status", "--json"),
                await api("/api/healing/status"),
            ),
            (
                dumped(await healing.simulate("restart-service", "api")),
                await cli(
                    "healing",
                    "simulate",
                    "--playbook",
                    "restart-service",
                    "--service",
                    "api",
                    "--json",
                ),
                (
                    await http.post(
                        "/api/healing/simulate",
                        json={"playbook": "restart-service", "service": "api"},
                        headers=headers,
                    )
                ).json(),
            ),
            (
                dumped(await controls.show()),
                await cli("guardrails", "show", "--json"),
                await api("/api/controls"),
            ),
        ]
        for layer, on_cli, over_http in faces:
            assert layer == on_cli == over_http
        # the Python client is the fourth face
        sdk = NofxClient(client, fresh_engine)
        assert dumped(await sdk.healing_playbooks()) == faces[0][0]
        assert dumped(await sdk.controls()) == faces[-1][0]
        assert faces[0][0], "the seeded playbooks are listed"

        # the same refusal, named the same way
        try:
            await healing.playbook("nope")
            raise AssertionError("an unknown playbook was found")
        except NotFound as err:
            refusal = str(err)
        ran = await asyncio.to_thread(
            nofx_cli, fresh_database_url, "healing", "playbooks", "show", "nope"
        )
        assert (ran.exit_code, ran.output.strip()) == (1, f"error: {refusal}")
        answered = await http.get("/api/healing/playbooks/nope", headers=headers)
        assert (answered.status_code, answered.json()["detail"]) == (404, refusal)
