"""The lake: every table the pipeline keeps, in one DuckLake (a SQL catalog plus Parquet files).

A connection is an in-memory DuckDB with the lake attached as ``lake`` and made the default
catalog, so ``select * from sysmon_join`` works as is. The catalog is a SQLite file by default
(no server) or PostgreSQL (``postgres:...``); the data files go to a local folder or to ``s3://``
with the standard AWS variables. Extensions load from the ``duckdb-ext-*`` wheels, never from
the network.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlparse

import duckdb

from dbt_like.compiler import STATE_SCHEMA
from dbt_like.concurrency import lost_race, out_of_room, pause_before_retry
from dbt_like.sql import literal, literals, scalar
from dbt_like.state import recorded_shard_count
from sysmon_assets.settings import Settings
from sysmon_assets.storage.spill import spill_directory

LAKE = "lake"
# the database DuckDB attaches DuckLake's catalog as, beside the lake
CATALOG_DATABASE = f"__ducklake_metadata_{LAKE}"
# SQL: the snapshot's commit note (commit_note) says its step completed a batch (NULL for a snapshot without a note)
COMPLETES_BATCH = "commit_extra_info::JSON->>'batch_complete' = 'true'"
# SQL: the batch whose step made the snapshot, by its commit note (NULL for a snapshot without a note)
NOTED_BATCH_ID = "CAST(commit_extra_info::JSON->>'batch_id' AS BIGINT)"
EXTENSIONS_PACKAGE = "duckdb_ext"
# Rows per Parquet row group: each thread writing a table holds one in memory (see _set_options).
ROW_GROUP_ROWS = 65536
# The lake's Parquet options: option -> (the value set, the value ducklake_options() lists for it).
LAKE_OPTIONS = {
    "parquet_compression": ("zstd", "zstd"),
    "parquet_version": (2, "V2"),
    "parquet_row_group_size": (ROW_GROUP_ROWS, str(ROW_GROUP_ROWS)),
}
# The bookkeeping schemas: the runner's batches, offsets, guards and pending rows, and the sources' positions
# (ingest). Each commit adds a few rows to them and every step reads them, so a lake written by one pipeline
# inlines their inserts into the catalog (DuckLake's data inlining) rather than writing a Parquet file each: 300
# commits otherwise leave 600 small files that every later read opens. Shards do not: two transactions deleting
# inlined rows of one table conflict, whichever rows they delete, and every shard's commit deletes its own old
# bookkeeping rows, so inlined bookkeeping would make shards that commit at once retry each other's steps.
INLINED_SCHEMAS = (STATE_SCHEMA, "ingest")
INLINING_OPTION = "data_inlining_row_limit"
INLINED_ROWS = 1000
LOG = logging.getLogger(__name__)
# How long opening the lake waits out other writers (a SQLite catalog locked by another writer's transaction, shards
# creating a new catalog at once), trying again after random pauses of at most RACE_PAUSE_MAX seconds: ten doubling
# pauses (about 25 s in all) were once not enough for three shards starting together on a loaded machine.
RACE_SECONDS = 120.0
RACE_PAUSE_MAX = 2.0
# Writers opening a new PostgreSQL catalog at once: the slower finds a table another created ("relation ... already
# exists"), or PostgreSQL refuses its update of a row another changed ("could not serialize access ...").
CATALOG_RACES = ("already exists", "could not serialize access")
CATALOG_EXTENSIONS = {"sqlite:": "sqlite", "postgres:": "postgres"}
# the catalog's database, attached by itself to tell whether it holds a lake yet
CATALOG_PROBE = "sysmon_catalog_probe"
# DuckLake compares DATA_PATH with the path its catalog stored, as text: "data/lake_files/" is not its absolute form.
DATA_PATH_MISMATCH = re.compile(r'does not match existing data path in the catalog "(?P<stored>[^"]*)"')


class LakeError(RuntimeError):
    """The lake cannot be opened or is not what it should be; the message names the catalog or path (a password
    in it, or in DuckDB's text of the connection string, shown as ***: messages go to logs and run histories)."""

    def __init__(self, message: str) -> None:
        super().__init__(without_passwords(message))


# a password in a libpq connection string: a URI's ?password=... parameter, a key=value string's password=...
# (single-quoted, as SQL echoes it with its quotes doubled, or bare with backslash escapes), a URI's user:password@
PASSWORDS = (
    re.compile(r"([?&]password=)[^&\s#]+", re.IGNORECASE),
    re.compile(
        r"((?<![?&])password\s*=\s*)(?:''(?:[^']|'(?!'))*''|'(?:[^'\\]|\\.)*'|(?:\\.|[^\s\\'])+)", re.IGNORECASE
    ),
    re.compile(r"(://[^/@\s:]*:)[^/@\s]+(?=@)"),
)


def without_passwords(text: str) -> str:
    """``text`` with each password of a connection string in it shown as ***."""
    for pattern in PASSWORDS:
        text = pattern.sub(lambda match: f"{match[1]}***", text)
    return text


def extension_directory() -> str:
    """The folder the ``duckdb-ext-*`` wheels install their extensions into."""
    spec = importlib.util.find_spec(EXTENSIONS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LakeError("the duckdb-ext-* packages are not installed (pip install -e .)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "extensions")


def connection_config(settings: Settings) -> dict[str, str]:
    """DuckDB settings of every lake connection: extensions from the wheels only, and the memory limit."""
    config = {
        "extension_directory": extension_directory(),
        "autoinstall_known_extensions": "false",
    }
    if settings.memory_limit:
        config["memory_limit"] = settings.memory_limit
    return config


def in_object_storage(data_path: str) -> bool:
    """Whether the lake's data files go to S3 (or an S3-compatible server) rather than a local folder."""
    return data_path.startswith("s3://")


def s3_secret(data_path: str, environ: Mapping[str, str]) -> str | None:
    """A ``CREATE SECRET`` for ``s3://`` data from the standard AWS variables; a plain ``http://``
    ``AWS_ENDPOINT_URL`` means no TLS and path-style URLs (a local S3-compatible server)."""
    if not in_object_storage(data_path):
        return None
    options = {"TYPE": "s3", "PROVIDER": "config"}
    credentials = (
        ("KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("SECRET", "AWS_SECRET_ACCESS_KEY"),
        ("SESSION_TOKEN", "AWS_SESSION_TOKEN"),
    )
    for option, variable in credentials:
        if environ.get(variable):
            options[option] = environ[variable]
    options["REGION"] = s3_region(environ)
    endpoint = environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlparse(endpoint)
        if url.scheme not in ("http", "https") or not url.netloc or url.path.strip("/"):
            raise LakeError(
                f"AWS_ENDPOINT_URL={endpoint!r} is not an endpoint: give the scheme, host and port only, "
                "e.g. http://localhost:9000 or https://s3.example.com"
            )
        options["ENDPOINT"] = url.netloc
        if url.scheme == "http":
            options["USE_SSL"] = "false"
            options["URL_STYLE"] = "path"
    listed = ", ".join(
        f"{key} {value if value == 'false' and key == 'USE_SSL' else literal(value)}" for key, value in options.items()
    )
    return f"CREATE OR REPLACE SECRET sysmon_lake_s3 ({listed})"


REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_REGION = "us-east-1"


def _region_variable(environ: Mapping[str, str]) -> str | None:
    """The variable the S3 region comes from: ``AWS_REGION``, else ``AWS_DEFAULT_REGION`` (None: neither is set)."""
    return next((name for name in REGION_VARIABLES if environ.get(name)), None)


def s3_region(environ: Mapping[str, str]) -> str:
    """The S3 region: ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``."""
    named = _region_variable(environ)
    return environ[named] if named else DEFAULT_REGION


def object_store(data_path: str, environ: Mapping[str, str]) -> str:
    """Where ``s3://`` data goes, as errors name it: the endpoint and the variable that set it (empty for local
    data)."""
    if not in_object_storage(data_path):
        return ""
    if environ.get("AWS_ENDPOINT_URL"):
        return f" at AWS_ENDPOINT_URL={environ['AWS_ENDPOINT_URL']}"
    named = _region_variable(environ)
    if named:
        return f" at AWS S3 in {environ[named]} ({named})"
    return f" at AWS S3 in {DEFAULT_REGION} (neither {' nor '.join(REGION_VARIABLES)} is set)"


def data_location(settings: Settings) -> str:
    """The lake's data path, and for ``s3://`` data where it goes (:func:`object_store`), as errors name them."""
    return f"{settings.data_path}{object_store(settings.data_path, os.environ)}"


def is_local(data_path: str) -> bool:
    """Whether the lake's data files go to a folder of this machine (not to a URL such as ``s3://``)."""
    return "://" not in data_path


def absolute_data_path(data_path: str) -> str:
    """A local data folder as an absolute path, which a new lake's catalog then stores: the lake opens from any
    working directory, by either form of the folder. Object storage as it is."""
    return os.path.join(os.path.abspath(data_path), "") if is_local(data_path) else data_path


def attach_statement(
    settings: Settings,
    read_only: bool = False,
    snapshot: int | None = None,
    data_path: str | None = None,
    override_data_path: bool = False,
) -> str:
    """The ``ATTACH`` of the lake as ``lake``, read-only and at a snapshot when asked; ``data_path`` in place of
    the settings' (made absolute); ``override_data_path``: the settings' path in place of the catalog's."""
    options = [f"DATA_PATH {literal(data_path or absolute_data_path(settings.data_path))}"]
    if override_data_path:
        options.append("OVERRIDE_DATA_PATH true")
    if read_only:
        options.append("READ_ONLY")
    elif sqlite_file(settings):
        # WAL mode (the file keeps it): in SQLite's default mode a writer waits for every open read transaction,
        # and a commit that gave up left the catalog locked for everyone; in WAL mode readers and writers do not
        # block each other, and of two writers the later commit fails cleanly and is retried (docs/storage.md).
        # Set by DuckDB's own SQLite: another copy in the process (Python's) would drop its locks on closing.
        options.append("META_JOURNAL_MODE 'wal'")
    if snapshot is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
    return f"ATTACH {literal('ducklake:' + settings.catalog)} AS {LAKE} ({', '.join(options)})"


def extensions(settings: Settings) -> list[str]:
    """The DuckDB extensions the lake needs: DuckLake, its catalog's, and httpfs for ``s3://`` data (see
    :func:`s3_secret`)."""
    needed = ["ducklake", *(ext for prefix, ext in CATALOG_EXTENSIONS.items() if settings.catalog.startswith(prefix))]
    return needed + (["httpfs"] if in_object_storage(settings.data_path) else [])


def attach(con: duckdb.DuckDBPyConnection, settings: Settings, read_only: bool = False, snapshot: int | None = None):
    """Attach the lake to ``con`` and make it the default catalog, with a folder of its own to spill into
    (``spill.py``); errors name the catalog."""
    try:
        return _attach(con, settings, read_only, snapshot)
    except OSError as error:  # a folder or file the user may not read or write; a spill folder not private
        where = f"catalog {settings.catalog}, data {data_location(settings)}"
        raise LakeError(f"cannot open the lake ({where}): {error}") from error


def _attach(con: duckdb.DuckDBPyConnection, settings: Settings, read_only: bool, snapshot: int | None):
    if not read_only:
        _make_local_folders(settings)
        _make_catalog_file(settings)
    elif sqlite_file(settings) and not sqlite_file(settings).is_file():
        raise LakeError(f"no lake at {settings.catalog} yet: run a micro-batch first (or set SYSMON_DATA_DIR)")
    secret = s3_secret(settings.data_path, os.environ)
    try:
        con.execute("SET enable_progress_bar = false")  # see use_lake
        spill_parent = None if read_only else Path(settings.data_dir, "spill").absolute()
        con.execute(f"SET temp_directory = {literal(spill_directory(spill_parent))}")
        for extension in extensions(settings):
            con.execute(f"LOAD {extension}")
        if secret:
            con.execute(secret)
        if not read_only:
            _refuse_another_lakes_files(con, settings)
        _retry_races(lambda: _attach_same_folder(con, settings, read_only, snapshot))
        con.execute(f"USE {LAKE}")
        if not read_only:
            _readable_as_landing(settings)  # after the ATTACH, which makes a new lake's catalog
            _retry_races(lambda: _set_options(con, inlined_rows(settings, recorded_shards(con))))
    except duckdb.Error as error:
        if read_only and "explicitly disabled" in str(error):  # DuckLake: "creating a new DuckLake ... disabled"
            raise LakeError(f"no lake at {settings.catalog} yet: run a micro-batch first") from None
        message = (
            f"cannot open the lake (catalog {settings.catalog}, data {data_location(settings)}): "
            f"{error}{_why_locked(error)}{_room_left(error, settings)}"
        )
        # a DuckDB error whose text holds the catalog's password is not chained
        raise LakeError(message) from (error if without_passwords(str(error)) == str(error) else None)
    return con


def _room_left(error: duckdb.Error, settings: Settings) -> str:
    """The free space of a SQLite catalog's disk, after an error a full disk may have caused: SQLite says only
    "disk I/O error" when it cannot make the catalog's WAL index."""
    sqlite = sqlite_file(settings)
    if sqlite is None or not out_of_room(error):
        return ""
    try:
        free = shutil.disk_usage(sqlite.parent).free
    except OSError:
        return ""
    return f"; the disk of the catalog's folder {sqlite.parent} has {free:,} bytes free"


def _why_locked(error: duckdb.Error) -> str:
    """What to do about a SQLite catalog in rollback-journal mode that a writer could not switch to WAL mode."""
    if 'journal_mode=wal": database is locked' not in str(error).lower():
        return ""
    return (
        "; the catalog is in SQLite's rollback-journal mode, which the first writer switches to WAL mode once: "
        "that needs every other connection to the catalog closed (query sessions, notebooks), then run again"
    )


def _holds_no_lake(con: duckdb.DuckDBPyConnection, settings: Settings) -> bool:
    """Whether the catalog holds no lake yet (DuckLake makes its tables at the first ATTACH that may write). The
    catalog's database is read through DuckDB's own extension: another copy of SQLite in the process (Python's)
    would drop DuckDB's locks on the file as it closes it, failing other writers of the process (shards)."""
    sqlite = sqlite_file(settings)
    if sqlite and not sqlite.exists():
        return True  # a read-only ATTACH does not make the file: DuckLake's first ATTACH does
    database, kind = (str(sqlite), "sqlite") if sqlite else (settings.catalog.removeprefix("postgres:"), "postgres")
    con.execute(f"ATTACH {literal(database)} AS {CATALOG_PROBE} (TYPE {kind}, READ_ONLY)")
    try:
        return "ducklake_metadata" not in tables_of(con, CATALOG_PROBE)
    finally:
        con.execute(f"DETACH {CATALOG_PROBE}")


def tables_of(con: duckdb.DuckDBPyConnection, database: str, schema: str | None = None) -> set[str]:
    """The names of the tables of attached ``database`` (of its ``schema``, when given)."""
    in_schema = f" AND schema_name = {literal(schema)}" if schema else ""
    query = f"SELECT table_name FROM duckdb_tables() WHERE database_name = {literal(database)}{in_schema}"
    return {name for (name,) in con.execute(query).fetchall()}


def _data_files(con: duckdb.DuckDBPyConnection, data_path: str) -> list[str]:
    """A few of the Parquet files (what DuckLake writes: data and deletes) under the lake's data path. Listing
    object storage also finds a bucket that does not exist, before a new catalog stores it."""
    if is_local(data_path):
        folder = Path(data_path)
        return [str(path) for path in itertools.islice(folder.rglob("*.parquet"), 3)] if folder.is_dir() else []
    pattern = literal(data_path.rstrip("/") + "/**/*.parquet")
    try:
        return [row[0] for row in con.execute(f"SELECT file FROM glob({pattern}) LIMIT 3").fetchall()]
    except duckdb.Error as error:
        raise LakeError(
            f"cannot list SYSMON_LAKE_DATA_PATH={data_path}{object_store(data_path, os.environ)} (does its bucket "
            f"exist, and may these credentials list it?): {error}"
        ) from error


def _refuse_another_lakes_files(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Refuse a catalog holding no lake over a data path holding files. The catalog is looked at again before
    refusing: another writer (a shard starting at the same time) may have made the lake and written meanwhile."""
    if not _holds_no_lake(con, settings):
        return
    found = _data_files(con, settings.data_path)
    if found and _holds_no_lake(con, settings):
        raise _files_of_another_lake(settings, found)


def _files_of_another_lake(settings: Settings, found: list[str]) -> LakeError:
    """The refusal of a catalog holding no lake over a data path holding another lake's files (a forgotten or
    changed ``SYSMON_LAKE_CATALOG``): a second lake's files would make them untracked, and DuckLake's orphan
    cleanup deletes every untracked file."""
    return LakeError(
        f"cannot open the lake: its catalog ({settings.catalog}) holds no lake yet, but its data path "
        f"{settings.data_path} already holds data files ({', '.join(found)}, ...), another lake's: point "
        "SYSMON_LAKE_CATALOG at that lake's catalog (or SYSMON_DATA_DIR at the folder holding it), or give "
        "a new lake a data path of its own (SYSMON_LAKE_DATA_PATH)"
    )


def _attach_same_folder(
    con: duckdb.DuckDBPyConnection, settings: Settings, read_only: bool, snapshot: int | None
) -> None:
    """Attach the lake; a catalog that stored its local data folder in another form (relative to this working
    directory, as lakes created before paths were made absolute did) is attached with its own form when both name
    the same folder. The embedded default moved or copied whole to another data folder is attached with its new
    data folder. Any other folder is still refused, by DuckLake's error."""
    try:
        con.execute(attach_statement(settings, read_only, snapshot))
    except duckdb.Error as error:
        mismatch = DATA_PATH_MISMATCH.search(str(error))
        if mismatch is None:
            raise
        local = is_local(mismatch["stored"]) and is_local(settings.data_path)
        if local and os.path.realpath(mismatch["stored"]) == os.path.realpath(settings.data_path):
            con.execute(attach_statement(settings, read_only, snapshot, mismatch["stored"]))
        elif local and _moved_with_its_catalog(settings, mismatch["stored"]):
            con.execute(attach_statement(settings, read_only, snapshot, override_data_path=True))
        else:
            raise _data_path_refused(settings, mismatch["stored"]) from error


def _data_path_refused(settings: Settings, stored_data_path: str) -> LakeError:
    """The refusal of a data path the catalog does not keep its files at, in the pipeline's settings (DuckLake's own
    advice, its OVERRIDE_DATA_PATH option, is no setting of the pipeline's)."""
    given = "SYSMON_LAKE_DATA_PATH" if settings.lake_data_path is not None else "the default under SYSMON_DATA_DIR"
    relative = is_local(stored_data_path) and not os.path.isabs(stored_data_path)
    made_from = " (relative to the folder the lake was made from)" if relative else ""
    opening = (
        f"cannot open the lake (catalog {settings.catalog}, data {settings.data_path}): its catalog keeps its data"
    )
    if is_local(stored_data_path) and not relative and not os.path.isdir(stored_data_path):
        return LakeError(
            f"{opening} files at {stored_data_path}, which does not exist: a lake whose SYSMON_LAKE_CATALOG or "
            "SYSMON_LAKE_DATA_PATH is set keeps the data path it was made with (only the embedded default moves with "
            f"its folder, docs/storage.md): put its data files back at {stored_data_path}, or point "
            "SYSMON_LAKE_CATALOG (or SYSMON_DATA_DIR) at the catalog of the lake you mean"
        )
    return LakeError(
        f"{opening} files at {stored_data_path}{made_from}, not at {settings.data_path} ({given}): set "
        f"SYSMON_LAKE_DATA_PATH={stored_data_path} to open it, or point SYSMON_LAKE_CATALOG (or SYSMON_DATA_DIR) at "
        "the catalog of the lake you mean"
    )


def _moved_with_its_catalog(settings: Settings, stored_data_path: str) -> bool:
    """Whether the lake is the embedded default (its catalog and its data folder both in ``SYSMON_DATA_DIR``), moved
    or copied whole from where its catalog was made: the catalog stored a data folder of the same name elsewhere,
    and this one holds files. An empty one is what a forgotten ``SYSMON_LAKE_DATA_PATH`` leaves, and is refused."""
    if settings.lake_catalog is not None or settings.lake_data_path is not None:
        return False
    data_folder = Path(settings.data_path)
    return Path(stored_data_path).name == data_folder.name and data_folder.is_dir() and any(data_folder.iterdir())


def _retry_races(action: Callable[[], object], seconds: float | None = None) -> None:
    """Run ``action``; when shards that open one new lake at once race (a SQLite catalog another writer holds
    locked, two sessions creating the catalog's tables or setting the same option), wait and run it again, for
    ``seconds`` at most (``RACE_SECONDS``)."""
    deadline = time.monotonic() + (RACE_SECONDS if seconds is None else seconds)
    attempt = 0
    while True:
        attempt += 1
        try:
            action()
            return
        except duckdb.Error as error:
            raced = lost_race(error) or (any(sign in str(error) for sign in CATALOG_RACES) and not out_of_room(error))
            if not raced or time.monotonic() >= deadline:
                raise
            pause_before_retry(attempt, RACE_PAUSE_MAX)


def inlined_rows(settings: Settings, recorded_shards: int | None = None) -> int:
    """The most rows an insert into a bookkeeping schema inlines: none when shards write the lake (by the shard
    count the lake recorded, when it has one: a run refused for another count, or maintenance configured without
    it, changes nothing)."""
    return INLINED_ROWS if (recorded_shards or settings.shards) == 1 else 0


def recorded_shards(con: duckdb.DuckDBPyConnection) -> int | None:
    """The shard count the lake's writers recorded (None before its first batch)."""
    return recorded_shard_count(con) if "shards" in tables_of(con, LAKE, STATE_SCHEMA) else None


def _set_options(con: duckdb.DuckDBPyConnection, bookkeeping_inlined_rows: int) -> None:
    """The lake's own options, stored in its catalog, set when they differ: Parquet files compressed with zstd
    (measured on 100k generated events: 153 bytes per event against 276 with DuckLake's default, in no more time)
    in Parquet's version 2 encodings (delta-encoded integers and strings: on 1M generated events 151 bytes per
    event against 160 with version 1, in no more time), in row groups of 65,536 rows rather than 122,880 (each
    writing thread holds one row group in memory, which DuckDB cannot spill: with the larger ones a 1M-event batch
    failed in a 512 MB memory limit, writing sysmon_join; with these it runs, in no more time, at 151 bytes per
    event against 150), and the bookkeeping schemas' inlining (:data:`INLINED_SCHEMAS`)."""
    options = {
        (name, scope_entry): value
        for name, value, scope_entry in con.execute(
            f"SELECT option_name, value, scope_entry FROM ducklake_options('{LAKE}')"
        ).fetchall()
    }
    for option, (value, listed) in LAKE_OPTIONS.items():
        if options.get((option, None)) != listed:
            con.execute(f"CALL ducklake_set_option('{LAKE}', {literals(option, value)})")
    for schema in INLINED_SCHEMAS:
        if options.get((INLINING_OPTION, schema), "0") != str(bookkeeping_inlined_rows):
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.execute(
                f"CALL ducklake_set_option('{LAKE}', {literals(INLINING_OPTION, bookkeeping_inlined_rows)}, "
                f"schema => {literal(schema)})"
            )


def use_lake(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Make the attached lake ``con``'s default catalog; no progress bar (it writes to stdout, which the
    query command's JSON owns)."""
    con.execute("SET enable_progress_bar = false")
    try:
        return con.execute(f"USE {LAKE}")
    except duckdb.Error as error:
        raise LakeError(f"cannot read the lake's catalog: {error}") from error


def sqlite_file(settings: Settings) -> Path | None:
    """The catalog's file when it is SQLite (the embedded default), else None."""
    return Path(settings.catalog.removeprefix("sqlite:")) if settings.catalog.startswith("sqlite:") else None


def _landing_access(settings: Settings) -> tuple[int, int] | None:
    """The mode (for a folder) and group the lake's local files take from the landing folder; None without one."""
    try:
        landing = settings.landing_dir.stat()
    except OSError:
        return None  # no landing folder yet: the batch stops on it with an error naming it
    return 0o700 | (landing.st_mode & 0o077), landing.st_gid


def _make_catalog_file(settings: Settings) -> None:
    """Make a new lake's SQLite catalog file, empty (a new database to SQLite), with the landing folder's access:
    made by DuckLake's ATTACH, it would be readable by everyone until the chmod after it, and a reader that opened it
    then would go on reading the landed text written later. Made only where no file is (O_EXCL): closing a file
    another connection of the process holds would drop its SQLite locks."""
    catalog, access = sqlite_file(settings), _landing_access(settings)
    if catalog is None or access is None or catalog.exists():
        return
    mode, group = access
    try:
        os.close(os.open(catalog, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode & 0o666))  # the umask narrows it only
    except FileExistsError:
        return  # another writer made it meanwhile
    except OSError as error:
        raise LakeError(f"cannot open the lake (catalog {settings.catalog}): cannot create it: {error}") from error
    _set_access(catalog, mode & 0o666, group)  # the bits the umask took, and the group


def _readable_as_landing(settings: Settings) -> None:
    """Give the lake's local files the landing folder's access: the lake holds landed text (rejects keep the
    raw line; the catalog keeps column statistics), so whoever may not read the landing folder may not read
    the lake either. The SQLite catalog (and its WAL files) and the data folder get the landing folder's
    permission bits and group; the data folder's own files are then reached only through it. A catalog in
    PostgreSQL or files on S3 follow their own access rules."""
    access = _landing_access(settings)
    if access is None:
        return
    mode, group = access
    catalog = sqlite_file(settings)
    paths = [Path(f"{catalog}{suffix}") for suffix in ("", "-wal", "-shm")] if catalog else []
    if is_local(settings.data_path):
        paths.append(Path(settings.data_path))
    for path in paths:
        _set_access(path, mode if path.is_dir() else mode & 0o666, group)


def _set_access(path: Path, mode: int, group: int) -> None:
    try:
        if path.stat().st_gid != group:
            os.chown(path, -1, group)
        os.chmod(path, mode)
    except FileNotFoundError:
        return  # not made yet (a WAL file), or removed since by another process's last connection
    except PermissionError:
        # not the owner, or not in the landing folder's group: the operator set this path up; say so once per open
        LOG.warning("cannot give %s the landing folder's access (mode %o, group %d)", path, mode, group)


def _make_local_folders(settings: Settings) -> None:
    folders = []
    if sqlite_file(settings):
        folders.append(sqlite_file(settings).parent)
    if is_local(settings.data_path):
        folders.append(Path(settings.data_path))
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LakeError(
                f"cannot open the lake (catalog {settings.catalog}, data {settings.data_path}): "
                f"cannot create folder {folder}: {error}"
            ) from error


@contextmanager
def open_lake(
    settings: Settings, read_only: bool = False, snapshot: int | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A plain DuckDB connection with the lake attached (dagster-duckdb's resource is the other way in)."""
    with closing(duckdb.connect(config=connection_config(settings))) as con:
        yield attach(con, settings, read_only, snapshot)


def commit_note(con: duckdb.DuckDBPyConnection, note: Mapping[str, object]) -> None:
    """Label the transaction's snapshot (``commit_extra_info``), e.g. with the batch and step that made it."""
    con.execute(
        f"CALL ducklake_set_commit_message({literal(LAKE)}, 'sysmon_assets', {literal(str(note.get('step', '')))}, "
        f"extra_info => {literal(json.dumps(dict(note)))})"
    )


def last_complete_batch(con: duckdb.DuckDBPyConnection) -> tuple[int, int] | None:
    """``(batch_id, snapshot_id)`` of the newest batch whose every step has committed, as far as ``con`` sees
    (a lake attached at a snapshot sees none after it), or None."""
    return _batch_completed(con, "true")


def batch_snapshot(con: duckdb.DuckDBPyConnection, batch_id: int) -> tuple[int, int] | None:
    """``(batch_id, snapshot_id)`` of the snapshot that completed batch ``batch_id``, or None."""
    return _batch_completed(con, f"{NOTED_BATCH_ID} = {literal(batch_id)}")


def _batch_completed(con: duckdb.DuckDBPyConnection, condition: str, oldest: bool = False) -> tuple[int, int] | None:
    """The newest (or ``oldest``) snapshot ``con`` sees whose commit note completes a batch and meets ``condition``
    (SQL), as ``(batch_id, snapshot_id)``. The notes are read from the catalog's own table:
    ``ducklake_snapshots()`` lists every snapshot with its changes, at about 21 µs each (measured: bench/README.md,
    "Catalog growth"), and a lake keeps thousands."""
    row = con.execute(
        f"SELECT {NOTED_BATCH_ID}, snapshot_id "
        f"FROM {CATALOG_DATABASE}.ducklake_snapshot_changes "
        f"WHERE {COMPLETES_BATCH} AND {condition} "
        f"AND snapshot_id <= (SELECT * FROM ducklake_current_snapshot('{LAKE}')) "
        f"ORDER BY snapshot_id {'ASC' if oldest else 'DESC'} LIMIT 1"
    ).fetchone()
    return (row[0], row[1]) if row else None


def _unreadable_batch(con: duckdb.DuckDBPyConnection, settings: Settings, batch_id: int) -> LakeError:
    """Why batch ``batch_id`` has no snapshot to read. A batch that started may have completed and had its
    snapshot expired by maintenance, or not completed: the lake keeps no record that tells them apart once the
    snapshot is gone, so the message names both, and the oldest batch still readable."""
    started = scalar(con, f"SELECT count(*) FROM {STATE_SCHEMA}.batches WHERE batch_id = {literal(batch_id)}")
    oldest = _batch_completed(con, "true", oldest=True)
    if not started or oldest is None:
        return LakeError(f"batch {batch_id} is not a complete batch of the lake {settings.catalog}")
    return LakeError(
        f"batch {batch_id} has no snapshot to read: it did not complete, or maintenance expired its snapshot (it keeps "
        f"the batches of the last SYSMON_SNAPSHOT_RETENTION_DAYS days, as set where it ran); the oldest batch still "
        f"readable is {oldest[0]}"
    )


def newest_snapshot_of_batch(con: duckdb.DuckDBPyConnection, batch_id: int) -> int | None:
    """The newest snapshot a step of batch ``batch_id`` committed (other shards' batches commit between them), or
    None."""
    return con.execute(
        f"SELECT max(snapshot_id) FROM {CATALOG_DATABASE}.ducklake_snapshot_changes "
        f"WHERE {NOTED_BATCH_ID} = {literal(batch_id)}"
    ).fetchone()[0]


def current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    """The id of the lake's newest snapshot."""
    return con.execute(f"SELECT * FROM ducklake_current_snapshot('{LAKE}')").fetchone()[0]


def connect(settings: Settings | None = None, batch_id: int | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection whose default catalog is the lake, as the last complete batch left it
    (or batch ``batch_id``), so ``select * from sysmon_join`` works as is. Batches that commit later are not
    seen: connect again for them."""
    settings = settings or Settings.from_env()
    con = duckdb.connect(config=connection_config(settings))
    try:
        attach(con, settings, read_only=True)
    except LakeError:
        con.close()
        raise
    boundary = last_complete_batch(con) if batch_id is None else batch_snapshot(con, batch_id)
    if boundary is None:
        refused = None if batch_id is None else _unreadable_batch(con, settings, batch_id)
        con.close()
        if refused:
            raise refused
        raise LakeError(
            f"the lake {settings.catalog} has no complete batch yet: a batch shows once its last step commits"
        )
    con.execute("USE memory")
    con.execute(f"DETACH {LAKE}")
    attach(con, settings, read_only=True, snapshot=boundary[1])
    return con
