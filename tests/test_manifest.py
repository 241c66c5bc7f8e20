"""The checkpoint manifest's digests: any truncation and any flipped byte is caught, wherever it
lands in a file's blocks; manifests written with sha256 are still checked."""

import hashlib
import json

import pytest

from huginn_db import checkpoint as ck
from huginn_db.checkpoint import MANIFEST, digests, verify, write_manifest


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(ck, "BLOCK", 64)  # a few hundred bytes span several blocks


def tag_dir(tmp_path, sizes):
    d = tmp_path / "step1"
    (d / "sub").mkdir(parents=True)
    for i, n in enumerate(sizes):
        (d / ("sub" if i % 2 else "") / f"f{i}.pt").write_bytes(bytes((7 * j + i) % 251 for j in range(n)))
    return d


def test_every_flipped_byte_and_every_cut_is_caught(tmp_path, small_blocks):
    d = tag_dir(tmp_path, [0, 64, 200, 1])
    write_manifest(d, {"step": 1})
    manifest = json.loads((d / MANIFEST).read_text())
    assert manifest["block_bytes"] == 64 and set(manifest["files"]["f2.pt"]) == {"bytes", "xxh3_128"}
    assert verify(d) is None
    for name in ("sub/f1.pt", "f2.pt", "sub/f3.pt"):
        p = d / name
        data = p.read_bytes()
        for i in range(len(data)):  # every position: first, last, each block edge
            for flip in (0x01, 0x80, 0xFF):
                p.write_bytes(data[:i] + bytes([data[i] ^ flip]) + data[i + 1 :])
                assert verify(d) == f"{name} corrupted (xxh3_128 mismatch)", (name, i, flip)
        p.write_bytes(data[:-1])
        assert verify(d) == f"{name} truncated ({len(data) - 1} of {len(data)} bytes)"
        p.write_bytes(data + b"\0")
        assert "truncated" in verify(d)
        p.write_bytes(data)
        assert verify(d) is None
    (d / "sub" / "f1.pt").unlink()
    assert verify(d) == "sub/f1.pt missing"


def test_swapped_blocks_and_a_block_size_change_are_caught(tmp_path, small_blocks):
    d = tag_dir(tmp_path, [256])
    write_manifest(d, {})
    p, data = d / "f0.pt", (d / "f0.pt").read_bytes()
    p.write_bytes(data[64:128] + data[:64] + data[128:])  # same bytes, blocks out of order
    assert "corrupted" in verify(d)
    p.write_bytes(data)
    assert digests([p], 64) != digests([p], 128)  # the manifest's block size is the one checked
    manifest = json.loads((d / MANIFEST).read_text())
    (d / MANIFEST).write_text(json.dumps({**manifest, "block_bytes": 0}))
    assert verify(d) == f"unreadable {MANIFEST}"


def test_a_sha256_manifest_is_still_checked(tmp_path):
    d = tag_dir(tmp_path, [300, 5])
    files = {
        str(p.relative_to(d)): {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in sorted(d.rglob("*.pt"))
    }
    (d / MANIFEST).write_text(json.dumps({"step": 1, "files": files}))
    assert verify(d) is None
    p = d / "f0.pt"
    data = p.read_bytes()
    p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert verify(d) == "f0.pt corrupted (sha256 mismatch)"
