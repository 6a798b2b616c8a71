"""Object storage (``s3://``, ``gs://``, ``http(s)://``) for every data path: the one seam between declip and fsspec.

Local paths never come here: the data sources keep their ``os.pread`` fast path and ask :func:`is_remote` first.
A remote path goes through these few functions, so one place decides how a URL is opened, how errors read and
how connections are reused:

- one fsspec filesystem per protocol and process (:func:`filesystem`): a data-loader worker reuses its
  connections for every sample, and a forked worker builds its own (a client of another process is not reused);
- :func:`read_range` reads one sample (a manifest line, a shard member span) with one ranged GET;
- :func:`read_object` reads a whole object (an image) after checking its size against a byte cap, so a huge
  object is refused before any byte of it is fetched;
- :func:`identity` names the object's version (ETag, else size + modification time): what a cached line index is
  keyed on;
- credentials and endpoints come from the standard places (``AWS_*`` variables, ``~/.aws``, ``AWS_ENDPOINT_URL``,
  ``FSSPEC_S3_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's config): nothing here reads or logs them.

Errors: a missing object is :class:`FileNotFoundError`, a denied request :class:`PermissionError` (both with a
one-line message; the data layer skips a sample as ``missing_file`` or stops with a :class:`DataError`); what no
retry fixes (no such bucket, no credentials, the s3fs/gcsfs extra not installed) is a :class:`DataError`; any
other failure (a connection that failed after the client's retries) an :class:`OSError` naming the URL.
A leaf module: it imports only :mod:`declip.errors`, so every layer may use it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import threading
from pathlib import Path
from typing import IO

from .errors import DataError

SCHEMES = ("s3", "gs", "gcs", "http", "https")
EXTRAS = {"s3": "declip[s3] (s3fs)", "gs": "declip[gcs] (gcsfs)", "gcs": "declip[gcs] (gcsfs)",
          "http": "aiohttp", "https": "aiohttp"}
log = logging.getLogger(__name__)
_filesystems: dict[tuple[int, str], object] = {}
_warned: dict[str, bool] = {}
_lock = threading.Lock()


def is_remote(path) -> bool:
    """True for a URL this module reads (``s3://``, ``gs://``, ``gcs://``, ``http://``, ``https://``)."""
    text = str(path)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def location(path):
    """A URL stays a string (``Path`` would fold the ``//`` of ``s3://``); a local path becomes a ``Path``."""
    return str(path) if is_remote(path) else Path(path)


def scheme(url: str) -> str:
    return str(url).partition("://")[0].lower()


def join(root: str, name: str) -> str:
    """``root`` + ``/`` + ``name`` for a URL root (``Path`` would fold the ``//`` of ``s3://``)."""
    return f"{str(root).rstrip('/')}/{name.lstrip('/')}"


def filesystem(url: str):
    """The fsspec filesystem for ``url``'s protocol in this process, created once and reused (its connection
    pool with it). Listing caches are off: a data set uploaded while a run lists it must not look empty."""
    proto = scheme(url)
    key = (os.getpid(), proto)
    fs = _filesystems.get(key)
    if fs is None:
        with _lock:
            fs = _filesystems.get(key)
            if fs is None:
                fs = _filesystems[key] = _create(proto)
    return fs


def _create(proto: str):
    try:
        import fsspec

        options = {"skip_instance_cache": True}
        if proto in ("s3", "gs", "gcs"):
            options["use_listings_cache"] = False
        return fsspec.filesystem(proto, **options)
    except ImportError as e:
        raise DataError(f"reading {proto}:// URLs needs {EXTRAS.get(proto, 'an fsspec backend')}: "
                        f"pip install '{EXTRAS.get(proto, 'fsspec').split(' ')[0]}' ({e})") from None


def reset() -> None:
    """Forget this process's filesystems (tests that start a new server; after changing the endpoint)."""
    with _lock:
        _filesystems.clear()


def bucket(url: str) -> str:
    """The bucket (or host) of ``url``: ``s3://b/k`` -> ``b``."""
    return str(url).partition("://")[2].split("/", 1)[0]


def _fail(e: BaseException, url: str) -> BaseException:
    """``e`` (raised by fsspec / s3fs / gcsfs / aiohttp) as one of: FileNotFoundError, PermissionError, DataError,
    each with a one-line message naming ``url``. The library's own text is kept short (no response dumps)."""
    if isinstance(e, (DataError, FileNotFoundError, PermissionError)) and str(e).startswith(f"{url}: "):
        return e
    text = " ".join(str(e).split())[:200]
    if isinstance(e, FileNotFoundError) or "NoSuchKey" in text or "NoSuchBucket" in text:
        if "bucket does not exist" in text or "NoSuchBucket" in text:
            return DataError(f"{url}: bucket '{bucket(url)}' does not exist (check the URL, and AWS_ENDPOINT_URL "
                             "for an S3-compatible server)")
        return FileNotFoundError(f"{url}: no such object")
    if isinstance(e, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return PermissionError(f"{url}: access denied ({text}); check the credentials (AWS_PROFILE / "
                               "AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS) and the bucket's policy")
    if "credential" in text.lower():
        return DataError(f"{url}: no usable credentials ({text}); set AWS_PROFILE or AWS_ACCESS_KEY_ID / "
                         "AWS_SECRET_ACCESS_KEY (gs://: GOOGLE_APPLICATION_CREDENTIALS)")
    return OSError(f"{url}: {type(e).__name__}: {text}")


def _call(url: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - every backend error leaves here as one of the types above
        raise _fail(e, url) from None


def info(url: str) -> dict:
    """fsspec's ``info`` (``size``, ``type``, ETag / LastModified where the store has them); errors as above."""
    fs = filesystem(url)
    return _call(url, fs.info, url)


def size(url: str) -> int:
    return int(info(url)["size"])


def identity(url: str, meta: dict | None = None) -> str:
    """The object's version as text: its ETag (or GCS generation) when the store gives one, else size and
    modification time. A rewritten object gets a new identity, so an index keyed on it is rebuilt."""
    meta = meta if meta is not None else info(url)
    for key in ("ETag", "etag", "generation", "md5Hash"):
        if meta.get(key):
            return f"{key}={str(meta[key]).strip(chr(34))};size={meta.get('size')}"
    mtime = next((meta[k] for k in ("LastModified", "updated", "mtime", "last_modified") if meta.get(k)), "")
    return f"size={meta.get('size')};mtime={mtime}"


def identity_key(ident: str) -> int:
    """``ident`` as one signed 64-bit number (what the index cache's header stores)."""
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "little", signed=True)


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of ``url`` with one ranged GET. An http(s) server that ignores the Range header
    sends the whole object: the range is then cut from it (correct, but warned about once: every read downloads
    the whole object)."""
    fs = filesystem(url)
    data = _call(url, fs.cat_file, url, start=start, end=end)
    if len(data) > end - start:
        if not _warned.get("range"):
            _warned["range"] = True
            log.warning("%s: the server ignores Range requests; each read downloads the whole object", url)
        data = data[start:end]
    return data


def read_object(url: str, max_bytes: int | None = None) -> bytes:
    """The whole object; an object over ``max_bytes`` raises :class:`ObjectTooLarge` from its size alone (one
    HEAD), before any of it is fetched."""
    meta = info(url)
    if meta.get("type") == "directory":
        raise FileNotFoundError(f"{url}: a folder (prefix), not an object")
    n = int(meta.get("size") or 0)
    if max_bytes is not None and n > max_bytes:
        raise ObjectTooLarge(url, n, max_bytes)
    return read_range(url, 0, n) if n else b""


class ObjectTooLarge(ValueError):
    """An object (or file) larger than the byte cap it is read under."""

    def __init__(self, url: str, size: int, cap: int):
        super().__init__(f"{url}: {size / 2**20:.1f} MiB > the cap of {cap / 2**20:g} MiB")
        self.url, self.size, self.cap = url, size, cap


def open_file(url: str, block_size: int = 1 << 20) -> IO[bytes]:
    """A seekable binary file object over ``url`` (sequential scans: a line or tar index); ``block_size`` bytes are
    fetched per request and read ahead."""
    fs = filesystem(url)
    return _call(url, fs.open, url, "rb", block_size=block_size, cache_type="readahead")


def exists(url: str) -> bool:
    return bool(_call(url, filesystem(url).exists, url))


def isdir(url: str) -> bool:
    return bool(_call(url, filesystem(url).isdir, url))


def glob(url: str) -> list[str]:
    """Objects matching ``url``'s pattern, as full URLs, sorted."""
    fs = filesystem(url)
    found = _call(url, fs.glob, url)
    return sorted(fs.unstrip_protocol(p) for p in found)


def require_bucket(url: str, what: str) -> None:
    """Stop with one line unless ``url``'s bucket exists and answers (the root of a data set: otherwise every
    sample would be skipped as a missing file). http(s) has no bucket to check."""
    if scheme(url) in ("http", "https"):
        return
    top = f"{scheme(url)}://{bucket(url)}"
    try:
        ok = _call(top, filesystem(url).exists, top)
    except PermissionError as e:
        raise DataError(f"{what}: {e}") from None
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{what}: {e}") from None
    if not ok:
        raise DataError(f"{what}: bucket '{bucket(url)}' of {url} does not exist (check the URL, and "
                        "AWS_ENDPOINT_URL for an S3-compatible server)")


def require_object(url: str, what: str) -> dict:
    """``info(url)`` of a file a run cannot start without (a manifest, a shard), or one :class:`DataError` line."""
    require_bucket(url, what)
    try:
        meta = info(url)
    except FileNotFoundError:
        raise DataError(f"{what} not found: {url}") from None
    except PermissionError as e:
        raise DataError(f"{what}: {e}") from None
    except OSError as e:
        raise DataError(f"{what}: {e}") from None
    if meta.get("type") == "directory":
        raise DataError(f"{what} {url} is a folder (prefix), not a file")
    return meta


def basename(url: str) -> str:
    return posixpath.basename(str(url).rstrip("/"))
