"""projector.web.openapi: the OpenAPI document is valid, names every route projector.web.routes serves,
and takes what is domain-specific (command data, control settings) from the catalog.

No Kafka: the document is built from the repository's read-model catalog, and
the routes from an aiohttp application that ``install_routes`` fills in with a
stand-in projector (the views only keep it; nothing is called at install time).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator
from unittest import mock

import jsonschema_rs
import orjson
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from projector.core.catalog import load_catalog
from projector.core.control import BUILTIN, MAX_KEY_BYTES
from projector.web import openapi as openapi
from projector.web.params import MAX_KEY_PARAM, MAX_LIMIT, MAX_WAIT_MS
from projector.web.routes import install_routes

TABLES_DIR = Path(__file__).resolve().parents[3] / "tables"
PARTITIONS = 4
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
#: A worker with both tokens set (the document of a worker without one is checked below).
TOKENS = SimpleNamespace(api_token="api-token", admin_token="admin-token")
ADMIN_OPERATIONS = {("put", "/control/{key}"), ("delete", "/control/{key}"), ("post", "/aggregates/{id}/release"),
                    ("post", "/tables/{table}/cutover")}


@pytest.fixture(scope="module")
def fake_projector() -> Any:
    """Just enough of a Projector for the routes and the document: its catalog, partition count and tokens."""
    fake = mock.MagicMock(name="projector")
    fake.catalog = load_catalog(TABLES_DIR)
    fake.partitions = PARTITIONS
    fake.settings = TOKENS
    return fake


def document_for(catalog: Any, api_token: Any = None, admin_token: Any = None) -> dict[str, Any]:
    settings = SimpleNamespace(api_token=api_token, admin_token=admin_token)
    return openapi.document(SimpleNamespace(catalog=catalog, partitions=PARTITIONS, settings=settings))


@pytest.fixture(scope="module")
def doc(fake_projector: Any) -> dict[str, Any]:
    return document_for(fake_projector.catalog, TOKENS.api_token, TOKENS.admin_token)


@pytest.fixture(scope="module")
def open_doc(fake_projector: Any) -> dict[str, Any]:
    """The document of a worker without any token."""
    return document_for(fake_projector.catalog)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow local ``$ref``s until a node without one (raises KeyError when one does not resolve)."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local references are used, got {ref!r}"
        node = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        seen += 1
        assert seen < 20, f"reference loop at {ref}"
    return node


def walk(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{where}/{i}")


def requires_error_string(doc: dict[str, Any], schema: Any) -> bool:
    """True when every instance of ``schema`` is an object with a required string ``error``."""
    schema = resolve(doc, schema)
    if any(requires_error_string(doc, part) for part in schema.get("allOf", [])):
        return True
    error = resolve(doc, schema.get("properties", {}).get("error", {}))
    return schema.get("type") == "object" and "error" in schema.get("required", []) and error.get("type") == "string"


# --- the document is a valid OpenAPI 3.1 document ------------------------------------


def test_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    assert orjson.loads(orjson.dumps(doc)) == doc, "the document is plain JSON"
    # schemathesis checks it against the OpenAPI Initiative's JSON Schema for OpenAPI 3.1.
    schemathesis.openapi.from_dict(doc).validate()


def test_every_reference_resolves_and_every_schema_is_valid_json_schema(doc: dict[str, Any]) -> None:
    refs = [(where, node) for where, node in walk(doc) if isinstance(node, dict) and "$ref" in node]
    assert refs
    for where, node in refs:
        try:
            resolve(doc, node)
        except KeyError as exc:
            pytest.fail(f"{where}: {node['$ref']} does not resolve ({exc})")
    schemas = [(where, node) for where, node in walk(doc) if where.endswith("/schema") and isinstance(node, dict)]
    schemas += [(f"#/components/schemas/{k}", v) for k, v in doc["components"]["schemas"].items()]
    for where, schema in schemas:
        try:
            jsonschema_rs.meta.validate({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema})
        except jsonschema_rs.ValidationError as exc:
            pytest.fail(f"{where} is not a valid JSON Schema: {exc}")
    for where, node in walk(doc):
        if where.endswith("/pattern"):
            re.compile(node)


def test_every_operation_is_complete(doc: dict[str, Any]) -> None:
    ids = []
    for path, method, op in operations(doc):
        label = f"{method.upper()} {path}"
        ids.append(op["operationId"])
        assert op["responses"], label
        assert any(code.startswith("2") for code in op["responses"]), f"{label} has no success answer"
        for code, response in op["responses"].items():
            response = resolve(doc, response)
            assert response["description"], f"{label} {code}"
            assert response.get("content"), f"{label} {code} has no body"
        params = [resolve(doc, p) for p in doc["paths"][path].get("parameters", []) + op.get("parameters", [])]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path)), f"{label}: path parameters {in_path}"
        assert all(p["required"] for p in params if p["in"] == "path")
    assert len(ids) == len(set(ids)), "operationIds are unique"


def test_every_error_is_an_object_with_a_string_error(doc: dict[str, Any]) -> None:
    for path, method, op in operations(doc):
        for code, response in op["responses"].items():
            if int(code) < 400:
                continue
            content = resolve(doc, response)["content"]
            assert list(content) == ["application/json"], f"{method.upper()} {path} {code}"
            schema = content["application/json"]["schema"]
            assert requires_error_string(doc, schema), f"{method.upper()} {path} {code}: {schema}"


def test_only_503_and_504_among_server_errors(doc: dict[str, Any]) -> None:
    for path, method, op in operations(doc):
        assert {c for c in op["responses"] if c.startswith("5")} <= {"503", "504"}, f"{method.upper()} {path}"


def test_bearer_auth_everywhere_but_healthz(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["token"] == {**schemes["token"], "type": "apiKey", "in": "query", "name": "token"}
    assert doc["security"] == [{"bearer": []}]
    for path, method, op in operations(doc):
        if path == "/healthz":
            assert op["security"] == []
            assert "401" not in op["responses"]
            continue
        if path == "/":  # the status page also takes ?token= (projector.web.middleware.auth)
            assert op["security"] == [{"bearer": []}, {"token": []}]
        else:
            assert "security" not in op, f"{method.upper()} {path} uses the global bearer scheme"
        unauthorized = resolve(doc, op["responses"]["401"])["content"]["application/json"]["schema"]
        assert requires_error_string(doc, unauthorized)
        assert resolve(doc, resolve(doc, unauthorized)["allOf"][1]["properties"]["error"])["enum"] == ["unauthorized"]


# --- it says what CONTRACT §5 says ----------------------------------------------------


def params_of(doc: dict[str, Any], path: str, method: str = "get") -> dict[str, dict[str, Any]]:
    item = doc["paths"][path]
    params = [resolve(doc, p) for p in item.get("parameters", []) + item[method].get("parameters", [])]
    return {p["name"]: p for p in params}


def body_schema(doc: dict[str, Any], path: str, code: str, method: str = "get") -> dict[str, Any]:
    response = resolve(doc, doc["paths"][path][method]["responses"][code])
    return resolve(doc, response["content"]["application/json"]["schema"])


def test_contract_parameters(doc: dict[str, Any], fake_projector: Any) -> None:
    tables = [m.name for m in fake_projector.catalog.all]
    assert {"accounts", "owners", "currencies"} <= set(tables)
    row = params_of(doc, "/tables/{table}/{key}")
    assert row["table"]["schema"]["enum"] == tables
    assert row["min_version"]["schema"] == {"type": "integer", "minimum": 0}
    assert row["timeout_ms"]["schema"] == {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS, "default": 0}
    listing = params_of(doc, "/tables/{table}")
    assert listing["limit"]["schema"] == {"type": "integer", "minimum": 1, "default": 100}  # more is capped
    assert listing["cursor"]["schema"] == {"type": "string"}
    # The byte limits are said in words (a maxLength would make schemathesis overflow aiohttp's request line).
    assert listing["prefix"]["schema"] == {"type": "string"} and f"{MAX_KEY_PARAM} bytes" in listing["prefix"]["description"]
    assert f"{MAX_KEY_BYTES} bytes" in params_of(doc, "/control/{key}")["key"]["description"]
    assert "maximum" not in params_of(doc, "/deadletters")["limit"]["schema"]
    assert params_of(doc, "/aggregates/{id}/events")["from_version"]["schema"]["minimum"] == 1
    control = params_of(doc, "/control")
    assert control["timeout_ms"]["schema"]["maximum"] == MAX_WAIT_MS
    assert MAX_LIMIT == openapi.MAX_LIMIT and MAX_WAIT_MS == openapi.MAX_WAIT_MS


def test_contract_responses(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    row = paths["/tables/{table}/{key}"]["get"]["responses"]
    assert {"200", "400", "401", "404", "503", "504"} <= set(row)
    timeout = body_schema(doc, "/tables/{table}/{key}", "504")["allOf"][1]
    assert timeout["required"] == ["error", "version"]
    assert timeout["properties"]["version"]["anyOf"][1] == {"type": "null"}
    not_found = body_schema(doc, "/tables/{table}/{key}", "404")["allOf"][1]["properties"]["error"]
    assert set(not_found["enum"]) == {"not_found", "unknown_table"}
    page = body_schema(doc, "/tables/{table}", "200")
    assert page["required"] == ["rows", "next_cursor"]
    assert resolve(doc, page["properties"]["rows"]["items"])["required"] == ["key", "version", "value"]
    assert {"200", "400", "404"} <= set(paths["/tables/{table}"]["get"]["responses"])
    assert body_schema(doc, "/aggregates/{id}/events", "200")["required"] == ["aggregate_id", "events", "next_version"]
    for method in ("put", "delete"):
        written = body_schema(doc, "/control/{key}", "202", method)
        assert written["required"] == ["key", "offset"]
        assert {"400", "401"} <= set(paths["/control/{key}"][method]["responses"])
    assert "413" in paths["/control/{key}"]["put"]["responses"]
    assert "504" in paths["/control"]["get"]["responses"]
    assert "202" in paths["/aggregates/{id}/release"]["post"]["responses"]
    assert set(resolve(doc, paths["/metrics"]["get"]["responses"]["200"])["content"]) == {
        "text/plain", "application/openmetrics-text"}
    assert set(resolve(doc, paths["/"]["get"]["responses"]["200"])["content"]) == {"text/html"}
    assert body_schema(doc, "/status", "200")["type"] == "object"


# --- every route projector.web.routes serves is in the document, and nothing else ----


def served_routes(projector: Any) -> set[tuple[str, str]]:
    app = web.Application()
    install_routes(app, projector)
    out = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):  # aiohttp adds HEAD to every GET; "*" answers 405 (routes.only_post)
            continue
        out.add((route.method.lower(), route.resource.canonical))
    return out


def test_every_served_route_is_documented(doc: dict[str, Any], fake_projector: Any) -> None:
    """Every public route, that is; the worker-to-worker routes under /internal/ are left out."""
    all_served = served_routes(fake_projector)
    served = {(method, path) for method, path in all_served if not path.startswith("/internal/")}
    assert served != all_served, "the worker serves routes under /internal/"
    documented = {(method, path) for path, method, _ in operations(doc)}
    assert served - documented == set(), "routes served but missing from projector/web/openapi.py"
    assert documented - served == set(), "operations documented but not served"


def test_get_openapi_json_serves_the_document(doc: dict[str, Any], fake_projector: Any) -> None:
    async def fetch() -> tuple[int, str, Any]:
        app = web.Application()
        install_routes(app, fake_projector)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            r = await client.get("/openapi.json")
            return r.status, r.content_type, orjson.loads(await r.read())

    status, content_type, body = asyncio.run(fetch())
    assert (status, content_type) == (200, "application/json")
    assert body == doc


# --- what depends on the domain comes from the catalog --------------------------------


def command_variants(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    command = doc["components"]["schemas"]["Command"]
    variants = command.get("oneOf", [command])
    return {(v["properties"]["aggregate_type"]["const"], v["properties"]["type"].get("const")): v for v in variants}


def test_command_data_is_what_each_read_model_declares(doc: dict[str, Any], fake_projector: Any) -> None:
    variants = command_variants(doc)
    deciders = fake_projector.catalog.deciders
    assert set(variants) == {(t, kind) for t, m in deciders.items() for kind in m.commands}
    for (aggregate_type, kind), variant in variants.items():
        declared = deciders[aggregate_type].command_schemas.get(kind)
        data = variant["properties"]["data"]
        assert data == (declared or {**data, "type": "object"}), f"{aggregate_type} {kind}"
    example = doc["paths"]["/commands"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert jsonschema_rs.validator_for(doc["components"]["schemas"]["Command"]).is_valid(example)


def test_control_settings_are_the_running_workers(doc: dict[str, Any], fake_projector: Any) -> None:
    from projector.core.control import ControlState

    settings = ControlState(fake_projector.catalog.control_settings).settings
    assert openapi.control_settings(fake_projector.catalog) == settings
    documented = doc["components"]["schemas"]["ControlSettings"]["properties"]
    assert documented == {key: s.schema for key, s in settings.items()}
    put = doc["paths"]["/control/{key}"]["put"]["description"]
    assert all(f"`{key}`" in put for key in settings)


OTHER_DOMAIN = '''
NAME = "parcels"
DESCRIPTION = "parcels and their weight"
HANDLES = ("ParcelShipped",)
AGGREGATE_TYPE = "parcel"
COMMANDS = ("Ship", "Cancel")
COMMAND_SCHEMAS = {
    "Ship": {"type": "object", "required": ["weight"], "properties": {"weight": {"type": "integer", "minimum": 1}},
             "examples": [{"weight": 3}]},
}
CONTROL = {"parcels.max_weight": {"type": "integer", "minimum": 1, "description": "heavier is refused"}}


def fold(state, event):
    return {"weight": event.data["weight"]}


def decide(state, command, settings):
    return [{"type": "ParcelShipped", "data": command["data"]}]
'''


@pytest.mark.usefixtures("clean_table_modules")
def test_another_domain_is_documented_from_its_own_declarations(tmp_path: Path) -> None:
    (tmp_path / "parcels.py").write_text(OTHER_DOMAIN)
    catalog = load_catalog(tmp_path)
    doc = document_for(catalog, "t")
    schemathesis.openapi.from_dict(doc).validate()
    variants = command_variants(doc)
    assert set(variants) == {("parcel", "Ship"), ("parcel", "Cancel")}
    assert variants["parcel", "Ship"]["properties"]["data"]["required"] == ["weight"]
    assert variants["parcel", "Cancel"]["properties"]["data"]["type"] == "object"
    example = doc["paths"]["/commands"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert example["aggregate_type"] == "parcel" and example["type"] == "Ship" and example["data"] == {"weight": 3}
    assert set(doc["components"]["schemas"]["ControlSettings"]["properties"]) == {*BUILTIN, "parcels.max_weight"}
    assert "`parcels.max_weight`: an integer >= 1, or null" in doc["paths"]["/control/{key}"]["put"]["description"]
    # Nothing of the demo domain is left in a document of another one.
    text = orjson.dumps(doc).decode().lower()
    for word in ("account", "withdraw", "deposit", "max_withdrawal", "insufficient_funds"):
        assert word not in text, word


def test_examples_use_the_id_a_read_model_declares(doc):
    """tables/accounts.py declares EXAMPLE_KEY; the row and aggregate paths and the command example show it."""
    key = doc["paths"]["/tables/{table}/{key}"]["get"]["parameters"]
    aggregate = doc["paths"]["/aggregates/{id}/events"]["get"]["parameters"]
    shown = {p["example"] for p in key + aggregate if p["name"] in ("key", "id")}
    assert shown == {"acc-000001"}


def test_a_catalog_without_an_example_key_shows_no_example(fake_projector):
    catalog = fake_projector.catalog
    models = [dataclasses.replace(m, example_key=None) for m in catalog.models]
    bare = dataclasses.replace(catalog, models=models)
    document = document_for(bare)
    params = document["paths"]["/tables/{table}/{key}"]["get"]["parameters"]
    assert all("example" not in p for p in params if p["name"] == "key")


# --- security and 401 say what the worker checks ----------------------------------------


def test_a_worker_without_a_token_documents_no_security_and_no_401(open_doc: dict[str, Any]) -> None:
    schemathesis.openapi.from_dict(open_doc).validate()
    assert "security" not in open_doc
    assert "securitySchemes" not in open_doc["components"]
    assert "Unauthorized" not in open_doc["components"]["responses"]
    for path, method, op in operations(open_doc):
        assert "security" not in op, f"{method.upper()} {path}"
        assert "401" not in op["responses"], f"{method.upper()} {path}"
    assert "unauthorized" not in orjson.dumps(open_doc).decode()


def test_with_only_the_admin_token_the_writes_need_it(fake_projector: Any) -> None:
    doc = document_for(fake_projector.catalog, admin_token="admin")
    schemathesis.openapi.from_dict(doc).validate()
    assert "security" not in doc
    assert set(doc["components"]["securitySchemes"]) == {"bearer"}
    for path, method, op in operations(doc):
        label = f"{method.upper()} {path}"
        if (method, path) in ADMIN_OPERATIONS:
            assert op["security"] == [{"bearer": []}], label
            assert resolve(doc, op["responses"]["401"]), label
        else:
            assert "security" not in op and "401" not in op["responses"], label


def test_with_both_tokens_the_writes_document_401(doc: dict[str, Any]) -> None:
    for method, path in ADMIN_OPERATIONS:
        assert "401" in doc["paths"][path][method]["responses"]


def test_internal_routes_are_not_in_the_document(doc: dict[str, Any], open_doc: dict[str, Any]) -> None:
    for document in (doc, open_doc):
        assert not [path for path in document["paths"] if path.startswith("/internal")]
        assert "internal" not in {tag["name"] for tag in document["tags"]}


def test_the_waiting_routes_document_retry_after_on_503(doc: dict[str, Any]) -> None:
    for path in ("/tables/{table}/{key}", "/control"):
        unavailable = resolve(doc, doc["paths"][path]["get"]["responses"]["503"])
        header = unavailable["headers"]["Retry-After"]
        assert header["schema"] == {"type": "integer", "minimum": 0} and not header.get("required"), path


def test_status_all_lists_what_the_handler_takes(doc: dict[str, Any]) -> None:
    from projector.web.status import STATUS_ALL, STATUS_MINE

    assert set(params_of(doc, "/status")["all"]["schema"]["enum"]) == STATUS_ALL | STATUS_MINE
    assert {"", "on", "off"} <= STATUS_ALL | STATUS_MINE


def test_the_index_route_and_the_tables_indexes(doc: dict[str, Any], tmp_path: Path) -> None:
    path = "/tables/{table}/index/{index}/{value}"
    params = params_of(doc, path)
    assert set(params) == {"table", "index", "value", "limit", "cursor"}
    assert params["index"]["schema"] == {"type": "string", "enum": ["owner", "status"]}
    assert "`accounts`: `owner`, `status`" in params["index"]["description"]
    assert params["limit"]["schema"] == params_of(doc, "/tables/{table}")["limit"]["schema"]
    assert body_schema(doc, path, "200") == body_schema(doc, "/tables/{table}", "200")
    not_found = body_schema(doc, path, "404")["allOf"][1]["properties"]["error"]
    assert set(not_found["enum"]) == {"unknown_table", "unknown_index"}
    assert {"200", "400", "401", "404", "503"} <= set(doc["paths"][path]["get"]["responses"])
    table = body_schema(doc, "/tables", "200")["properties"]["tables"]["items"]
    assert "indexes" in table["required"] and table["properties"]["indexes"]["type"] == "array"
    # A catalog without any index still documents the route, with any index name (each one 404).
    (tmp_path / "parcels.py").write_text(OTHER_DOMAIN)
    plain = document_for(load_catalog(tmp_path))
    schemathesis.openapi.from_dict(plain).validate()
    assert params_of(plain, path)["index"]["schema"] == {"type": "string", "minLength": 1}
