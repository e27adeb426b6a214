"""Paths, patterns, the whitelist rule, and the wire envelope."""

import orjson
import pytest

from flask_jpulse_ws.context import Context
from flask_jpulse_ws.core import envelope
from flask_jpulse_ws.core.envelope import InboundError, decode_inbound
from flask_jpulse_ws.core.paths import (
    PathPattern,
    is_pattern,
    is_whitelisted,
    validate_path,
    validate_template,
)


@pytest.mark.parametrize("path", ["/api/1/ws/", "/api/2/ws/x", "api/1/ws/x", "/api/1/ws/x?y"])
def test_paths_outside_the_prefix_are_refused(path):
    with pytest.raises(ValueError, match="/api/1/ws/"):
        validate_path(path)


def test_patterns_match_one_segment_and_percent_decode():
    pattern = PathPattern("/api/1/ws/rooms/:room")
    assert is_pattern("/api/1/ws/rooms/:room") and not is_pattern("/api/1/ws/rooms")
    assert pattern.match("/api/1/ws/rooms/caf%C3%A9") == {"room": "café"}
    assert pattern.match("/api/1/ws/rooms/a/b") is None
    assert pattern.match("/api/1/ws/rooms/") is None
    assert pattern.match("/api/1/ws/rooms/a%2Fb") is None  # decodes to contain "/"
    assert pattern.match("/api/1/ws/rooms/%FF") is None  # not UTF-8
    assert pattern.match("/api/1/ws/Rooms/x") is None  # case-sensitive
    assert pattern.concrete({"room": "café"}) == "/api/1/ws/rooms/café"


def test_several_parameters_and_bad_parameter_names():
    pattern = PathPattern("/api/1/ws/maps/:mapId/layers/:layer")
    assert pattern.match("/api/1/ws/maps/7/layers/roads") == {"mapId": "7", "layer": "roads"}
    with pytest.raises(ValueError):
        PathPattern("/api/1/ws/x/:a/:a")
    with pytest.raises(ValueError):
        PathPattern("/api/1/ws/x/:9lives")


def test_whitelist_prefix_and_exact_rules():
    wl = ["hello-*", "jpulse-ws-status", " ", 7]
    assert is_whitelisted("/api/1/ws/hello-rooms/amsterdam", wl)
    assert is_whitelisted("/api/1/ws/jpulse-ws-status", wl)
    assert not is_whitelisted("/api/1/ws/jpulse-ws-status/x", wl)
    assert not is_whitelisted("/api/1/ws/admin", wl)
    assert is_whitelisted("/api/1/ws/anything", ["*"])


@pytest.mark.parametrize("raw", [b"null", b"5", b'"x"', b"[1]", b"{", b"true"])
def test_anything_but_a_json_object_is_400(raw):
    with pytest.raises(InboundError) as err:
        decode_inbound(raw, 100)
    assert err.value.code == 400 and err.value.reason == "invalid"


def test_size_is_checked_before_parsing():
    with pytest.raises(InboundError) as err:
        decode_inbound(b"{" * 101, 100)
    assert err.value.code == "MESSAGE_TOO_LARGE"
    assert err.value.details == {"size": 101, "limit": 100}


@pytest.mark.parametrize("msg, code", [({}, 400), ({"type": 5}, 400), ({"type": ""}, 400),
                                       ({"type": None}, 400), ({"type": "_x"}, "RESERVED_TYPE")])
def test_type_must_be_a_string_and_not_reserved(msg, code):
    with pytest.raises(InboundError) as err:
        envelope.check_type(msg)
    assert err.value.code == code


def test_framework_ping_and_app_ping_pass_the_type_check():
    assert envelope.check_type({"type": "_ping"}) == "_ping"
    assert envelope.check_type({"type": "ping"}) == "ping"


def test_only_wire_fields_leave_the_server():
    ctx = Context(username="ann", ip="10.0.0.1", roles=("admin",), first_name="Ann")
    assert envelope.wire_ctx(ctx, ("username",)) == {"username": "ann"}
    assert envelope.wire_ctx(ctx, ("username", "firstName")) == {"username": "ann",
                                                                 "firstName": "Ann"}
    assert envelope.wire_ctx(None, ("username", "ip")) == {"username": ""}


def test_success_envelope_overwrites_a_ctx_inside_data():
    frame = orjson.loads(envelope.encode_success({"type": "t", "data": 1, "ctx": "forged"},
                                                 {"username": "ann"}))
    assert frame == {"success": True, "data": {"type": "t", "data": 1,
                                               "ctx": {"username": "ann"}}}


def test_error_envelope_carries_details_and_request_id_only_when_given():
    assert orjson.loads(envelope.encode_error("no", 400)) == {"success": False, "error": "no",
                                                              "code": 400}
    full = orjson.loads(envelope.encode_error("no", "X", {"a": 1}, "r1"))
    assert full["details"] == {"a": 1} and full["requestId"] == "r1"


def test_request_ids_are_strings_or_numbers():
    assert envelope.request_id_of({"requestId": "a"}) == "a"
    assert envelope.request_id_of({"requestId": 5}) == "5"
    assert envelope.request_id_of({"requestId": True}) is None
    assert envelope.request_id_of({"requestId": {"x": 1}}) is None


@pytest.mark.parametrize("declared, hint", [
    ("/api/1/ws/rooms/<room>", ":room"),
    ("/api/1/ws/rooms/<string:room>/chat", ":room"),
])
def test_a_flask_style_parameter_is_refused_with_the_spelling_to_use(declared, hint):
    """``<room>`` would be a literal that no client ever matches (every upgrade 4404)."""
    with pytest.raises(ValueError, match=f"write {hint} for a path parameter"):
        validate_template(declared)
    assert validate_template("/api/1/ws/rooms/:room") == "/api/1/ws/rooms/:room"
    assert validate_path("/api/1/ws/rooms/a<b>c") == "/api/1/ws/rooms/a<b>c"  # a room name
