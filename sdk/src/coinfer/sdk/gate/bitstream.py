"""Picture type of a compressed video packet, read from its headers without decoding it.

The gate must decide which packets to decode before paying for decoding, so this module
reads only the few header bits that say what a packet is: H.264 and HEVC slice headers,
VP9 uncompressed frame headers (superframes included), and a fixed answer for intra-only
codecs. It is pure Python (stdlib only) so it runs on any device; a packet costs a few
microseconds because only the first bytes of the first slice are ever unescaped and read.

Every failure on malformed bytes is a :class:`BitstreamError` naming the field that broke:
callers feed it untrusted network data and must be able to catch one type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from coinfer.sdk.gate.packet import BitstreamError, PictureInfo, PictureType

__all__ = ["INTRA_ONLY_CODECS", "PacketParser", "create_parser"]

#: FFmpeg codec names whose every packet is a self-contained picture. All but ``png``
#: carry the intra-only property in FFmpeg's codec descriptors; a ``png`` packet is one
#: complete image all the same (animated PNG is the separate ``apng`` codec).
INTRA_ONLY_CODECS = frozenset({
    "bmp", "dnxhd", "dpx", "dvvideo", "exr", "ffvhuff", "hap", "huffyuv", "jpeg2000", "jpegls",
    "magicyuv", "mjpeg", "mjpegb", "png", "prores", "qoi", "rawvideo", "tiff", "utvideo", "v210",
    "webp",
})

_START_CODE = b"\x00\x00\x01"
_EMULATION = b"\x00\x00\x03"
# Raw bytes of a NAL unit read for a slice header. After removing emulation-prevention
# bytes at least 2/3 of them remain, more than any valid header prefix read here needs.
_SLICE_WINDOW = 32
# Parameter sets read in full; real ones are far shorter (an HEVC SPS with every sub-layer
# profile present stays under 200 bytes before its VUI, which is never reached).
_PARAMETER_SET_WINDOW = 512
_MAX_GOLOMB_ZEROS = 31  # ue(v) values are at most 2**32 - 2 in both standards


class _Bits:
    """MSB-first reader over a short byte string held as one Python int (fast shifts)."""

    __slots__ = ("_left", "_value", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8
        self._what = what

    def u(self, count: int, field: str) -> int:
        if count > self._left:
            raise BitstreamError(f"{self._what}: data ends inside {field}")
        self._left -= count
        return (self._value >> self._left) & ((1 << count) - 1)

    def ue(self, field: str, maximum: int) -> int:
        rest = self._value & ((1 << self._left) - 1)
        zeros = self._left - rest.bit_length()
        if zeros > _MAX_GOLOMB_ZEROS:
            raise BitstreamError(f"{self._what}: Exp-Golomb code of {field} is too long")
        if 2 * zeros + 1 > self._left:
            raise BitstreamError(f"{self._what}: data ends inside {field}")
        self._left -= 2 * zeros + 1
        value = (rest >> self._left) - 1
        if value > maximum:
            raise BitstreamError(f"{self._what}: {field} = {value} exceeds {maximum}")
        return value

    def skip(self, count: int, field: str) -> None:
        if count > self._left:
            raise BitstreamError(f"{self._what}: data ends inside {field}")
        self._left -= count


def _rbsp(payload: bytes) -> bytes:
    """Remove emulation-prevention bytes (00 00 03 -> 00 00), left to right as the standards do."""
    return payload.replace(_EMULATION, b"\x00\x00") if _EMULATION in payload else payload


def _iter_nals(data: bytes, length_size: int, codec: str) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of each NAL unit in a packet, lazily.

    ``length_size`` 0 means Annex-B start codes. There ``end`` is the packet's end: finding
    the real end means scanning the whole NAL unit, which callers avoid by reading a
    window through :func:`_window`.
    """
    size = len(data)
    if length_size:
        pos = 0
        while pos < size:
            body = pos + length_size
            if body > size:
                raise BitstreamError(f"{codec} packet: NAL length prefix cut off at byte {pos}")
            end = body + int.from_bytes(data[pos:body], "big")
            if end > size:
                raise BitstreamError(
                    f"{codec} packet: NAL unit at byte {pos} claims {end - body} bytes, "
                    f"only {size - body} remain")
            if end > body:
                yield body, end
            pos = end
        return
    start = data.find(_START_CODE)
    if start < 0:
        raise BitstreamError(f"{codec} packet: no Annex-B start code")
    while start >= 0:
        start += 3
        if start < size:
            yield start, size
        start = data.find(_START_CODE, start)


def _window(data: bytes, start: int, end: int, size: int) -> bytes:
    """Up to ``size`` bytes of the NAL unit at ``start``, cut at the next Annex-B start code.

    A well-formed NAL unit never contains 00 00 00 or 00 00 01 (emulation prevention), so
    the cut only matters for Annex-B packets, whose ``end`` is the packet's end.
    """
    window = data[start:min(end, start + size)]
    for marker in (_START_CODE, b"\x00\x00\x00"):
        cut = window.find(marker)
        if cut >= 0:
            window = window[:cut]
    return window


class PacketParser(ABC):
    """Reads the :class:`PictureInfo` of one stream's packets; create it with :func:`create_parser`.

    A parser may keep state between packets (HEVC parameter sets, VP9 reference slots), so
    use one per stream and feed it every packet in decode order.
    """

    codec: str

    @abstractmethod
    def parse(self, data: bytes) -> PictureInfo:
        """Header facts of one packet; :class:`BitstreamError` if its bytes do not parse."""


class _IntraOnlyParser(PacketParser):
    """Every packet of an intra-only codec is an independent, unreferenced picture."""

    _INFO = PictureInfo(PictureType.I, reference=False, random_access=True)

    def __init__(self, codec: str) -> None:
        self.codec = codec

    def parse(self, data: bytes) -> PictureInfo:
        if not data:
            raise BitstreamError(f"{self.codec} packet is empty")
        return self._INFO


# ----------------------------------------------------------------------------- H.264

_H264_SLICE_NALS = frozenset({1, 2, 5})  # non-IDR slice, data partition A (slice header first), IDR
_H264_SLICE_TYPES = (PictureType.P, PictureType.B, PictureType.I, PictureType.P, PictureType.I)
_H264_MAX_MBS = 139264  # MaxFS of level 6.2: first_mb_in_slice is below it


def _h264_length_size(extradata: bytes | None) -> int:
    """NAL length-prefix size from avcC extradata; 0 (Annex-B) when there is none."""
    if not extradata or extradata.startswith((_START_CODE, b"\x00" + _START_CODE)):
        return 0
    if extradata[0] != 1 or len(extradata) < 7:
        raise BitstreamError("H.264 extradata is neither an avcC record (version 1) nor Annex-B")
    return (extradata[4] & 3) + 1


class _H264Parser(PacketParser):
    """Slice type and nal_ref_idc of the first slice NAL unit; H.264 needs no other state."""

    codec = "h264"

    def __init__(self, extradata: bytes | None) -> None:
        self._length_size = _h264_length_size(extradata)

    def parse(self, data: bytes) -> PictureInfo:
        for start, end in _iter_nals(data, self._length_size, "H.264"):
            header = data[start]
            kind = header & 0x1F
            if kind not in _H264_SLICE_NALS:
                continue
            if header & 0x80:
                raise BitstreamError("H.264 slice NAL unit has forbidden_zero_bit set")
            bits = _Bits(_rbsp(_window(data, start + 1, end, _SLICE_WINDOW)), "H.264 slice header")
            bits.ue("first_mb_in_slice", _H264_MAX_MBS)
            slice_type = bits.ue("slice_type", 9)
            return PictureInfo(_H264_SLICE_TYPES[slice_type % 5], reference=(header & 0x60) != 0,
                               random_access=kind == 5)
        raise BitstreamError("H.264 packet holds no slice NAL unit")


# ----------------------------------------------------------------------------- HEVC

_HEVC_SLICE_NALS = frozenset(range(10)) | frozenset(range(16, 22))  # reserved types are skipped
_HEVC_IRAP_NALS = frozenset(range(16, 24))
# Sub-layer non-reference pictures (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N): no later picture
# *of the same temporal sub-layer* predicts from them, but pictures of higher sub-layers may.
# So they are droppable only on the highest sub-layer the SPS allows; lower ones count as
# reference (see _HevcParser._picture).
_HEVC_SUBLAYER_NON_REFERENCE = frozenset({0, 2, 4, 6, 8})
_HEVC_SLICE_TYPES = (PictureType.B, PictureType.P, PictureType.I)
_HEVC_SPS, _HEVC_PPS = 33, 34
_HEVC_MAX_LUMA_SAMPLES = 35651584  # MaxLumaPs of level 6.2


class _HevcSps:
    __slots__ = ("address_bits", "max_sub_layers")

    def __init__(self, address_bits: int, max_sub_layers: int) -> None:
        self.address_bits = address_bits
        self.max_sub_layers = max_sub_layers


class _HevcPps:
    __slots__ = ("dependent_slices", "extra_bits", "sps_id")

    def __init__(self, sps_id: int, dependent_slices: bool, extra_bits: int) -> None:
        self.sps_id = sps_id
        self.dependent_slices = dependent_slices
        self.extra_bits = extra_bits


def _hevc_skip_profile_tier_level(bits: _Bits, max_sub_layers_minus1: int) -> None:
    """profile_tier_level(1, sps_max_sub_layers_minus1): only its length matters here."""
    bits.skip(96, "general profile_tier_level")
    present = [bits.u(2, "sub_layer_profile/level_present_flag") for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1:
        bits.skip(2 * (8 - max_sub_layers_minus1), "profile_tier_level reserved bits")
    for flags in present:
        bits.skip((88 if flags & 2 else 0) + (8 if flags & 1 else 0), "sub-layer profile_tier_level")


def _hevc_parse_sps(rbsp: bytes) -> tuple[int, _HevcSps]:
    """The SPS fields up to the CTB size: enough for slice_segment_address and sub-layers."""
    bits = _Bits(rbsp, "HEVC SPS")
    bits.skip(4, "sps_video_parameter_set_id")
    max_sub_layers_minus1 = bits.u(3, "sps_max_sub_layers_minus1")
    if max_sub_layers_minus1 > 6:
        raise BitstreamError(f"HEVC SPS: sps_max_sub_layers_minus1 = {max_sub_layers_minus1} exceeds 6")
    bits.skip(1, "sps_temporal_id_nesting_flag")
    _hevc_skip_profile_tier_level(bits, max_sub_layers_minus1)
    sps_id = bits.ue("sps_seq_parameter_set_id", 15)
    if bits.ue("chroma_format_idc", 3) == 3:
        bits.skip(1, "separate_colour_plane_flag")
    width = bits.ue("pic_width_in_luma_samples", _HEVC_MAX_LUMA_SAMPLES)
    height = bits.ue("pic_height_in_luma_samples", _HEVC_MAX_LUMA_SAMPLES)
    if not width or not height or width * height > _HEVC_MAX_LUMA_SAMPLES:
        raise BitstreamError(f"HEVC SPS: picture size {width}x{height} is out of range")
    if bits.u(1, "conformance_window_flag"):
        for field in ("conf_win_left_offset", "conf_win_right_offset", "conf_win_top_offset",
                      "conf_win_bottom_offset"):
            bits.ue(field, _HEVC_MAX_LUMA_SAMPLES)
    bits.ue("bit_depth_luma_minus8", 8)
    bits.ue("bit_depth_chroma_minus8", 8)
    bits.ue("log2_max_pic_order_cnt_lsb_minus4", 12)
    all_layers = bits.u(1, "sps_sub_layer_ordering_info_present_flag")
    for _ in range(max_sub_layers_minus1 + 1 if all_layers else 1):
        bits.ue("sps_max_dec_pic_buffering_minus1", 15)
        bits.ue("sps_max_num_reorder_pics", 15)
        bits.ue("sps_max_latency_increase_plus1", 0xFFFFFFFE)
    min_cb_log2 = bits.ue("log2_min_luma_coding_block_size_minus3", 3) + 3
    ctb_log2 = min_cb_log2 + bits.ue("log2_diff_max_min_luma_coding_block_size", 3)
    if not 4 <= ctb_log2 <= 6:
        raise BitstreamError(f"HEVC SPS: CTB size 2**{ctb_log2} is not 16, 32 or 64")
    ctb = 1 << ctb_log2
    ctbs = -(-width // ctb) * -(-height // ctb)
    return sps_id, _HevcSps((ctbs - 1).bit_length(), max_sub_layers_minus1 + 1)


def _hevc_parse_pps(rbsp: bytes) -> tuple[int, _HevcPps]:
    """The PPS fields a slice header needs before its slice_type."""
    bits = _Bits(rbsp, "HEVC PPS")
    pps_id = bits.ue("pps_pic_parameter_set_id", 63)
    sps_id = bits.ue("pps_seq_parameter_set_id", 15)
    dependent = bits.u(1, "dependent_slice_segments_enabled_flag")
    bits.skip(1, "output_flag_present_flag")
    return pps_id, _HevcPps(sps_id, bool(dependent), bits.u(3, "num_extra_slice_header_bits"))


def _hevc_length_size(extradata: bytes | None) -> tuple[int, list[bytes]]:
    """Length-prefix size (0 for Annex-B) and the parameter-set NAL units of the extradata."""
    if not extradata:
        return 0, []
    if extradata.startswith((_START_CODE, b"\x00" + _START_CODE)):
        return 0, [_window(extradata, start, end, _PARAMETER_SET_WINDOW)
                   for start, end in _iter_nals(extradata, 0, "HEVC extradata")]
    if len(extradata) < 23:
        raise BitstreamError(f"HEVC extradata: hvcC record of {len(extradata)} bytes is shorter than 23")
    nals = []
    pos = 23
    for array in range(extradata[22]):
        if pos + 3 > len(extradata):
            raise BitstreamError(f"HEVC extradata: hvcC array {array} is cut off")
        count = int.from_bytes(extradata[pos + 1:pos + 3], "big")
        pos += 3
        for _ in range(count):
            length = int.from_bytes(extradata[pos:pos + 2], "big")
            if pos + 2 + length > len(extradata) or length == 0:
                raise BitstreamError(f"HEVC extradata: a NAL unit of hvcC array {array} is cut off")
            nals.append(extradata[pos + 2:pos + 2 + length])
            pos += 2 + length
    return (extradata[21] & 3) + 1, nals


def _hevc_nal_kind(nal: bytes, offset: int) -> int:
    """NAL unit type of a base-layer NAL unit; -1 for the enhancement layers not followed here."""
    if len(nal) < 2:
        raise BitstreamError(f"HEVC NAL unit at byte {offset} is shorter than its 2-byte header")
    if nal[0] & 0x80:
        raise BitstreamError(f"HEVC NAL unit at byte {offset} has forbidden_zero_bit set")
    if nal[0] & 1 or nal[1] & 0xF8:
        return -1
    return nal[0] >> 1


class _HevcParser(PacketParser):
    """First slice segment header, with the SPS/PPS it depends on kept by id.

    Parameter sets come from the extradata and from the packets (in-band), in stream order.
    Length-prefixed packets are walked to the end, so a PPS placed after a slice is in force
    for the next packet; that walk only hops over lengths. In Annex-B packets it would mean
    scanning all slice data for start codes (16 us for an 18 KB packet), so the walk stops
    at the first slice: FFmpeg's HEVC parser, which frames the packets of raw, MPEG-TS and
    RTP streams, starts a new packet at any parameter set that follows a slice, so there a
    PPS never comes after the first slice of its packet.
    """

    codec = "hevc"

    def __init__(self, extradata: bytes | None) -> None:
        self._sps: dict[int, _HevcSps] = {}
        self._pps: dict[int, _HevcPps] = {}
        self._length_size, nals = _hevc_length_size(extradata)
        for nal in nals:
            self._parameter_set(_hevc_nal_kind(nal, 0), nal[:_PARAMETER_SET_WINDOW])

    def _parameter_set(self, kind: int, nal: bytes) -> None:
        """Store an SPS or PPS (``nal`` includes its 2-byte header)."""
        if kind == _HEVC_SPS:
            sps_id, sps = _hevc_parse_sps(_rbsp(nal[2:]))
            self._sps[sps_id] = sps
        elif kind == _HEVC_PPS:
            pps_id, pps = _hevc_parse_pps(_rbsp(nal[2:]))
            self._pps[pps_id] = pps

    def parse(self, data: bytes) -> PictureInfo:
        info = None
        for start, end in _iter_nals(data, self._length_size, "HEVC"):
            head = _window(data, start, end, _SLICE_WINDOW)
            kind = _hevc_nal_kind(head, start)
            if kind in (_HEVC_SPS, _HEVC_PPS):
                self._parameter_set(kind, _window(data, start, end, _PARAMETER_SET_WINDOW))
            elif info is None and kind in _HEVC_SLICE_NALS:
                info = self._picture(kind, head)
                if not self._length_size:
                    break
        if info is None:
            raise BitstreamError("HEVC packet holds no slice segment of the base layer")
        return info

    def _picture(self, kind: int, nal: bytes) -> PictureInfo:
        temporal_id = (nal[1] & 7) - 1
        if temporal_id < 0:
            raise BitstreamError("HEVC slice NAL unit has nuh_temporal_id_plus1 = 0")
        bits = _Bits(_rbsp(nal[2:]), "HEVC slice segment header")
        first = bits.u(1, "first_slice_segment_in_pic_flag")
        irap = kind in _HEVC_IRAP_NALS
        if irap:
            bits.skip(1, "no_output_of_prior_pics_flag")
        pps_id = bits.ue("slice_pic_parameter_set_id", 63)
        pps = self._pps.get(pps_id)
        if pps is None:
            raise BitstreamError(f"HEVC slice refers to PPS {pps_id}, which has not been seen")
        sps = self._sps.get(pps.sps_id)
        if not first:
            if pps.dependent_slices and bits.u(1, "dependent_slice_segment_flag"):
                raise BitstreamError("HEVC packet starts with a dependent slice segment: "
                                     "its slice_type is in an earlier packet")
            if sps is None:
                raise BitstreamError(f"HEVC slice needs SPS {pps.sps_id}, which has not been seen")
            bits.skip(sps.address_bits, "slice_segment_address")
        bits.skip(pps.extra_bits, "slice_reserved_flag")
        slice_type = bits.ue("slice_type", 2)
        # Without the SPS the highest sub-layer is unknown: keep the picture (safe side).
        droppable = (kind in _HEVC_SUBLAYER_NON_REFERENCE and sps is not None
                     and temporal_id == sps.max_sub_layers - 1)
        return PictureInfo(_HEVC_SLICE_TYPES[slice_type], reference=not droppable, random_access=irap)


# ----------------------------------------------------------------------------- VP9

_VP9_SYNC_CODE = 0x498342
_VP9_CS_RGB = 7


def _vp9_frames(data: bytes) -> list[bytes]:
    """The frames of a packet: a superframe's index (same marker byte at both ends) splits it."""
    marker = data[-1]
    if marker & 0xE0 == 0xC0:
        count = (marker & 7) + 1
        size_bytes = ((marker >> 3) & 3) + 1
        index_size = 2 + size_bytes * count
        if index_size <= len(data) and data[-index_size] == marker:
            frames = []
            pos = 0
            limit = len(data) - index_size
            for i in range(count):
                at = len(data) - index_size + 1 + i * size_bytes
                size = int.from_bytes(data[at:at + size_bytes], "little")
                if size == 0 or pos + size > limit:
                    raise BitstreamError(f"VP9 superframe: frame {i} of {size} bytes overruns the packet")
                frames.append(data[pos:pos + size])
                pos += size
            return frames
    return [data]


class _Vp9Parser(PacketParser):
    """Uncompressed frame headers of every frame in the packet.

    The eight reference slots' picture types are tracked so that a ``show_existing_frame``
    packet reports the type of the frame it shows, as FFmpeg's decoder does.

    A VP9 frame that refreshes no slot is still not droppable in general: unless the next
    frame is error-resilient, that frame reads the previous frame's motion vectors,
    segmentation map, loop-filter deltas and (if it refreshed one) entropy context. So a
    frame is reported as non-reference only when it refreshes no slot *and* is coded
    error-resilient: an encoder setting that libvpx applies to every frame of a stream
    (temporal-layer streams made for dropping use it). A stream mixing error-resilient
    non-reference frames with ordinary frames right after them would defeat this.
    ``show_existing_frame`` packets change no decoder state and are never references.
    """

    codec = "vp9"

    def __init__(self) -> None:
        self._slots = [PictureType.UNKNOWN] * 8

    def parse(self, data: bytes) -> PictureInfo:
        if not data:
            raise BitstreamError("VP9 packet is empty")
        shown = None
        hidden_type = PictureType.P
        reference = random_access = False
        for frame in _vp9_frames(data):
            picture, show, refresh, droppable, key = self._frame(frame)
            reference = reference or not droppable
            random_access = random_access or key
            if show:
                shown = picture
            elif picture == PictureType.I:
                hidden_type = picture
            for slot in range(8):
                if refresh >> slot & 1:
                    self._slots[slot] = picture
        # The decoder reports the shown frame's type. A packet of hidden frames only yields
        # no picture; it is I when it holds an intra frame (what decoding it costs).
        if shown is None:
            return PictureInfo(hidden_type, reference, random_access, show=False)
        return PictureInfo(shown, reference, random_access)

    def _frame(self, frame: bytes) -> tuple[PictureType, bool, int, bool, bool]:
        """Picture type, show_frame, refresh_frame_flags, droppable, key frame: of one frame header."""
        bits = _Bits(frame[:16], "VP9 frame header")
        if bits.u(2, "frame_marker") != 2:
            raise BitstreamError("VP9 frame header: frame_marker is not 2")
        profile = bits.u(1, "profile_low_bit")
        profile |= bits.u(1, "profile_high_bit") << 1
        if profile == 3 and bits.u(1, "reserved_zero"):
            raise BitstreamError("VP9 frame header: reserved bit after profile 3 is set")
        if bits.u(1, "show_existing_frame"):
            return self._slots[bits.u(3, "frame_to_show_map_idx")], True, 0, True, False
        non_key = bits.u(1, "frame_type")
        show = bool(bits.u(1, "show_frame"))
        error_resilient = bool(bits.u(1, "error_resilient_mode"))
        if not non_key:
            if bits.u(24, "frame_sync_code") != _VP9_SYNC_CODE:
                raise BitstreamError("VP9 key frame: frame_sync_code is wrong")
            return PictureType.I, show, 0xFF, False, True
        intra_only = not show and bits.u(1, "intra_only")
        if not error_resilient:
            bits.skip(2, "reset_frame_context")
        if not intra_only:
            refresh = bits.u(8, "refresh_frame_flags")
            return PictureType.P, show, refresh, refresh == 0 and error_resilient, False
        if bits.u(24, "frame_sync_code") != _VP9_SYNC_CODE:
            raise BitstreamError("VP9 intra-only frame: frame_sync_code is wrong")
        if profile:
            self._skip_color_config(bits, profile)
        refresh = bits.u(8, "refresh_frame_flags")
        return PictureType.I, show, refresh, refresh == 0 and error_resilient, False

    @staticmethod
    def _skip_color_config(bits: _Bits, profile: int) -> None:
        if profile >= 2:
            bits.skip(1, "ten_or_twelve_bit")
        rgb = bits.u(3, "color_space") == _VP9_CS_RGB
        if not rgb:
            bits.skip(1, "color_range")
        if profile in (1, 3):
            bits.skip(1 if rgb else 3, "subsampling and reserved_zero")


def create_parser(codec: str, extradata: bytes | None = None) -> PacketParser:
    """A parser for one stream of FFmpeg codec ``codec`` (``h264``, ``hevc``, ``vp9``, intra-only).

    ``extradata`` is the stream's codec extradata (avcC / hvcC record or Annex-B parameter
    sets); it fixes the NAL framing and, for HEVC, supplies parameter sets.
    """
    if codec == "h264":
        return _H264Parser(extradata)
    if codec == "hevc":
        return _HevcParser(extradata)
    if codec == "vp9":
        return _Vp9Parser()
    if codec in INTRA_ONLY_CODECS:
        return _IntraOnlyParser(codec)
    raise BitstreamError(f"no packet header parser for codec {codec!r}; supported: h264, hevc, vp9 "
                         f"and the intra-only codecs {', '.join(sorted(INTRA_ONLY_CODECS))}")
