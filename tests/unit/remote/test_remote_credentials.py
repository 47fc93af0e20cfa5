"""The credentials file: one USER:PASSWORD line in a private regular file; the password never
shows in an error, a repr or a dict."""

from __future__ import annotations

import os
import pickle

import pytest
from runnerkeep.errors import ConfigError
from runnerkeep.remote.credentials import Credentials, read_credentials

SECRET = "s3cret:with:colons"


def write(path, text, mode=0o600) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize("text", [f"pusher:{SECRET}\n", f"pusher:{SECRET}", f"pusher:{SECRET}\r\n"])
def test_one_line_with_or_without_newline(tmp_path, text):
    creds = read_credentials(write(tmp_path / "c", text))
    assert (creds.user, creds.password) == ("pusher", SECRET)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_private_modes_are_accepted(tmp_path, mode):
    assert read_credentials(write(tmp_path / "c", "u:p", mode)).user == "u"


@pytest.mark.parametrize(
    "mode, says",
    [
        (0o644, "other users"),
        (0o604, "other users"),
        (0o601, "other users"),
        (0o660, "writable by its group"),
    ],
)
def test_modes_others_may_use_are_refused(tmp_path, mode, says):
    path = write(tmp_path / "c", f"u:{SECRET}", mode)
    with pytest.raises(ConfigError, match=says) as caught:
        read_credentials(path)
    assert "chmod 600" in str(caught.value) and SECRET not in str(caught.value)


def test_another_owner_is_refused(tmp_path):
    path = write(tmp_path / "c", f"u:{SECRET}")
    os.chown(path, 12345, 12345)
    with pytest.raises(ConfigError, match="owned by uid 12345"):
        read_credentials(path)


def test_a_symlink_is_refused_even_to_a_good_file(tmp_path):
    good = write(tmp_path / "good", f"u:{SECRET}")
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(ConfigError, match="is a symlink, not a regular file"):
        read_credentials(str(link))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="is a FIFO"):
        read_credentials(str(fifo))


def test_a_directory_and_a_device_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="a directory"):
        read_credentials(str(tmp_path))
    with pytest.raises(ConfigError, match="a device"):
        read_credentials("/dev/zero")


def test_a_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; create it \(USER:PASSWORD, mode 600\)"):
        read_credentials(str(tmp_path / "absent"))


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "no user"),
        ("\n", "no user"),
        ("useronly\n", "no ':'"),
        (":password\n", "no user"),
        ("user:\n", "no password"),
        (f"u:{SECRET}\nsecond:line\n", "more than one line"),
        (f"u:{SECRET}\x00\n", "control characters"),
        (b"u:\xff\xfe\n", "not UTF-8"),
        ("u:p" + "x" * 5000, "larger than 4096 bytes"),
    ],
)
def test_malformed_content_is_refused_without_echoing_it(tmp_path, text, says):
    with pytest.raises(ConfigError, match=says) as caught:
        read_credentials(write(tmp_path / "c", text))
    assert SECRET not in str(caught.value) and "\n" not in str(caught.value)


def test_the_password_never_shows():
    creds = Credentials("pusher", SECRET)
    for text in (repr(creds), str(creds), f"{creds}", str(creds.as_dict()), repr([creds])):
        assert SECRET not in text
    assert "pusher" in repr(creds)
    assert creds.as_dict() == {"user": "pusher"}
    with pytest.raises(TypeError):
        pickle.dumps(creds)
    assert not hasattr(creds, "__dict__")  # no vars() dump of it either


def test_equality_compares_both_fields():
    assert Credentials("u", "p") == Credentials("u", "p")
    assert Credentials("u", "p") != Credentials("u", "q")
