"""What the device app runs on: its video source, filter, gateway and STIP server.

A device is set up once (a small TOML file next to the app) and started many times, often
by a service manager; a developer tries things from a shell. So every setting can come
from ``--config FILE`` and be overridden by a command-line flag of the same name, and a
mistake is reported as one line naming the flag or the ``FILE:LINE`` that is wrong, before
any window opens. A source given on the command line (``--video`` or ``--camera``) replaces
the file's; the window size and the testing flags (``--frames``, ``--screenshot``,
``--stats``) exist only on the command line.

Without ``--config``, ``device_app.toml`` beside this file is read when it exists: an
Android build or a systemd service starts the app without flags. The configuration file
(every key optional; relative paths are relative to the file; ``device_app.example.toml``
is a copy to start from)::

    [camera]
    video = "clips/cam000.mp4"        # a file or URL; or device = "/dev/video0"
    filter = "filters/faces-float32"  # an InFi skip filter exported as TFLite
    [gateway]
    url = "http://edge.local:8100"
    token_file = "gateway.token"      # else $COINFER_TOKEN
    stream = "pi-cam0"
    uplink_bytes_per_s = 40000
    [stip]
    url = "http://cloud.example:8000"
    bundle = "stip/user"
    token_file = "stip.token"         # else $COINFER_TOKEN
    max_new_tokens = 48

Example:

>>> settings = parse_settings(["--video", "cam0.mp4", "--frames", "30", "--window", "800x480"])
>>> settings.video, settings.frames, settings.window, settings.gateway_url
('cam0.mp4', 30, (800, 480), None)
>>> parse_settings(["--video", "a.mp4", "--camera", "/dev/video0"])
Traceback (most recent call last):
...
coinfer.sdk.errors.InvalidArgumentError: give --video or --camera, not both
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import CommandParser, output_file, positive
from coinfer.sdk.config_file import ConfigFile
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.gate.protocol import STREAM_ID

__all__ = ["AppSettings", "build_parser", "parse_settings"]

#: The window when none is asked for: fits a 1024x768 screen and a 7" touchscreen scaled.
DEFAULT_WINDOW = (960, 600)
#: Read when no ``--config`` is given and it exists.
DEFAULT_CONFIG = Path(__file__).with_name("device_app.toml")


@dataclass(frozen=True)
class AppSettings:
    """Everything the app needs; ``None`` turns a part off (no gateway: no uploads)."""

    video: str | None = None
    camera: str | None = None
    filter: Path | None = None
    gateway_url: str | None = None
    gateway_token_file: Path | None = None
    stream: str = "camera"
    uplink_bytes_per_s: float = 40_000.0
    stip_url: str | None = None
    stip_bundle: Path | None = None
    stip_token_file: Path | None = None
    max_new_tokens: int = 48
    window: tuple[int, int] = DEFAULT_WINDOW
    frames: int | None = None
    screenshot: Path | None = None
    stats: Path | None = None

    def __post_init__(self) -> None:
        if self.video and self.camera:
            raise InvalidArgumentError("give --video or --camera, not both")
        if not self.video and not self.camera:
            raise InvalidArgumentError("give --video FILE (or URL) or --camera DEVICE")
        if not STREAM_ID.fullmatch(self.stream):
            raise InvalidArgumentError(f"--stream {self.stream!r} must be 1-64 characters of "
                                       "A-Z a-z 0-9 . _ -")
        if not self.uplink_bytes_per_s > 0:
            raise InvalidArgumentError(f"--uplink-bytes-per-s must be > 0, got {self.uplink_bytes_per_s}")


def _window(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT, e.g. 960x600, got {text!r}") from None
    if not (160 <= size[0] <= 8192 and 120 <= size[1] <= 8192):
        raise argparse.ArgumentTypeError(f"must be between 160x120 and 8192x8192, got {text!r}")
    return size


def build_parser() -> CommandParser:
    """The app's flags; each defaults to ``None`` so that only what is given overrides the file."""
    parser = CommandParser(prog="device_app", description="coinfer on a device: camera, filter, gate, chat")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="a TOML file with the settings below (default: device_app.toml here, if any)")
    source = parser.add_argument_group("camera")
    source.add_argument("--video", metavar="FILE", help="a video file or URL standing in for the camera")
    source.add_argument("--camera", metavar="DEVICE",
                        help="a V4L2 camera that encodes H.264 itself, e.g. /dev/video0")
    source.add_argument("--filter", type=Path, metavar="DIR", help="an InFi skip filter (TFLite artifact)")
    gateway = parser.add_argument_group("edge gateway")
    gateway.add_argument("--gateway-url", metavar="URL", help="where the camera gate uploads packets")
    gateway.add_argument("--gateway-token-file", type=Path, metavar="FILE",
                         help="the gateway's bearer token (default: $COINFER_TOKEN)")
    gateway.add_argument("--stream", help="this camera's stream id at the gateway (default camera)")
    gateway.add_argument("--uplink-bytes-per-s", type=positive(float), metavar="N",
                         help="the uplink budget of the gate (default 40000)")
    stip = parser.add_argument_group("STIP chat")
    stip.add_argument("--stip-url", metavar="URL", help="the STIP model server")
    stip.add_argument("--stip-bundle", type=Path, metavar="DIR",
                      help="the user bundle (OUT/user of coinfer stip publish)")
    stip.add_argument("--stip-token-file", type=Path, metavar="FILE",
                      help="the STIP server's bearer token (default: $COINFER_TOKEN)")
    stip.add_argument("--max-new-tokens", type=positive(int), metavar="N", help="answer length (default 48)")
    run = parser.add_argument_group("window and test runs")
    run.add_argument("--window", type=_window, metavar="WxH", help="window size (default 960x600)")
    run.add_argument("--frames", type=positive(int), metavar="N", help="process N frames, then quit")
    run.add_argument("--screenshot", type=output_file, metavar="PNG",
                     help="save the window as PNG when the run ends")
    run.add_argument("--stats", type=output_file, metavar="JSON", help="write the live numbers at the end")
    return parser


def _from_config(path: Path) -> dict[str, Any]:
    """The settings a configuration file gives, keyed like :class:`AppSettings`."""
    config = ConfigFile.read(path)
    config.check_known(("camera", "gateway", "stip"))
    camera, gateway, stip = config.table("camera"), config.table("gateway"), config.table("stip")
    found: dict[str, Any] = {
        "video": camera.string("video"), "camera": camera.string("device"), "filter": camera.path("filter"),
        "gateway_url": gateway.string("url"), "gateway_token_file": gateway.path("token_file"),
        "stream": gateway.string("stream"),
        "uplink_bytes_per_s": gateway.number("uplink_bytes_per_s", low=1),
        "stip_url": stip.string("url"), "stip_bundle": stip.path("bundle"),
        "stip_token_file": stip.path("token_file"),
        "max_new_tokens": stip.integer("max_new_tokens", low=1, high=4096),
    }
    for table in (camera, gateway, stip):
        table.check_known()
    video = found["video"]
    if isinstance(video, str) and ":" not in video and not Path(video).is_absolute():
        found["video"] = str(path.parent / video)  # a file beside the configuration, not a URL
    return {key: value for key, value in found.items() if value is not None}


def parse_settings(argv: list[str]) -> AppSettings:
    """Settings from ``argv``: the configuration file first, then the flags given over it."""
    args = build_parser().parse_args(argv)
    config = args.config if args.config is not None else DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    values = _from_config(config) if config is not None else {}
    given = {key: value for key, value in vars(args).items() if key != "config" and value is not None}
    if "video" in given or "camera" in given:
        values = {key: value for key, value in values.items() if key not in ("video", "camera")}
    return AppSettings(**{**values, **given})
