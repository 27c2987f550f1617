"""Where lists and videos live: a local path, or a URI that pyarrow.fs resolves.

``s3://bucket/prefix`` goes to pyarrow's S3 filesystem with :class:`StorageOptions`
(config section ``harness.storage``): an endpoint for S3-compatible stores (Huawei OBS,
MinIO, Ceph RGW), the region, path-style or virtual-host addressing, timeouts. Any other
scheme (``gs://``, ``hdfs://``, ...) goes to ``pyarrow.fs.FileSystem.from_uri`` as it is.

Credentials are never options: the AWS SDK finds them on each node (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``~/.aws``, an instance role), so they are
not in the config, run.json, the report or a log line. The endpoint and the region are not
secrets: :meth:`StorageOptions.resolved` takes them from the driver's environment when the
config does not give them, so every decode worker, on any node, uses the same store.

A video, a local file or an object alike, is read whole into memory (bounded by
``max_video_mb``) and decoded from there (harness.data.decode), so reading and decoding fail
separately. Read errors become failure reasons (harness.reasons): ``missing`` (no such file or
object), ``permission denied``, ``too large`` (over the bound), and ``read error`` for anything
else (EIO of a flaky disk or NFS mount, ESTALE, a store that does not answer) after
``attempts`` tries with exponential backoff; a rerun retries those.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from harness.errors import ConfigError
from harness.reasons import Reason, VideoError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` (object storage, HDFS, ...), False for a local path."""
    return isinstance(location, str) and bool(_URI.match(location))


def join(prefix: str | Path, relative: str) -> str:
    """``prefix/relative`` for a folder or a URI prefix ('' prefix: ``relative`` itself)."""
    if not prefix:
        return relative
    if is_uri(prefix):
        return str(prefix).rstrip("/") + "/" + relative.lstrip("/")
    return os.path.join(str(prefix), relative)


@dataclass(frozen=True)
class StorageOptions:
    """How videos and lists are read from object storage (config section ``harness.storage``)."""

    endpoint_url: str | None = None     # e.g. https://obs.cn-north-4.myhuaweicloud.com; default $AWS_ENDPOINT_URL
    region: str | None = None           # default $AWS_REGION / $AWS_DEFAULT_REGION, else the SDK's
    virtual_addressing: bool = False    # bucket.host/key instead of host/bucket/key (path style)
    max_video_mb: float = 1024.0        # larger objects fail 'too large' instead of filling memory
    attempts: int = 3                   # tries of a read before 'read error'
    backoff_s: float = 0.5              # wait before the 2nd try, doubling each try
    connect_timeout: float = 10.0       # s

    def resolved(self) -> "StorageOptions":
        """These options with the endpoint and region of this process's environment filled
        in (the driver's, so that decode workers on other nodes use the same store)."""
        env = os.environ
        return replace(self,
                       endpoint_url=self.endpoint_url or env.get("AWS_ENDPOINT_URL_S3")
                       or env.get("AWS_ENDPOINT_URL") or None,
                       region=self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None)

    def check(self) -> None:
        if not (isinstance(self.max_video_mb, (int, float)) and self.max_video_mb > 0):
            raise ConfigError(f"config key 'harness.storage.max_video_mb' is {self.max_video_mb!r};"
                              " use a positive number of MB")
        if not (isinstance(self.attempts, int) and self.attempts >= 1):
            raise ConfigError(f"config key 'harness.storage.attempts' is {self.attempts!r}; use 1 or more")
        for key in ("backoff_s", "connect_timeout"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ConfigError(f"config key 'harness.storage.{key}' is {value!r}; use seconds >= 0")
        if self.endpoint_url and not re.match(r"^https?://[^/]+/?$", self.endpoint_url):
            raise ConfigError(f"the storage endpoint {self.endpoint_url!r} is not http(s)://host[:port]"
                              " (harness.storage.endpoint_url or $AWS_ENDPOINT_URL)")


class StorageError(VideoError):
    """A list or video cannot be read; ``.reason``: a :class:`Reason` of reading (missing,
    permission denied, too large, read error)."""


class Blob(NamedTuple):
    """A video read into memory: its URI (for messages) and its bytes."""

    name: str
    data: bytes


def source_of(video: "str | Blob"):
    """What FFmpeg / decord open: a local path as is, a Blob as a fresh in-memory file."""
    import io

    return io.BytesIO(video.data) if isinstance(video, Blob) else str(video)


def name_of(video: "str | Blob") -> str:
    return video.name if isinstance(video, Blob) else str(video)


# One S3 client per process and set of options (a client holds its connection pool).
_S3_CLIENTS: dict = {}


def _filesystem(uri: str, options: StorageOptions):
    """``(pyarrow filesystem, path in it)`` for a URI."""
    import pyarrow.fs as pafs

    scheme, rest = uri.split("://", 1)
    if scheme.lower() != "s3":
        return pafs.FileSystem.from_uri(uri)
    fs = _S3_CLIENTS.get(options)
    if fs is None:
        endpoint = scheme_of = None
        if options.endpoint_url:
            scheme_of, endpoint = options.endpoint_url.rstrip("/").split("://", 1)
        fs = _S3_CLIENTS[options] = pafs.S3FileSystem(
            endpoint_override=endpoint, scheme=scheme_of, region=options.region,
            force_virtual_addressing=options.virtual_addressing,
            connect_timeout=options.connect_timeout,
            # our own tries (attempts, backoff_s) are the retry policy: one per try here
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    return fs, rest.strip("/")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def _tried(location: str, options: StorageOptions, action):
    """``action()`` with ``options.attempts`` tries and exponential backoff. A file or object
    that does not exist is ``missing`` and one the reader may not read ``permission denied``, at
    once; any other failure (EIO, ESTALE, a store that does not answer) is ``read error`` after
    the tries."""
    last: BaseException | None = None
    for attempt in range(options.attempts):
        if attempt:
            time.sleep(options.backoff_s * 2 ** (attempt - 1))
        try:
            return action()
        except StorageError:
            raise
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError(location, Reason.MISSING) from None
        except IsADirectoryError:
            raise StorageError(location, Reason.MISSING, "a folder, not a file") from None
        except PermissionError as exc:
            raise StorageError(location, Reason.PERMISSION_DENIED, _short(exc)) from None
        except Exception as exc:   # OSError from the disk or the SDK, ArrowInvalid for a bad URI
            last = exc
    raise StorageError(location, Reason.READ_ERROR, _short(last)) from None


def _on_store(location: str, options: StorageOptions, action):
    """``action(fs, path)`` on the filesystem of a URI, with :func:`_tried`'s tries."""
    def call():
        fs, path = _filesystem(location, options)
        return action(fs, path)

    return _tried(location, options, call)


def read_bytes(location: str | Path, options: StorageOptions | None = None,
               limit: int | None = None) -> bytes:
    """A local file's or an object's bytes (one mechanism, the same tries for both);
    ``limit``: refuse larger ones ('too large') before reading them."""
    options = options or StorageOptions()
    location = str(location)

    def check(size: int) -> None:
        if limit is not None and size > limit:
            raise StorageError(location, Reason.TOO_LARGE, f"{size / 2**20:.1f} MB, more than"
                               f" harness.storage.max_video_mb = {limit / 2**20:g}")

    if not is_uri(location):
        def read_file() -> bytes:
            with open(location, "rb") as f:
                check(os.fstat(f.fileno()).st_size)
                return f.read()

        return _tried(location, options, read_file)

    def read(fs, path):
        with fs.open_input_file(path) as f:
            check(f.size())
            return f.read()

    return _on_store(location, options, read)


def fetch(location: str, options: StorageOptions) -> Blob:
    """A video (a local file or an object) in memory, bounded by ``options.max_video_mb``."""
    return Blob(location, read_bytes(location, options, limit=int(options.max_video_mb * 2**20)))


def kind(location: str | Path, options: StorageOptions | None = None) -> str:
    """'file', 'directory' or 'missing' (an object-store prefix with objects under it is a
    directory); StorageError when the store does not answer or refuses (credentials)."""
    location = str(location)
    if not is_uri(location):
        path = Path(location)
        return "directory" if path.is_dir() else "file" if path.exists() else "missing"
    import pyarrow.fs as pafs

    info = _on_store(location, options or StorageOptions(), lambda fs, path: fs.get_file_info(path))
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "directory"}.get(info.type, "missing")


def list_files(root: str | Path, options: StorageOptions | None = None) -> list[str]:
    """Every file under ``root`` (recursively), as sorted posix paths relative to it."""
    root = str(root)
    if not is_uri(root):
        found = []
        for dirpath, _, files in os.walk(root):
            found += [Path(dirpath, name).relative_to(root).as_posix() for name in files]
        return sorted(found)
    import pyarrow.fs as pafs

    def walk(fs, path):
        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        base = path.rstrip("/") + "/"
        return [info.path[len(base):] for info in fs.get_file_info(selector)
                if info.type == pafs.FileType.File and info.path.startswith(base)]

    return sorted(_on_store(root, options or StorageOptions(), walk))
