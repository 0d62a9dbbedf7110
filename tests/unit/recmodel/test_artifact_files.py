import io
import tarfile

import pytest

from recmodel.artifact import (
    ArtifactError,
    Manifest,
    pack_artifact,
    read_manifest,
    unpack_artifact,
    verify_artifact,
    write_manifest,
)

FILES = {"user_encoder.onnx": b"onnx-bytes", "items.npz": b"\x00\x01items", "histories.json": b"{}"}


@pytest.fixture
def artifact(tmp_path):
    d = tmp_path / "art"
    d.mkdir()
    for name, data in FILES.items():
        (d / name).write_bytes(data)
    write_manifest(d, Manifest(model_name="m", training_offsets={"t": {0: 5}}, metrics={"hr@10": 0.25}, dim=8, max_len=4))
    return d


def test_manifest_round_trip_hashes_every_file(artifact):
    m = verify_artifact(artifact)
    assert set(m.files) == set(FILES)
    assert m.training_offsets == {"t": {"0": 5}} and m.metrics == {"hr@10": 0.25}
    assert read_manifest(artifact) == m


@pytest.mark.parametrize("name", sorted(FILES))
def test_flipping_one_byte_of_any_file_fails_naming_it(artifact, name):
    path = artifact / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"^{name}: sha256 mismatch"):
        verify_artifact(artifact)


def test_missing_extra_and_tampered_manifest(artifact):
    (artifact / "extra.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="extra.bin: present but not listed"):
        verify_artifact(artifact)
    (artifact / "extra.bin").unlink()
    (artifact / "items.npz").unlink()
    with pytest.raises(ArtifactError, match="items.npz: listed in the manifest but missing"):
        verify_artifact(artifact)
    (artifact / "manifest.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="manifest.json"):
        verify_artifact(artifact)


def test_pack_is_deterministic_and_round_trips(artifact, tmp_path):
    digest1 = pack_artifact(artifact, tmp_path / "a.tar")
    (artifact / "items.npz").touch()  # mtime changes must not change the archive
    digest2 = pack_artifact(artifact, tmp_path / "b.tar")
    assert digest1 == digest2 and len(digest1) == 64
    out = unpack_artifact(tmp_path / "a.tar", tmp_path / "unpacked")
    assert verify_artifact(out) == verify_artifact(artifact)


def _tar_with(tmp_path, member: tarfile.TarInfo, data: bytes = b"") -> str:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return str(path)


@pytest.mark.parametrize(
    "name, kind, reason",
    [
        ("/etc/passwd", tarfile.REGTYPE, "absolute path"),
        ("../escape.txt", tarfile.REGTYPE, "outside the artifact"),
        ("sub/dir.txt", tarfile.REGTYPE, "outside the artifact"),
        ("link", tarfile.SYMTYPE, "regular files"),
        ("hard", tarfile.LNKTYPE, "regular files"),
    ],
)
def test_unsafe_archive_members_are_refused(tmp_path, name, kind, reason):
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "/etc/passwd" if kind != tarfile.REGTYPE else ""
    evil = _tar_with(tmp_path, member, b"x")
    with pytest.raises(ArtifactError, match=reason):
        unpack_artifact(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_compressed_archives_are_refused_however_small(tmp_path):
    # The review's bomb: 20 MiB of zeros in a few KB of xz.
    bomb = tmp_path / "bomb.tar.xz"
    with tarfile.open(bomb, "w:xz") as tar:
        member = tarfile.TarInfo("items.npz")
        member.size = 20 * 1024 * 1024
        tar.addfile(member, io.BytesIO(bytes(member.size)))
    assert bomb.stat().st_size < 16 * 1024
    with pytest.raises(ArtifactError, match="not an uncompressed tar"):
        unpack_artifact(bomb, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_member_and_byte_caps_stop_unpacking_before_writing_past_them(tmp_path):
    many = tmp_path / "many.tar"
    with tarfile.open(many, "w") as tar:
        for i in range(100):
            member = tarfile.TarInfo(f"f{i}")
            member.size = 1
            tar.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(ArtifactError, match="more than 64 members"):
        unpack_artifact(many, tmp_path / "out1")
    assert len(list((tmp_path / "out1").iterdir())) == 64

    big = tmp_path / "big.tar"
    with tarfile.open(big, "w") as tar:
        for name in ("a", "b"):
            member = tarfile.TarInfo(name)
            member.size = 600
            tar.addfile(member, io.BytesIO(b"y" * 600))
    with pytest.raises(ArtifactError, match="more than 1000 bytes"):
        unpack_artifact(big, tmp_path / "out2", max_bytes=1000)
    assert [p.name for p in (tmp_path / "out2").iterdir()] == ["a"]


def test_a_member_listed_twice_is_refused(tmp_path):
    twice = tmp_path / "twice.tar"
    with tarfile.open(twice, "w") as tar:
        for data in (b"first", b"second"):
            member = tarfile.TarInfo("manifest.json")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(ArtifactError, match="twice"):
        unpack_artifact(twice, tmp_path / "out")


@pytest.mark.parametrize("text", [
    "{}", " { } ", '{"u1":[["i1","click",5]]}',
    '{\n "u\\"1" : [ ["i\\u00e9", "view", 7] , ["i2","like",8] ] ,\n "u2": [] }\n',
])
def test_histories_read_a_user_at_a_time_equal_the_json(text):
    import json

    from recmodel.serving import read_histories

    assert read_histories(text) == {u: [tuple(e) for e in h] for u, h in json.loads(text).items()}


@pytest.mark.parametrize("text", ["", "[]", "{", '{"u":[]', '{"u" []}', '{"u":[],}', '{"u":[]} x', '{"u":[["i","click"]]}',
                                  '{1:[]}', '{"u":[["i","click",5]] "v":[]}'])
def test_malformed_histories_are_refused(text):
    from recmodel.serving import read_histories

    with pytest.raises((ValueError, IndexError)):
        read_histories(text)
