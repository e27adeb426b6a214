"""The sans-I/O WebSocket codec."""

import struct

import pytest

from flask_jpulse_ws.core import frames
from flask_jpulse_ws.core.frames import FrameDecoder, ProtocolError, encode_frame


def client_frame(opcode, payload, fin=True):
    return encode_frame(opcode, payload, fin=fin, mask=True)


def test_accept_key_matches_rfc_example():
    """RFC 6455 section 1.3 gives this key and answer."""
    assert frames.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_client_key_must_be_16_bytes_of_base64():
    assert frames.valid_client_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not frames.valid_client_key("short")
    assert not frames.valid_client_key("")
    assert not frames.valid_client_key(None)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_masked_frames_round_trip_at_every_length_boundary(size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    decoder = FrameDecoder(2 << 20)
    assert decoder.feed(client_frame(frames.OP_BINARY, payload)) == [(frames.OP_BINARY, payload)]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 4097])
def test_the_python_mask_and_the_compiled_one_agree(size):
    """The pure-Python XOR is what runs where websockets' C helper is missing."""
    payload = bytes((i * 7 + 3) % 256 for i in range(size))
    key = b"\x01\x80\xfe\x37"
    masked = frames._mask_in_python(payload, key)
    assert len(masked) == size
    assert frames._mask(payload, key) == masked
    assert frames._mask_in_python(masked, key) == payload
    if size >= 4:
        assert masked[:4] == bytes(a ^ b for a, b in zip(payload[:4], key))


def test_bytes_arriving_one_at_a_time_make_the_same_message():
    decoder = FrameDecoder(1024)
    data = client_frame(frames.OP_TEXT, b'{"type":"x"}')
    events = []
    for i in range(len(data)):
        events += decoder.feed(data[i:i + 1])
    assert events == [(frames.OP_TEXT, b'{"type":"x"}')]


def test_fragments_are_joined_and_control_frames_between_them_pass():
    decoder = FrameDecoder(1024)
    data = (client_frame(frames.OP_TEXT, b"hel", fin=False)
            + client_frame(frames.OP_PING, b"p")
            + client_frame(frames.OP_CONT, b"lo", fin=False)
            + client_frame(frames.OP_CONT, b"!", fin=True))
    assert decoder.feed(data) == [(frames.OP_PING, b"p"), (frames.OP_TEXT, b"hello!")]


def test_message_over_the_cap_fails_from_its_header_before_buffering():
    decoder = FrameDecoder(100)
    header_only = client_frame(frames.OP_TEXT, b"x" * 101)[:8]
    with pytest.raises(ProtocolError) as err:
        decoder.feed(header_only)
    assert err.value.code == 1009


def test_fragments_adding_up_past_the_cap_fail():
    decoder = FrameDecoder(100)
    decoder.feed(client_frame(frames.OP_TEXT, b"x" * 60, fin=False))
    with pytest.raises(ProtocolError) as err:
        decoder.feed(client_frame(frames.OP_CONT, b"x" * 60))
    assert err.value.code == 1009


def test_invalid_utf8_text_is_1007():
    with pytest.raises(ProtocolError) as err:
        FrameDecoder(100).feed(client_frame(frames.OP_TEXT, b"\xff\xfe"))
    assert err.value.code == 1007


def test_utf8_split_across_fragments_is_valid():
    snowman = "☃".encode()
    data = client_frame(frames.OP_TEXT, snowman[:1], fin=False) + \
        client_frame(frames.OP_CONT, snowman[1:])
    assert FrameDecoder(100).feed(data) == [(frames.OP_TEXT, snowman)]


@pytest.mark.parametrize("raw, why", [
    (encode_frame(frames.OP_TEXT, b"x"), "unmasked client frame"),
    (client_frame(frames.OP_CONT, b"x"), "continuation without a message"),
    (client_frame(frames.OP_PING, b"x" * 126), "control frame over 125 bytes"),
    (client_frame(frames.OP_PING, b"x", fin=False), "fragmented control frame"),
    (client_frame(0x3, b"x"), "unknown opcode"),
    (bytes([0x80 | 0x40 | 0x1]) + client_frame(frames.OP_TEXT, b"x")[1:], "RSV1 without extension"),
])
def test_protocol_violations_are_1002(raw, why):
    with pytest.raises(ProtocolError) as err:
        FrameDecoder(1024).feed(raw)
    assert err.value.code == 1002, why


def test_new_message_inside_a_fragmented_one_is_1002():
    decoder = FrameDecoder(1024)
    decoder.feed(client_frame(frames.OP_TEXT, b"a", fin=False))
    with pytest.raises(ProtocolError):
        decoder.feed(client_frame(frames.OP_TEXT, b"b"))


def test_close_bodies_parse_and_bad_ones_fail():
    assert frames.parse_close(b"") == (1005, "")
    assert frames.parse_close(struct.pack("!H", 4401) + b"bye") == (4401, "bye")
    for bad in (b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999)):
        with pytest.raises(ProtocolError):
            frames.parse_close(bad)
    with pytest.raises(ProtocolError) as err:
        frames.parse_close(struct.pack("!H", 1000) + b"\xff")
    assert err.value.code == 1007


def test_server_frames_are_unmasked_and_shared_by_every_recipient():
    frame = frames.text_frame(b"{}")
    assert frame == b"\x81\x02{}"
    assert FrameDecoder(10, expect_mask=False).feed(frame) == [(frames.OP_TEXT, b"{}")]


def test_nothing_after_a_close_frame_is_decoded():
    decoder = FrameDecoder(100)
    events = decoder.feed(frames.close_frame(1000, mask=True) + client_frame(frames.OP_TEXT, b"x"))
    assert [op for op, _ in events] == [frames.OP_CLOSE]


def test_the_client_upgrade_request_and_the_servers_answer_fit_together():
    """The pure client handshake (both clients use it) and the server's 101 match."""
    key = frames.client_key()
    assert frames.valid_client_key(key)
    request = frames.upgrade_request("127.0.0.1", 5000, "/api/1/ws/chat?uuid=x", key,
                                     {"Origin": "http://127.0.0.1:5000"})
    assert request.startswith(b"GET /api/1/ws/chat?uuid=x HTTP/1.1\r\n")
    assert request.endswith(b"\r\nOrigin: http://127.0.0.1:5000\r\n\r\n")
    assert f"Sec-WebSocket-Key: {key}".encode() in request
    head = frames.handshake_response(key).split(b"\r\n\r\n")[0]
    assert frames.upgrade_response(head, key) == (101, True)
    assert frames.upgrade_response(head, frames.client_key()) == (101, False)
    assert frames.upgrade_response(b"HTTP/1.1 403 Forbidden\r\nX: y", key) == (403, False)
    assert frames.upgrade_response(b"garbage", key) == (0, False)


def test_empty_continuation_frames_cannot_grow_a_message_for_ever():
    """Zero-length continuations used to cost nothing against the cap: one socket kept a
    worker busy and growing. Each fragment now counts, and there are at most so many."""
    decoder = FrameDecoder(1 << 20)
    decoder.feed(client_frame(frames.OP_TEXT, b"x", fin=False))
    empty = client_frame(frames.OP_CONT, b"", fin=False)
    with pytest.raises(ProtocolError) as err:
        for _ in range(frames.MAX_FRAGMENTS + 1):
            decoder.feed(empty)
    assert err.value.code == 1009


def test_one_byte_fragments_hold_about_what_was_received():
    """1-byte fragments used to be kept as one bytes object each (about 34 bytes apiece):
    the message is now gathered in one buffer."""
    decoder = FrameDecoder(1 << 20)
    decoder.feed(client_frame(frames.OP_BINARY, b"a", fin=False))
    for _ in range(3000):
        decoder.feed(client_frame(frames.OP_CONT, b"b", fin=False))
    assert isinstance(decoder._frags, bytearray) and len(decoder._frags) == 3001
    [(opcode, payload)] = decoder.feed(client_frame(frames.OP_CONT, b"c"))
    assert opcode == frames.OP_BINARY and payload == b"a" + b"b" * 3000 + b"c"


def test_invalid_utf8_in_a_fragment_fails_at_that_fragment():
    """Text is checked fragment by fragment: a bad first fragment fails at once (1007),
    not after the peer has sent the rest."""
    decoder = FrameDecoder(1 << 20)
    with pytest.raises(ProtocolError) as err:
        decoder.feed(client_frame(frames.OP_TEXT, b"ok \xff", fin=False))
    assert err.value.code == 1007


def test_messages_decoded_before_a_bad_frame_are_kept():
    """A valid message in the same read as a protocol error is still delivered."""
    good = client_frame(frames.OP_TEXT, b'{"type": "x"}')
    bad = client_frame(0x3, b"")  # a reserved opcode
    with pytest.raises(ProtocolError) as err:
        FrameDecoder(100).feed(good + bad)
    assert err.value.events == [(frames.OP_TEXT, b'{"type": "x"}')]
