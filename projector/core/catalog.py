"""Read-model declarations: plain modules in the repository's ``tables/`` folder.

A read model module defines:

- ``NAME``: the table name (``[a-z][a-z0-9_]*``);
- ``DESCRIPTION``: one line for ``GET /tables``;
- ``HANDLES``: the event types its fold handles (others are ignored);
- ``fold(state, event) -> state``: a pure function, no Faust, no Kafka; or
  ``fold(state, event, control)``, which also gets a read-only view of the
  control table (CONTRACT §3). A fold that reads it is only replayable while
  the entries it reads stay the same: prefer deciders for settings;
- optionally ``INITIAL``: the state before the first event (default ``None``);
- optionally ``INDEXES``: ``{name: function(value) -> str | list[str] | None}``,
  secondary indexes over the rows' values (see :mod:`projector.core.indexes`),
  served by ``GET /tables/{table}/index/{name}/{value}``.
Its rows are keyed by aggregate id.

Such a read model may also be the state of an aggregate that takes commands
(``POST /commands``): it then declares ``AGGREGATE_TYPE`` (the commands'
``aggregate_type``) and ``decide(state, command, settings)`` (see
:mod:`projector.core.errors`), and optionally ``COMMANDS``, the command types, and
``COMMAND_SCHEMAS``: ``{command type: JSON schema of its data}`` for some of
them, which ``GET /openapi.json`` documents.

A *re-keyed* read model is declared over an aggregate-keyed one, the way a
Kafka Streams ``groupBy(...).aggregate(adder, subtractor)`` is over a KTable:

- ``NAME``, ``DESCRIPTION``;
- ``SOURCE``: the NAME of the aggregate-keyed read model it groups;
- ``key(row) -> str | None``: the group a source row belongs to (None: none);
- ``contribution(row) -> dict``: what that row adds to its group;
- optionally ``INITIAL`` (default ``{}``), ``add(state, c)`` and
  ``subtract(state, c)`` (default: field-wise sums of numbers).

Each source row's contribution is carried through a repartition topic keyed
by group; the group keeps every member's last contribution, so a change is
corrected exactly (old contribution out, new one in) and a replay is a no-op.

A module may also declare ``SCHEMA_VERSIONS`` and ``UPCASTERS`` (see
:mod:`projector.core.schemas`), with or without a read model, and
``CONTROL``: the control settings it reads (CONTRACT §3), as
``{key: {"type": ..., "default": ..., "description": ..., "minimum": ...}}``
(see :class:`ControlSetting`). Each worker then checks their values when
they are written and hands deciders the value in force (the default while
the entry is missing or of the wrong type).

The folder is loaded by path, module by module, under the package name
``projector_tables`` - never as ``tables``, which belongs to PyTables.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Callable, ClassVar, Mapping, Optional

import orjson

from projector.core.errors import ControlError, ReadModelError

PACKAGE = "projector_tables"
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")


def _sum_fields(state: dict, contribution: dict, sign: int) -> dict:
    out = dict(state)
    for name, value in contribution.items():
        out[name] = out.get(name, 0) + sign * value
    return out


def default_add(state: dict, contribution: dict) -> dict:
    return _sum_fields(state, contribution, 1)


def default_subtract(state: dict, contribution: dict) -> dict:
    return _sum_fields(state, contribution, -1)


#: JSON types a control setting may have, and the Python types that hold them.
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "object": (dict,),
    "array": (list,),
}
_SETTING_FIELDS = ("type", "default", "description", "minimum")


@dataclass(frozen=True)
class ControlSetting:
    """A control key with a meaning: its JSON type, its default and what it does.

    A value of the wrong type is refused when projector writes it, and kept
    but ignored (the default applies) when something else wrote it.
    """

    key: str
    type: str
    default: Any = None
    description: str = ""
    #: For numbers: the smallest value allowed.
    minimum: Optional[float] = None

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` cannot be this setting's value (None: it can). ``None`` itself is a delete."""
        kinds = SETTING_TYPES[self.type]
        ok = isinstance(value, kinds) and (self.type == "boolean" or not isinstance(value, bool))
        if ok and self.minimum is not None and value < self.minimum:
            ok = False
        if ok:
            return None
        null = ", or null for none" if self.default is None and self.type != "boolean" else ""
        return f"must be {self.accepts()}{null}"

    def accepts(self) -> str:
        """The values this setting takes, in words: ``true or false``, ``an integer >= 0``..."""
        if self.type == "boolean":
            return "true or false"
        article = "an" if self.type[0] in "aeiou" else "a"
        return f"{article} {self.type}" + (f" >= {self.minimum:g}" if self.minimum is not None else "")

    def value(self, entries: Any) -> Any:
        """The value in force: the entry if it is valid, else the default."""
        value = entries.get(self.key)
        if value is None or self.problem(value):
            return self.default
        return value

    @property
    def schema(self) -> dict[str, Any]:
        """A JSON schema of the values this setting takes (null deletes the entry)."""
        schema: dict[str, Any] = {"type": [self.type, "null"], "description": self.description}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.default is not None:
            schema["default"] = self.default
        return schema


#: projector's own setting; read models declare theirs (``CONTROL``).
COMMANDS_ENABLED = "commands.enabled"
BUILTIN: dict[str, ControlSetting] = {
    COMMANDS_ENABLED: ControlSetting(
        COMMANDS_ENABLED, "boolean", True, "false: POST /commands answers 503 commands_disabled (default true)"
    ),
}


def settings_with_builtin(declared: Mapping[str, ControlSetting]) -> dict[str, ControlSetting]:
    """projector's own settings and the ones read models declare; a read model cannot redefine projector's."""
    clash = sorted(set(declared) & set(BUILTIN))
    if clash:
        raise ControlError(f"control keys {clash} belong to projector; a read model cannot declare them")
    return {**BUILTIN, **declared}


def control_settings_from_module(module: ModuleType, origin: str = "") -> list[ControlSetting]:
    """The ``CONTROL`` declaration of a tables/ module, checked."""
    where = origin or module.__name__
    declared = getattr(module, "CONTROL", None)
    if declared is None:
        return []
    if not isinstance(declared, dict):
        raise ReadModelError(f"{where}: CONTROL must be a dict of control key -> {{type, default, description}}")
    out = []
    for key, spec in declared.items():
        if not isinstance(key, str) or not key or not isinstance(spec, dict):
            raise ReadModelError(f"{where}: CONTROL[{key!r}] must map a non-empty key to a dict")
        unknown = sorted(set(spec) - set(_SETTING_FIELDS))
        if unknown:
            raise ReadModelError(f"{where}: CONTROL[{key!r}] has unknown fields {unknown}; "
                                 f"a setting has {', '.join(_SETTING_FIELDS)}")
        kind = spec.get("type")
        if kind not in SETTING_TYPES:
            raise ReadModelError(f"{where}: CONTROL[{key!r}] type must be one of {', '.join(SETTING_TYPES)}, "
                                 f"got {kind!r}")
        minimum = spec.get("minimum")
        if minimum is not None and (kind not in ("integer", "number") or not isinstance(minimum, (int, float))):
            raise ReadModelError(f"{where}: CONTROL[{key!r}] minimum is for integer and number settings")
        description = spec.get("description", "")
        if not isinstance(description, str):
            raise ReadModelError(f"{where}: CONTROL[{key!r}] description must be a string")
        setting = ControlSetting(key, kind, spec.get("default"), description, minimum)
        if setting.default is not None and setting.problem(setting.default):
            raise ReadModelError(f"{where}: CONTROL[{key!r}] default {setting.problem(setting.default)}, "
                                 f"got {setting.default!r}")
        out.append(setting)
    return out


@dataclass(frozen=True)
class ReadModel:
    name: str
    description: str
    handles: frozenset[str]
    fold: Callable[[Any, Any], Any]
    initial: Any = None
    key: Optional[Callable[[Any], str]] = None
    module: Optional[ModuleType] = None
    #: fold takes a third argument: the control table's read-only view.
    takes_control: bool = False
    #: For the state of an aggregate that takes commands: its type and decider.
    aggregate_type: Optional[str] = None
    decide: Optional[Callable[[Any, dict, Any], Any]] = None
    commands: tuple[str, ...] = ()
    #: JSON schemas of the ``data`` of some of ``commands`` (``COMMAND_SCHEMAS``), by command type.
    command_schemas: Mapping[str, dict] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    #: An id to show in examples (``EXAMPLE_KEY``, e.g. one of the demo data's), if the module gives one.
    example_key: Optional[str] = None
    #: The version of the fold (``VERSION``, default 1): raising it builds the table anew from history.
    version: int = 1
    #: Secondary indexes (``INDEXES``): index name -> function(row value) -> str, list of str or None.
    indexes: Mapping[str, Callable[[Any], Any]] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def keyed_by_aggregate(self) -> bool:
        return self.key is None

    @property
    def table(self) -> str:
        """The name of this version's own table (and changelog): :func:`versioned_table`."""
        return versioned_table(self.name, self.version)

    def initial_state(self) -> Any:
        return copy.deepcopy(self.initial)


@dataclass(frozen=True)
class DerivedModel:
    """A read model re-keyed from an aggregate-keyed one (``SOURCE``)."""

    name: str
    description: str
    source: str
    group_key: Callable[[Any], Optional[str]]
    contribution: Callable[[Any], dict]
    initial: Any = None
    add: Callable[[Any, dict], Any] = default_add
    subtract: Callable[[Any, dict], Any] = default_subtract
    module: Optional[ModuleType] = None

    keyed_by_aggregate = False
    #: A re-keyed read model declares no indexes (``INDEXES`` is refused).
    indexes: ClassVar[Mapping[str, Callable[[Any], Any]]] = MappingProxyType({})

    def initial_state(self) -> Any:
        return copy.deepcopy(self.initial if self.initial is not None else {})


@dataclass
class Catalog:
    """Everything tables/ declares."""

    models: list[ReadModel]
    derived: list[DerivedModel]
    modules: list[ModuleType]
    #: Control settings the modules declare (``CONTROL``), by key.
    control_settings: dict[str, ControlSetting] = field(default_factory=dict)

    @property
    def all(self) -> list[Any]:
        return [*self.models, *self.derived]

    def get(self, name: str) -> Any:
        return next((m for m in self.all if m.name == name), None)

    @property
    def deciders(self) -> dict[str, ReadModel]:
        """Read models that are the state of an aggregate taking commands, by aggregate type."""
        return {m.aggregate_type: m for m in self.models if m.decide is not None}


#: The project's folder when projector runs from a source checkout (or an editable install of one).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def versioned_table(name: str, version: int) -> str:
    """The table that holds version ``version`` of read model ``name``: ``name`` for 1, ``name-v<N>`` after.

    Version 1 keeps the bare name, so a read model that never raised its
    ``VERSION`` keeps the table (and changelog) it always had.
    """
    return name if version == 1 else f"{name}-v{version}"


def _version_of(module: ModuleType, where: str) -> int:
    version = getattr(module, "VERSION", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= 1_000_000:
        raise ReadModelError(f"{where}: VERSION must be an integer from 1 (the fold's version: raise it when the "
                             f"fold changes), got {version!r}")
    return version


def default_tables_dir() -> Path:
    """The folder of read-model modules this process loads.

    ``$PROJECTOR_TABLES_DIR`` if set; else the project's ``tables/`` when
    projector runs from a source checkout (the package beside a
    ``pyproject.toml``); else ``./tables`` in the current directory if it
    exists. An installed projector has no ``tables/`` of its own: without
    either, a :class:`ReadModelError` says to set PROJECTOR_TABLES_DIR.
    """
    env = os.environ.get("PROJECTOR_TABLES_DIR")
    if env:
        return Path(env)
    looked = []
    if (SOURCE_ROOT / "pyproject.toml").is_file():
        source = SOURCE_ROOT / "tables"
        if source.is_dir():
            return source
        looked.append(str(source))
    here = Path.cwd() / "tables"
    if here.is_dir():
        return here
    looked.append(str(here))
    raise ReadModelError(
        f"no read-model folder: PROJECTOR_TABLES_DIR is not set and {' nor '.join(looked)} does not exist; "
        "set PROJECTOR_TABLES_DIR to the folder of your read-model modules"
    )


def _load_module(path: Path) -> ModuleType:
    if PACKAGE not in sys.modules:
        pkg = ModuleType(PACKAGE)
        pkg.__path__ = []  # a namespace for the loaded read models only
        sys.modules[PACKAGE] = pkg
    name = f"{PACKAGE}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ReadModelError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ReadModelError(f"{path}: failed to import: {exc!r}") from exc
    return module


def read_model_from_module(module: ModuleType, origin: str = "") -> Any:
    where = origin or module.__name__

    def need(attr: str) -> Any:
        if not hasattr(module, attr):
            raise ReadModelError(f"{where}: a read model must define {attr}")
        return getattr(module, attr)

    name = need("NAME")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ReadModelError(f"{where}: NAME must match [a-z][a-z0-9_]*, got {name!r}")
    description = getattr(module, "DESCRIPTION", "") or ""
    if not isinstance(description, str):
        raise ReadModelError(f"{where}: DESCRIPTION must be a string")
    if hasattr(module, "SOURCE"):
        if getattr(module, "INDEXES", None):
            raise ReadModelError(f"{where}: INDEXES is for read models keyed by aggregate id; a re-keyed read model "
                                 f"(SOURCE = {module.SOURCE!r}) cannot declare indexes (its rows are already "
                                 "keyed by the group: read them by key)")
        return _derived_from_module(module, where, name, description)
    handles = need("HANDLES")
    if (
        isinstance(handles, str)
        or not isinstance(handles, (tuple, list, set, frozenset))
        or not handles
        or not all(isinstance(h, str) for h in handles)
    ):
        raise ReadModelError(f"{where}: HANDLES must be a non-empty tuple of event type names")
    fold = need("fold")
    if not callable(fold):
        raise ReadModelError(f"{where}: fold must be a function (state, event) -> state")
    takes_control = _fold_arity(fold, where) == 3
    key = getattr(module, "key", None)
    if key is not None and not callable(key):
        raise ReadModelError(f"{where}: key must be a function (event) -> str")
    decide = getattr(module, "decide", None)
    aggregate_type = getattr(module, "AGGREGATE_TYPE", None)
    commands = getattr(module, "COMMANDS", ())
    if decide is not None or aggregate_type is not None:
        if not callable(decide) or not isinstance(aggregate_type, str) or not aggregate_type:
            raise ReadModelError(
                f"{where}: an aggregate that takes commands defines both AGGREGATE_TYPE (a string) "
                "and decide(state, command, settings)"
            )
        if isinstance(commands, str) or not all(isinstance(c, str) for c in commands):
            raise ReadModelError(f"{where}: COMMANDS must be a tuple of command type names")
    command_schemas = _command_schemas(module, where, tuple(commands) if decide is not None else None)
    example_key = getattr(module, "EXAMPLE_KEY", None)
    if example_key is not None and (not isinstance(example_key, str) or not example_key):
        raise ReadModelError(f"{where}: EXAMPLE_KEY must be a non-empty string (a row key to show in examples)")
    return ReadModel(
        name=name,
        description=description,
        handles=frozenset(handles),
        fold=fold,
        initial=getattr(module, "INITIAL", None),
        key=key,
        module=module,
        takes_control=takes_control,
        aggregate_type=aggregate_type,
        decide=decide,
        commands=tuple(commands),
        command_schemas=command_schemas,
        example_key=example_key,
        version=_version_of(module, where),
        indexes=_indexes(module, where),
    )


def _indexes(module: ModuleType, where: str) -> Mapping[str, Callable[[Any], Any]]:
    """The module's ``INDEXES``, checked: ``{name: function(value) -> str | list[str] | None}``."""
    declared = getattr(module, "INDEXES", None)
    if declared is None:
        return MappingProxyType({})
    if not isinstance(declared, dict):
        raise ReadModelError(f"{where}: INDEXES must be a dict of index name -> function(value) -> str, "
                             f"list of str or None, got {type(declared).__name__}")
    for index_name, function in declared.items():
        if not isinstance(index_name, str) or not _NAME_RE.fullmatch(index_name):
            raise ReadModelError(f"{where}: INDEXES names must match [a-z][a-z0-9_]*, got {index_name!r}")
        if not callable(function):
            raise ReadModelError(f"{where}: INDEXES[{index_name!r}] must be a function(value) -> str, list of str "
                                 f"or None, got {type(function).__name__}")
    return MappingProxyType(dict(declared))


def _command_schemas(module: ModuleType, where: str, commands: Optional[tuple[str, ...]]) -> Mapping[str, dict]:
    """The module's ``COMMAND_SCHEMAS``, checked; ``commands`` is None when it takes no commands."""
    declared = getattr(module, "COMMAND_SCHEMAS", None)
    if declared is None:
        return MappingProxyType({})
    if commands is None:
        raise ReadModelError(f"{where}: COMMAND_SCHEMAS is for an aggregate that takes commands "
                             "(AGGREGATE_TYPE and decide)")
    if not isinstance(declared, dict):
        raise ReadModelError(f"{where}: COMMAND_SCHEMAS must be a dict of command type -> JSON schema of its data, "
                             f"got {type(declared).__name__}")
    if not commands:
        raise ReadModelError(f"{where}: COMMAND_SCHEMAS needs COMMANDS, the command types it describes")
    unknown = [kind for kind in declared if kind not in commands]
    if unknown:
        raise ReadModelError(f"{where}: COMMAND_SCHEMAS names {unknown}, which are not in COMMANDS "
                             f"({', '.join(commands)})")
    out = {}
    for kind, schema in declared.items():
        if not isinstance(schema, dict):
            raise ReadModelError(f"{where}: COMMAND_SCHEMAS[{kind!r}] must be a dict (a JSON schema of the "
                                 f"command's data), got {type(schema).__name__}")
        if schema.get("type", "object") != "object":
            raise ReadModelError(f"{where}: COMMAND_SCHEMAS[{kind!r}] describes a command's data, a JSON object: "
                                 f"its type must be 'object', got {schema['type']!r}")
        try:
            out[kind] = orjson.loads(orjson.dumps(schema))  # a copy, and plain JSON
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise ReadModelError(f"{where}: COMMAND_SCHEMAS[{kind!r}] must be plain JSON: {exc}") from None
    return MappingProxyType(out)


def _fold_arity(fold: Callable, where: str) -> int:
    """2 for ``fold(state, event)``, 3 for ``fold(state, event, control)``.

    The control view goes to a third parameter named ``control`` (with or
    without a default); a fold with ``*args`` is called with two.
    """
    try:
        params = list(inspect.signature(fold).parameters.values())
    except (TypeError, ValueError):
        return 2  # a builtin or C function: called the usual way
    kw_only = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if kw_only:
        raise ReadModelError(
            f"{where}: fold has required keyword-only parameters {kw_only}; "
            "it must take (state, event) or (state, event, control), positionally"
        )
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    # The third parameter must be called ``control``: a fold that already had
    # an optional third parameter (say ``_cache={}``) is not handed the table.
    if required <= 3 <= len(positional) and positional[2].name == "control":
        return 3
    if required <= 2 <= len(positional):
        return 2
    raise ReadModelError(
        f"{where}: fold must take (state, event) or (state, event, control), "
        f"got {len(positional)} positional parameters ({required} required): "
        f"{', '.join(p.name for p in positional)}"
    )


def _derived_from_module(module: ModuleType, where: str, name: str, description: str) -> DerivedModel:
    source = module.SOURCE
    if getattr(module, "VERSION", 1) != 1:
        raise ReadModelError(f"{where}: VERSION is for read models folded from events; a re-keyed read model "
                             f"(SOURCE = {source!r}) follows its source's rows and has no VERSION of its own")
    if not isinstance(source, str) or not _NAME_RE.fullmatch(source):
        raise ReadModelError(f"{where}: SOURCE must name an aggregate-keyed read model, got {source!r}")
    funcs = {}
    for attr in ("key", "contribution"):
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ReadModelError(f"{where}: a re-keyed read model (SOURCE = {source!r}) must define {attr}(row)")
        funcs[attr] = fn
    for attr in ("add", "subtract"):
        fn = getattr(module, attr, None)
        if fn is not None and not callable(fn):
            raise ReadModelError(f"{where}: {attr} must be a function (state, contribution) -> state")
    return DerivedModel(
        name=name,
        description=description,
        source=source,
        group_key=funcs["key"],
        contribution=funcs["contribution"],
        initial=getattr(module, "INITIAL", None),
        add=getattr(module, "add", None) or default_add,
        subtract=getattr(module, "subtract", None) or default_subtract,
        module=module,
    )


def load_read_models(directory: Optional[Path] = None) -> list[Any]:
    """Every read model of ``directory``: aggregate-keyed ones first, then re-keyed ones."""
    return load_catalog(directory).all


def load_catalog(directory: Optional[Path] = None) -> Catalog:
    """Load every ``*.py`` module of ``directory`` (sorted) and check how they fit together."""
    from_env = directory is None and bool(os.environ.get("PROJECTOR_TABLES_DIR"))
    directory = Path(directory) if directory is not None else default_tables_dir()
    if not directory.is_dir():
        raise ReadModelError(f"read-model folder {directory} does not exist"
                             + (" (PROJECTOR_TABLES_DIR)" if from_env else ""))
    if (directory / "__init__.py").exists():
        raise ReadModelError(
            f"{directory}/__init__.py must not exist: tables/ is a folder of modules, "
            "not a package named 'tables' (PyTables owns that name)"
        )
    models: list[ReadModel] = []
    derived: list[DerivedModel] = []
    modules: list[ModuleType] = []
    seen: dict[str, Path] = {}
    settings: dict[str, ControlSetting] = {}
    setting_origin: dict[str, Path] = {}
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = _load_module(path)
        modules.append(module)
        declared = control_settings_from_module(module, str(path))
        try:
            settings_with_builtin({s.key: s for s in declared})
        except ControlError as exc:
            raise ReadModelError(f"{path}: CONTROL: {exc}") from None
        for setting in declared:
            if setting.key in settings:
                raise ReadModelError(f"{path}: CONTROL key {setting.key!r} is already declared by "
                                     f"{setting_origin[setting.key]}")
            settings[setting.key] = setting
            setting_origin[setting.key] = path
        if not hasattr(module, "NAME") and any(hasattr(module, a) for a in ("UPCASTERS", "SCHEMA_VERSIONS", "CONTROL")):
            continue  # a module of upcasters or settings only
        model = read_model_from_module(module, str(path))
        if model.name in seen:
            raise ReadModelError(f"{path}: NAME {model.name!r} is already used by {seen[model.name]}")
        seen[model.name] = path
        (derived if isinstance(model, DerivedModel) else models).append(model)
    if not models and not derived:
        raise ReadModelError(f"no read models found in {directory}")
    by_name = {m.name: m for m in models}
    for d in derived:
        if d.source not in by_name:
            raise ReadModelError(
                f"{seen[d.name]}: SOURCE {d.source!r} is not an aggregate-keyed read model in {directory}"
            )
    types: dict[str, str] = {}
    for m in models:
        if m.aggregate_type is not None:
            if m.aggregate_type in types:
                raise ReadModelError(
                    f"{seen[m.name]}: AGGREGATE_TYPE {m.aggregate_type!r} is already decided by {types[m.aggregate_type]}"
                )
            types[m.aggregate_type] = m.name
    for m in models:
        if m.key is not None:
            raise ReadModelError(
                f"{seen[m.name]}: key(event) re-keys events one by one, which cannot follow an aggregate "
                "whose events do not all carry the new key; declare SOURCE, key(row) and contribution(row) "
                "to re-key a read model"
            )
    return Catalog(models, derived, modules, settings)
