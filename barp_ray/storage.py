"""Where files live: local folders and object-storage URIs (s3://, gs://) through pyarrow filesystems.

Every read or write of shards, embedding caches, checkpoints, policies and decision logs goes through these
functions, so a location string can be a local path or a URI everywhere. S3-compatible servers (MinIO, moto,
...) are reached with the standard `AWS_ENDPOINT_URL` variable (pyarrow reads it) or a URI query such as
`s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http`.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "abfss://")


def is_uri(location: str | os.PathLike) -> bool:
    """True for an object-storage URI (s3://, gs://, ...); False for a local path or file:// URI."""
    return str(location).startswith(REMOTE_SCHEMES)


def absolute(location: str | os.PathLike) -> str:
    """A URI unchanged; a local path (or file:// URI) made absolute against the current directory."""
    text = str(location)
    if is_uri(text):
        return text
    return str(Path(text.removeprefix("file://")).expanduser().resolve())


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI pyarrow understands."""
    text = str(location)
    if is_uri(text):
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), absolute(text)


def join(location: str | os.PathLike, *parts: str) -> str:
    """`location/part/...` for a path or a URI (keeps a URI's query string at the end)."""
    text = str(location)
    base, sep, query = text.partition("?")
    joined = "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return joined + (sep + query if sep else "")


def exists(location: str | os.PathLike) -> bool:
    """Whether a file or folder exists at `location`."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole content of one file; FileNotFoundError names the location when it is missing."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{location}: no such file")
    with fs.open_input_stream(path) as src:
        return src.read()


def write_bytes_atomic(location: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see the old content or the new one, never a torn one.

    Local: a temp file in the same folder, fsync, then `os.replace`. Object stores: one PUT, which S3 and GCS
    make visible atomically.
    """
    fs, path = resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):
        folder = Path(path).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{Path(path).name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def list_files(location: str | os.PathLike, suffix: str = "") -> list[str]:
    """Full locations (same style as `location`) of the files directly or recursively under a folder."""
    fs, root = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
    names = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))
    return [join(location, name[len(root) :]) for name in names]


def upload_dir(local_dir: str | os.PathLike, location: str | os.PathLike) -> str:
    """Copy a local folder to `location` (a path or URI), file by file, each written atomically."""
    local_dir = Path(local_dir)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        write_bytes_atomic(join(location, file.relative_to(local_dir).as_posix()), file.read_bytes())
    return str(location)


def download_dir(location: str | os.PathLike, local_dir: str | os.PathLike) -> Path:
    """Copy the files under `location` into a local folder and return it."""
    local_dir = Path(local_dir)
    fs, root = resolve(location)
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        target = local_dir / info.path[len(root) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src:
            target.write_bytes(src.read())
    return local_dir


def replace_dir(local_dir: str | os.PathLike, location: str | os.PathLike) -> None:
    """Publish a folder built in `local_dir` at the local path `location` in one rename.

    The old folder (if any) is renamed aside first and removed after, so readers never see half a folder.
    For URIs the files are uploaded one by one (object stores have no folder rename).
    """
    if is_uri(location):
        upload_dir(local_dir, location)
        return
    import shutil

    target = Path(absolute(location))
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        target.rename(aside)
    Path(local_dir).rename(target)
    shutil.rmtree(aside, ignore_errors=True)
