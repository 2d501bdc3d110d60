"""``GET /openapi.json``: an OpenAPI 3.1 document of projector's HTTP API (CONTRACT §5).

:func:`document` builds the document from the worker's read-model catalog, with
no I/O, so it can be checked without Kafka (tests/unit/test_openapi.py), and a
schemathesis run fuzzes a live worker against it (tests/integration/test_api_fuzz.py).
It describes the API as the views of :mod:`projector.web.routes` serve it: keep
them in step (the unit test fails when a route is missing here).

Nothing here knows a domain: the commands' ``data`` schemas come from the read
models that take commands (``COMMAND_SCHEMAS``), the control keys with a meaning
from projector's own settings and the ones the modules declare (``CONTROL``).

Layout: small builders; the shared parameters; one function per path, in the
order :func:`_paths` lists them; the components; :func:`document`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import orjson
from aiohttp import web

from projector import __version__
from projector.core.catalog import ControlSetting, settings_with_builtin
from projector.core.commands import MAX_ID, MAX_VERSION
from projector.web.commands import COMMAND_WAIT_MS
from projector.web.forwarding import SERVED_BY_HEADER
from projector.web.params import MAX_KEY_PARAM, MAX_LIMIT, MAX_WAIT_MS
from projector.web.status import STATUS_ALL, STATUS_MINE

JSON = "application/json"

#: Longest command id, aggregate type, aggregate id or command type, in bytes of UTF-8.
MAX_COMMAND_ID = MAX_ID

# --- small builders --------------------------------------------------------------


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: dict[str, Any], description: str, headers: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _error(description: str, codes: Optional[list[str]] = None, required: tuple[str, ...] = (),
           **properties: Any) -> dict[str, Any]:
    """A response whose body is ``{"error": <code>, ...}``; ``codes`` lists the codes it can carry."""
    if codes is None and not properties:
        return _json(_ref("Error"), description)
    error: dict[str, Any] = {"type": "string"}
    if codes is not None:
        error["enum"] = codes
    schema = {
        "allOf": [
            _ref("Error"),
            {"type": "object", "properties": {"error": error, **properties}},
        ]
    }
    if required:
        schema["allOf"][1]["required"] = ["error", *required]
    return _json(schema, description)


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, schema: dict[str, Any], description: str, example: Optional[str] = None) -> dict[str, Any]:
    out = {"name": name, "in": "path", "required": True, "schema": schema, "description": description}
    if example is not None:
        out["example"] = example
    return out


def _int(minimum: int, maximum: Optional[int] = None, default: Optional[int] = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        out["maximum"] = maximum
    if default is not None:
        out["default"] = default
    return out


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}
UNAVAILABLE = {"$ref": "#/components/responses/Unavailable"}
#: The 503 of the routes that wait (a row's min_version, the control table's min_offset): it may say when to retry.
UNAVAILABLE_RETRY = {"$ref": "#/components/responses/UnavailableRetry"}
INVALID = {"$ref": "#/components/responses/Invalid"}
TOO_LARGE = {"$ref": "#/components/responses/TooLarge"}
WRITE_TIMEOUT = {"$ref": "#/components/responses/WriteTimeout"}
SERVED_BY = {
    SERVED_BY_HEADER: {
        "description": "Set when this worker forwarded the request: the URL of the worker that answered it.",
        "schema": {"type": "string"},
    }
}


#: Who may call an operation (see :func:`_secure`): anyone, holders of PROJECTOR_API_TOKEN (when it is
#: set), holders of PROJECTOR_ADMIN_TOKEN (when it is set; else as "api").
PUBLIC, API, ADMIN = "public", "api", "admin"
#: Where :func:`_operation` notes the access, until :func:`_secure` turns it into security and 401.
_ACCESS = "x-projector-access"


def _operation(operation_id: str, summary: str, responses: dict[str, Any], *, tags: list[str],
               parameters: Optional[list[dict[str, Any]]] = None, access: str = API,
               description: Optional[str] = None, **extra: Any) -> dict[str, Any]:
    """One operation; every one but /healthz may answer 503. Its security and 401 come from :func:`_secure`."""
    out: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": tags}
    if description:
        out["description"] = description
    if parameters:
        out["parameters"] = parameters
    out.update(extra)
    all_responses = dict(responses)
    if access != PUBLIC:
        all_responses.setdefault("503", UNAVAILABLE)
    out["responses"] = dict(sorted(all_responses.items()))
    out[_ACCESS] = access
    return out


def _secure(paths: dict[str, Any], api_token: bool, admin_token: bool) -> None:
    """Security and 401 where the worker checks a token (projector.web.middleware.auth, auth.is_admin), only there.

    With PROJECTOR_API_TOKEN set, every operation but the public ones needs a bearer
    token (the document's global ``security``); with PROJECTOR_ADMIN_TOKEN set, the
    admin operations need that one. Without any token the API is open: no
    security, no 401. ``GET /`` also takes the token as ``?token=`` (a browser
    cannot send a header when it opens a page).
    """
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters":
                continue
            access = op.pop(_ACCESS)
            checked = (access == ADMIN and admin_token) or (access != PUBLIC and api_token)
            if checked:
                op["responses"] = dict(sorted({**op["responses"], "401": UNAUTHORIZED}.items()))
            if api_token and not checked:
                op["security"] = []
            elif checked and not api_token:
                op["security"] = [{"bearer": []}]
            elif checked and (path, method) == ("/", "get"):
                op["security"] = [{"bearer": []}, {"token": []}]


# --- shared parameters -------------------------------------------------------------


def _table_param(tables: list[str]) -> dict[str, Any]:
    table_list = ", ".join(f"`{t}`" for t in tables)
    return _path(
        "table",
        {"type": "string", "enum": tables},
        f"A read model of this worker's catalog ({table_list}); any other name is 404 `unknown_table`.",
        example=tables[0] if tables else None,
    )


def _key_param(example_key: Optional[str]) -> dict[str, Any]:
    return _path("key", {"type": "string", "minLength": 1}, "The row's key (UTF-8).", example=example_key)


def _aggregate_param(example_key: Optional[str]) -> dict[str, Any]:
    return _path("id", {"type": "string", "minLength": 1}, "The aggregate id.", example=example_key)


def _control_key_param() -> dict[str, Any]:
    return _path(
        "key",
        # projector.core.control.check_key: non-empty, at most 1024 bytes of UTF-8, no control
        # character (Cc) nor line or paragraph separator (Zl, Zp).
        # The length limit is said in words only, as for the listing's prefix (see _rows).
        {"type": "string", "minLength": 1, "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F\\u2028\\u2029]+$"},
        "A control key: at most 1024 bytes of UTF-8, without control characters or line separators "
        "(writing such a key is 400 `invalid`). It may contain `/`.",
        example="commands.enabled",
    )


def _timeout_ms_param() -> dict[str, Any]:
    return _query(
        "timeout_ms",
        _int(0, MAX_WAIT_MS, default=0),
        f"How long to wait, in milliseconds (0 to {MAX_WAIT_MS}); more is 400 `invalid`.",
    )


def _command_id() -> dict[str, Any]:
    return {"type": "string", "description": "The command's id (made up when the request had none)."}


# --- operations: health ------------------------------------------------------------


def _healthz() -> dict[str, Any]:
    return {
        "get": _operation(
            "healthz",
            "200 while the process runs (no token needed)",
            {"200": _json({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                          "The process runs.")},
            tags=["operations"],
            access=PUBLIC,
        )
    }


def _readyz() -> dict[str, Any]:
    return {
        "get": _operation(
            "readyz",
            "200 once the tables are recovered, the control topic is read and no rebalance is under way",
            {
                "200": _json(
                    _object(["status", "control", "broker"],
                            {"status": {"const": "ready"}, "control": _ref("ControlProgress"),
                             "broker": _ref("BrokerState")}),
                    "Ready (also while Kafka is unreachable: `broker` says so).",
                ),
                "503": _error("Not ready yet.", ["not_ready", "unavailable"], control=_ref("ControlProgress"),
                              broker=_ref("BrokerState")),
            },
            tags=["operations"],
        )
    }


# --- tables ------------------------------------------------------------------------


def _tables() -> dict[str, Any]:
    building = _nullable(_object(
        ["version", "remaining", "eta_seconds"],
        {
            "version": {"type": "integer", "minimum": 1, "description": "The version being built."},
            "remaining": _nullable({"type": "integer", "minimum": 0,
                                    "description": "Records left over every partition (null: not known yet)."}),
            "eta_seconds": _nullable({"type": "number", "minimum": 0}),
        },
    ))
    table = _object(
        ["name", "description", "partitions", "version", "indexes", "building"],
        {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "partitions": {"type": "integer", "minimum": 1},
            "version": _nullable({"type": "integer", "minimum": 1,
                                  "description": "The version that answers (null: a brand-new read model, building)."}),
            "building": building,
            "indexes": {"type": "array", "items": {"type": "string"},
                        "description": "The read model's secondary indexes (`INDEXES`), for "
                        "`GET /tables/{table}/index/{index}/{value}`."},
        },
    )
    return {
        "get": _operation(
            "listTables",
            "The read models",
            {
                "200": _json(
                    _object(["tables"], {"tables": {"type": "array", "items": table}}),
                    "Every read model of this worker's catalog.",
                )
            },
            tags=["tables"],
        )
    }


def _page_of_rows() -> dict[str, Any]:
    """The 200 of a listing (by key, or by an index value): a page of rows and the cursor to the next."""
    return _json(
        _object(["rows", "next_cursor"],
                {"rows": {"type": "array", "items": _ref("ListedRow")},
                 "next_cursor": _nullable({"type": "string"})}),
        "One page; `next_cursor` is null at the end.",
    )


def _rows(table_param: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": _operation(
            "listRows",
            "Rows of a read model in key order, over all partitions and workers",
            {
                "200": _page_of_rows(),
                "400": _error("`limit` is 0 or less or not a number, or the cursor is not one this API gave.",
                              ["invalid"]),
                "404": _error("Unknown table.", ["unknown_table"]),
                "503": UNAVAILABLE_RETRY,
            },
            tags=["tables"],
            parameters=[
                table_param,
                _query("limit", _int(1, default=100),
                       f"Rows per page, 1 or more (default 100); more than {MAX_LIMIT} is capped to {MAX_LIMIT}."),
                _query("cursor", {"type": "string"}, "The `next_cursor` of the previous page (opaque)."),
                # At most MAX_KEY_PARAM bytes of UTF-8, said in words only: with a maxLength, schemathesis
                # sends prefixes of that many 4-byte characters, 12 KiB percent-encoded, longer than the
                # 8190-byte request line aiohttp reads (it answers 400 text/plain itself, before any view).
                _query("prefix", {"type": "string"},
                       f"Only keys that start with this (at most {MAX_KEY_PARAM} bytes of UTF-8; more is 400 "
                       "`invalid`)."),
            ],
        )
    }


def _cutover(table_param: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": _operation(
            "cutover",
            "Switch a read model to its new version, built and caught up (admin)",
            {
                "202": _json(
                    _object(["table", "version", "offset"],
                            {"table": {"type": "string"}, "version": {"type": "integer", "minimum": 1},
                             "offset": {"type": "integer", "minimum": 0}}),
                    "The cutover is written to the control topic; every worker switches when it reads it.",
                ),
                "404": _error("Unknown table.", ["unknown_table"]),
                "409": _error("No new version is being built (`not_building`), or it has not caught up on every "
                              "partition yet (`not_caught_up`).", ["not_building", "not_caught_up"]),
            },
            tags=["tables"],
            access=ADMIN,
            description="With PROJECTOR_CUTOVER=manual a new read-model version, once built, waits for this. "
            "Needs PROJECTOR_ADMIN_TOKEN when it is set.",
            parameters=[table_param],
        )
    }


def _digest(table_param: dict[str, Any]) -> dict[str, Any]:
    copy = _object(
        ["partition", "offset", "rows", "digest"],
        {
            "partition": {"type": "integer", "minimum": 0},
            "offset": {"type": "integer", "minimum": 0,
                       "description": "The next changelog offset this copy will apply (0: none applied yet)."},
            "rows": {"type": "integer", "minimum": 0},
            "digest": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                       "description": "Order-independent digest of the copy's rows as of `offset`."},
            "role": {"type": "string", "enum": ["active", "standby"]},
        },
    )
    return {
        "get": _operation(
            "tableDigest",
            "A digest of each copy of the table's partitions this worker holds, active or standby",
            {
                "200": _json(
                    _object(["table", "partitions"],
                            {"table": {"type": "string"}, "partitions": {"type": "array", "items": copy}}),
                    "This worker's copies, in partition order (none while it holds none).",
                ),
                "404": _error("Unknown table.", ["unknown_table"]),
                "503": UNAVAILABLE_RETRY,
            },
            tags=["tables"],
            description="Never forwarded: it answers about this worker's own copies. Two copies of one "
            "partition at the same `offset` have the same `digest`; `projector verify` compares them.",
            parameters=[table_param],
        )
    }


def _index_rows(table_param: dict[str, Any], indexes: Mapping[str, list[str]]) -> dict[str, Any]:
    names = sorted({name for names in indexes.values() for name in names})
    where = "; ".join(f"`{table}`: {', '.join(f'`{n}`' for n in names)}" for table, names in indexes.items() if names)
    index_param = _path(
        "index",
        {"type": "string", "enum": names} if names else {"type": "string", "minLength": 1},
        f"A secondary index of the table ({where or 'none is declared'}); any other name is 404 `unknown_index`.",
        example=names[0] if names else None,
    )
    return {
        "get": _operation(
            "listIndexRows",
            "Rows whose secondary index has a value, in key order, over all partitions and workers",
            {
                "200": _page_of_rows(),
                "400": _error("`limit` is 0 or less or not a number, or the cursor is not one this API gave "
                              "for this table, index and value.", ["invalid"]),
                "404": _error("Unknown table or index.", ["unknown_table", "unknown_index"]),
            },
            tags=["tables"],
            description="A read model declares its indexes (`INDEXES`): each is a function of a row's value "
            "that gives the value(s) to find the row under. The empty string, values with a NUL character "
            f"and values over {MAX_KEY_PARAM} bytes of UTF-8 are not indexed: asking for one finds no row.",
            parameters=[
                table_param,
                index_param,
                _path("value", {"type": "string", "minLength": 1}, "The index value (UTF-8)."),
                _query("limit", _int(1, default=100),
                       f"Rows per page, 1 or more (default 100); more than {MAX_LIMIT} is capped to {MAX_LIMIT}."),
                _query("cursor", {"type": "string"}, "The `next_cursor` of the previous page (opaque)."),
            ],
        )
    }


def _row(table_param: dict[str, Any], example_key: Optional[str]) -> dict[str, Any]:
    return {
        "get": _operation(
            "getRow",
            "One row, from whichever worker owns its partition",
            {
                "200": _json(_ref("Row"), "The row.", headers=SERVED_BY),
                "400": _error("A bad `min_version` or `timeout_ms`.", ["invalid"]),
                "503": UNAVAILABLE_RETRY,
                "404": _error("No such row (`not_found`) or no such table (`unknown_table`).",
                              ["not_found", "unknown_table"]),
                "504": _error(
                    "The row did not reach `min_version` within `timeout_ms`.",
                    ["timeout"],
                    required=("version",),
                    version=_nullable({"type": "integer", "description": "The row's current version."}),
                ),
            },
            tags=["tables"],
            description="With `min_version`, the owner answers as soon as the row's version is at least "
            "`min_version`, waiting up to `timeout_ms` (read-your-writes).",
            parameters=[
                table_param,
                _key_param(example_key),
                _query("min_version", _int(0), "Wait until the row's version is at least this."),
                _timeout_ms_param(),
            ],
        )
    }


# --- aggregates --------------------------------------------------------------------


def _aggregate_events(example_key: Optional[str]) -> dict[str, Any]:
    return {
        "get": _operation(
            "aggregateEvents",
            "An aggregate's applied events, from the aggregate index",
            {
                "200": _json(
                    _object(["aggregate_id", "events", "next_version"],
                            {"aggregate_id": {"type": "string"},
                             "events": {"type": "array", "items": _ref("Envelope")},
                             "next_version": _nullable(
                                 {"type": "integer", "description": "The version to ask for next."})}),
                    "The events from `from_version` on; `next_version` is null when no later event is stored yet.",
                    headers=SERVED_BY,
                ),
                "400": _error("A bad `from_version` or `limit`.", ["invalid"]),
                "404": _error("Unknown aggregate.", ["not_found"]),
            },
            tags=["aggregates"],
            parameters=[
                _aggregate_param(example_key),
                _query("from_version", _int(1, default=1), "The first version to answer (default 1)."),
                _query("limit", _int(1, default=100),
                       f"Most events to answer (default 100); more than {MAX_LIMIT} is capped to {MAX_LIMIT}."),
            ],
        )
    }


def _aggregate_release(example_key: Optional[str]) -> dict[str, Any]:
    return {
        "post": _operation(
            "releaseAggregate",
            "Release a parked aggregate (admin)",
            {
                "202": _json(
                    _object(["aggregate_id", "skip_to", "offset"],
                            {"aggregate_id": {"type": "string"},
                             "skip_to": _nullable({"type": "integer", "minimum": 1}),
                             "offset": {"type": "integer", "minimum": 0}}),
                    "The release command is written; `offset` is its offset in the commands topic.",
                ),
                "400": INVALID,
                "413": TOO_LARGE,
                "504": WRITE_TIMEOUT,
            },
            tags=["aggregates"],
            access=ADMIN,
            description="Needs PROJECTOR_ADMIN_TOKEN when it is set. The body is optional: `{}` or "
            '`{"skip_to": <version>}`.',
            parameters=[_aggregate_param(example_key)],
            requestBody={
                "required": False,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "properties": {"skip_to": _nullable({"type": "integer", "minimum": 1})},
                            "additionalProperties": False,
                        }
                    }
                },
            },
        )
    }


# --- commands ----------------------------------------------------------------------


def example_key(catalog: Any) -> Optional[str]:
    """The id shown in the examples: the first ``EXAMPLE_KEY`` a read model of the catalog gives, if any."""
    return next((m.example_key for m in catalog.models if getattr(m, "example_key", None)), None)


def _command_schema(catalog: Any) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """A ``POST /commands`` body as projector.core.commands.check_command takes it, and an example.

    One alternative per command type of each aggregate of the catalog that takes
    commands (``catalog.deciders``), each with its ``data`` as the read model
    declares it (``COMMAND_SCHEMAS``; undeclared: any object); an aggregate that
    lists no command types takes any non-empty ``type``. The example is the first
    command whose ``data`` schema has ``examples``.
    """

    def text(description: str) -> dict[str, Any]:
        # At most MAX_COMMAND_ID bytes of UTF-8: maxLength (in characters) is the bound for ASCII.
        return {"type": "string", "minLength": 1, "maxLength": MAX_COMMAND_ID, "description": description}

    common = {
        "command_id": _nullable(text(
            f"The command's id, at most {MAX_COMMAND_ID} bytes of UTF-8; absent or null: the worker makes "
            "one up (a UUID). A command id seen before gets the answer it got then, and nothing is appended."
        )),
        "aggregate_id": text(f"The aggregate's id, at most {MAX_COMMAND_ID} bytes of UTF-8."),
        "expected_version": _nullable({
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_VERSION,
            "description": "Decide only if the aggregate is at this version (0: it has no event yet); "
            "otherwise 409 `version_conflict`. Absent or null: no check.",
        }),
    }
    required = ["aggregate_type", "aggregate_id", "type", "data"]
    variants = []
    example = None
    for aggregate_type, model in sorted(catalog.deciders.items()):
        schemas = getattr(model, "command_schemas", {})
        for kind in list(model.commands) or [None]:
            data = schemas.get(kind) or {
                "type": "object",
                "description": "The command's fields, as the aggregate's decider takes them.",
            }
            if example is None and kind and data.get("examples"):
                example = {"aggregate_type": aggregate_type, "aggregate_id": example_key(catalog) or "id-1", "type": kind,
                           "data": data["examples"][0]}
            variants.append({
                "type": "object",
                "required": required,
                "additionalProperties": False,
                "properties": {
                    "command_id": common["command_id"],
                    "aggregate_type": {"type": "string", "const": aggregate_type},
                    "aggregate_id": common["aggregate_id"],
                    "type": {"type": "string", "const": kind} if kind else text("The command type."),
                    "expected_version": common["expected_version"],
                    "data": data,
                },
            })
    if not variants:  # no aggregate of this catalog takes commands: every command is 400 `invalid`
        return {
            "type": "object",
            "required": required,
            "additionalProperties": False,
            "properties": {
                **common,
                "aggregate_type": text("An aggregate type (none of this worker's catalog takes commands)."),
                "type": text("The command type."),
                "data": {"type": "object"},
            },
        }, None
    schema = variants[0] if len(variants) == 1 else {"oneOf": variants}
    return {**schema, "description": "A command: its aggregate, its type and its `data` (CONTRACT §5)."}, example


def _command_answers(command_id: dict[str, Any]) -> dict[str, Any]:
    """The answers of ``POST /commands``: the writer's decision, or why there is none."""
    accepted = _object(
        ["command_id", "aggregate_id", "version", "events"],
        {
            "command_id": command_id,
            "aggregate_id": {"type": "string"},
            "version": {
                "type": "integer",
                "minimum": 0,
                "description": "The aggregate's version after the command (its last event's).",
            },
            "events": {
                "type": "array",
                "items": _ref("Envelope"),
                "description": "The events the command appended, in order (none when the "
                "decider decided none).",
            },
        },
    )
    return {
        "200": _json(
            accepted,
            "Accepted: its events are in the events topic, and the writer's read-model rows include them.",
        ),
        "400": INVALID,
        "409": _error(
            "`expected_version` is not the aggregate's version (final for this command id).",
            ["version_conflict"],
            required=("command_id", "expected_version", "actual_version"),
            command_id=command_id,
            expected_version={"type": "integer", "minimum": 0},
            actual_version={"type": "integer", "minimum": 0},
        ),
        "413": TOO_LARGE,
        "422": _error(
            "The aggregate refuses the command. Final for this command id, but for `parked`, "
            "`fold_error`, `decide_error` and `invalid_event`, which are not recorded.",
            ["rejected"],
            required=("command_id", "reason", "detail"),
            command_id=command_id,
            reason={
                "type": "string",
                "description": "A short code. The aggregate's decider's: the description of each "
                "command's `data` in the `Command` schema names the ones it gives. Projector's: "
                "`parked` (the aggregate waits for an operator's release), `fold_error` (a read "
                "model's fold refused the decided events), `decide_error` (the decider raised), "
                "`invalid_event` (it decided an event that is not a valid envelope).",
            },
            detail={"type": "string"},
        ),
        "503": _error(
            "`commands_disabled` (the control key `commands.enabled` is false), `not_ready` (this "
            "worker, or the aggregate's writer, is not ready), `broker_unreachable` (this worker cannot "
            "reach Kafka; nothing was written) or `unavailable` (Kafka refused the command); retry with "
            "the same `command_id`.",
            ["commands_disabled", "not_ready", "broker_unreachable", "unavailable"],
            command_id=command_id,
        ),
        "504": _error(
            "No answer within `timeout_ms`: the outcome is unknown, the command may still be decided. "
            "Send the same `command_id` again to learn it.",
            ["timeout"],
            required=("command_id", "detail"),
            command_id=command_id,
        ),
    }


def _commands(command_example: Optional[dict[str, Any]]) -> dict[str, Any]:
    command_id = _command_id()
    command_body: dict[str, Any] = {"schema": _ref("Command")}
    if command_example is not None:
        command_body["example"] = command_example
    return {
        "post": _operation(
            "postCommand",
            "Have the writer of an aggregate decide a command, and answer with its decision",
            _command_answers(command_id),
            tags=["commands"],
            description="Any worker takes the command and puts it on the command topic, keyed by aggregate "
            "id; the worker owning that partition decides it against the aggregate's state and version, "
            "appends its events, and the answer comes back here. The writer's answers (200, 400, 409, 422) "
            "carry the command id; 200, 409, 400 from the decider and 422 but for `parked`, `fold_error`, "
            "`decide_error` and `invalid_event` are recorded for it, and the same command id gets the same "
            "answer again without being decided twice. A 400 from checking the body carries the body's "
            "`command_id` when that is a string; a bad `timeout_ms` or a body that is not JSON, none. The "
            "body is at most 1 MiB.",
            parameters=[
                _query("timeout_ms", _int(1, MAX_WAIT_MS, default=COMMAND_WAIT_MS),
                       f"How long to wait for the writer's answer, in milliseconds (1 to {MAX_WAIT_MS}, "
                       f"default {COMMAND_WAIT_MS}); anything else is 400 `invalid`."),
            ],
            requestBody={"required": True, "content": {JSON: command_body}},
        )
    }


# --- the control table -------------------------------------------------------------


def control_settings(catalog: Any) -> dict[str, ControlSetting]:
    """The control keys with a meaning: projector's own and the ones the catalog's modules declare (``CONTROL``).

    The same settings a running worker holds (``projector.control.settings``), from
    the catalog alone, so the document needs no running worker.
    """
    return settings_with_builtin(getattr(catalog, "control_settings", {}))


def _setting_values(setting: ControlSetting) -> str:
    """What a setting takes, in words: ``true or false``, ``an integer >= 0, or null``, ..."""
    if setting.type == "boolean":
        return setting.accepts()
    return setting.accepts() + (", or null" if setting.default is None else "")


def _control() -> dict[str, Any]:
    return {
        "get": _operation(
            "getControl",
            "The control table as this worker holds it",
            {
                "200": _json(
                    _object(["offset", "entries"],
                            {"offset": {"type": "integer", "minimum": -1},
                             "entries": {"type": "object", "additionalProperties": True}}),
                    "The control table.",
                ),
                "400": _error("A bad `min_offset` or `timeout_ms`.", ["invalid"]),
                "503": UNAVAILABLE_RETRY,
                "504": _error(
                    "The worker did not apply `min_offset` within `timeout_ms`.",
                    ["timeout"],
                    required=("offset",),
                    offset={"type": "integer"},
                ),
            },
            tags=["control"],
            parameters=[
                _query("min_offset", _int(-1, default=-1),
                       "Wait until this worker has applied the control record at this offset."),
                _timeout_ms_param(),
            ],
        )
    }


def _control_entry(settings: Mapping[str, ControlSetting]) -> dict[str, Any]:
    written = _json(
        _object(["key", "offset"], {"key": {"type": "string"}, "offset": {"type": "integer", "minimum": 0}}),
        "Written to the control topic at `offset`; every worker applies it.",
    )
    refused = "; ".join(f"`{key}`: {_setting_values(s)}" for key, s in settings.items())
    return {
        "parameters": [_control_key_param()],
        "get": _operation(
            "getControlKey",
            "One control entry",
            {
                "200": _json(
                    _object(["key", "value", "offset"],
                            {"key": {"type": "string"}, "value": {}, "offset": {"type": "integer"}}),
                    "The entry.",
                ),
                "404": _error("No such key.", ["not_found"]),
            },
            tags=["control"],
        ),
        "put": _operation(
            "putControlKey",
            "Set a control entry (admin)",
            {"202": written, "400": INVALID, "413": TOO_LARGE, "504": WRITE_TIMEOUT},
            tags=["control"],
            access=ADMIN,
            description="Needs PROJECTOR_ADMIN_TOKEN when it is set. The body is any JSON value; `null` "
            f"deletes the key. A value the key's meaning refuses ({refused}) is 400 `invalid`; the "
            "`ControlSettings` schema describes each of these keys. Any other key takes any JSON value.",
            requestBody={"required": True, "content": {JSON: {"schema": {}}}},
        ),
        "delete": _operation(
            "deleteControlKey",
            "Delete a control entry (admin)",
            {"202": written, "400": INVALID, "504": WRITE_TIMEOUT},
            tags=["control"],
            access=ADMIN,
            description="Needs PROJECTOR_ADMIN_TOKEN when it is set.",
        ),
    }


# --- operations and the status page ------------------------------------------------


def _deadletters() -> dict[str, Any]:
    return {
        "get": _operation(
            "deadletters",
            "The newest dead letters, newest first",
            {
                "200": _json(
                    _object(["deadletters"], {"deadletters": {"type": "array", "items": _ref("DeadLetter")}}),
                    "The dead letters.",
                ),
                "400": _error("A bad `limit`.", ["invalid"]),
            },
            tags=["operations"],
            parameters=[
                _query("limit", _int(1, default=100),
                       f"Most dead letters (default 100); more than {MAX_LIMIT} is capped to {MAX_LIMIT}."),
            ],
        )
    }


def _metrics() -> dict[str, Any]:
    return {
        "get": _operation(
            "metrics",
            "Prometheus metrics of this worker",
            {"200": {"description": "Prometheus text format 0.0.4; OpenMetrics 1.0.0 when `Accept` asks for "
                                    "`application/openmetrics-text`.",
                     "content": {"text/plain": {"schema": {"type": "string"}},
                                 "application/openmetrics-text": {"schema": {"type": "string"}}}}},
            tags=["operations"],
            description="This worker's counters, read when scraped, with prometheus-client's process and Python GC "
                        "metrics. Counters keep their `_total` in Prometheus text; OpenMetrics names their families "
                        "without it. `projector_ready` is 1 when `/readyz` answers 200.",
        )
    }


def _openapi() -> dict[str, Any]:
    return {
        "get": _operation(
            "openapi",
            "This document",
            {"200": _json({"type": "object", "required": ["openapi", "paths"]}, "The OpenAPI document.")},
            tags=["operations"],
        )
    }


def _status_page() -> dict[str, Any]:
    return {
        "get": _operation(
            "statusPage",
            "The status page, for people (HTML, no external assets)",
            {"200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
            tags=["status"],
        )
    }


def _status() -> dict[str, Any]:
    return {
        "get": _operation(
            "status",
            "The data behind the status page",
            {
                "200": _json({"type": "object"}, "This worker's status, or with `all`, every worker's."),
                "400": _error("A bad `all`.", ["invalid"]),
            },
            tags=["status"],
            parameters=[
                _query("all", {"type": "string", "enum": [*sorted(STATUS_ALL), *sorted(STATUS_MINE)]},
                       "Every worker of the group (1, true, yes, on) or this one only (0, false, no, off, empty; "
                       "the default); anything else is 400 `invalid`."),
            ],
        )
    }


def _paths(tables: list[str], command_example: Optional[dict[str, Any]],
           settings: Mapping[str, ControlSetting], example_key: Optional[str],
           indexes: Optional[Mapping[str, list[str]]] = None) -> dict[str, Any]:
    """Every path of the public API (projector.web.routes serves them).

    The routes under ``/internal/`` are left out: workers call them on each other
    (the listing's scan, the answers of forwarded commands); they are no API for
    anyone else and may change with any release.
    """
    table = _table_param(tables)
    return {
        "/healthz": _healthz(),
        "/readyz": _readyz(),
        "/tables": _tables(),
        "/tables/{table}": _rows(table),
        "/tables/{table}/digest": _digest(table),
        "/tables/{table}/{key}": _row(table, example_key),
        "/tables/{table}/cutover": _cutover(table),
        "/tables/{table}/index/{index}/{value}": _index_rows(table, indexes or {}),
        "/aggregates/{id}/events": _aggregate_events(example_key),
        "/aggregates/{id}/release": _aggregate_release(example_key),
        "/commands": _commands(command_example),
        "/control": _control(),
        "/control/{key}": _control_entry(settings),
        "/deadletters": _deadletters(),
        "/metrics": _metrics(),
        "/openapi.json": _openapi(),
        "/": _status_page(),
        "/status": _status(),
    }


# --- components --------------------------------------------------------------------


def _envelope_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "An event envelope as it was sent (CONTRACT §2), before upcasting.",
        "required": ["aggregate_id", "version"],
        "properties": {
            "id": {"type": "string"},
            "aggregate_id": {"type": "string"},
            "aggregate_type": {"type": "string"},
            "type": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "timestamp": {"type": "string"},
            "schema_version": {"type": "integer", "minimum": 1},
            "data": {"type": "object"},
            "metadata": {"type": "object"},
        },
    }


def _control_settings_schema(settings: Mapping[str, ControlSetting]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The control keys with a meaning to this worker (CONTRACT §3), each with the values it "
        "takes and its default. A value of the wrong type is refused when written through the API, and "
        "ignored (the default applies) when something else wrote it. Any other key takes any JSON value.",
        "properties": {key: setting.schema for key, setting in settings.items()},
        "additionalProperties": True,
    }


def _schemas(command_schema: dict[str, Any], settings: Mapping[str, ControlSetting]) -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "description": "Every error answer: a code in `error`, and sometimes more fields (`detail`, ...).",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
            "additionalProperties": True,
        },
        "ControlProgress": _object(
            ["offset", "target"],
            {
                "offset": {"type": "integer", "description": "The last control offset applied (-1: none)."},
                "target": _nullable(
                    {"type": "integer", "description": "The control topic's end offset when the worker started."}
                ),
            },
        ),
        "BrokerState": {
            "type": "object",
            "description": "Whether this worker reaches Kafka now. Losing it does not make a ready worker "
            "unready: it serves reads from its local state.",
            "required": ["reachable", "since"],
            "properties": {
                "reachable": {"type": "boolean"},
                "since": {"type": "string", "format": "date-time",
                          "description": "When it became reachable or unreachable (or the worker started)."},
                "error": {"type": "string", "description": "While unreachable: why."},
            },
        },
        "Row": _object(
            ["table", "key", "version", "value"],
            {
                "table": {"type": "string"},
                "key": {"type": "string"},
                "version": {"type": "integer"},
                "value": {"description": "The read model's row (an object for the built-in read models)."},
            },
        ),
        "ListedRow": _object(
            ["key", "version", "value"], {"key": {"type": "string"}, "version": {"type": "integer"}, "value": {}}
        ),
        "Envelope": _envelope_schema(),
        "Command": command_schema,
        "DeadLetter": _object(
            ["reason", "error", "source", "aggregate_id", "key"],
            {name: _nullable({"type": "string"}) for name in ("reason", "error", "source", "aggregate_id", "key")},
        ),
        "ControlSettings": _control_settings_schema(settings),
    }


def _responses() -> dict[str, Any]:
    return {
        "Unauthorized": _error(
            "PROJECTOR_API_TOKEN is set and the bearer token is missing or wrong "
            "(or the operation needs PROJECTOR_ADMIN_TOKEN).",
            ["unauthorized"],
        ),
        "Unavailable": _error("The worker cannot answer now (rebalancing, Kafka unreachable: "
                              "`broker_unreachable`, ...); retry."),
        "UnavailableRetry": {
            **_error("The worker cannot answer now (rebalancing, Kafka unreachable: `broker_unreachable`, "
                     "too many requests waiting: `overloaded`, a brand-new read model still being built from "
                     "history: `building`, with `remaining` and `eta_seconds`, ...); retry, after `Retry-After` "
                     "when given."),
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before retrying (sent with some 503 answers only).",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
        "WriteTimeout": _error("Kafka did not acknowledge the write in time: the outcome is unknown, it may "
                               "still be written.", ["timeout"]),
        "Invalid": _error("A bad query parameter or body.", ["invalid"]),
        "TooLarge": _error("The request body is larger than the worker or the broker accepts.", ["too_large"]),
    }


def _info() -> dict[str, Any]:
    return {
        "title": "projector",
        "version": __version__,
        "description": "Read models of an event-sourced system on Kafka, and its command side "
        "(`POST /commands`). Every worker answers every "
        "request (it forwards to the owner of the key's partition). Every body is JSON but "
        "`/metrics` and `/`; every error is `{\"error\": \"<code>\", ...}`; the only 5xx answers "
        "are 503 and 504.",
    }


def _security_schemes(api_token: bool, admin_token: bool) -> dict[str, Any]:
    """The bearer scheme (and ``?token=`` of the status page) when a token is set; none on an open worker."""
    if not (api_token or admin_token):
        return {}
    if api_token:
        bearer = "PROJECTOR_API_TOKEN (or PROJECTOR_ADMIN_TOKEN)"
        if admin_token:
            bearer += "; the writes marked (admin) need PROJECTOR_ADMIN_TOKEN"
    else:
        bearer = "PROJECTOR_ADMIN_TOKEN, for the writes marked (admin); the rest of the API is open"
    schemes: dict[str, Any] = {"bearer": {"type": "http", "scheme": "bearer", "description": bearer + "."}}
    if api_token:
        schemes["token"] = {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": "The status page (`GET /`) only: the token as a query parameter, for a browser.",
        }
    return schemes

TAGS = ("tables", "aggregates", "commands", "control", "operations", "status")


# --- the document ------------------------------------------------------------------


def document(projector: Any) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``projector``'s HTTP API.

    Only ``catalog`` and ``settings`` (its ``api_token`` and ``admin_token``; none
    when absent) are read: security and 401 are documented where this worker
    checks a token, and nowhere on a worker without one.
    """
    catalog = projector.catalog
    tables = [m.name for m in catalog.all]
    worker_settings = getattr(projector, "settings", None)
    api_token = getattr(worker_settings, "api_token", None) is not None
    admin_token = getattr(worker_settings, "admin_token", None) is not None
    command_schema, command_example = _command_schema(catalog)
    settings = control_settings(catalog)
    indexes = {m.name: list(m.indexes) for m in catalog.all}
    paths = _paths(tables, command_example, settings, example_key(catalog), indexes)
    _secure(paths, api_token, admin_token)
    responses = _responses()
    schemes = _security_schemes(api_token, admin_token)
    if not schemes:
        del responses["Unauthorized"]
    out: dict[str, Any] = {"openapi": "3.1.0", "info": _info(), "tags": [{"name": name} for name in TAGS]}
    if api_token:
        out["security"] = [{"bearer": []}]
    out["paths"] = paths
    out["components"] = {"schemas": _schemas(command_schema, settings), "responses": responses}
    if schemes:
        out["components"]["securitySchemes"] = schemes
    return out


class OpenAPIView:
    """``GET /openapi.json``: the document, built once when the routes are installed."""

    def __init__(self, projector: Any) -> None:
        self.body = orjson.dumps(document(projector))

    async def openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type="application/json")
