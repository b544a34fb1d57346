"""Shared pytest configuration: fixtures live in plugin modules, loaded here."""

pytest_plugins = [
    "tests.fixtures_db",
    "tests.fixtures_temporal",
    "tests.fixtures_fleet",
    "tests.fixtures_prometheus",
    "tests.fixtures_traffic",
]
