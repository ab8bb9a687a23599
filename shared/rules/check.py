"""``sentinel rules check``: every problem of a rules file, and with a settings file the channels no notifier defines.

Each problem is one line ``file:line: field path — what was expected``, all of them listed in one run, in the order
of the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from shared.errors import ConfigError
from shared.rules.loading import check_rules_file, line_in
from shared.yamlfile import line_of, load_yaml_file


def check_rules(path: str | Path, channels: Iterable[str] | None = None, defined_in: str = "the settings") -> list[str]:
    """The problems of the rules file ``path`` (as the engine would refuse it), and with ``channels`` (the channel
    names a notifier configuration defines, in ``defined_in``) each channel a rule names that is not one of them."""
    problems = check_rules_file(path)
    if channels is None:
        return problems
    known = sorted(set(channels))
    try:
        data, lines = load_yaml_file(path)
    except ConfigError:
        return problems  # (already reported)
    entries = data.get("rules") if isinstance(data, dict) else data
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        named = entry.get("channels") if isinstance(entry, dict) else None
        for j, channel in enumerate(named if isinstance(named, list) else []):
            if isinstance(channel, str) and channel not in known:
                problems.append(f"{path}:{line_of(lines, ('rules', i, 'channels', j))}: rules[{i}].channels[{j}] — "
                                f"unknown channel {channel!r}: {defined_in} defines {', '.join(known) or 'none'}")
    return sorted(problems, key=lambda p: line_in(p, str(path)))
