"""TOML configuration files: every error names the file, the line and the key."""

import pytest

from coinfer.sdk.config_file import MAX_CONFIG_BYTES, ConfigError, ConfigFile
from coinfer.sdk.errors import InputNotFoundError

SAMPLE = """\
# a gateway
[server]
port = 8100
host = "127.0.0.1"

[gate]
budget_fraction = 0.5
tasks = ["faces"]

[[streams]]
id = "cam0"
url = "cam0.mp4"

[[streams]]
id = "cam1"
loop = "yes"
"""


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(SAMPLE)
    return ConfigFile.read(path)


def test_values_are_read_with_their_bounds_and_paths_relative_to_the_file(sample, tmp_path):
    server = sample.table("server")
    assert server.integer("port", 8000, low=0, high=65535) == 8100
    assert server.string("host", "0.0.0.0") == "127.0.0.1"
    assert server.number("timeout", 2.5) == 2.5
    server.check_known()
    assert sample.table("gate").strings("tasks", choices=("faces", "cats")) == ("faces",)
    streams = sample.tables("streams")
    assert [stream.string("id", required=True) for stream in streams] == ["cam0", "cam1"]
    assert streams[0].path("url") == tmp_path / "cam0.mp4"
    assert sample.table("absent").values == {}


@pytest.mark.parametrize(("read", "expected"), [
    (lambda c: c.table("gate").number("budget_fraction", low=0, high=0.4),
     ":7: [gate] budget_fraction must be in [0, 0.4], got 0.5"),
    (lambda c: c.table("gate").strings("tasks", choices=("cats",)),
     ":8: [gate] tasks has unknown value(s) ['faces']; choose from cats"),
    (lambda c: c.tables("streams")[1].boolean("loop", False),
     ":16: [[streams]] #2 loop must be true or false, got 'yes'"),
    (lambda c: c.tables("streams")[1].string("url", required=True),
     ":14: [[streams]] #2: missing required key 'url'"),
    (lambda c: c.table("server").integer("host"), ":4: [server] host must be an integer, got '127.0.0.1'"),
    (lambda c: c.table("server").string("port"), ":3: [server] port must be a non-empty string"),
    (lambda c: c.table("nothing", required=True), ": missing table [nothing]"),
    (lambda c: c.check_known(["server", "gate"]),
     ":10: unknown table or key 'streams'; expected one of gate, server"),
])
def test_a_bad_value_is_one_line_naming_the_file_line_and_key(sample, read, expected):
    with pytest.raises(ConfigError) as raised:
        read(sample)
    message = str(raised.value)
    assert message.startswith(str(sample.path)) and expected in message and "\n" not in message


def test_an_unknown_key_is_named_after_the_table_was_read(sample):
    gate = sample.table("gate")
    gate.number("budget_fraction", 0.5)
    expected = r":8: \[gate\] tasks is not a known key; expected one of budget_fraction"
    with pytest.raises(ConfigError, match=expected):
        gate.check_known()


def test_bad_files_are_refused_before_use(tmp_path):
    with pytest.raises(InputNotFoundError, match="no such configuration file"):
        ConfigFile.read(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server]\nport = \n")
    with pytest.raises(ConfigError, match=r"broken.toml:2: not valid TOML: "):
        ConfigFile.read(broken)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[server]")
    with pytest.raises(ConfigError, match="unreadable configuration file"):
        ConfigFile.read(binary)
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="over the 1048576-byte limit"):
        ConfigFile.read(huge)
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('server = 3\nstreams = "cam0"\n')
    config = ConfigFile.read(wrong_type)
    with pytest.raises(ConfigError, match=r"wrong.toml:1: server must be a table \[server\]"):
        config.table("server")
    with pytest.raises(ConfigError, match=r"wrong.toml:2: streams must be an array of tables"):
        config.tables("streams")
