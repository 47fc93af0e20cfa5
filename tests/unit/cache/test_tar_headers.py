"""Headers a hostile or careless archive carries: pax records that do not move forward (they
looped for ever, holding the key and store locks), numbers int() takes but tar does not (a
sign, '_', '0o'), and whole-archive compression (read as a bad header before)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import signal
import tarfile

import pytest
from cachetest_helpers import legacy_archive, random_layer
from runnerkeep.cache.store import Store
from runnerkeep.cache.tar_reader import ArchiveError, read_archive_stream


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "store"), key_file=None)
    s.ensure()
    return s


@pytest.fixture
def bounded():
    """A parse that loops is a failure, not a hang of the test run."""

    def hang(*_args):
        raise TimeoutError("the parse did not end within 5 s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def member(name: str, typeflag: bytes, data: bytes, size: int | None = None) -> bytes:
    """A header (GNU format: base-256 sizes past 8 GiB) and ``data``, padded."""
    info = tarfile.TarInfo(name)
    info.type = typeflag
    info.size = len(data) if size is None else size
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def with_pax(records: bytes) -> bytes:
    end = b"\0" * 1024
    return member("pax", tarfile.XHDTYPE, records) + member("f", tarfile.REGTYPE, b"abc") + end


def parse(store: Store, data: bytes):
    with store.temp_area() as area:
        return read_archive_stream(io.BytesIO(data), store, area)


@pytest.mark.parametrize(
    "records",
    [
        b"0 path=x\n",  # length 0: the parser never moved on
        b"3 path=x\n",  # length inside its own digits
        b"12path=abcdefg\n",  # no space after the length
        b"zz path=x\n",  # not a number
        b"99 path=x\n",  # past the header's end
        b"10 path=xy#",  # not ended by a newline
        b"8 pathx\n",  # no '='
        b"14 size=-1000\n",  # a negative size
        b"13 size=0x10\n",  # not decimal
    ],
    ids=[
        "zero",
        "inside-digits",
        "no-space",
        "nan",
        "past-end",
        "no-newline",
        "no-eq",
        "neg",
        "hex",
    ],
)
def test_a_malformed_pax_record_is_refused_promptly(store, bounded, records):
    with pytest.raises(ArchiveError, match="malformed pax extended header"):
        parse(store, with_pax(records))


def test_well_formed_pax_records_still_apply(store, bounded):
    stats = parse(store, with_pax(b"18 path=renamed.f\n" + b"\0" * 8))
    assert list(stats.members) == ["renamed.f"]


@pytest.mark.parametrize("size_field", [b"-0000000001\0", b"+0000000003\0", b"0o000000003\0"])
def test_a_size_field_int_takes_but_tar_does_not_is_refused(store, bounded, size_field):
    header = bytearray(member("f", tarfile.REGTYPE, b"abc"))
    header[124:136] = size_field
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    with pytest.raises(ArchiveError, match="bad numeric header field"):
        parse(store, bytes(header) + b"\0" * 1024)


@pytest.mark.parametrize(
    "compress, kind",
    [(gzip.compress, "gzip"), (bz2.compress, "bzip2"), (lzma.compress, "xz")],
    ids=["gzip", "bzip2", "xz"],
)
def test_a_compressed_archive_is_named_as_such(store, compress, kind):
    data = compress(legacy_archive([(["a:1"], [random_layer(50_000)])]))
    with pytest.raises(ArchiveError, match=rf"compressed \({kind}\).*decompress it first"):
        parse(store, data)


@pytest.mark.parametrize("typeflag", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME])
def test_an_extended_header_bigger_than_any_real_one_is_refused_before_it_is_read(store, typeflag):
    """It would be read whole into memory: 8 GiB claimed, a few bytes sent."""
    data = member("big", typeflag, b"", size=8 << 30) + b"x" * 512
    with pytest.raises(ArchiveError, match="extended header of 8589934592 bytes"):
        parse(store, data)


def test_a_json_member_bigger_than_any_real_one_is_refused(store, monkeypatch):
    """manifest.json, index.json and configs are parsed whole in memory (bound lowered here
    so the test stays small)."""
    from runnerkeep.cache import archive_layout
    from runnerkeep.cache.archive_layout import analyze

    monkeypatch.setattr(archive_layout, "MAX_JSON_MEMBER", 4096)
    tags = [f"app:{'x' * 100}{i}" for i in range(60)]  # a manifest.json of ~7 KiB
    data = legacy_archive([(tags, [random_layer(10_000)])])
    with pytest.raises(ArchiveError, match=r"manifest.json is \d+ bytes, more than any real one"):
        analyze(parse(store, data))


def test_a_name_longer_than_path_max_is_refused(store):
    long_name = b"d/" + b"n" * 5000 + b"\0"
    data = member("././@LongLink", tarfile.GNUTYPE_LONGNAME, long_name) + member("x", b"0", b"")
    with pytest.raises(ArchiveError, match="member name or link target of 5002 bytes"):
        parse(store, data + b"\0" * 1024)


def test_more_members_than_any_image_archive_has_are_refused(store, monkeypatch):
    """Each member is kept for the whole read (bound lowered here so the test stays small)."""
    from runnerkeep.cache import tar_reader

    monkeypatch.setattr(tar_reader, "MAX_MEMBERS", 50)
    data = b"".join(member(f"m{i}", tarfile.REGTYPE, b"") for i in range(51)) + b"\0" * 1024
    with pytest.raises(ArchiveError, match="more than 50 members"):
        parse(store, data)
    assert len(parse(store, data[: 50 * 512] + b"\0" * 1024).members) == 50
