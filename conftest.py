"""Shared pytest fixtures for every package's tests (PostgreSQL, collector server, agents)."""

pytest_plugins = ["tests.fix_db", "tests.fix_proxy", "tests.fix_agent"]
