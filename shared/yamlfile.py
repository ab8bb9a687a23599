"""YAML loading that remembers the line of every key, and error messages of the form ``file:line: path — problem``.

Used for the settings file and the alert rules file, so a user is told where a problem is, not only what.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.errors import ConfigError

Loc = tuple[str | int, ...]

#: Deepest nesting of mappings and sequences a document may have. PyYAML composes nodes recursively, so a document
#: of 100,000 ``[`` would otherwise end in a RecursionError; 64 levels leave a rule 30 nested ``all:``/``any:``.
MAX_DEPTH = 64


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line (1-based) of every mapping key and sequence item in ``self.lines``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[Loc, int] = {}
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """PyYAML's composer, refusing documents nested deeper than ``MAX_DEPTH`` before recursion gets deep."""
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH and self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent):
                raise _TooDeep(self.peek_event().start_mark.line + 1)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def record(self, node: yaml.Node, loc: Loc) -> None:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                self.lines[(*loc, key)] = key_node.start_mark.line + 1
                self.record(value_node, (*loc, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*loc, i)] = item.start_mark.line + 1
                self.record(item, (*loc, i))


def load_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML text; returns (data, {path: line}). ConfigError naming ``source`` and the line on a syntax error."""
    try:
        loader = _LineLoader(text)
    except yaml.YAMLError as exc:  # the reader rejects some characters (NUL, unpaired surrogates) up front
        raise ConfigError(f"{source}:1: invalid YAML — {getattr(exc, 'reason', None) or exc}") from exc
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        loader.record(node, ())
        data = loader.construct_document(node)
    except _TooDeep as exc:
        raise ConfigError(f"{source}:{exc.line}: nested deeper than {MAX_DEPTH} levels (the limit for mappings and "
                          "lists)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{line}: invalid YAML — {problem}") from exc
    finally:
        loader.dispose()
    return data, loader.lines


def load_yaml_file(path: str | Path) -> tuple[Any, dict[Loc, int]]:
    """Read and parse a YAML file; ConfigError if it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read — {exc.strerror or exc}") from exc
    return load_yaml(text, str(path))


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """Line of ``loc`` or of its nearest ancestor that has one."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe_errors(exc: ValidationError, source: str, lines: dict[Loc, int],
                    prefix: Loc | Callable[[Loc], Loc] = (),
                    skip_loc_parts: frozenset[str] = frozenset()) -> list[str]:
    """One ``file:line: field.path — what was expected`` line per pydantic error.

    ``prefix`` is where the validated object sits in the file (or a function of the error's path giving it); ``skip_loc_parts`` drops pydantic's
    discriminated-union tags from the path so it reads like the file.
    """
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in skip_loc_parts))
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        full = (*(prefix(loc) if callable(prefix) else prefix), *loc)
        line = line_of(lines, full)
        where = f"{source}:{line}" if line else source
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        elif err["type"] == "missing":
            message = "required field is missing"
        got = err.get("input")
        if err["type"] not in ("missing", "extra_forbidden") and not isinstance(got, (dict, list)):
            message += f" (got {got!r})"
        problems.append(f"{where}: {format_loc(full)} — {message}")
    return problems


def validation_error(exc: ValidationError, source: str, lines: dict[Loc, int], **kwargs: Any) -> ConfigError:
    return ConfigError(describe_errors(exc, source, lines, **kwargs))
