"""Rules CRUD: rules live in ``streams.RULES`` (name → YAML of the rule), validated by the alert engine's own models.

The alert engine's rules file is listed too: the engine writes its rules to ``streams.FILE_RULES`` (name → the rule's
YAML as in the file) on every load. They are read-only here: an API rule of the same name overrides a file rule (as in
the engine), so PUT, enable, disable and snooze of a file rule store an API override; DELETE removes only an override
(the file rule then applies again) and answers 409 for a rule that is only in the file.

A body is one rule as YAML or JSON (JSON is YAML too, so both get line numbers); errors use the rules file's format,
``request body:LINE: field.path — expected``. After a change the API PUBLISHes the rule name on
``streams.CHANNEL_RULES`` so the engine can reload without a restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import yaml
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from shared import rules as rules_mod
from shared import streams
from shared.errors import ConfigError
from shared.yamlfile import MAX_DEPTH, load_yaml

SOURCE = "request body"
#: Largest rule body accepted (a rule is a few hundred bytes; the largest in docs/rules.md is under 1 KiB).
MAX_BODY_BYTES = 64 * 1024

RULE_EXAMPLE = {
    "name": "btc_breakout", "exchange": "binance", "symbols": ["BTC/USDT"], "timeframe": "1m",
    "condition": {"left": "close", "op": "crosses_up", "right": {"ema": 21}},
    "cooldown": "5m", "message": "{symbol} {close} crossed EMA21 {value}", "severity": "warning",
}
_REF = "#/components/schemas/RuleBody_{model}"
_BODY_REF = {"$ref": "#/components/schemas/RuleBody"}
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "One rule, as in a rules file (YAML or JSON). The schema is the engine's; some checks (message "
                       "placeholders, indicator operands) are only made on submission, answered with 422.",
        "content": {
            "application/json": {"schema": _BODY_REF, "example": RULE_EXAMPLE},
            "application/yaml": {"schema": _BODY_REF, "example": RULE_EXAMPLE},
        },
    }
}


def rule_body_schemas() -> dict[str, Any]:
    """The alert engine's Rule model as OpenAPI component schemas (``RuleBody`` and its parts)."""
    schema = rules_mod.Rule.model_json_schema(by_alias=True, ref_template=_REF)
    defs = schema.pop("$defs", {})
    return {"RuleBody": schema, **{f"RuleBody_{name}": d for name, d in defs.items()}}


class RuleOut(BaseModel):
    name: str
    source: Literal["api", "file"] = Field(
        description="`api`: managed through the API (overrides a file rule of the same name); `file`: from the alert "
                    "engine's rules file, read-only (PUT, enable, disable, snooze store an API override).")
    overrides_file: bool = Field(default=False, description="An API rule replacing the rules file's rule of the same "
                                                             "name; DELETE removes it and the file's rule applies.")
    enabled: bool
    snooze_until: str | None = None
    rule: dict[str, Any] = Field(description="The rule in the rules file's own spelling.",
                                 examples=[RULE_EXAMPLE])


class RuleList(BaseModel):
    rules: list[RuleOut]


class Snooze(BaseModel):
    model_config = ConfigDict(extra="forbid")

    duration: str | None = Field(default=None, description="How long, e.g. 30m, 2h.", examples=["1h"])
    until: datetime | None = Field(default=None, description="Or until when (with a time zone).")


class RuleErrors(BaseModel):
    detail: list[str | dict[str, Any]] | str = Field(
        examples=[["request body:3: condition.op — Input should be 'above', ..."]],
        description="One `source:line: field.path — problem` line per problem (or FastAPI's validation errors).")


def parse_rule(text: str, source: str = SOURCE, origin: str = "api") -> Stored:
    """One rule from YAML/JSON text; ConfigError with ``source:line: path — problem`` lines.

    The rule is kept as the user wrote it (``data``), validated by the engine's model (``rule``): a round trip
    through the model could change spelling the user chose.
    """
    try:
        data, _ = load_yaml(text, source)
    except yaml.YAMLError as exc:  # e.g. control characters, refused before the loader's own error handling
        raise ConfigError(f"{source}:?: invalid YAML — {getattr(exc, 'problem', None) or exc}") from exc
    clean = _unicode(data, source)
    if clean != data:  # surrogate-pair escapes ("\\ud83d\\ude00") combined: validate what will be stored
        text = yaml.safe_dump(clean, sort_keys=False, allow_unicode=True)
    rule = rules_mod.parse_rule_text(text, source)  # what the engine runs on the same hash entry
    return Stored(rule, _plain(clean), origin)


def _unicode(value: Any, source: str) -> Any:
    """Strings with UTF-16 surrogate escapes combined into real characters; ConfigError for a lone surrogate."""
    if isinstance(value, dict):
        return {_unicode(k, source): _unicode(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_unicode(v, source) for v in value]
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            try:
                return value.encode("utf-16", "surrogatepass").decode("utf-16")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{source}:?: {value[:40]!r} — not valid Unicode (a lone surrogate)") from exc
    return value


@dataclass(frozen=True, slots=True)
class Stored:
    rule: rules_mod.Rule
    data: dict[str, Any]
    source: str = "api"  # "api" (streams.RULES) or "file" (streams.FILE_RULES)
    overrides_file: bool = False  # an API rule with a file rule of the same name

    @property
    def name(self) -> str:
        return self.rule.name

    def yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    """YAML-loaded data with datetimes as ISO strings, so it dumps back as plain YAML/JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _out(stored: Stored) -> RuleOut:
    rule = stored.rule
    return RuleOut(name=rule.name, source=stored.source, overrides_file=stored.overrides_file, enabled=rule.enabled,
                   snooze_until=rule.snooze_until.isoformat() if rule.snooze_until else None, rule=stored.data)


async def load_all(redis: Redis, *, with_file: bool = False) -> dict[str, Stored]:
    """Every API-managed rule (and, ``with_file``, every file rule an API rule does not override), sorted by name;
    one that no longer validates is reported, not hidden."""
    keys = [streams.RULES, streams.FILE_RULES] if with_file else [streams.RULES]
    async with redis.pipeline(transaction=True) as tx:  # one snapshot of both hashes
        for key in keys:
            tx.hgetall(key)
        hashes = await tx.execute()
    out: dict[str, Stored] = {}
    for key, origin, entries in zip(keys, ("api", "file"), hashes, strict=False):
        for name, text in entries.items():
            name = name.decode()
            if name not in out:
                out[name] = parse_rule(text.decode(), f"{key}[{name}]", origin)
            elif origin == "file":
                out[name] = replace(out[name], overrides_file=True)
    return dict(sorted(out.items()))


async def export_set(redis: Redis, source: str = "all") -> tuple[dict[str, Stored], list[str]]:
    """The rules of an export, sorted by name, and the problems of stored entries left out.

    ``all`` merges as the alert engine does (``AlertEngineApp._load_api_rules``): the file's rules, each replaced by
    the API rule of the same name, plus the API's other rules; an API entry that does not validate is skipped there,
    so it is skipped here too (and reported).
    """
    keys = {"all": [streams.FILE_RULES, streams.RULES], "api": [streams.RULES], "file": [streams.FILE_RULES]}[source]
    async with redis.pipeline(transaction=True) as tx:  # one snapshot of both hashes
        for key in keys:
            tx.hgetall(key)
        hashes = await tx.execute()
    out: dict[str, Stored] = {}
    skipped: list[str] = []
    for key, entries in zip(keys, hashes, strict=True):
        origin = "file" if key == streams.FILE_RULES else "api"
        for name, text in entries.items():
            name = name.decode()
            try:
                out[name] = parse_rule(text.decode(), f"{key}[{name}]", origin)  # API after file: overrides
            except ConfigError as exc:
                skipped.extend(exc.problems)
    return dict(sorted(out.items())), skipped


async def _get(redis: Redis, name: str) -> Stored:
    """The rule ``name``: the API's, else the rules file's; 404 if neither has it."""
    async with redis.pipeline(transaction=True) as tx:
        tx.hget(streams.RULES, name)
        tx.hget(streams.FILE_RULES, name)
        api, file = await tx.execute()
    if api is not None:
        return replace(parse_rule(api.decode(), f"{streams.RULES}[{name}]"), overrides_file=file is not None)
    if file is not None:
        return parse_rule(file.decode(), f"{streams.FILE_RULES}[{name}]", "file")
    raise HTTPException(status_code=404, detail=f"no rule named {name!r}")


async def _store(redis: Redis, rule: Stored) -> None:
    async with redis.pipeline(transaction=True) as tx:
        tx.hset(streams.RULES, rule.name, rule.yaml())
        tx.publish(streams.CHANNEL_RULES, rule.name)
        await tx.execute()


async def _body_rule(request: Request) -> Stored:
    raw = bytearray()
    async for chunk in request.stream():  # read no further than the limit, whatever Content-Length claims
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(status_code=413, detail=f"{SOURCE}: larger than {MAX_BODY_BYTES} bytes (the limit "
                                                        "for one rule)")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{SOURCE}: body is not UTF-8 text") from exc
    return parse_rule(text)


def mount(app: FastAPI, settings, redis: Redis, access) -> None:
    read = [Depends(access.require("read"))]
    write = [Depends(access.require("write"))]
    errors = {401: {"model": RuleErrors, "description": "missing or invalid bearer token"},
              403: {"model": RuleErrors, "description": "read-only token"},
              404: {"model": RuleErrors, "description": "no rule of that name"},
              413: {"model": RuleErrors, "description": f"the body is larger than {MAX_BODY_BYTES} bytes"},
              422: {"model": RuleErrors, "description": "the rule is invalid (or nested deeper than "
                                                        f"{MAX_DEPTH} levels); one line per problem"}}
    _add_component_schemas(app, rule_body_schemas())

    @app.exception_handler(ConfigError)
    async def config_error(_request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": exc.problems}, status_code=422)

    @app.get("/rules", response_model=RuleList, dependencies=read, tags=["rules"], responses=errors)
    async def list_rules() -> RuleList:
        """Every rule: those managed through the API and those of the alert engine's rules file (``source``)."""
        return RuleList(rules=[_out(r) for r in (await load_all(redis, with_file=True)).values()])

    @app.get("/rules/export", dependencies=read, tags=["rules"], response_class=PlainTextResponse,
             responses={**{code: {"description": errors[code]["description"], "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/RuleErrors"}}}} for code in (401, 403)},
                 200: {"description": "a rules file", "content": {"application/yaml": {"schema": {
                     "type": "object", "properties": {"rules": {"type": "array", "items": {"type": "object"}}}}}}}})
    async def export_rules(
        source: Annotated[Literal["all", "api", "file"], Query(
            description="`all` (default): the rules the engine runs — the rules file's, with API rules overriding "
                        "those of the same name and added; `api`: only API-managed rules; `file`: only the rules "
                        "file's, as last loaded by the engine.")] = "all",
    ) -> PlainTextResponse:
        """The rules as one rules file that `sentinel rules check` and the alert engine accept, sorted by name.

        A stored API rule that no longer validates is left out (the engine skips it too) and named in a comment
        at the top of the document.
        """
        rules, skipped = await export_set(redis, source)
        header = "".join(f"# left out, invalid: {' '.join(problem.split())}\n" for problem in skipped)
        text = yaml.safe_dump({"rules": [r.data for r in rules.values()]}, sort_keys=False, allow_unicode=True)
        return PlainTextResponse(header + text, media_type="application/yaml")

    @app.get("/rules/{name}", response_model=RuleOut, dependencies=read, tags=["rules"], responses=errors)
    async def get_rule(name: str) -> RuleOut:
        return _out(await _get(redis, name))

    @app.post("/rules", response_model=RuleOut, status_code=201, dependencies=write, tags=["rules"],
              responses={**errors, 409: {"description": "a rule with that name exists"}}, openapi_extra=_BODY_DOC)
    async def create_rule(request: Request) -> RuleOut:
        """Add a rule (validated exactly like the rules file)."""
        rule = await _body_rule(request)
        if await redis.hexists(streams.FILE_RULES, rule.name) and not await redis.hexists(streams.RULES, rule.name):
            raise HTTPException(status_code=409, detail=f"a rule named {rule.name!r} is in the alert engine's rules "
                                                        "file; PUT overrides it")
        if not await redis.hsetnx(streams.RULES, rule.name, rule.yaml()):
            raise HTTPException(status_code=409, detail=f"a rule named {rule.name!r} exists; PUT replaces it")
        await redis.publish(streams.CHANNEL_RULES, rule.name)
        return _out(rule)

    @app.put("/rules/{name}", response_model=RuleOut, dependencies=write, tags=["rules"], responses=errors,
             openapi_extra=_BODY_DOC)
    async def replace_rule(name: str, request: Request) -> RuleOut:
        """Create or replace the rule ``name`` (the body's name must match)."""
        rule = await _body_rule(request)
        if rule.name != name:
            raise ConfigError(f"{SOURCE}: name — {rule.name!r} does not match the URL's {name!r}")
        await _store(redis, rule)
        return _out(replace(rule, overrides_file=bool(await redis.hexists(streams.FILE_RULES, name))))

    @app.delete("/rules/{name}", status_code=204, dependencies=write, tags=["rules"],
                responses={**errors, 409: {"model": RuleErrors, "description": "the rule is in the rules file"}})
    async def delete_rule(name: str) -> None:
        """Delete an API rule; for an override of a file rule, the file's rule applies again."""
        if not await redis.hdel(streams.RULES, name):
            if await redis.hexists(streams.FILE_RULES, name):
                raise HTTPException(status_code=409, detail=f"rule {name!r} is in the alert engine's rules file; "
                                                            "remove it there (or disable it here)")
            raise HTTPException(status_code=404, detail=f"no rule named {name!r}")
        await redis.publish(streams.CHANNEL_RULES, name)

    async def _update(name: str, **changes: Any) -> RuleOut:
        data = {**(await _get(redis, name)).data, **changes}
        if data.get("snooze_until", "") is None:
            del data["snooze_until"]
        updated = parse_rule(yaml.safe_dump(data, sort_keys=False), f"{streams.RULES}[{name}]")
        await _store(redis, updated)
        return _out(replace(updated, overrides_file=bool(await redis.hexists(streams.FILE_RULES, name))))

    @app.post("/rules/{name}/enable", response_model=RuleOut, dependencies=write, tags=["rules"], responses=errors)
    async def enable_rule(name: str) -> RuleOut:
        return await _update(name, enabled=True)

    @app.post("/rules/{name}/disable", response_model=RuleOut, dependencies=write, tags=["rules"], responses=errors)
    async def disable_rule(name: str) -> RuleOut:
        return await _update(name, enabled=False)

    @app.post("/rules/{name}/snooze", response_model=RuleOut, dependencies=write, tags=["rules"],
              responses={**errors, 400: {"model": RuleErrors, "description": "the body is not JSON"}})
    async def snooze_rule(name: str, snooze: Annotated[Snooze, Body(examples=[{"duration": "1h"}])]) -> RuleOut:
        """Silence a rule for a duration or until a time; ``{}`` ends a snooze."""
        if snooze.duration is not None and snooze.until is not None:
            raise HTTPException(status_code=422, detail=["give duration or until, not both"])
        until: datetime | None = snooze.until
        if snooze.duration is not None:
            try:
                ms = rules_mod.parse_duration_ms(snooze.duration)
            except (ValueError, ConfigError) as exc:
                raise HTTPException(status_code=422, detail=[f"{SOURCE}: duration — {exc}"]) from exc
            until = datetime.fromtimestamp(time.time() + ms / 1000, tz=UTC)
        if until is not None and until.tzinfo is None:
            raise HTTPException(status_code=422, detail=[f"{SOURCE}: until — give a time zone"])
        return await _update(name, snooze_until=until.isoformat() if until else None)


def _add_component_schemas(app: FastAPI, schemas: dict[str, Any]) -> None:
    """Merge extra component schemas into the app's OpenAPI document (built lazily by FastAPI)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
