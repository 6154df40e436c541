"""One way to read and write local paths and ``s3://`` URIs.

Everything that a run persists goes through here, so local disks and S3 (or an S3-compatible
store such as MinIO) behave the same. The S3 endpoint and region come from environment variables
(``S4AL_S3_ENDPOINT``, falling back to ``AWS_ENDPOINT_URL``; ``AWS_REGION``) because they must
reach every Ray worker process identically; the driver exports them into the Ray runtime env.
Credentials are left to pyarrow/boto3's usual AWS sources and never pass through this module.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from functools import lru_cache

import pyarrow.fs as pafs

S3_PREFIX = "s3://"
ENDPOINT_ENV = "S4AL_S3_ENDPOINT"


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_PREFIX)


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def uri_problem(uri: str) -> str | None:
    """What is wrong with a storage URI as written (no network access), or None. Catches what
    would otherwise fail late or write somewhere unexpected: ``s3://`` without a bucket, an empty
    bucket (``s3:///prefix``), ``s3:/x``, a bucket name S3 does not allow."""
    text = str(uri)
    if not text.strip():
        return "is empty"
    if text.lower().startswith("s3:") and not text.startswith(S3_PREFIX):
        return f"{text!r} is not an S3 URI; write s3://bucket/prefix"
    if not is_s3(text):
        return None
    bucket = text[len(S3_PREFIX) :].split("/", 1)[0]
    if not bucket:
        return f"{text!r} names no bucket; write s3://bucket/prefix"
    if not _BUCKET.match(bucket) or ".." in bucket:
        return (
            f"{text!r}: {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, "
            "digits, dots and hyphens)"
        )
    return None


def s3_endpoint() -> str | None:
    return os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    # Short connect timeout: a wrong endpoint should fail in seconds, not hang a run.
    kwargs: dict = {"region": region, "connect_timeout": 5.0, "request_timeout": 60.0}
    if endpoint:
        scheme = "http" if endpoint.startswith("http://") else "https"
        kwargs["endpoint_override"] = endpoint.split("://", 1)[-1]
        kwargs["scheme"] = scheme
        # pyarrow otherwise tries virtual-host addressing, which local S3 servers do not serve.
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def configure_endpoint(endpoint: str | None) -> None:
    """Use ``endpoint`` (an S3-compatible store) for every s3:// URI in this process; the driver
    exports it to Ray workers through the runtime env (see runtime.connect)."""
    if endpoint:
        os.environ[ENDPOINT_ENV] = endpoint


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path to use with it."""
    if is_s3(uri):
        return _s3_filesystem(s3_endpoint(), s3_region()), uri[len(S3_PREFIX) :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers run in other directories); URIs unchanged."""
    return uri if is_s3(uri) else os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def stamp(uri: str) -> str:
    """Size and modification time of a file: changes when it is rewritten (cache keys)."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    return f"{info.size}@{info.mtime_ns}"


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{uri}: no such file") from err


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` so that a crash leaves either the old or the new file, never half of one.

    Local files are written to a temporary name and renamed over the target (atomic on POSIX);
    an S3 PUT only becomes visible once complete, so it is atomic by nature.
    """
    fs, path = filesystem(uri)
    if is_s3(uri):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Files directly under directory ``uri`` whose names end with ``suffix``, sorted, as URIs."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return [join(uri, n) for n in names if n.endswith(suffix)]


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


class StorageError(RuntimeError):
    """Storage cannot be used; the message names the URI, bucket and endpoint."""


def check_writable(uri: str) -> None:
    """Write, read back and delete a probe under ``uri``, so a wrong bucket, endpoint or
    credential fails before any expensive work, with a message that says where."""
    probe = join(uri, ".s4al_probe")
    created = None if is_s3(uri) else _first_missing_dir(absolute(uri))
    try:
        write_bytes(probe, b"ok")
        if read_bytes(probe) != b"ok":
            raise OSError("read back different bytes")
        fs, path = filesystem(probe)
        fs.delete_file(path)
    except Exception as err:  # pyarrow raises OSError subclasses; boto-style errors vary
        raise StorageError(_describe(uri, err)) from err
    finally:
        if created:  # a check leaves no trace: the run creates its directory when it writes
            _remove_empty_dirs(absolute(uri), created)


def _remove_empty_dirs(path: str, outermost: str) -> None:
    """``path`` and its parents up to ``outermost``, each only while empty: a run starting
    beside this one (sweep trials under one new ``trials/``) may have written into them since."""
    while True:
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == outermost or not path.startswith(outermost):
            return
        path = os.path.dirname(path)


def _first_missing_dir(path: str) -> str | None:
    """The outermost directory of ``path`` that does not exist yet (what a write creates)."""
    missing = None
    while path and not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _describe(uri: str, err: Exception) -> str:
    if not is_s3(uri):
        return f"cannot write to {uri}: {err}"
    bucket = uri[len(S3_PREFIX) :].split("/", 1)[0]
    endpoint = s3_endpoint() or "AWS S3 (no endpoint override)"
    return (
        f"cannot write to {uri} (bucket '{bucket}', endpoint {endpoint}, region "
        f"{s3_region()}): {str(err).splitlines()[0]}. Check that the bucket exists, that the "
        f"endpoint is reachable (s3_endpoint=...) and that AWS credentials allow writing."
    )


# Where the AWS SDKs look for credentials, by name (their values never enter a message).
CREDENTIAL_SOURCES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",  # EKS service accounts (IRSA)
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)
_REACHED_BUCKETS: set[tuple[str | None, str]] = set()


def check_node_access(uri: str) -> None:
    """On a Ray worker, before a stage's first read: fail at once, naming this node and what it
    lacks, when it cannot reach ``uri``'s bucket. Each node has credentials of its own (its
    role, service account or environment); one without them would otherwise fail deep inside
    pyarrow with a message that names neither. Checked once per bucket and process."""
    if not is_s3(uri):
        return
    bucket = uri[len(S3_PREFIX) :].split("/", 1)[0]
    key = (s3_endpoint(), bucket)
    if key in _REACHED_BUCKETS:
        return
    fs, path = filesystem(uri)
    try:
        fs.get_file_info(path)
    except OSError as err:
        raise StorageError(_node_problem(uri, bucket, err)) from None
    _REACHED_BUCKETS.add(key)


def _node_problem(uri: str, bucket: str, err: Exception) -> str:
    import ray

    node = "this process"
    if ray.is_initialized():
        node_id = ray.get_runtime_context().get_node_id()[:12]
        node = f"Ray node {node_id} ({ray.util.get_node_ip_address()})"
    present = [name for name in CREDENTIAL_SOURCES if os.environ.get(name)]
    if os.path.exists(os.path.expanduser("~/.aws/credentials")):
        present.append("~/.aws/credentials")
    has = ", ".join(present) if present else "none of " + ", ".join(CREDENTIAL_SOURCES)
    return (
        f"{node} cannot read {uri} (bucket '{bucket}', endpoint "
        f"{s3_endpoint() or 'AWS S3 (no endpoint override)'}, region {s3_region()}): "
        f"{str(err).splitlines()[0]}. Every node needs the endpoint (s3_endpoint=..., which the "
        f"driver passes to its workers) and credentials of its own; this node's environment "
        f"has {has} (else the instance role). Give the node an instance profile or service "
        "account role (IRSA), or set AWS_PROFILE / AWS_ACCESS_KEY_ID before `ray start` there"
    )


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train/Tune ``RunConfig``.

    With an explicit filesystem object Ray wants the path without the ``s3://`` scheme.
    """
    if is_s3(uri):
        fs, path = filesystem(uri)
        return path, fs
    return filesystem(uri)[1], None
