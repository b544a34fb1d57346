"""The inventory file on a real PostgreSQL: the documented example applies with a diff, a second
apply changes nothing, bad input is refused field by field and writes nothing, removal is all or
none, the staging fleet registers through the same format, and each service's metric source is
where its queries go (nofx/inventory.py, models/inventory.py, nofx/telemetry/routing.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.healing import FleetTarget
from nofx import inventory
from nofx.healing.actions import capabilities
from nofx.telemetry.routing import InventoryRoutedSource
from nofx.telemetry.scrape import inventory_targets
from nofx.telemetry.sources import PrometheusSource, make_source
from pilot.fleet import Fleet, FleetSpec

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "inventory.example.yaml"


def example() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return loaded


def audit_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one())


def service_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("SELECT name, tier, owner, endpoint, metadata FROM services ORDER BY name")
            )
        ]


def refused(engine: Engine, document: Any) -> str:
    """Apply `document`; it must be refused with nothing written. Returns the message."""
    rows, audits = service_rows(engine), audit_count(engine)
    with pytest.raises(inventory.InventoryError) as err:
        inventory.apply(engine, inventory.parse(document, "bad.yaml"))
    assert service_rows(engine) == rows
    assert audit_count(engine) == audits
    return str(err.value)


def test_the_example_applies_with_a_diff_and_a_second_apply_changes_nothing(
    fresh_engine: Engine,
) -> None:
    document = inventory.load(EXAMPLE)
    planned = inventory.apply(fresh_engine, document, dry_run=True, actor="alice")
    assert planned.counts == {"add": 3}
    assert service_rows(fresh_engine) == []  # a dry run writes nothing
    applied = inventory.apply(fresh_engine, document, actor="alice")
    assert applied.counts == {"add": 3}
    audits = audit_count(fresh_engine)
    again = inventory.apply(fresh_engine, document, actor="alice")
    assert again.counts == {"unchanged": 3}
    assert audit_count(fresh_engine) == audits  # nothing changed, nothing audited
    # the providers' settings are what the actions' capabilities read
    target = inventory.find_target(fresh_engine, "checkout-1")
    assert target is not None
    assert target.metadata["haproxy_server"] == "checkout-1"
    assert target.metadata["limits"]["process_resident_memory_bytes"] == 536870912
    found = capabilities(target)
    for capability in ("process.restart", "db.terminate_idle", "cache.invalidate", "disk.cleanup"):
        assert capability in found
    # one field changed: the diff names it with its value before and after
    changed = example()
    changed["services"][0]["tier"] = "tier-0"
    report = inventory.apply(fresh_engine, inventory.parse(changed), actor="bob")
    diff = {c.service: c for c in report.changes}
    assert diff["checkout-1"].change == "change"
    assert diff["checkout-1"].fields == {"tier": {"before": "tier-1", "after": "tier-0"}}
    assert diff["orders"].change == "unchanged"
    with fresh_engine.connect() as conn:
        actor, action = conn.execute(
            text(
                "SELECT actor, action FROM audit_events WHERE entity_id = 'checkout-1'"
                " ORDER BY id DESC LIMIT 1"
            )
        ).one()
    assert (actor, action) == ("bob", "inventory.change")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["services"][0].update(colour="blue"), "services[checkout-1].colour"),
        (lambda d: d["services"][0].update(endpoint="not a url"), "services[checkout-1].endpoint"),
        (lambda d: d["services"][1].update(tier="gold"), "services[checkout-2].tier"),
        (
            lambda d: d["services"][0]["providers"]["traffic"].pop("socket"),
            "services[checkout-1].providers.traffic.socket: Field required",
        ),
        (
            lambda d: d["services"][0]["providers"]["cache"].update(url="http://x"),
            "services[checkout-1].providers.cache.url",
        ),
        (
            lambda d: d["services"][0]["metrics"].update(prometheus={"url": "http://p:9090"}),
            "services[checkout-1].metrics: Value error, give exactly one of scrape or prometheus",
        ),
        (
            lambda d: d["services"][0]["limits"].update(pilot_db_pool_in_use=-1),
            "services[checkout-1].limits: Value error, must be positive: pilot_db_pool_in_use",
        ),
        (lambda d: d["services"].append(d["services"][2]), "services listed twice: orders"),
        (lambda d: d["services"][2].update(name="Orders!"), "services[Orders!].name"),
    ],
)
def test_bad_input_is_refused_field_by_field_and_writes_nothing(
    fresh_engine: Engine, mutate: Any, message: str
) -> None:
    inventory.apply(fresh_engine, inventory.load(EXAMPLE))
    document = example()
    mutate(document)
    assert message in refused(fresh_engine, document)


def test_every_problem_of_a_file_is_named_and_a_yaml_error_has_its_line(
    fresh_engine: Engine, tmp_path: Path
) -> None:
    document = example()
    document["services"][0]["tier"] = "gold"
    document["services"][1]["endpoint"] = 7
    problems = refused(fresh_engine, document).splitlines()
    assert len(problems) == 2
    assert all(p.startswith("bad.yaml: services[checkout-") for p in problems)
    broken = tmp_path / "broken.yaml"
    broken.write_text("services:\n  - name: a\n    endpoint: [http://x\n")
    with pytest.raises(inventory.InventoryError, match=r"broken.yaml: not YAML at line \d+"):
        inventory.load(broken)
    with pytest.raises(inventory.InventoryError, match="cannot be read"):
        inventory.load(tmp_path / "missing.yaml")


def test_a_dependency_nobody_declares_is_refused(fresh_engine: Engine) -> None:
    document = example()
    document["services"] = document["services"][:2]  # checkout-* depend on orders, not given
    assert "services[checkout-1].dependencies: orders is neither" in refused(fresh_engine, document)
    # once orders is in the inventory, a file without it may depend on it
    inventory.apply(fresh_engine, inventory.parse({"services": [example()["services"][2]]}))
    assert inventory.apply(fresh_engine, inventory.parse(document)).counts == {"add": 2}


def test_removal_is_all_or_none_and_keeps_dependencies_whole(fresh_engine: Engine) -> None:
    inventory.apply(fresh_engine, inventory.load(EXAMPLE))
    before = service_rows(fresh_engine)
    with pytest.raises(inventory.InventoryError, match="nope: not in the inventory"):
        inventory.remove(fresh_engine, ["checkout-2", "nope"])
    with pytest.raises(inventory.InventoryError, match="checkout-1: depends on orders"):
        inventory.remove(fresh_engine, ["orders"])
    assert inventory.remove(fresh_engine, ["checkout-2"] * 2, dry_run=True).counts == {"remove": 1}
    assert service_rows(fresh_engine) == before
    report = inventory.remove(fresh_engine, ["checkout-1", "checkout-2", "orders"], actor="carol")
    assert report.counts == {"remove": 3}
    assert service_rows(fresh_engine) == []
    with fresh_engine.connect() as conn:
        removed = conn.execute(
            text("SELECT count(*) FROM audit_events WHERE action = 'inventory.remove'")
        ).scalar_one()
    assert removed == 3


def test_the_staging_fleet_registers_through_the_same_format(
    fresh_engine: Engine, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path / "fleet", FleetSpec.default(18_700))
    document = fleet.inventory(owner="staging")
    names = inventory.register_fleet(fresh_engine, fleet, owner="staging")
    assert names == [s.name for s in fleet.spec.services]
    assert json.loads(json.dumps(document)) == document  # plain data, no platform types
    for name in names:
        target = inventory.find_target(fresh_engine, name)
        assert target is not None
        assert set(capabilities(target)) >= {
            "probe.http",
            "process.restart",
            "disk.cleanup",
            "config.rollback",
            "db.terminate_idle",
            "cache.invalidate",
        }
    # registering again is an apply that changes nothing
    assert inventory.apply(fresh_engine, inventory.parse(document)).counts == {
        "unchanged": len(names)
    }


def test_each_service_is_read_from_the_metric_source_its_entry_names(
    fresh_engine: Engine,
) -> None:
    inventory.apply(fresh_engine, inventory.load(EXAMPLE))
    scraped = {t.service: t.url for t in inventory_targets(fresh_engine)}
    # its own /metrics URL; orders lives in Prometheus and is not scraped
    assert scraped == {
        "checkout-1": "http://127.0.0.1:8101/metrics",
        "checkout-2": "http://127.0.0.1:8102/metrics",
    }
    default = make_source("scrape", engine=fresh_engine)
    routed = InventoryRoutedSource(fresh_engine, default)
    try:
        source, name = routed.route("orders")
        assert isinstance(source, PrometheusSource)
        assert (source.base_url, source.service_label, name) == (
            "http://127.0.0.1:9090",
            "job",
            "orders",
        )
        assert routed.route("checkout-1") == (default, "checkout-1")
    finally:
        routed.close()


def test_the_cli_applies_shows_and_removes(
    nofx_cli: Any, fresh_database_url: str, tmp_path: Path
) -> None:
    dry = nofx_cli(fresh_database_url, "services", "apply", "-f", str(EXAMPLE), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run, nothing written: 3 add" in dry.output
    done = nofx_cli(fresh_database_url, "services", "apply", "-f", str(EXAMPLE), "--as", "dave")
    assert done.exit_code == 0, done.output
    listed = nofx_cli(fresh_database_url, "services", "list", "--json")
    assert [r["name"] for r in json.loads(listed.output)] == ["checkout-1", "checkout-2", "orders"]
    shown = json.loads(nofx_cli(fresh_database_url, "services", "show", "checkout-1").output)
    assert shown["capabilities"]["process.restart"] == "supervisor"
    bad = copy.deepcopy(example())
    bad["services"][0]["providers"]["process"]["kind"] = "systemd"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    refused_ = nofx_cli(fresh_database_url, "services", "apply", "-f", str(path))
    assert refused_.exit_code == 1
    assert "services[checkout-1].providers.process.kind" in refused_.output
    gone = nofx_cli(fresh_database_url, "services", "remove", "orders")
    assert gone.exit_code == 1
    assert "depends on orders" in gone.output
    missing = nofx_cli(fresh_database_url, "services", "show", "nope")
    assert missing.exit_code == 1


def test_a_target_without_providers_can_only_be_probed() -> None:
    entry = inventory.parse({"services": [{"name": "bare", "endpoint": "http://h:1"}]}).services[0]
    row = inventory.row_of(entry)
    assert (row["provider"], row["metadata"]) == ("none", {})
    target = FleetTarget(service="bare", endpoint=row["endpoint"], provider="none")
    assert capabilities(target) == {"probe.http": "http"}
