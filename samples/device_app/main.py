"""coinfer on a device: a camera screen (InFi skip filter + camera-side gate uploading to an
edge gateway) and a STIP chat screen, in one kivy app for Raspberry Pi and Android.

    python main.py --video cam0.mp4 --filter faces-float32 \\
        --gateway-url http://edge.local:8100 --gateway-token-file gateway.token \\
        --stip-url http://cloud:8000 --stip-bundle stip/user
    python main.py --config device_app.toml

The app needs only ``coinfer[device]`` and kivy: no TensorFlow, torch or transformers.
Settings are checked, the video opened and the filter loaded before the window opens, so
a mistake is one line on stderr (exit 2 for a bad setting, 1 for anything that cannot be
opened). With ``--frames N`` the app quits after N frames, exit 0 when the run finished and
1 when it failed (the stats JSON and the screen say why). The file is named ``main.py``
because python-for-android starts that file.
"""

from __future__ import annotations

import os
import sys

from chat import ChatSession
from pipeline import CameraPipeline, PipelineRunner
from settings import AppSettings, parse_settings

from coinfer.sdk.errors import CoinferError, one_line

#: How long a closed window waits for the camera thread to send the gate's end message; a
#: gateway that stopped answering must not keep the app from exiting.
SHUTDOWN_WAIT_S = 10.0


def _configure_kivy(settings: AppSettings) -> None:
    """Before kivy starts: it must not read our flags, and the window gets its size."""
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    from kivy.config import Config
    from kivy.utils import platform

    if platform not in ("android", "ios"):
        Config.set("graphics", "width", str(settings.window[0]))
        Config.set("graphics", "height", str(settings.window[1]))
        Config.set("graphics", "resizable", "1")
    Config.set("input", "mouse", "mouse,disable_multitouch")


def main(argv: list[str] | None = None) -> int:
    """Run the app; returns the exit status."""
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except CoinferError as error:
        print(f"device_app: error: {one_line(error)}", file=sys.stderr)
        return 2
    try:
        pipeline = CameraPipeline.open(settings)
    except CoinferError as error:
        print(f"device_app: error: {one_line(error)}", file=sys.stderr)
        return 1
    chat = ChatSession(settings.stip_url, settings.stip_bundle, settings.stip_token_file,
                       max_new_tokens=settings.max_new_tokens)
    runner = PipelineRunner(pipeline, settings.frames)
    _configure_kivy(settings)
    from ui import DeviceApp

    app = DeviceApp(settings, runner, chat)
    app.run()
    runner.stop()
    runner.finished.wait(SHUTDOWN_WAIT_S)
    return 1 if app.final is not None and app.final.state == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
