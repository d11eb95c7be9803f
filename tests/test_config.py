"""Typed config: file + overrides, with errors that name the key."""
import pytest

from common.config import ConfigError, load_config
from gateway.config import GatewayConfig
from recall_server.config import RecallConfig


def test_file_then_overrides(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('deadline_ms = 80\n[budget]\nrank = 0.5\n[server]\nport = 7000\n')
    config = load_config(GatewayConfig, path, ["budget.recall=0.2", "server.host=0.0.0.0"])
    assert config.deadline_ms == 80 and config.budget.rank == 0.5 and config.budget.recall == 0.2
    assert config.server.port == 7000 and config.server.host == "0.0.0.0"


def test_dict_and_list_overrides():
    config = load_config(RecallConfig, None, ['quotas={"ann": 10, "itemcf": 5, "popular": 1}',
                                              "channels=ann,popular"])
    assert config.quotas["ann"] == 10 and config.channels == ["ann", "popular"]


@pytest.mark.parametrize("override, key", [
    ("deadline_mss=5", "deadline_mss"),
    ("budget.rankk=0.1", "budget.rankk"),
    ("deadline_ms=fast", "deadline_ms"),
    ("deadline_ms=1.5", "deadline_ms"),
    ("server.threads=true", "server.threads"),
])
def test_bad_keys_and_types_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(GatewayConfig, None, [override])


def test_validation_names_the_key():
    with pytest.raises(ValueError, match="budget"):
        load_config(GatewayConfig, None, ["budget.recall=0.9"])
    with pytest.raises(ValueError, match="unknown channel 'swingg'"):
        load_config(RecallConfig, None, ["channels=ann,swingg"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(GatewayConfig, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("deadline_ms = = 3")
    with pytest.raises(ConfigError, match="malformed"):
        load_config(GatewayConfig, bad)
