"""The extension's binding rules, without sockets."""

import pytest
from flask import Blueprint, Flask, render_template_string

from flask_jpulse_ws import JPulseWS, NamespaceTemplate


def make_app(**config):
    app = Flask(__name__)
    app.config.update(config)
    return app


def test_state_lives_on_the_app_with_every_default():
    app = make_app()
    JPulseWS(app)
    state = app.extensions["jpulse_ws"]
    assert state.settings.ping_interval == 30 and state.settings.pong_timeout == 10
    assert app.config["JPULSE_WS_MAX_MESSAGE_SIZE"] == 65536
    assert app.config["JPULSE_WS_WIRE_CTX_FIELDS"] == ("username",)


def test_second_init_app_on_one_app_raises_with_a_hint():
    app = make_app()
    ws = JPulseWS(app)
    with pytest.raises(RuntimeError, match="once per app"):
        ws.init_app(app)
    with pytest.raises(RuntimeError):
        JPulseWS(app)


def test_namespaces_declared_before_the_app_exists_bind_in_init_app():
    ws = JPulseWS()
    chat = ws.namespace("/api/1/ws/chat")
    assert isinstance(chat, NamespaceTemplate)
    app = make_app()
    ws.init_app(app)
    with app.app_context():
        assert ws.get_namespace("/api/1/ws/chat") is not None


def test_several_apps_in_one_process_stay_isolated():
    ws = JPulseWS()
    ws.namespace("/api/1/ws/chat")
    one, two = make_app(), make_app()
    ws.init_app(one)
    ws.init_app(two)
    with one.app_context():
        ns_one = ws.get_namespace("/api/1/ws/chat")
    with two.app_context():
        ns_two = ws.get_namespace("/api/1/ws/chat")
    assert ns_one is not ns_two and ns_one.state is not ns_two.state
    with pytest.raises(RuntimeError, match="app context"):
        ws.get_stats()  # two apps: which one is ambiguous outside a context


def test_a_single_app_needs_no_app_context():
    app = make_app()
    ws = JPulseWS(app)
    ws.namespace("/api/1/ws/chat")
    assert ws.broadcast("/api/1/ws/chat", {"type": "x"}) == 0
    assert ws.get_stats()["namespaces"][0]["path"] == "/api/1/ws/chat"


def test_uninitialised_extension_says_what_to_do():
    with pytest.raises(RuntimeError, match="init_app"):
        JPulseWS().get_stats()


def test_duplicate_registration_raises():
    app = make_app()
    ws = JPulseWS(app)
    ws.namespace("/api/1/ws/chat")
    with pytest.raises(ValueError, match="already registered"):
        ws.namespace("/api/1/ws/chat")
    ws.namespace("/api/1/ws/rooms/:room")
    with pytest.raises(ValueError, match="already registered"):
        ws.namespace("/api/1/ws/rooms/:room")


@pytest.mark.parametrize("path", ["/chat", "/api/1/ws/", "/api/1/wss/x"])
def test_paths_outside_the_prefix_raise_naming_the_path(path):
    with pytest.raises(ValueError, match="/api/1/ws/"):
        JPulseWS().namespace(path)


def test_blueprint_namespaces_bind_when_the_blueprint_is_registered():
    ws = JPulseWS()
    bp = Blueprint("feature", __name__)
    ws.namespace("/api/1/ws/feature", blueprint=bp)
    early = make_app()
    early.register_blueprint(bp)  # before init_app
    ws.init_app(early)
    late = make_app()
    ws.init_app(late)
    late.register_blueprint(bp)  # after init_app
    for app in (early, late):
        with app.app_context():
            assert ws.get_namespace("/api/1/ws/feature") is not None


def test_decorators_return_the_function_and_plain_registration_works():
    ws = JPulseWS()
    chat = ws.namespace("/api/1/ws/chat")

    def handler(conn):
        return None

    assert chat.on_message(handler) is handler
    assert chat.message_handler is handler
    assert chat.on_connect(handler) is handler and chat.on_disconnect(handler) is handler


def test_pattern_template_needs_a_ctx_to_know_its_room():
    app = make_app()
    ws = JPulseWS(app)
    rooms = ws.namespace("/api/1/ws/rooms/:room")
    with pytest.raises(ValueError, match="pattern"):
        rooms.broadcast({"type": "x"})
    assert rooms.get_stats() is None
    assert ws.broadcast("/api/1/ws/rooms/lobby", {"type": "x"}) == 0  # concrete path works


def test_broadcast_to_an_undeclared_path_raises():
    app = make_app()
    ws = JPulseWS(app)
    with pytest.raises(ValueError, match="No namespace matches"):
        ws.broadcast("/api/1/ws/nobody", {"type": "x"})


def test_message_limits_with_unknown_keys_fail_at_declaration():
    with pytest.raises(ValueError, match="maxsize"):
        JPulseWS().namespace("/api/1/ws/x", message_limits={"maxsize": 10})


def test_roles_imply_login():
    ns = JPulseWS().namespace("/api/1/ws/x", require_roles=["admin"])
    assert ns.require_auth is True


def test_script_helper_renders_a_script_tag():
    app = make_app()
    JPulseWS(app)
    with app.test_request_context("/"):
        html = render_template_string("{{ jpulse_ws_script() }}")
    assert html == '<script src="/_jpulse_ws/static/jpulse-ws.js"></script>'
    client = app.test_client()
    assert b"jPulse" in client.get("/_jpulse_ws/static/jpulse-ws.js").data


def test_bad_settings_are_refused_at_init():
    with pytest.raises(ValueError, match="JPULSE_WS_PING_INTERVAL"):
        JPulseWS(make_app(JPULSE_WS_PING_INTERVAL=0))
