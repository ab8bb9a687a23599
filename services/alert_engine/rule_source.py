"""Where the engine's rules come from: the rules file (re-read when it changes) and the rules the API manages.

The file's rules, merged with the API's (``streams.RULES``: name -> YAML; an API rule overrides the file's rule of
the same name, so the API can disable or snooze it). A bad new file keeps the rules running and is reported
(``reload_error``); a bad API entry is skipped and reported, the others still load. Every successful load of the file
replaces ``streams.FILE_RULES`` (name -> the rule's YAML as written in the file) for the API to list.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from redis.asyncio import Redis

from shared import streams
from shared.bus import as_str as _s
from shared.errors import ConfigError
from shared.rules import RuleSet, load_rules_file, parse_rule_text
from shared.yamlfile import load_yaml_file

logger = logging.getLogger(__name__)


def read_rules_file(path: str | Path) -> tuple[RuleSet, dict[str, str] | None]:
    """The validated rules of a rules file, and each rule's mapping as written there (name -> YAML text).

    The texts come from the parsed YAML, not from the model (``dump_rule`` does not round-trip). None when they do
    not match the validated rules (the file changed between the two reads): the next reload writes them.
    """
    ruleset = load_rules_file(path)
    try:
        data, _ = load_yaml_file(path)
    except ConfigError:
        return ruleset, None
    entries = data.get("rules") if isinstance(data, dict) else data
    texts = {entry["name"]: yaml.safe_dump(entry, sort_keys=False, allow_unicode=True)
             for entry in entries or [] if isinstance(entry, dict) and isinstance(entry.get("name"), str)}
    if set(texts) != {r.name for r in ruleset.rules}:
        logger.warning("rules file %s changed while it was read; its rules are not listed for the API yet", path)
        return ruleset, None
    return ruleset, texts


class RuleSource:
    """The rules file ``path`` (None: rules given in code, never re-read) merged with the API's rules."""

    def __init__(self, redis: Redis, path: Path | None, ruleset: RuleSet | None = None) -> None:
        self.redis = redis
        self.path = path
        # the file's rules as YAML texts, waiting to be written to FILE_RULES (None: nothing to write)
        self._file_texts: dict[str, str] | None = None
        if ruleset is None:
            if path is None:
                raise ValueError("a rules file or a rule set is needed")
            ruleset, self._file_texts = read_rules_file(path)
            self._mtime = self._file_mtime()
        else:
            self.path, self._mtime = None, None
        self.file_ruleset = ruleset
        self.ruleset = ruleset  # what runs: the file's, merged with the API's
        self._api_texts: dict[str, str] | None = {}  # the API rules merged in (none yet)
        self.reload_error: str | None = None

    async def start(self) -> RuleSet:
        """The rules to start with (the file's written for the API, the API's merged)."""
        await self._write_file_rules()
        await self._merge_api_rules()
        return self.ruleset

    async def poll(self) -> RuleSet | None:
        """The new rule set when the file (valid) or the API's rules changed since the last look, else None."""
        await self._write_file_rules()  # a write a Redis error interrupted last time
        file_changed = self._reload_file()
        if file_changed:
            await self._write_file_rules()
        if await self._merge_api_rules() or file_changed:
            return self.ruleset
        return None

    def _file_mtime(self) -> int | None:
        try:
            return Path(self.path).stat().st_mtime_ns if self.path is not None else None
        except OSError:
            return None

    def _reload_file(self) -> bool:
        """Re-read the rules file if it changed; a bad file keeps the current rules and is reported."""
        if self.path is None:
            return False
        mtime = self._file_mtime()
        if mtime is None or mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            ruleset, self._file_texts = read_rules_file(self.path)
        except ConfigError as exc:
            self.reload_error = "; ".join(exc.problems)
            logger.error("rules file changed but is invalid; keeping the %d current rules:\n  %s",
                         len(self.ruleset.rules), "\n  ".join(exc.problems))
            return False
        self.file_ruleset = self.ruleset = ruleset
        self._api_texts = None  # merged again over the new file's rules
        self.reload_error = None
        logger.info("rules reloaded from %s: %d rules", self.path, len(ruleset.rules))
        return True

    async def _write_file_rules(self) -> None:
        """Replace ``streams.FILE_RULES`` with the last loaded file's rules, atomically (removed rules disappear)."""
        texts = self._file_texts
        if texts is None:
            return
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(streams.FILE_RULES)
            if texts:
                tx.hset(streams.FILE_RULES, mapping=texts)
            await tx.execute()
        self._file_texts = None

    async def _merge_api_rules(self) -> bool:
        """Merge the API's rules over the file's; True if they changed since the last merge."""
        raw = await self.redis.hgetall(streams.RULES)
        texts = {_s(k): _s(v) for k, v in raw.items()}
        if texts == self._api_texts:
            return False
        self._api_texts = texts
        merged = {r.name: r for r in self.file_ruleset.rules}
        problems: list[str] = []
        for name, text in sorted(texts.items()):
            try:
                rule = parse_rule_text(text, f"{streams.RULES}[{name}]")
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            merged[rule.name] = rule
        if problems:
            logger.error("skipping invalid rules from the API:\n  %s", "\n  ".join(problems))
        self.ruleset = RuleSet(rules=list(merged.values()), source=self.file_ruleset.source)
        self.reload_error = "; ".join(problems) or None
        return True
