"""storage: local paths and s3:// against a real S3 server on loopback (moto), no patching."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from efficientdet import storage


def test_join_and_is_remote(tmp_path):
    assert storage.join("s3://b/prefix/", "a", "/b.txt") == "s3://b/prefix/a/b.txt"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join(str(tmp_path), "a", "b") == str(tmp_path / "a" / "b")
    assert storage.is_remote("s3://b/k") and not storage.is_remote(str(tmp_path))
    assert storage.split_s3("s3://bucket/a/b") == ("bucket", "a/b")
    with pytest.raises(ValueError):
        storage.split_s3("s3:///nobucket")


def test_local_roundtrip_atomic_and_listing(tmp_path):
    target = tmp_path / "d" / "x.bin"
    storage.write_bytes(target, b"hello")
    assert storage.read_bytes(target) == b"hello"
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    storage.write_text(tmp_path / "d" / "sub" / "y.txt", "ü")
    assert storage.exists(tmp_path / "d") and storage.exists(target)
    assert storage.list_files(tmp_path / "d") == sorted([str(target), str(tmp_path / "d/sub/y.txt")])
    assert storage.list_files(str(tmp_path / "d" / "*.bin")) == [str(target)]
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        storage.read_bytes(tmp_path / "nope.bin")


def test_s3_read_write_list_exists(s3_bucket):
    base = f"s3://{s3_bucket}/data"
    for name in ("train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "x.json"):
        storage.write_bytes(storage.join(base, name), name.encode())
    storage.write_bytes(storage.join(base, "sub", "deep.txt"), b"d")
    assert storage.read_bytes(f"{base}/x.json") == b"x.json"
    assert storage.exists(f"{base}/x.json") and storage.exists(base)
    assert not storage.exists(f"{base}/missing") and not storage.exists(f"s3://{s3_bucket}/zz")
    assert storage.list_files(f"{base}/train-*.tfrecord") == [
        f"{base}/train-00000-of-00002.tfrecord", f"{base}/train-00001-of-00002.tfrecord"]
    assert storage.list_files(base) == sorted(
        [f"{base}/train-00000-of-00002.tfrecord", f"{base}/train-00001-of-00002.tfrecord",
         f"{base}/x.json", f"{base}/sub/deep.txt"])
    assert storage.list_files(base, recursive=False) == sorted(
        [f"{base}/train-00000-of-00002.tfrecord", f"{base}/train-00001-of-00002.tfrecord",
         f"{base}/x.json"])
    storage.delete(f"{base}/x.json")
    assert not storage.exists(f"{base}/x.json")


def test_s3_missing_key_names_uri(s3_bucket):
    uri = f"s3://{s3_bucket}/no/such/key.json"
    with pytest.raises(FileNotFoundError, match="no/such/key.json"):
        storage.read_bytes(uri)
    with pytest.raises(FileNotFoundError, match="key.json"):
        storage.download_file(uri, "/tmp/effdet-never-written")
    with pytest.raises(FileNotFoundError, match="no-bucket-here"):
        storage.read_bytes("s3://no-bucket-here/k")


def test_s3_multipart_upload_and_download(s3_bucket, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * 1024 * 1024))  # 3 parts of 5 MiB (S3's minimum part size)
    uri = f"s3://{s3_bucket}/big/big.bin"
    storage.upload_file(src, uri, multipart_threshold=5 * 1024 * 1024,
                        multipart_chunksize=5 * 1024 * 1024)
    head = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).head_object(
        Bucket=s3_bucket, Key="big/big.bin")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # a multipart ETag
    out = storage.download_file(uri, tmp_path / "back.bin")
    assert out.read_bytes() == src.read_bytes()


def test_upload_dir_and_sync_to_local(s3_bucket, tmp_path):
    src = tmp_path / "src"
    (src / "a b").mkdir(parents=True)
    (src / "a b" / "ünï.txt").write_text("1")
    (src / "top.txt").write_text("2")
    uris = storage.upload_dir(src, f"s3://{s3_bucket}/up")
    assert uris == [f"s3://{s3_bucket}/up/a b/ünï.txt", f"s3://{s3_bucket}/up/top.txt"]
    local = storage.sync_to_local(f"s3://{s3_bucket}/up", tmp_path / "cache")
    assert (local / "a b" / "ünï.txt").read_text() == "1"
    assert (local / "top.txt").read_text() == "2"
    one = storage.sync_to_local(f"s3://{s3_bucket}/up/top.txt", tmp_path / "cache2")
    assert one.read_text() == "2"
    assert storage.sync_to_local(src) == src
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        storage.sync_to_local(f"s3://{s3_bucket}/nothing-here", tmp_path / "c3")


def test_endpoint_fallback_to_mlflow_variable(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert storage.endpoint_url() == s3_env
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")
    assert storage.endpoint_url() is None


def test_client_retries_and_no_credentials_in_logs(s3_bucket, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLOGCHECK0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-42")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    client = storage.s3_client()
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 5}
    storage.write_bytes(f"s3://{s3_bucket}/k.txt", b"x")
    assert storage.read_bytes(f"s3://{s3_bucket}/k.txt") == b"x"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"s3://{s3_bucket}/missing.txt")
    text = caplog.text
    assert "AKIDLOGCHECK0001" not in text and "very-secret-value-42" not in text


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "", "a\0b"])
def test_resolve_inside_refuses_paths_leaving_the_root(tmp_path, rel):
    with pytest.raises(storage.UnsafePath, match="leaves"):
        storage.resolve_inside(tmp_path, rel, "file_name")


def test_resolve_inside_keeps_odd_but_inner_names(tmp_path):
    assert storage.resolve_inside(tmp_path, "sub//ünï x.jpg", "f") == tmp_path / "sub" / "ünï x.jpg"


@pytest.mark.parametrize("key", ["ds/../../escaped.txt", "ds//abs/escaped.txt"])
def test_download_never_writes_outside_its_cache(s3_bucket, tmp_path, key):
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    client.put_object(Bucket=s3_bucket, Key="ds/ok.txt", Body=b"ok")
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"evil")
    assert key in [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(storage.UnsafePath, match="object key"):
        storage.sync_to_local(f"s3://{s3_bucket}/ds", cache)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(cache in p.parents for p in written), written
    assert not Path("/abs/escaped.txt").exists()
    with pytest.raises(storage.UnsafePath):
        storage.sync_to_local(f"s3://{s3_bucket}/../escaped.txt", cache)


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        storage.write_bytes(tmp_path / "a.json", b"{}")
        storage.upload_file(tmp_path / "a.json", str(tmp_path / "b.json"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o644
