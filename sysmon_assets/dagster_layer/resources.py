"""The Dagster resource that gives assets the pipeline; its config fields are the settings' declarations."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, EnvVar, InitResourceContext
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr, create_model

from sysmon_assets.micro_batch.recipe_project import shared_project
from sysmon_assets.micro_batch.steps import SysmonPipeline, naive_utc
from sysmon_assets.settings import (
    Settings,
    SettingsError,
    client_config_text,
    declaration,
    field_types,
    read_variable,
)
from sysmon_assets.storage import lake
from sysmon_assets.storage.lake_connections import LakeConnections

# The memory limit reaches DuckDB through the DuckDB resource's connection_config, not a field of its own.
VIA_DUCKDB = ("memory_limit",)


def _same(value: Any) -> Any:
    return value


# Settings types Dagster config has no type for: (config type, to config, from config). A setting whose config is
# text is read back as its variable's text is read, so that the resource can hold the variable itself (EnvVar).
CONFIG_TYPES: dict[Any, tuple[Any, Callable[[Any], Any], Callable[[Any], Any] | None]] = {
    Path: (str, str, None),
    tuple[int, ...] | None: (
        list[int] | None,
        lambda value: list(value) if value else None,
        lambda value: tuple(value) if value else None,
    ),
    tuple[tuple[str, str], ...]: (str, client_config_text, None),
}
TEXT = (str, str | None)


def _conversion(name: str) -> tuple[Any, Callable[[Any], Any], Callable[[Any], Any]]:
    kind = field_types()[name]
    config_type, to_config, from_config = CONFIG_TYPES.get(kind, (kind, _same, _same))
    if config_type in TEXT:
        return config_type, to_config, lambda text: None if text is None else read_variable(name, text)
    return config_type, to_config, from_config or _same


def _config_fields() -> dict[str, Any]:
    """One config field per setting: its type as Dagster config, its default and its description."""
    config = {}
    for declared in fields(Settings):
        if declared.name not in VIA_DUCKDB:
            config_type, to_config, _ = _conversion(declared.name)
            described = Field(default=to_config(declared.default), description=declared.metadata["doc"])
            config[declared.name] = (config_type, described)
    return config


# Built from the declarations, so a new setting is a new Settings field and nothing here.
SettingsConfig = create_model("SettingsConfig", __base__=ConfigurableResource, **_config_fields())


def _config_value(settings: Settings, name: str, environ: Mapping[str, str]) -> Any:
    config_type, to_config, from_config = _conversion(name)
    variable = declaration(name).metadata["env"]
    text = environ.get(variable)
    if config_type in TEXT and text and from_config(text) == getattr(settings, name):
        return EnvVar(variable)
    return to_config(getattr(settings, name))


def _refuse_environment_settings_left_out(run_config: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """A run's configuration of this resource replaces all of it (Dagster's rule): a setting of the environment the
    run does not name would fall back to its default, and the run read another landing folder or wrote another
    lake."""
    named = run_config.get("resources", {}).get("sysmon", {}).get("config")
    if named is None:
        return
    left_out = [
        f"{variable} ({name})"
        for name in SettingsConfig.model_fields
        if name not in named
        and (variable := declaration(name).metadata["env"]) in environ
        and not _is_the_default(name, environ[variable])
    ]
    if left_out:
        raise SettingsError(
            "the run's configuration of the sysmon resource replaces all of its settings (Dagster's rule), so these "
            f"set in the environment would fall back to their defaults: {', '.join(left_out)}. Configure settings "
            "by the environment alone, or name these in the run's configuration too "
            "(`landing_dir: {env: SYSMON_LANDING_DIR}` reads the variable)."
        )


def _is_the_default(name: str, text: str) -> bool:
    """Whether a variable's text reads as its setting's default (falling back to it then changes nothing)."""
    if not text:
        return True  # an empty variable is the default, as Settings reads it
    try:
        return read_variable(name, text) == declaration(name).default
    except SettingsError:
        return False


class SysmonPipelineResource(SettingsConfig):
    """Where the events come from (landing folder or Kafka), the lake, and how batches join."""

    duckdb: DuckDBResource

    _run_pipelines: dict[int, SysmonPipeline] = PrivateAttr(default_factory=dict)
    _run_connections: LakeConnections | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """One DuckDB instance with the lake attached per run: the run's steps share it."""
        if context.run is not None:
            _refuse_environment_settings_left_out(context.run.run_config, os.environ)
        self._run_connections = LakeConnections(self.settings(), self.duckdb.get_connection)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Close the run's connection."""
        if self._run_connections is not None:
            self._run_connections.close()
        self._run_connections = None
        self._run_pipelines.clear()

    def settings(self) -> Settings:
        """These fields as pipeline :class:`Settings`."""
        values = {name: _conversion(name)[2](getattr(self, name)) for name in SettingsConfig.model_fields}
        return Settings(memory_limit=self.duckdb.connection_config.get("memory_limit"), **values)

    def pipeline(self, shard: int = 0) -> SysmonPipeline:
        """The run's pipeline (of ``shard``), whose connections come from the DuckDB resource, over the process's
        one project of the recipe."""
        settings = self.settings()
        project = shared_project(settings, shard)
        if self._run_connections is None:
            return SysmonPipeline(settings, LakeConnections(settings, self.duckdb.get_connection), project=project)
        if shard not in self._run_pipelines:
            self._run_pipelines[shard] = SysmonPipeline(settings, connect=self._run_connections, project=project)
        return self._run_pipelines[shard]


class BatchClock(ConfigurableResource):
    """A fixed batch clock for replays and tests. A resource of its own: a run's configuration of a resource replaces
    all of that resource's configuration (Dagster's rule), so on ``sysmon`` it would set every setting the run does
    not name back to its default, those of the environment included."""

    batch_time: str | None = Field(
        default=None, description="fixed batch clock for replays and tests (ISO 8601, UTC if no offset)"
    )

    def clock(self) -> datetime | None:
        """The configured batch time, if any, as a naive UTC time (one with an offset converted)."""
        return naive_utc(datetime.fromisoformat(self.batch_time)) if self.batch_time else None


def resources_from_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The resources dict for :class:`dagster.Definitions` (or ``materialize``). A text setting read from a
    variable of ``environ`` is given as that variable (Dagster's ``EnvVar``): Dagster's records of a run keep its
    name, not its value (a password in the catalog string or the Kafka config)."""
    values = {name: _config_value(settings, name, environ or {}) for name in SettingsConfig.model_fields}
    return {
        "sysmon": SysmonPipelineResource(
            # An in-memory DuckDB per connection: the lake is attached to it (sysmon_assets.storage.lake).
            duckdb=DuckDBResource(database=":memory:", connection_config=lake.connection_config(settings)),
            **values,
        ),
        "batch_clock": BatchClock(),
    }
