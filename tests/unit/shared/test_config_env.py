"""Settings problems, all of them in one run: unknown SENTINEL_* variables, bad values from the environment named by
their variable, bad values and unknown keys from the file named by file and line; stable instance names."""

from __future__ import annotations

import socket

import pytest

from services.candle_builder.settings import Settings as BuilderSettings
from services.notifier.settings import Settings as NotifierSettings
from shared.config import unknown_environment
from shared.errors import ConfigError


def test_unknown_sentinel_variables_are_reported_with_the_nearest_real_name():
    env = {"SENTINEL_API_TOKN": "t", "SENTINEL_PORT": "9000", "SENTINEL_API_TOKEN": "t", "SENTINEL_CONFIG": "x",
           "SENTINEL_BLOCKMS": "5", "SENTINEL_ROUTES__0__SEVERITY": "[]", "HOME": "/root", "REDIS_URL": "redis://x"}
    problems = unknown_environment(env)
    assert len(problems) == 2, problems  # another service's variable (SENTINEL_API_TOKEN) and nested ones are known
    assert problems[0].startswith("environment: SENTINEL_API_TOKN — unknown setting") and \
        "SENTINEL_API_TOKEN?" in problems[0]
    assert problems[1].startswith("environment: SENTINEL_BLOCKMS") and "SENTINEL_BLOCK_MS?" in problems[1]


def test_every_problem_of_file_and_environment_comes_in_one_error(tmp_path, monkeypatch):
    config = tmp_path / "sentinel.yaml"
    config.write_text("log_levl: INFO\ncandle_builder:\n  block_ms: -5\n  timeframs: [1m]\n")
    monkeypatch.setenv("SENTINEL_TIMEFRAMES", "1m")  # not a JSON list: pydantic-settings alone stops here
    monkeypatch.setenv("SENTINEL_READ_COUNT", "many")
    monkeypatch.setenv("SENTINEL_REALTIME_PRIORITY", "10")  # a setting that no longer exists
    with pytest.raises(ConfigError) as err:
        BuilderSettings.load(config)
    problems = err.value.problems
    assert sorted(p.split(" — ")[0] for p in problems) == sorted([
        "environment: SENTINEL_REALTIME_PRIORITY", "environment SENTINEL_TIMEFRAMES: timeframes",
        "environment SENTINEL_READ_COUNT: read_count", f"{config}:1: log_levl", f"{config}:3: candle_builder.block_ms",
        f"{config}:4: candle_builder.timeframs"]), problems


def test_instance_names_are_stable_by_default_and_settable():
    default = NotifierSettings(consumer_name=None).consumer_settings("notifier", "notifier")
    assert default.consumer == f"notifier-{socket.gethostname()}"  # the same in every process on this host
    named = NotifierSettings(consumer_name="n7", claim_idle_ms=1234).consumer_settings("notifier", "notifier", count=3)
    assert (named.consumer, named.claim_idle_ms, named.count) == ("n7", 1234, 3)


def test_every_sentinel_variable_docker_compose_sets_is_one_a_service_reads():
    """compose once set SENTINEL_API_HOST, which nothing read (the setting is SENTINEL_HOST): the API bound to
    loopback inside its container. Now such a variable stops the service; here it fails first."""
    import yaml

    from tests.conftest import REPO

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    env = {key: str(value) for svc in compose["services"].values() for key, value in (svc.get("environment") or {}).items()}
    assert any(key.startswith("SENTINEL_") for key in env)
    assert unknown_environment(env) == []
