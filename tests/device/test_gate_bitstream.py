"""Packet headers parsed before decoding agree with what FFmpeg's decoders report.

Small clips are encoded here with PyAV (fixed content, fixed GOPs) so every header case
occurs: H.264 and HEVC with and without B-frames (reference B pictures through b-pyramid),
length-prefixed (mp4) and Annex-B (raw) framing, VP9 superframes with hidden alt-ref
frames and temporal layers with non-reference frames, MJPEG.
"""

from __future__ import annotations

import pickle
import socket
import threading
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coinfer.device.gate import PacketSource, PacketSourceError, SourcePacket, StreamParameters
from coinfer.device.gate import source as source_module
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.gate.bitstream import INTRA_ONLY_CODECS, PacketParser, create_parser
from coinfer.sdk.gate.packet import BitstreamError, PictureInfo, PictureType

WIDTH, HEIGHT, FRAMES, RATE = 160, 96, 72, 25
X264 = "keyint=24:min-keyint=24:scenecut=0:log-level=error"
X264_B = X264 + ":bframes=3:b-adapt=0:b-pyramid=normal"
X265_B = "keyint=24:min-keyint=24:scenecut=0:bframes=3:b-adapt=0:b-pyramid=1:log-level=error"
# Three temporal sub-layers: sub-layer non-reference pictures below the top one must stay.
X265_LAYERS = X265_B + ":temporal-layers=3"
X265_SLICES = X265_B + ":ctu=16:slices=3"  # later slices carry a slice_segment_address
# One-pass libvpx makes hidden alt-ref frames (superframes) only in realtime mode at
# speed >= 5 with a look-ahead. Two temporal layers give frames that refresh no slot, but
# only error-resilient coding makes them droppable (see the VP9 parser's docstring).
VP9_ALTREF = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "16", "auto-alt-ref": "1"}
VP9_LAYERS = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
              "ts-parameters": "ts_number_layers=2:ts_target_bitrate=100,200:ts_rate_decimator=2,1:"
                               "ts_periodicity=2:ts_layer_id=0,1:ts_layering_mode=2"}
VP9_LAYERS_RESILIENT = {**VP9_LAYERS, "error-resilient": "default"}
CLIPS = {
    "h264.mp4": ("libx264", {"x264-params": X264 + ":bframes=0"}),
    "h264.h264": ("libx264", {"x264-params": X264 + ":bframes=0"}),
    "h264_b.mp4": ("libx264", {"x264-params": X264_B}),
    "h264_b.h264": ("libx264", {"x264-params": X264_B}),
    "h264_b.ts": ("libx264", {"x264-params": X264_B}),
    "hevc_b.mp4": ("libx265", {"x265-params": X265_B}),
    "hevc_b.hevc": ("libx265", {"x265-params": X265_B}),
    "hevc_layers.mp4": ("libx265", {"x265-params": X265_LAYERS}),
    "hevc_slices.mp4": ("libx265", {"x265-params": X265_SLICES}),
    "vp9.webm": ("libvpx-vp9", VP9_ALTREF),
    "vp9_layers.webm": ("libvpx-vp9", VP9_LAYERS),
    "vp9_layers_resilient.webm": ("libvpx-vp9", VP9_LAYERS_RESILIENT),
    "mjpeg.mkv": ("mjpeg", {}),
}
RAW = (".h264", ".hevc")
PT = PictureType
# (picture, reference) pairs each clip must contain, and nothing else.
KINDS = {
    "h264": {(PT.I, True), (PT.P, True)},
    "h264_b": {(PT.I, True), (PT.P, True), (PT.B, True), (PT.B, False)},
    "hevc_b": {(PT.I, True), (PT.P, True), (PT.B, True), (PT.B, False)},
    "hevc_layers": {(PT.I, True), (PT.P, True), (PT.B, True), (PT.B, False)},
    "hevc_slices": {(PT.I, True), (PT.P, True), (PT.B, True), (PT.B, False)},
    "vp9": {(PT.I, True), (PT.P, True)},
    "vp9_layers": {(PT.I, True), (PT.P, True)},
    "vp9_layers_resilient": {(PT.I, True), (PT.P, True), (PT.P, False)},
    "mjpeg": {(PT.I, False)},
}


def _frames():
    """Moving gradients, a moving disc and a noise patch: every picture type gets used."""
    rng = np.random.default_rng(2024)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(FRAMES):
        image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        image[..., 0] = (xx * 2 + i * 3) % 256
        image[..., 1] = (yy * 3 + i) % 256
        image[..., 2] = 96
        cx, cy = (10 + 3 * i) % WIDTH, (20 + 2 * i) % HEIGHT
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < 150] = (255, 255, 0)
        image[40:60, 50:90] = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
        yield av.VideoFrame.from_ndarray(image, format="rgb24")


def _encode(path: Path, codec: str, options: dict[str, str]) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=RATE, options=options)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libvpx-vp9":
            stream.bit_rate = 200_000
        for frame in _frames():
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate_clips")
    return {name: _encode(root / name, codec, options) for name, (codec, options) in CLIPS.items()}


class Clip:
    """A clip's packets in decode order, with the key that ties each to its decoded frame.

    The key is the packet's pts. Raw Annex-B streams have none, so there each packet gets
    its decode index as pts: a decoder hands each frame the pts of the packet that carried
    it, whatever the reordering, so the match stays exact.
    """

    def __init__(self, path: Path) -> None:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            self.codec = stream.codec_context.name
            self.extradata = stream.codec_context.extradata
            self.data: list[bytes] = []
            self.keys: list[int] = []
            self.keyframes: list[bool] = []
            for packet in container.demux(stream):
                if packet.size:
                    self.data.append(bytes(packet))
                    self.keys.append(len(self.keys) if path.suffix in RAW else packet.pts)
                    self.keyframes.append(packet.is_keyframe)
        assert len(set(self.keys)) == len(self.keys) == FRAMES

    def decode(self, keep: list[bool] | None = None) -> dict[int, av.VideoFrame]:
        """Decoded frames by key, feeding only the packets ``keep`` marks (all by default)."""
        decoder = av.CodecContext.create(self.codec, "r")
        if self.extradata:
            decoder.extradata = self.extradata
        frames = {}
        for index, (data, key) in enumerate(zip(self.data, self.keys, strict=True)):
            if keep is None or keep[index]:
                packet = av.Packet(data)
                packet.pts = key
                frames.update((frame.pts, frame) for frame in decoder.decode(packet))
        frames.update((frame.pts, frame) for frame in decoder.decode(None))
        return frames


@pytest.fixture(scope="module")
def clip(clips):
    cache: dict[str, Clip] = {}

    def load(name: str) -> Clip:
        if name not in cache:
            cache[name] = Clip(clips[name])
        return cache[name]

    return load


@pytest.mark.parametrize(("name", "use_extradata"), [
    ("h264.mp4", True), ("h264.h264", True), ("h264.h264", False),
    ("h264_b.mp4", True), ("h264_b.h264", True), ("h264_b.h264", False), ("h264_b.ts", True),
    ("hevc_b.mp4", True), ("hevc_b.hevc", True), ("hevc_b.hevc", False),
    ("hevc_layers.mp4", True), ("hevc_slices.mp4", True),
    ("vp9.webm", True), ("vp9_layers.webm", True), ("vp9_layers_resilient.webm", True), ("mjpeg.mkv", True),
])
def test_parsed_picture_type_equals_decoded_pict_type_for_every_packet(clip, name, use_extradata):
    source = clip(name)
    parser = create_parser(source.codec, source.extradata if use_extradata else None)
    parsed = [parser.parse(data) for data in source.data]
    decoded = source.decode()
    assert [int(info.picture) for info in parsed] == [decoded[key].pict_type for key in source.keys]
    assert [info.random_access for info in parsed] == source.keyframes
    assert {(info.picture, info.reference) for info in parsed} == KINDS[name.split(".")[0]]
    assert all(info.show for info in parsed)


def test_vp9_superframes_hold_a_hidden_alt_ref_frame(clip):
    superframes = [data for data in clip("vp9.webm").data if data[-1] & 0xE0 == 0xC0]
    assert len(superframes) >= 3
    for packet in superframes:
        marker = packet[-1]
        size_bytes, count = ((marker >> 3) & 3) + 1, (marker & 7) + 1
        index = packet[-(2 + size_bytes * count):]
        assert index[0] == marker and count == 2
        hidden = create_parser("vp9").parse(packet[:int.from_bytes(index[1:1 + size_bytes], "little")])
        assert (hidden.show, hidden.reference, hidden.random_access) == (False, True, False)


def test_vp9_show_existing_frame_reports_the_type_of_the_frame_it_shows(clip):
    source = clip("vp9.webm")
    parser = create_parser("vp9")
    decoder = av.CodecContext.create("vp9", "r")
    for data in source.data[:20]:
        parser.parse(data)
        decoder.decode(av.Packet(data))
    seen = set()
    for slot in range(8):
        # frame_marker 2, profile 0, show_existing_frame 1, frame_to_show_map_idx = slot
        packet = bytes([0x88 | slot])
        info = parser.parse(packet)
        frames = decoder.decode(av.Packet(packet))
        assert len(frames) == 1 and frames[0].pict_type == int(info.picture)
        assert (info.reference, info.random_access, info.show) == (False, False, True)
        seen.add(info.picture)
    assert seen == {PT.I, PT.P}


@pytest.mark.parametrize("name", ["h264_b.mp4", "h264_b.h264", "hevc_b.mp4", "hevc_layers.mp4",
                                  "vp9_layers_resilient.webm"])
def test_dropping_non_reference_packets_leaves_every_kept_frame_bit_identical(clip, name):
    source = clip(name)
    parser = create_parser(source.codec, source.extradata)
    keep = [parser.parse(data).reference for data in source.data]
    assert 0 < keep.count(False) <= len(keep) // 2
    everything = source.decode()
    level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture(local=False) as logs:
            kept = source.decode(keep)
    finally:
        av.logging.set_level(level)
    assert logs == []
    assert sorted(kept) == sorted(key for key, kept_ in zip(source.keys, keep, strict=True) if kept_)
    for key, frame in kept.items():
        np.testing.assert_array_equal(frame.to_ndarray(), everything[key].to_ndarray())


def test_vp9_frames_refreshing_no_slot_still_feed_the_next_frame_unless_error_resilient(clip):
    """Why VP9 needs error_resilient_mode for reference=False: without it dropping breaks frames."""
    source = clip("vp9_layers.webm")
    # Profile-0 shown inter frames: 0x86 = frame_marker 2, frame_type 1, show_frame 1, error
    # resilience 0; then 2 bits of reset_frame_context and 8 of refresh_frame_flags.
    no_refresh = [data[0] == 0x86 and (int.from_bytes(data[1:3], "big") >> 6) & 0xFF == 0
                  for data in source.data]
    assert 0 < sum(no_refresh) <= len(no_refresh) // 2
    parser = create_parser("vp9")
    assert all(parser.parse(data).reference for data in source.data)
    everything = source.decode()
    kept = source.decode([not flag for flag in no_refresh])
    assert any(not np.array_equal(frame.to_ndarray(), everything[key].to_ndarray())
               for key, frame in kept.items())


def test_hevc_packet_starting_at_a_later_slice_segment(clip):
    """A packet cut before a later slice still parses: slice_segment_address is sized from the SPS."""
    source = clip("hevc_slices.mp4")
    parser = create_parser("hevc", source.extradata)
    later = 0
    for data in source.data:
        whole = parser.parse(data)
        nals, position = [], 0
        while position < len(data):
            end = position + 4 + int.from_bytes(data[position:position + 4], "big")
            nals.append(data[position:end])
            position = end
        slices = [nal for nal in nals if nal[4] >> 1 < 32]
        assert len(slices) == 3
        for first in (1, 2):
            assert parser.parse(b"".join(slices[first:])) == whole
            later += 1
    assert later == 2 * FRAMES


def test_intra_only_codecs_are_intra_only_in_ffmpeg():
    for codec in INTRA_ONLY_CODECS - {"png"}:
        assert av.Codec(codec, "r").intra_only, codec
    info = create_parser("mjpeg").parse(b"\xff\xd8")
    assert info == PictureInfo(PT.I, reference=False, random_access=True)


H264_AVCC = b"\x01\x64\x00\x0b\xff\xe1\x00\x00\x01\x00\x00"


@pytest.mark.parametrize(("codec", "extradata", "data", "message"), [
    ("h264", None, b"", "no Annex-B start code"),
    ("h264", None, b"\x00\x00\x01\x09\xf0\x00\x00\x01\x06\x05", "no slice NAL unit"),
    ("h264", None, b"\x00\x00\x01\x65" + b"\x00\x00\x03" * 4 + b"\x80",
     "Exp-Golomb code of first_mb_in_slice is too long"),
    ("h264", None, b"\x00\x00\x01\x65" + bytes(8), "data ends inside first_mb_in_slice"),
    ("h264", None, b"\x00\x00\x01\x65\x80", "data ends inside slice_type"),
    ("h264", None, b"\x00\x00\x01\x41\x80\x00\x00\x03\x00\x00\x01", "data ends inside slice_type"),
    ("h264", None, b"\x00\x00\x01\x41\x82\x00", "slice_type = 31 exceeds 9"),
    ("h264", None, b"\x00\x00\x01\xe5\x88\x80", "forbidden_zero_bit"),
    ("h264", H264_AVCC, b"\x00\x00\x00\x09\x65\x88", "claims 9 bytes, only 2 remain"),
    ("h264", H264_AVCC, b"\x00\x00\x01", "length prefix cut off at byte 0"),
    ("h264", b"\x02\x00", b"", "neither an avcC record"),
    ("hevc", None, b"\x00\x00\x01\x26\x01\xa0", "refers to PPS 0, which has not been seen"),
    ("hevc", None, b"\x00\x00\x01\x26", "shorter than its 2-byte header"),
    ("hevc", None, b"\x00\x00\x01\x26\x00\xa0", "nuh_temporal_id_plus1 = 0"),
    ("hevc", None, b"\x00\x00\x01\x44\x01\x0f", "data ends inside pps_pic_parameter_set_id"),
    ("hevc", None, b"\x00\x00\x01\x40\x01\x0c", "no slice segment"),
    ("hevc", b"\x01" * 10, b"", "shorter than 23"),
    ("vp9", None, b"", "VP9 packet is empty"),
    ("vp9", None, b"\x00", "frame_marker is not 2"),
    ("vp9", None, b"\x82\x49\x83\x43\x00", "frame_sync_code is wrong"),
    ("vp9", None, b"\x86\x00", "data ends inside refresh_frame_flags"),
    ("vp9", None, b"\x86\x00\xc1\x05\x05\xc1", "frame 0 of 5 bytes overruns"),
    ("mjpeg", None, b"", "mjpeg packet is empty"),
])
def test_malformed_packets_raise_bitstream_error_naming_the_field(codec, extradata, data, message):
    with pytest.raises(BitstreamError, match=message):
        create_parser(codec, extradata).parse(data)


def test_unknown_codec_is_named():
    with pytest.raises(BitstreamError, match="'mpeg4'") as caught:
        create_parser("mpeg4")
    assert isinstance(caught.value, CoinferError)


def test_hevc_parser_without_extradata_learns_parameter_sets_in_band(clip):
    """The first packet of a raw stream carries VPS/SPS/PPS before its slice; later ones need them."""
    source = clip("hevc_b.hevc")
    parser = create_parser("hevc")
    with pytest.raises(BitstreamError, match="PPS 0"):
        parser.parse(source.data[1])
    assert parser.parse(source.data[0]).picture == PT.I
    assert parser.parse(source.data[1]).picture in (PT.P, PT.B)


# ------------------------------------------------------------------------- fuzzing

#: Each fuzz test runs a quick pass of 50 examples in every run and a thorough one of 400
#: with the slow tests.
FUZZ_PASSES = pytest.mark.parametrize("examples", [
    pytest.param(50, id="quick"), pytest.param(400, id="thorough", marks=pytest.mark.slow)])


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


CASES = {
    # name: (clip, use the stream's extradata)
    "h264 avcc": ("h264_b.mp4", True),
    "h264 annexb": ("h264_b.h264", False),
    "hevc hvcc": ("hevc_b.mp4", True),
    "hevc annexb extradata": ("hevc_b.hevc", True),
    "hevc annexb bare": ("hevc_b.hevc", False),
    "vp9": ("vp9.webm", False),
}
_EDIT = st.tuples(
    st.sampled_from(("flip", "cut", "insert", "delete")),
    st.one_of(st.integers(0, 40), st.integers(0, 1 << 16)),  # near the headers, or anywhere
    st.booleans(),  # count the position from the end (VP9 superframe index, trailing NALs)
    st.binary(min_size=1, max_size=4),
)


def _mutate(data: bytes, edits) -> bytes:
    buffer = bytearray(data)
    for kind, offset, from_end, blob in edits:
        position = offset % (len(buffer) + 1)
        if from_end:
            position = len(buffer) - position
        if kind == "flip" and buffer:
            buffer[min(position, len(buffer) - 1)] ^= 1 << (blob[0] & 7)
        elif kind == "cut":
            del buffer[position:]
        elif kind == "insert":
            buffer[position:position] = blob
        else:
            del buffer[position:position + len(blob)]
    return bytes(buffer)


def _parse_or_reject(parser: PacketParser, data: bytes) -> None:
    try:
        info = parser.parse(data)
    except BitstreamError as error:
        assert str(error)
    else:
        assert isinstance(info, PictureInfo) and isinstance(info.picture, PictureType)


def _fresh_parser(source: Clip, use_extradata: bool) -> PacketParser:
    parser = create_parser(source.codec, source.extradata if use_extradata else None)
    parser.parse(source.data[0])  # parameter sets of a bare Annex-B stream come in-band
    return parser


@FUZZ_PASSES
@pytest.mark.parametrize("case", CASES)
def test_fuzz_random_bytes_give_picture_info_or_bitstream_error(clip, case, examples):
    source = clip(CASES[case][0])
    parser = _fresh_parser(source, CASES[case][1])
    prefixes = [b"", b"\x00\x00\x01", b"\x00\x00\x00\x01", b"\x00\x00\x00\x08"]

    @fuzz(examples)
    @given(prefix=st.sampled_from(prefixes), body=st.binary(max_size=96))
    def check(prefix: bytes, body: bytes) -> None:
        _parse_or_reject(parser, prefix + body)

    check()


@FUZZ_PASSES
@pytest.mark.parametrize("case", CASES)
def test_fuzz_mutated_real_packets_give_picture_info_or_bitstream_error(clip, case, examples):
    source = clip(CASES[case][0])
    parser = _fresh_parser(source, CASES[case][1])

    @fuzz(examples)
    @given(index=st.integers(0, FRAMES - 1), edits=st.lists(_EDIT, min_size=1, max_size=4))
    def check(index: int, edits) -> None:
        _parse_or_reject(parser, _mutate(source.data[index], edits))

    check()


@FUZZ_PASSES
@pytest.mark.parametrize("name", ["h264_b.mp4", "h264_b.h264", "hevc_b.mp4", "hevc_b.hevc"])
def test_fuzz_mutated_extradata_gives_a_parser_or_bitstream_error(clip, name, examples):
    source = clip(name)

    @fuzz(examples)
    @given(edits=st.lists(_EDIT, min_size=1, max_size=4))
    def check(edits) -> None:
        try:
            parser = create_parser(source.codec, _mutate(source.extradata, edits))
        except BitstreamError as error:
            assert str(error)
        else:
            _parse_or_reject(parser, source.data[0])

    check()


def test_parse_speed_smoke(clip, capsys):
    """Prints microseconds per packet; timing is never asserted (shared CI machines)."""
    lines = []
    for name in ("h264_b.mp4", "h264_b.h264", "hevc_b.mp4", "hevc_b.hevc", "vp9.webm"):
        source = clip(name)
        parser = create_parser(source.codec, source.extradata)
        first = [parser.parse(data) for data in source.data]
        start = time.perf_counter()
        for _ in range(20):
            again = [parser.parse(data) for data in source.data]
        elapsed = time.perf_counter() - start
        assert again == first
        lines.append(f"{name}: {elapsed / (20 * len(source.data)) * 1e6:.1f} us/packet")
    with capsys.disabled():
        print("\nparse speed:", "; ".join(lines))


# ------------------------------------------------------------------------- PacketSource

def _decoded_types(parameters: StreamParameters, packets: list[SourcePacket]) -> list[int]:
    """pict_type of each packet's frame, decoded in another context from the parameters only."""
    decoder = parameters.create_decoder()
    types = {}
    for packet in packets:
        av_packet = av.Packet(packet.data)
        av_packet.pts = packet.info.index if packet.info.pts is None else packet.info.pts
        types.update((frame.pts, frame.pict_type) for frame in decoder.decode(av_packet))
    types.update((frame.pts, frame.pict_type) for frame in decoder.decode(None))
    return [types[packet.info.index if packet.info.pts is None else packet.info.pts] for packet in packets]


@pytest.mark.parametrize(("name", "codec"), [
    ("h264_b.mp4", "h264"), ("hevc_b.hevc", "hevc"), ("vp9.webm", "vp9"), ("mjpeg.mkv", "mjpeg"),
])
def test_packet_source_reads_a_file(clips, name, codec):
    path = clips[name]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        expected = [(p.pts, p.dts, p.size, p.is_keyframe) for p in container.demux(stream) if p.size]
        time_base, extradata = stream.time_base, stream.codec_context.extradata
    with PacketSource.open(str(path), stream_id=7) as source:
        parameters = source.parameters
        packets = list(source)
        assert source.parse_errors == 0
    assert next(source, None) is None  # closed: iteration has ended
    assert parameters == StreamParameters(codec, extradata, WIDTH, HEIGHT, time_base, Fraction(RATE))
    assert pickle.loads(pickle.dumps(parameters)) == parameters
    infos = [packet.info for packet in packets]
    assert [info.index for info in infos] == list(range(FRAMES))
    assert {info.stream for info in infos} == {7}
    assert [(i.pts, i.dts, i.size, i.keyframe) for i in infos] == expected
    assert [len(packet.data) for packet in packets] == [info.size for info in infos]
    assert [int(info.picture) for info in infos] == _decoded_types(parameters, packets)


def _serve(payload: bytes | None) -> tuple[socket.socket, threading.Thread]:
    """A loopback TCP server that sends ``payload`` to its first client (None: stays silent)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)

    def run() -> None:
        connection, _ = server.accept()
        with connection:
            if payload is not None:
                connection.sendall(payload)
            else:
                connection.recv(1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server, thread


def test_packet_source_reads_a_live_tcp_stream(clips):
    server, thread = _serve(clips["h264_b.ts"].read_bytes())
    with server, PacketSource.open(f"tcp://127.0.0.1:{server.getsockname()[1]}", timeout_s=300) as source:
        parameters = source.parameters
        packets = list(source)
        assert source.parse_errors == 0
    thread.join(5)
    assert parameters.codec == "h264" and (parameters.width, parameters.height) == (WIDTH, HEIGHT)
    assert [packet.info.index for packet in packets] == list(range(FRAMES))
    types = [int(packet.info.picture) for packet in packets]
    assert types == _decoded_types(parameters, packets)
    assert Counter(types)[int(PT.B)] > 0


def test_silent_live_source_times_out_with_a_clear_error():
    server, thread = _serve(None)
    url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    with server, pytest.raises(PacketSourceError, match="timed out") as caught:
        PacketSource.open(url, timeout_s=0.5)
    assert url in str(caught.value)
    thread.join(5)


def test_missing_and_non_video_sources_give_clear_errors(tmp_path):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(PacketSourceError, match=r"missing\.mp4"):
        PacketSource.open(str(missing))
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 50)
    with pytest.raises(PacketSourceError, match=r"notes\.txt"):
        PacketSource.open(str(text))
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(PacketSourceError, match=r"tone\.wav' has no video stream"):
        PacketSource.open(str(audio))


def test_unsupported_codec_is_a_clear_error(tmp_path):
    path = _encode(tmp_path / "clip.mkv", "mpeg4", {})
    with pytest.raises(PacketSourceError, match=r"clip\.mkv.*'mpeg4'"):
        PacketSource.open(str(path))


def test_unparsable_packets_are_yielded_as_unknown_and_counted(clips, monkeypatch):
    class EveryFourthFails(PacketParser):
        def __init__(self, inner: PacketParser) -> None:
            self.inner = inner
            self.calls = 0

        def parse(self, data: bytes) -> PictureInfo:
            self.calls += 1
            if self.calls % 4 == 0:
                raise BitstreamError("corrupt slice header")
            return self.inner.parse(data)

    monkeypatch.setattr(source_module, "create_parser",
                        lambda codec, extradata: EveryFourthFails(create_parser(codec, extradata)))
    with PacketSource.open(str(clips["h264_b.mp4"])) as source:
        packets = list(source)
        assert source.parse_errors == FRAMES // 4
    failed = packets[3::4]
    assert all(p.info.header == PictureInfo(PictureType.UNKNOWN, True, p.info.keyframe) for p in failed)
    assert all(p.info.picture != PictureType.UNKNOWN for i, p in enumerate(packets) if i % 4 != 3)
