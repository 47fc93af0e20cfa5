"""tools/run_sanity.py's own checks: what it unpacks, which ignore file it uses, where it writes
the pip bootstrap stand-in, what it hides from ansible-test's output. (The sanity run itself is
`nox -s sanity`: it needs the network for the test venvs.)"""

from __future__ import annotations

import importlib.util
import io
import os
import tarfile
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _load():
    spec = importlib.util.spec_from_file_location(
        "run_sanity", os.path.join(ROOT, "tools", "run_sanity.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rs = _load()


def _tarball(path, members):
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_unpack_writes_the_collection_files(tmp_path):
    _tarball(tmp_path / "c.tar.gz", [_file("plugins/modules/m.py", b"print(1)\n")])
    dest = tmp_path / "out"
    dest.mkdir()
    rs.unpack(str(tmp_path / "c.tar.gz"), str(dest))
    assert (dest / "plugins" / "modules" / "m.py").read_bytes() == b"print(1)\n"


@pytest.mark.parametrize("name", ["../escape.py", "/abs/escape.py", "a/../../escape.py"])
def test_unpack_refuses_a_member_outside_the_collection(tmp_path, name):
    _tarball(tmp_path / "c.tar.gz", [_file(name)])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(rs.SanityError, match="outside the collection"):
        rs.unpack(str(tmp_path / "c.tar.gz"), str(dest))
    assert not (tmp_path / "escape.py").exists()


def test_unpack_refuses_links(tmp_path):
    link = tarfile.TarInfo("plugins/evil")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    _tarball(tmp_path / "c.tar.gz", [(link, None)])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(rs.SanityError, match="not a file or directory"):
        rs.unpack(str(tmp_path / "c.tar.gz"), str(dest))


def test_the_repo_ignore_file_is_copied_in_or_must_match(tmp_path, monkeypatch):
    sanity = tmp_path / "repo-sanity"
    sanity.mkdir()
    (sanity / "ignore-2.19.txt").write_text("plugins/modules/m.py pep8:E501 # why\n")
    monkeypatch.setattr(rs, "SANITY_DIR", str(sanity))
    collection = tmp_path / "collection"
    collection.mkdir()
    placed = rs.place_ignore_file(str(collection), "2.19")
    assert Path(placed).read_text() == (sanity / "ignore-2.19.txt").read_text()
    assert rs.place_ignore_file(str(collection), "2.19") == placed  # the same copy is accepted
    (collection / "tests" / "sanity" / "ignore-2.19.txt").write_text("other\n")
    with pytest.raises(rs.SanityError, match="differs"):
        rs.place_ignore_file(str(collection), "2.19")
    assert rs.place_ignore_file(str(collection), "2.20") is None


def test_the_repo_has_an_ignore_file_whose_lines_all_say_why():
    names = sorted(os.listdir(os.path.join(ROOT, "tests", "sanity")))
    assert any(n.startswith("ignore-2.") and n.endswith(".txt") for n in names)
    for name in names:
        with open(os.path.join(ROOT, "tests", "sanity", name), encoding="utf-8") as handle:
            for line in handle:
                target, _, why = line.partition(" # ")
                assert len(target.split()) == 2, line
                assert len(why.strip()) > 20, f"{name}: no reason given: {line!r}"


def test_the_stand_in_goes_only_into_the_cache_dir(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    wanted = cache / ".ansible" / "test" / "cache" / "get_pip_24_2.py"
    rs.write_stand_in(str(wanted), str(cache))
    assert "ensurepip" in wanted.read_text()
    with pytest.raises(rs.SanityError, match="outside"):
        rs.write_stand_in(str(tmp_path / "elsewhere.py"), str(cache))
    assert not (tmp_path / "elsewhere.py").exists()


def test_the_bootstrap_message_is_recognised():
    said = (
        "Download failed: <urlopen error [Errno -2] Name or service not known>\n\n"
        "The bootstrap script can be manually downloaded and saved to: "
        "/home/x/.ansible/test/cache/get_pip_24_2.py\n"
    )
    assert rs.BOOTSTRAP_MISSING.search(said).group(1).endswith("get_pip_24_2.py")


@pytest.mark.parametrize(
    ("line", "hidden"),
    [
        ("Collecting voluptuous==0.15.2\n", True),
        ("  Downloading PyYAML-6.0.2.whl (762 kB)\n", True),
        ("      Successfully uninstalled pip-23.2.1\n", True),
        ("ERROR: plugins/modules/m.py:0:0: missing-gplv3-license: GPLv3 ...\n", False),
        ('Running sanity test "pylint"\n', False),
        ("FATAL: The 1 sanity test(s) listed below (out of 24) failed.\n", False),
    ],
)
def test_pip_noise_is_hidden_and_findings_are_not(line, hidden):
    assert bool(rs.PIP_NOISE.match(line)) is hidden


@pytest.mark.parametrize("version", ["3", "3.9.1", "py3.9", ""])
def test_a_bad_python_version_is_refused(version):
    with pytest.raises(rs.SanityError, match=r"expected X\.Y"):
        rs.version_key(version)
