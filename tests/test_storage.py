"""barp_ray.storage: local paths and a real S3-compatible server (moto's server mode on loopback)."""

from __future__ import annotations

import pytest
from s3_server import s3_server

from barp_ray import storage


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        yield env


def test_local_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "policy.json"
    storage.write_bytes_atomic(target, b"old")
    storage.write_bytes_atomic(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert [p.name for p in target.parent.iterdir()] == ["policy.json"]  # no temp files left behind


def test_absolute_and_join_keep_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("runs/x") == str(tmp_path / "runs" / "x")
    assert storage.absolute("s3://b/p") == "s3://b/p"
    assert storage.join("s3://b/p/?endpoint_override=h:1", "q", "r.json") == "s3://b/p/q/r.json?endpoint_override=h:1"
    assert not storage.is_uri("file:///tmp/x") and storage.is_uri("gs://b/x")


def test_replace_dir_publishes_in_one_rename(tmp_path):
    target = tmp_path / "shards"
    for content in (b"v1", b"v2"):
        build = tmp_path / f"build-{content.decode()}"
        build.mkdir()
        (build / "part-0.parquet").write_bytes(content)
        storage.replace_dir(build, target)
        assert (target / "part-0.parquet").read_bytes() == content
        assert not build.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_missing_file_names_the_location(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        storage.read_bytes(tmp_path / "nope.json")


def test_s3_round_trip(s3, tmp_path):
    root = f"s3://{s3['BUCKET']}/run1"
    storage.write_bytes_atomic(storage.join(root, "policy.json"), b"{}")
    assert storage.exists(storage.join(root, "policy.json"))
    assert storage.read_bytes(storage.join(root, "policy.json")) == b"{}"
    assert not storage.exists(storage.join(root, "other.json"))

    local = tmp_path / "folder"
    (local / "sub").mkdir(parents=True)
    (local / "a.bin").write_bytes(b"a")
    (local / "sub" / "b.bin").write_bytes(b"bb")
    storage.upload_dir(local, storage.join(root, "copy"))
    assert storage.list_files(storage.join(root, "copy")) == [f"{root}/copy/a.bin", f"{root}/copy/sub/b.bin"]
    back = storage.download_dir(storage.join(root, "copy"), tmp_path / "back")
    assert (back / "sub" / "b.bin").read_bytes() == b"bb" and (back / "a.bin").read_bytes() == b"a"
