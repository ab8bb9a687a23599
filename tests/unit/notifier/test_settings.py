"""Notifier settings from a YAML file: typos are errors naming file, line and field."""

from __future__ import annotations

import pytest

from services.notifier.settings import Settings
from shared.errors import ConfigError


def test_typo_in_a_route_names_file_line_and_field(tmp_path):
    path = tmp_path / "sentinel.yaml"
    path.write_text("notifier:\n  channels:\n    hook: json://127.0.0.1:9/x\n  routes:\n    - severity: [critical]\n"
                    "      chanels: [hook]\n")
    with pytest.raises(ConfigError) as err:
        Settings.load(path)
    text = str(err.value)
    assert f"{path}:6: notifier.routes[0].chanels — unknown field" in text
    assert f"{path}:5: notifier.routes[0].channels — required field is missing" in text


def test_valid_file_loads_channels_and_routes(tmp_path):
    path = tmp_path / "sentinel.yaml"
    path.write_text("notifier:\n  group_window_s: 2\n  channels:\n    tg: tgram://${TG}/1\n  routes:\n"
                    "    - labels: {team: desk}\n      channels: [tg]\n")
    s = Settings.load(path)
    assert s.group_window_s == 2.0 and s.channels == {"tg": "tgram://${TG}/1"}
    assert s.routes[0].labels == {"team": "desk"} and s.routes[0].channels == ["tg"]
