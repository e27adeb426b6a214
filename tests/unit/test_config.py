"""Settings that explain themselves: environment strings are converted by type, errors
name the key and the type, and a misspelt key is pointed at the one it resembles."""

import pytest

from flask_jpulse_ws import config


def test_environment_strings_are_converted_to_each_settings_type():
    """What ``from_prefixed_env`` or a hand-made ``os.environ`` copy hands over."""
    s = config.load({"JPULSE_WS_PING_INTERVAL": "30", "JPULSE_WS_MAX_CONNECTIONS": "200",
                     "JPULSE_WS_PUBLIC_ACCESS": "yes", "JPULSE_WS_DEBUG_ERRORS": "0",
                     "JPULSE_WS_ADMIN_ROLES": "admin, ops",
                     "JPULSE_WS_ALLOWED_ORIGINS": "https://A.example/,https://b.example",
                     "JPULSE_WS_REDIS_URL": ""})
    assert s.ping_interval == 30.0 and isinstance(s.ping_interval, float)
    assert s.max_connections == 200 and isinstance(s.max_connections, int)
    assert s.public_access is True and s.debug_errors is False
    assert s.admin_roles == ("admin", "ops")
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.redis_url is None


@pytest.mark.parametrize("key, value, expected", [
    ("JPULSE_WS_PING_INTERVAL", "thirty", "JPULSE_WS_PING_INTERVAL must be a number"),
    ("JPULSE_WS_MAX_CONNECTIONS", "2.5", "JPULSE_WS_MAX_CONNECTIONS must be a whole number"),
    ("JPULSE_WS_MAX_CONNECTIONS", 2.5, "JPULSE_WS_MAX_CONNECTIONS must be a whole number"),
    ("JPULSE_WS_PONG_TIMEOUT", True, "JPULSE_WS_PONG_TIMEOUT must be a number"),
    ("JPULSE_WS_PUBLIC_ACCESS", "maybe", "JPULSE_WS_PUBLIC_ACCESS must be true or false"),
    ("JPULSE_WS_ADMIN_ROLES", ["admin", 1], "JPULSE_WS_ADMIN_ROLES must be a list of strings"),
    ("JPULSE_WS_CHANNEL_PREFIX", 7, "JPULSE_WS_CHANNEL_PREFIX must be a string"),
])
def test_a_value_of_the_wrong_type_names_its_key_and_the_type(key, value, expected):
    with pytest.raises(TypeError, match=expected):
        config.load({key: value})


def test_a_misspelt_key_is_warned_about_with_the_closest_known_one():
    with pytest.warns(config.UnknownSettingWarning,
                      match="JPULSE_WS_PING_INTERVALL is ignored: did you mean "
                            "JPULSE_WS_PING_INTERVAL"):
        config.load({"JPULSE_WS_PING_INTERVALL": 5})


def test_known_keys_and_other_extensions_keys_raise_no_warning(recwarn):
    config.load({**config.DEFAULTS, "SECRET_KEY": "x", "SQLALCHEMY_DATABASE_URI": "y"})
    assert not [w for w in recwarn if issubclass(w.category, config.UnknownSettingWarning)]
