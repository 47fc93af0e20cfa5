import pytest
from runnerkeep.errors import ConfigError
from runnerkeep.units import (
    format_size,
    parse_duration,
    parse_size,
    parse_size_or_percent,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("10G", 10 * 1000**3),
        ("10GiB", 10 * 1024**3),
        ("1.5Mi", int(1.5 * 1024**2)),
        (" 512 mb ", 512 * 1000**2),
        (42, 42),
    ],
)
def test_parse_size_accepts_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "ten", "10X", "-5", "1e3", True, -1])
def test_parse_size_rejects_bad_input_naming_the_setting(bad):
    with pytest.raises(ConfigError, match="reserve"):
        parse_size(bad, "reserve")


def test_percent_is_of_total():
    assert parse_size_or_percent("15%", 1000) == 150
    assert parse_size_or_percent("2K", 1000) == 2000
    with pytest.raises(ConfigError, match="between 0 and 100"):
        parse_size_or_percent("150%", 1000)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800), (5, 5), ("2", 2)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_unknown_unit():
    with pytest.raises(ConfigError, match="max_age"):
        parse_duration("3y", "max_age")


def test_format_size():
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 * 1024**3) == "3.0 GiB"


@pytest.mark.parametrize("bad", ["9" * 400, "1" * 30 + "T", 2**64, "99999999999999999999w", 1e300])
def test_out_of_range_sizes_and_durations_are_config_errors(bad):
    # Before: int(float("9"*400)) raised OverflowError and parse_duration returned inf.
    parser = parse_duration if str(bad).endswith("w") or isinstance(bad, float) else parse_size
    with pytest.raises(ConfigError, match="out of range"):
        parser(bad, "x")
