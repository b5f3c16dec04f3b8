"""One place for URIs: local paths and ``s3://bucket/key``, read the same way everywhere.

S3 goes through boto3 with the endpoint from ``AWS_ENDPOINT_URL`` (else
``MLFLOW_S3_ENDPOINT_URL``, else AWS), so the same code talks to AWS, MinIO, SeaweedFS (the KFP
object store) and moto. Transient errors are retried by botocore (standard mode by default,
``AWS_RETRY_MODE=adaptive`` to throttle), large files go up in multipart chunks. Credentials are
left to boto3's own chain and never logged.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
_GLOB_CHARS = "*?["
# Their DEBUG output carries signed request headers (access key id); `effdet -v` must not.
_QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


class StorageError(Exception):
    """A storage operation failed; the message names the URI."""


class UnsafePath(StorageError):
    """An object key or relative path that would land outside its root (``..``, absolute)."""


def resolve_inside(root: str | os.PathLike, rel: str, what: str) -> Path:
    """``root/rel``, refused when ``rel`` could leave ``root``: keys and file names come from
    untrusted listings and JSON, so absolute paths, ``..`` components and NUL are errors.
    The check is lexical (symlinks inside the root are the owner's choice)."""
    rel = str(rel)
    pure = PurePosixPath(rel)
    if not rel or "\0" in rel or pure.is_absolute() or ".." in pure.parts:
        raise UnsafePath(f"{what} {rel!r}: leaves {root} (absolute or '..' path)")
    return Path(root, *pure.parts)


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def is_remote(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_remote(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    rest = str(uri)[len(S3_SCHEME):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri}")
    return bucket, key


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI (always ``/`` for S3)."""
    uri = str(uri)
    if is_remote(uri):
        out = uri.rstrip("/")
        for part in parts:
            out = f"{out}/{str(part).strip('/')}"
        return out
    return str(Path(uri, *parts))


def basename(uri: str | os.PathLike) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, retry_mode: str, max_attempts: int, pid: int,
            credentials_key: str):
    import boto3
    from botocore.config import Config

    del pid, credentials_key  # cache key only: new process or new credentials, new client
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    config = Config(
        retries={"mode": retry_mode, "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": os.environ.get("EFFDET_S3_ADDRESSING_STYLE", "path")},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def s3_client():
    """A boto3 S3 client for the current environment (cached per endpoint and process)."""
    mode = os.environ.get("AWS_RETRY_MODE", "standard")
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", "8"))
    creds = "\0".join(os.environ.get(k, "") for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"))
    creds_key = hashlib.sha256(creds.encode()).hexdigest()
    return _client(endpoint_url(), mode, attempts, os.getpid(), creds_key)


def _transfer_config(multipart_threshold: int | None = None,
                     multipart_chunksize: int | None = None):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=multipart_threshold or MULTIPART_THRESHOLD,
        multipart_chunksize=multipart_chunksize or MULTIPART_CHUNKSIZE,
        max_concurrency=4,
    )


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")
    return False


def _wrap(uri: str, exc: Exception) -> Exception:
    if _is_missing(exc):
        return FileNotFoundError(f"{uri}: no such object")
    return StorageError(f"{uri}: {exc}")


# --- bytes -------------------------------------------------------------------------------

def read_bytes(uri: str | os.PathLike) -> bytes:
    uri = str(uri)
    if not is_remote(uri):
        path = Path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"{uri}: no such file")
        return path.read_bytes()
    bucket, key = split_s3(uri)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise _wrap(uri, exc) from exc


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole object; local writes go to a temp file then rename (never half-written)."""
    uri = str(uri)
    if not is_remote(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, _file_mode())  # mkstemp makes 0600; readers of datasets need more
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    bucket, key = split_s3(uri)
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
    except Exception as exc:
        raise _wrap(uri, exc) from exc


def write_text(uri: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def exists(uri: str | os.PathLike) -> bool:
    """True for an existing file/object, or a local directory / non-empty S3 prefix."""
    uri = str(uri)
    if not is_remote(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    client = s3_client()
    if key:
        try:
            client.head_object(Bucket=bucket, Key=key)
            return True
        except Exception as exc:
            if not _is_missing(exc):
                raise _wrap(uri, exc) from exc
    prefix = key.rstrip("/") + "/" if key else ""
    try:
        resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as exc:
        if _is_missing(exc):
            return False
        raise _wrap(uri, exc) from exc
    return resp.get("KeyCount", 0) > 0


def delete(uri: str | os.PathLike) -> None:
    """Remove one file/object (missing is fine)."""
    uri = str(uri)
    if not is_remote(uri):
        Path(uri).unlink(missing_ok=True)
        return
    bucket, key = split_s3(uri)
    try:
        s3_client().delete_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if not _is_missing(exc):
            raise _wrap(uri, exc) from exc


# --- listing -----------------------------------------------------------------------------

def _iter_s3_keys(bucket: str, prefix: str):
    paginator = s3_client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def list_files(uri: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Sorted files under a directory/prefix, or matching a glob (``.../train-*.tfrecord``).

    A glob may only use wildcards in its last path component; ``**`` is not needed because
    a directory is listed recursively.
    """
    uri = str(uri)
    head, _, last = uri.rstrip("/").rpartition("/")
    pattern = last if any(c in last for c in _GLOB_CHARS) else None
    base = head if pattern else uri.rstrip("/")
    if not is_remote(uri):
        root = Path(base)
        if pattern:
            return sorted(str(p) for p in root.glob(pattern) if p.is_file())
        if root.is_file():
            return [str(root)]
        walker = root.rglob("*") if recursive else root.glob("*")
        return sorted(str(p) for p in walker if p.is_file())
    bucket, key = split_s3(base)
    prefix = key + "/" if key else ""
    try:
        keys = list(_iter_s3_keys(bucket, prefix))
    except Exception as exc:
        raise _wrap(uri, exc) from exc
    out = []
    for k in keys:
        rel = k[len(prefix):]
        if not rel or k.endswith("/"):
            continue
        if pattern:
            if "/" in rel or not fnmatch.fnmatchcase(rel, pattern):
                continue
        elif not recursive and "/" in rel:
            continue
        out.append(f"{S3_SCHEME}{bucket}/{k}")
    if not pattern and not out and key:  # maybe a single object
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if not _is_missing(exc):
                raise _wrap(uri, exc) from exc
        else:
            return [uri]
    return sorted(out)


# --- files -------------------------------------------------------------------------------

def upload_file(local_path: str | os.PathLike, uri: str, *,
                multipart_threshold: int | None = None,
                multipart_chunksize: int | None = None) -> None:
    """Copy one local file to a URI; above the threshold S3 uploads go multipart."""
    local_path = Path(local_path)
    if not local_path.is_file():
        raise FileNotFoundError(f"{local_path}: no such file")
    uri = str(uri)
    if not is_remote(uri):
        dst = Path(uri)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, dst)
        return
    bucket, key = split_s3(uri)
    try:
        s3_client().upload_file(
            str(local_path), bucket, key,
            Config=_transfer_config(multipart_threshold, multipart_chunksize))
    except Exception as exc:
        raise _wrap(uri, exc) from exc


def download_file(uri: str, local_path: str | os.PathLike) -> Path:
    """Copy one file/object to a local path (temp + rename); returns the path."""
    uri = str(uri)
    local_path = Path(local_path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = local_path.with_name(f".{local_path.name}.{os.getpid()}.tmp")
    try:
        if not is_remote(uri):
            if not Path(uri).is_file():
                raise FileNotFoundError(f"{uri}: no such file")
            shutil.copyfile(uri, tmp)
        else:
            bucket, key = split_s3(uri)
            try:
                s3_client().download_file(bucket, key, str(tmp), Config=_transfer_config())
            except Exception as exc:
                raise _wrap(uri, exc) from exc
        os.replace(tmp, local_path)
    finally:
        tmp.unlink(missing_ok=True)
    return local_path


def sync_to_local(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path holding ``uri``: local URIs come back as they are; S3 objects or prefixes
    are downloaded under ``cache_dir`` (skipping files already there with the same size)."""
    uri = str(uri)
    if not is_remote(uri):
        path = Path(uri)
        if not path.exists():
            raise FileNotFoundError(f"{uri}: no such file or directory")
        return path
    bucket, key = split_s3(uri)
    cache = Path(cache_dir or tempfile.mkdtemp(prefix="effdet-s3-"))
    target = resolve_inside(cache, f"{bucket}/{key}".rstrip("/"), uri)
    client = s3_client()
    prefix = key.rstrip("/") + "/" if key else ""
    try:
        if key:
            try:
                head = client.head_object(Bucket=bucket, Key=key.rstrip("/"))
            except Exception as exc:
                if not _is_missing(exc):
                    raise
                head = None
            if head is not None:
                if not (target.is_file() and target.stat().st_size == head["ContentLength"]):
                    download_file(uri, target)
                return target
        found = False
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or obj["Key"].endswith("/"):
                    continue
                found = True
                dst = resolve_inside(target, rel, f"{uri}: object key")
                if dst.is_file() and dst.stat().st_size == obj["Size"]:
                    continue
                download_file(f"{S3_SCHEME}{bucket}/{obj['Key']}", dst)
    except (FileNotFoundError, StorageError):
        raise
    except Exception as exc:
        raise _wrap(uri, exc) from exc
    if not found:
        raise FileNotFoundError(f"{uri}: no such object or prefix")
    return target


def upload_dir(local_dir: str | os.PathLike, uri: str, **transfer) -> list[str]:
    """Copy every file under ``local_dir`` to ``uri`` keeping relative paths; returns URIs."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"{local_dir}: no such directory")
    out = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        dst = join(uri, *path.relative_to(local_dir).parts)
        upload_file(path, dst, **transfer)
        out.append(dst)
    return out
