"""The codec's strict RFC 6455 behaviours: text failing fast, the bad frame named, and
the skim after a failure that still hears the peer's close."""

import struct

import pytest

from flask_jpulse_ws.core import frames
from flask_jpulse_ws.core.frames import FrameDecoder, ProtocolError, encode_frame


def client_frame(opcode, payload, fin=True):
    return encode_frame(opcode, payload, fin=fin, mask=True)


def test_a_text_frame_sent_in_pieces_fails_at_its_first_invalid_byte():
    """RFC 6455 8.1: invalid UTF-8 fails the connection as soon as it arrives, not once
    the rest of the frame (which may never come) is there."""
    frame = client_frame(frames.OP_TEXT, b"valid \xf4\x90\x80\x80" + b"x" * 1000)
    decoder = FrameDecoder(1 << 20)
    assert decoder.feed(frame[:8]) == []  # header, mask, two good bytes
    with pytest.raises(ProtocolError) as err:
        decoder.feed(frame[8:20])  # the bad code point; 990 bytes still to come
    assert err.value.code == 1007 and err.value.opcode == frames.OP_TEXT


def test_a_continuation_sent_in_pieces_fails_at_its_first_invalid_byte():
    decoder = FrameDecoder(1 << 20)
    assert decoder.feed(client_frame(frames.OP_TEXT, "κό".encode(), fin=False)) == []
    cont = client_frame(frames.OP_CONT, "σμε".encode() + b"\xed\xa0\x80" + b"y" * 500)
    assert decoder.feed(cont[:10]) == []
    with pytest.raises(ProtocolError) as err:
        decoder.feed(cont[10:20])
    assert err.value.code == 1007


def test_valid_text_in_any_pieces_decodes_whole():
    """Every split of a frame (across the mask's rotation and inside a code point) gives
    the same message, whole-frame or fragmented."""
    text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε \U0001f600".encode()
    whole = client_frame(frames.OP_TEXT, text)
    for cut in range(1, len(whole)):
        for cut2 in (cut, min(cut + 3, len(whole))):
            decoder = FrameDecoder(1 << 20)
            events = decoder.feed(whole[:cut]) + decoder.feed(whole[cut:cut2])
            events += decoder.feed(whole[cut2:])
            assert events == [(frames.OP_TEXT, text)]
    parts = client_frame(frames.OP_TEXT, text[:7], fin=False) + \
        client_frame(frames.OP_CONT, text[7:])
    for cut in range(1, len(parts)):
        decoder = FrameDecoder(1 << 20)
        assert decoder.feed(parts[:cut]) + decoder.feed(parts[cut:]) == \
            [(frames.OP_TEXT, text)]


def test_a_binary_frame_in_pieces_is_not_checked_as_text():
    decoder = FrameDecoder(1 << 20)
    frame = client_frame(frames.OP_BINARY, b"\xff" * 300)
    assert decoder.feed(frame[:100]) == []
    assert decoder.feed(frame[100:]) == [(frames.OP_BINARY, b"\xff" * 300)]


def test_the_bad_frame_is_named_on_the_error():
    """A bad close frame means the peer sends no other: the error says it was a close."""
    with pytest.raises(ProtocolError) as err:
        FrameDecoder(1 << 20).feed(client_frame(frames.OP_CLOSE, b"\x03\xe8" + b"*" * 124))
    assert err.value.code == 1002 and err.value.opcode == frames.OP_CLOSE
    with pytest.raises(ProtocolError) as err:
        FrameDecoder(1 << 20).feed(client_frame(frames.OP_TEXT, b"ok") + client_frame(0xB, b""))
    assert err.value.opcode == 0xB and err.value.events == [(frames.OP_TEXT, b"ok")]


def test_malformed_close_bodies_are_1002_or_1007():
    """RFC 6455 7.1.5, 7.4: a one-byte body or a code no endpoint may send is 1002; a
    reason that is not UTF-8 is 1007."""
    for body in (b"\x03", struct.pack("!H", 999), struct.pack("!H", 1004),
                 struct.pack("!H", 1005), struct.pack("!H", 1006), struct.pack("!H", 1016),
                 struct.pack("!H", 2999), struct.pack("!H", 5000), struct.pack("!H", 65535)):
        with pytest.raises(ProtocolError) as err:
            frames.parse_close(body)
        assert err.value.code == 1002, body
    with pytest.raises(ProtocolError) as err:
        frames.parse_close(struct.pack("!H", 1000) + b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc"
                           b"\xce\xb5\xed\xa0\x80")
    assert err.value.code == 1007
    for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999):
        assert frames.parse_close(struct.pack("!H", code))[0] == code


def test_after_a_bad_header_skim_finds_a_close_sent_one_byte_at_a_time():
    """After failing, the decoder passes over the rest of the bad frame and whatever
    follows it by frame lengths alone, and finds the peer's close however it is cut."""
    decoder = FrameDecoder(1 << 20)
    bad = client_frame(0xD, b"payload of a reserved opcode")
    rest = client_frame(frames.OP_TEXT, b"\xff not even text") + \
        client_frame(frames.OP_PING, b"p") + frames.close_frame(1000, "bye", mask=True)
    with pytest.raises(ProtocolError):
        decoder.feed(bad[:2])
    stream = bad[2:] + rest
    found = [decoder.skim(stream[i:i + 1]) for i in range(len(stream))]
    assert found[:-1] == [None] * (len(stream) - 1)
    assert frames.parse_close(found[-1]) == (1000, "bye")


def test_after_text_fails_mid_frame_skim_passes_over_the_rest_of_it():
    decoder = FrameDecoder(1 << 20)
    bad = client_frame(frames.OP_TEXT, b"\xff" + b"\x88\x82" * 200)  # close-like bytes inside
    with pytest.raises(ProtocolError):
        decoder.feed(bad[:20])
    assert decoder.skim(bad[20:]) is None
    assert decoder.skim(frames.close_frame(1002, mask=True)) == struct.pack("!H", 1002)


def test_after_a_frame_over_the_cap_skim_passes_over_its_payload_without_keeping_it():
    decoder = FrameDecoder(1000)
    with pytest.raises(ProtocolError) as err:
        decoder.feed(client_frame(frames.OP_BINARY, b"z" * 5000)[:200])
    assert err.value.code == 1009
    assert decoder.skim(b"z" * 4000) is None and len(decoder._buf) < 100
    assert decoder.skim(b"z" * 808 + frames.close_frame(1000, mask=True)) == b"\x03\xe8"


def test_the_fragment_cap_is_a_parameter():
    decoder = FrameDecoder(1 << 20, max_fragments=3)
    decoder.feed(client_frame(frames.OP_BINARY, b"a", fin=False))
    decoder.feed(client_frame(frames.OP_CONT, b"b", fin=False))
    decoder.feed(client_frame(frames.OP_CONT, b"c", fin=False))
    with pytest.raises(ProtocolError) as err:
        decoder.feed(client_frame(frames.OP_CONT, b"d"))
    assert err.value.code == 1009
