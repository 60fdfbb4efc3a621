"""Where checkpoints are uploaded: an fsspec URL, its options and the retention policy, checked up front.

Nothing here imports fsspec at module level: a callback without storage must not need the extra. The
URL and the options may carry credentials (``s3://KEY:SECRET@bucket``, ``storage_options={"secret": ...}``);
only :attr:`StorageConfig.public` (no userinfo, masked query) is ever stored or printed, and every error
text goes through :attr:`StorageConfig.redact`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..redaction import Redactor, public_url, url_secrets
from ..settings import (
    DEFAULT_STORAGE_PARALLEL,
    Retention,
    Settings,
    check_storage_url,
    parse_count,
    parse_retention,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: Multipart part size and read size: one read of each file feeds both the hash and the upload.
DEFAULT_PART_SIZE = 16 * 2**20
#: ``storage_options`` keys whose values are credentials, masked in any error text.
_SECRET_OPTION_WORDS = ("key", "secret", "token", "password", "credential")


def _secret_values(options: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for name, value in options.items():
        if isinstance(value, Mapping):
            found += _secret_values(value)
        elif isinstance(value, str) and any(word in name.lower() for word in _SECRET_OPTION_WORDS):
            found.append(value)
    return found


@dataclass(frozen=True)
class StorageConfig:
    """An upload destination. ``url`` is any fsspec URL (``s3://bucket/prefix``, ``gs://``, ``file://``)."""

    url: str
    options: Mapping[str, Any] = field(default_factory=dict)
    retention: Retention = "keep"
    #: How many files of one checkpoint are uploaded at once.
    parallel: int = DEFAULT_STORAGE_PARALLEL
    part_size: int = DEFAULT_PART_SIZE

    def __post_init__(self) -> None:
        """The same checks as the settings' (a ``StorageConfig`` may be built directly)."""
        check_storage_url("storage", self.url)
        parse_retention("storage_retention", self.retention)
        parse_count("storage_parallel", self.parallel)
        if self.part_size < 5 * 2**20:
            raise ConfigurationError(
                f"storage part_size={self.part_size} must be at least 5 MiB (S3's minimum)"
            )

    @property
    def provider(self) -> str:
        """The storage provider as the record names it: the URL's scheme (``s3``, ``gs``, ``file``)."""
        return urlsplit(self.url).scheme or "file"

    @property
    def public(self) -> str:
        """The URL without secrets, without a trailing slash: what records, the store and logs show."""
        return public_url(self.url).rstrip("/")

    @property
    def provider_id(self) -> str:
        """A stable id of this destination (``status.storageProviderID``): the same URL, the same id."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, self.public))

    @property
    def secrets(self) -> list[str]:
        """The URL's and the options' credentials: what no text we keep may carry."""
        return [*url_secrets(self.url), *_secret_values(self.options)]

    @property
    def redact(self) -> Redactor:
        return Redactor(self.secrets)

    def remote_dir(self, record_name: str) -> str:
        """Where a checkpoint goes, as a public URL: ``<storage>/<record name>``."""
        return f"{self.public}/{record_name}"

    def filesystem(self) -> tuple[AbstractFileSystem, str]:
        """The fsspec file system and the root path the public URL's remainder is appended to."""
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **dict(self.options))
        return fs, root.rstrip("/")

    def target(self, remote: str) -> str:
        """The file system path of ``remote`` (a public URL under this destination)."""
        _, root = self.filesystem()
        return root + remote[len(self.public) :]

    def holds(self, remote: str) -> bool:
        return remote.startswith(self.public + "/")


def storage_config(settings: Settings) -> StorageConfig | None:
    """The configured destination (the settings' ``storage*``), or None.

    Fails fast when the storage extra or the URL's backend is missing.
    """
    storage = settings.storage
    if storage is None or isinstance(storage, StorageConfig):
        return storage
    if not isinstance(storage, str):
        raise ConfigurationError(
            f"storage must be an fsspec URL or a StorageConfig, not {type(storage).__name__}"
        )
    config = StorageConfig(
        storage,
        dict(settings.storage_options or {}),
        settings.storage_retention,
        parallel=settings.storage_parallel,
    )
    check_backend(config)
    return config


def check_backend(config: StorageConfig) -> None:
    """Raise :class:`ConfigurationError` unless fsspec and the URL's backend can be imported."""
    try:
        import fsspec
    except ImportError:
        raise ConfigurationError("storage= needs fsspec: pip install 'checkpoint-records[storage]'") from None
    try:
        fsspec.get_filesystem_class(config.provider)
    except (ImportError, ValueError) as error:
        raise ConfigurationError(
            f"storage {config.public!r}: no usable fsspec backend for {config.provider}:// "
            f"({config.redact(str(error))}); for s3:// install 'checkpoint-records[storage]'"
        ) from None
