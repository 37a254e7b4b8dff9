"""One typed settings object for the whole node.

Values come from ``CXR_NODE_*`` environment variables and, optionally, from a TOML file
named by ``CXR_NODE_CONFIG_FILE`` (environment variables win). An invalid value stops
start-up with a message naming the variable; nothing falls back silently.

Lists are written the way an administrator types them, comma separated::

    CXR_NODE_DESTINATIONS="PACS@10.0.0.5:104,ARCHIVE@archive:11112"
    CXR_NODE_STABLE_SECONDS_BY_AET="SLOWMOD=60,FASTPACS=5"
    CXR_NODE_MASK_POLICY="loose"            # or "loose,original" to run both
    CXR_NODE_MASK_POLICY_BY_AET="RESEARCH=tight"
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from node.constants import MASK_POLICIES

_AET_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, 16 chars


def validate_ae_title(value: str, what: str = "AE title") -> str:
    """Return ``value`` stripped if it is a valid AE title (PS3.5 Table 6.2-1), else raise."""
    stripped = value.strip()
    if not stripped or not _AET_RE.match(stripped):
        raise ValueError(
            f"{what} {value!r} is not a valid AE title: 1 to 16 printable ASCII characters, "
            "no backslash"
        )
    return stripped


#: The scheme of a destination written without one (``AET@host:port``): DICOM C-STORE.
DICOM_SCHEME = "dicom"


@dataclass(frozen=True)
class RemoteNode:
    """A peer written as ``[scheme://]AET@host:port``; the scheme names its protocol.

    ``dicom://AET@host:port`` and the plain ``AET@host:port`` are the same DICOM peer
    (C-ECHO, C-STORE). Another scheme names another sender (see :mod:`node.delivery.senders`);
    whether the node has a sender for it is checked when the node starts, not here.
    """

    ae_title: str
    host: str
    port: int
    scheme: str = DICOM_SCHEME

    @classmethod
    def parse(cls, text: str) -> "RemoteNode":
        """Parse ``[scheme://]AET@host:port``; raise ``ValueError`` saying the expected form."""
        match = re.fullmatch(r"\s*(?:([a-z][a-z0-9+.-]*)://)?([^@/]+)@(\[[^\]]+\]|[^:/]+):(\d+)\s*", text)
        if not match:
            raise ValueError(
                f"{text!r} is not a DICOM peer; write it as AET@host:port or dicom://AET@host:port, "
                "e.g. PACS@10.0.0.5:104"
            )
        scheme, aet, host, port = match.groups()
        port_number = int(port)
        if not 1 <= port_number <= 65535:
            raise ValueError(f"{text!r}: port {port_number} is outside 1..65535")
        return cls(validate_ae_title(aet), host.strip("[]"), port_number, scheme or DICOM_SCHEME)

    def __str__(self) -> str:
        # The plain form for DICOM, as destinations have always been recorded in the database.
        address = f"{self.ae_title}@{self.host}:{self.port}"
        return address if self.scheme == DICOM_SCHEME else f"{self.scheme}://{address}"


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _split_mapping(value: Any) -> Any:
    if isinstance(value, str):
        mapping: dict[str, str] = {}
        for item in _split_list(value):
            key, sep, val = item.partition("=")
            if not sep:
                raise ValueError(f"{item!r} is not KEY=VALUE")
            mapping[key.strip()] = val.strip()
        return mapping
    return value


def _parse_policies(value: Any) -> tuple[str, ...]:
    items = _split_list(value) if isinstance(value, str) else list(value)
    if not items:
        raise ValueError("at least one mask policy is needed")
    for item in items:
        if item not in MASK_POLICIES:
            raise ValueError(f"unknown mask policy {item!r}; choose from {', '.join(MASK_POLICIES)}")
    return tuple(dict.fromkeys(items))


class Settings(BaseSettings):
    """Every setting of the node. See docs/configuration.md for the full table."""

    model_config = SettingsConfigDict(env_prefix="CXR_NODE_", extra="forbid", frozen=True)

    # --- DICOM listener --------------------------------------------------------------
    ae_title: str = Field("CXRNODE", description="AE title the node answers to (called AE title).")
    host: str = Field("0.0.0.0", description="Address the listener binds to.")
    port: int = Field(11112, ge=0, le=65535, description="TCP port of the listener; 0 lets the system choose a free one.")
    allowed_calling_aets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Calling AE titles allowed to associate; empty allows all."
    )
    require_called_aet: bool = Field(True, description="Reject associations whose called AE title is not ours.")
    max_pdu_size: int = Field(0, ge=0, description="Maximum PDU length we receive; 0 means unlimited.")
    max_associations: int = Field(10, ge=1, description="Concurrent associations accepted.")
    max_instance_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest instance accepted; larger ones get 0xA700."
    )
    min_free_disk_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=0,
        description="Refuse new associations, and each C-STORE, when free disk would fall below this; 0 disables.",
    )
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    acse_timeout: float = Field(30.0, gt=0)
    pdu_timeout: float = Field(
        120.0, gt=0, description="Longest one PDU may take to arrive, from its first byte; then the socket is closed."
    )
    max_connections_per_peer: int = Field(
        5, ge=1, description="Concurrent TCP connections from one peer address; more are closed at once."
    )

    # --- storage and database ----------------------------------------------------------
    data_dir: Path = Field(Path("./var"), description="Spool, outputs, SQLite database, trained models.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in the data directory.")
    database_reserve_bytes: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="Disk kept free next to a SQLite database, released when the disk is full so failures are recorded.",
    )

    # --- study completion --------------------------------------------------------------
    stable_seconds: float = Field(10.0, ge=0, description="Quiet period after which a study is complete.")
    stable_seconds_by_aet: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, description="Quiet period per calling AE title, AET=seconds."
    )
    scan_interval_seconds: float = Field(1.0, gt=0, description="How often the completion scanner looks.")

    # --- queue ---------------------------------------------------------------------------
    broker_url: str | None = Field(None, description="Celery broker (Redis); unset runs tasks in-process.")
    inprocess_workers: int = Field(2, ge=1, description="Threads for tasks when no broker is set.")
    job_timeout_seconds: float = Field(3600.0, gt=0, description="Longest a job may run; broker visibility is above it.")
    job_heartbeat_seconds: float = Field(2.0, gt=0, description="How often a running job renews its heartbeat.")
    job_heartbeat_timeout_seconds: float = Field(
        15.0, gt=0, description="A running job whose heartbeat is older than this lost its worker; it is queued again."
    )
    job_blame_after_crashes: int = Field(
        3, ge=1, description="Deaths of a worker running the job alone at one point after which the study is given up."
    )
    job_max_interruptions: int = Field(
        10, ge=1, description="Interruptions of a job after which it is given up even without evidence against the study."
    )

    # --- processing ------------------------------------------------------------------------
    mask_policy: Annotated[tuple[str, ...], NoDecode] = Field(
        ("loose",), description="Mask policy or policies applied to every study."
    )
    mask_policy_by_aet: Annotated[dict[str, tuple[str, ...]], NoDecode] = Field(
        default_factory=dict, description="Policies per calling or called AE title, AET=policy[+policy]."
    )
    model_dir: Path | None = Field(None, description="Model store; default: data_dir/models, then the bundled demo models.")
    device: str = Field("auto", description="Torch device for inference: auto, cpu, cuda, cuda:N.")
    max_image_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Largest image the worker decodes, in samples (Rows x Columns x frames x samples per pixel).",
    )

    # --- delivery ----------------------------------------------------------------------------
    destinations: Annotated[list[RemoteNode], NoDecode] = Field(
        default_factory=list, description="Where SEG and SR go, [dicom://]AET@host:port, comma separated."
    )
    known_pacs: Annotated[list[RemoteNode], NoDecode] = Field(
        default_factory=list, description="PACS that get results sent back when they are the sender."
    )
    delivery_max_attempts: int = Field(8, ge=1)
    delivery_backoff_seconds: float = Field(5.0, gt=0, description="First retry delay; doubles each time.")
    delivery_backoff_max_seconds: float = Field(600.0, gt=0)
    delivery_lease_seconds: float = Field(
        8.0, gt=0, description="Claim of a delivery being sent; its worker renews it every quarter of this."
    )
    delivery_sweep_interval_seconds: float = Field(2.0, gt=0, description="How often the node looks for deliveries to wake.")
    delivery_sweep_grace_seconds: float = Field(
        2.0, ge=0, description="A due delivery not claimed this long after it fell due lost its wake-up."
    )
    delivery_probe_interval_seconds: float = Field(
        5.0, gt=0, description="How often a destination that deliveries wait for is probed (C-ECHO)."
    )

    # --- validators ----------------------------------------------------------------------------
    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return validate_ae_title(value, "CXR_NODE_AE_TITLE")

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _parse_allowed(cls, value: Any) -> Any:
        return [validate_ae_title(v, "CXR_NODE_ALLOWED_CALLING_AETS entry") for v in _split_list(value)]

    @field_validator("stable_seconds_by_aet", mode="before")
    @classmethod
    def _parse_stable_by_aet(cls, value: Any) -> Any:
        return _split_mapping(value)

    @field_validator("mask_policy", mode="before")
    @classmethod
    def _parse_mask_policy(cls, value: Any) -> Any:
        return _parse_policies(value)

    @field_validator("mask_policy_by_aet", mode="before")
    @classmethod
    def _parse_mask_policy_by_aet(cls, value: Any) -> Any:
        mapping = _split_mapping(value)
        return {aet: _parse_policies(str(p).replace("+", ",")) for aet, p in mapping.items()}

    @field_validator("destinations", "known_pacs", mode="before")
    @classmethod
    def _parse_nodes(cls, value: Any) -> Any:
        return [RemoteNode.parse(v) if isinstance(v, str) else v for v in _split_list(value)]

    @model_validator(mode="after")
    def _check_broker_visibility(self) -> "Settings":
        if self.broker_url is not None and not self.broker_url.strip():
            raise ValueError("CXR_NODE_BROKER_URL is set but empty; unset it for in-process tasks")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("CXR_NODE_CONFIG_FILE")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"CXR_NODE_CONFIG_FILE={config_file} does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    # --- derived values ---------------------------------------------------------------------------
    @cached_property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cxr-node.sqlite3').resolve()}"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "outputs"

    def stable_seconds_for(self, calling_aet: str | None) -> float:
        """Quiet period for a study sent by ``calling_aet`` (override or node-wide default)."""
        if calling_aet and calling_aet in self.stable_seconds_by_aet:
            return float(self.stable_seconds_by_aet[calling_aet])
        return self.stable_seconds

    def policies_for(self, calling_aet: str | None, called_aet: str | None) -> tuple[str, ...]:
        """Mask policies for a study: per calling AET, then per called AET, then node-wide."""
        for aet in (calling_aet, called_aet):
            if aet and aet in self.mask_policy_by_aet:
                return self.mask_policy_by_aet[aet]
        return self.mask_policy


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment (and TOML file), with explicit overrides."""
    return Settings(**overrides)
