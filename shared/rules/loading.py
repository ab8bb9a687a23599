"""Reading rules: YAML text or a file in, a validated ``RuleSet`` out, or every problem located
(``file:line: field path — expected``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.errors import ConfigError
from shared.rules.model import Rule, RuleSet
from shared.yamlfile import Loc, describe_errors, line_of, load_yaml, load_yaml_file

# Parts of pydantic's error paths that are our union tags, not keys of the file.
UNION_TAGS = frozenset({"_const", "_field", "_unknown", "_cmp", "_channel", "_move", "_spike", "_all", "_any"})


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse and validate a rules document; ConfigError listing every problem as ``source:line: path — expected``."""
    data, lines = load_yaml(text, source)
    return _validate(data, lines, source)


def load_rules_file(path: str | Path) -> RuleSet:
    """Read, parse and validate a rules file (see ``parse_rules``)."""
    data, lines = load_yaml_file(path)
    return _validate(data, lines, str(path))


def parse_rule_text(text: str, source: str) -> Rule:
    """One rule (a mapping, YAML or JSON), e.g. an entry of the API's ``streams.RULES`` hash."""
    data, lines = load_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: (top level) — expected one rule as a mapping")
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source, lines, skip_loc_parts=UNION_TAGS)) from exc


def check_rules_file(path: str | Path) -> list[str]:
    """Every problem of a rules file, one line each; an empty list means the file is valid."""
    try:
        load_rules_file(path)
    except ConfigError as exc:
        return exc.problems
    return []


def _validate(data: Any, lines: dict[Loc, int], source: str) -> RuleSet:
    if data is None:
        data = {"rules": []}
    if isinstance(data, list):  # a bare list of rules is accepted too
        data, lines = {"rules": data}, {("rules", *loc): line for loc, line in lines.items()}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: (top level) — expected a mapping with a `rules:` list")
    problems = _duplicate_names(data.get("rules"), lines, source)
    try:
        ruleset = RuleSet.model_validate({**data, "source": source})
    except ValidationError as exc:  # (duplicate names are reported above, at their own lines)
        duplicates = tuple(e["msg"] for e in exc.errors(include_url=False) if e["type"] == "duplicate_name")
        problems += [p for p in describe_errors(exc, source, lines, skip_loc_parts=UNION_TAGS)
                     if not (duplicates and p.endswith(duplicates))]
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: line_in(p, source)))
    return ruleset


def _duplicate_names(entries: Any, lines: dict[Loc, int], source: str) -> list[str]:
    """Each rule whose name an earlier rule already has, at its own line."""
    out: list[str] = []
    first: dict[str, int] = {}
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            j = first[name]
            here, there = line_of(lines, ("rules", i, "name")), line_of(lines, ("rules", j, "name"))
            out.append(f"{source}:{here}: rules[{i}].name — {name!r} is already the name of rules[{j}] (line {there}); "
                       "names must be unique")
        else:
            first[name] = i
    return out


def line_in(problem: str, source: str) -> int:
    """The line number a ``source:line: ...`` problem names (0 when it names none): problems sort by it."""
    head = problem[len(source) + 1:].split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def dump_rule(rule: Rule) -> dict[str, Any]:
    """A rule as plain data, in the file's own spelling (for the RULES hash and the API)."""
    data = rule.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    for key in ("cooldown", "for"):
        if key in data:
            data[key] = f"{data[key]}ms"
    return data
