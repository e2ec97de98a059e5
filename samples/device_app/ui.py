"""The device app's kivy front: it draws what the pipeline and the chat session produce.

Everything that computes lives in :mod:`pipeline` and :mod:`chat` (tested without a
display); this module only copies the newest frame into a texture, the live numbers into
labels and chat replies into the log, on kivy's thread. The layout is ``device_app.kv``.
Slow work (a chat answer is one HTTP request per token) runs on a worker thread and comes
back through ``Clock.schedule_once``, so the camera view never freezes.

When the camera run ends and ``--screenshot`` / ``--stats`` were given, the window is
saved as PNG and the numbers, with the text every number widget shows, as JSON (both
written atomically); with ``--frames`` the app then quits. Imported by :mod:`main` after
the window size is configured, e.g.::

    DeviceApp(settings, PipelineRunner(pipeline, settings.frames), ChatSession(...)).run()
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from chat import ChatReply, ChatSession
from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.factory import Factory
from kivy.graphics.texture import Texture
from kivy.lang import Builder
from pipeline import LiveNumbers, PipelineRunner, ProcessedFrame
from settings import AppSettings

from coinfer.sdk.fsutil import atomic_write_json

__all__ = ["NUMBER_WIDGETS", "DeviceApp"]

LAYOUT = Path(__file__).with_name("device_app.kv")
#: The ids of the labels that show :meth:`LiveNumbers.labels`.
NUMBER_WIDGETS = ("frames", "skip_rate", "packets", "bytes", "gateway", "status")


class DeviceApp(App):
    """The camera screen and the chat screen; ``title`` names the stream."""

    def __init__(self, settings: AppSettings, runner: PipelineRunner, chat: ChatSession) -> None:
        super().__init__()
        self.settings, self.runner, self.chat = settings, runner, chat
        self.title = f"coinfer device: {settings.stream}"
        self.final: LiveNumbers | None = None
        self._texture: Any = None
        self._shown = 0
        self._root: Any = None

    def build(self) -> Any:
        Builder.load_file(str(LAYOUT))
        self._root = Factory.Root()
        self.runner.start()
        Clock.schedule_interval(self._refresh, 1 / 30)
        return self._root

    def on_stop(self) -> None:
        self.runner.stop()

    def _refresh(self, _dt: float) -> bool:
        """Show the newest frame and numbers; at the end of the run, save and maybe quit."""
        published, frame, numbers = self.runner.latest()
        if frame is not None and published != self._shown:
            self._show(frame)
            self._shown = published
        ids = self._root.ids
        for name, text in numbers.labels().items():
            ids[name].text = text
        if not self.runner.finished.is_set():
            return True
        self.final = self.runner.latest()[2]
        for name, text in self.final.labels().items():
            ids[name].text = text
            ids[name].texture_update()  # draw the final text now, not on the next frame
        self._save_outputs(self.final)
        if self.settings.frames is not None:
            self.stop()
        return False  # unschedule: nothing changes any more

    def _show(self, frame: ProcessedFrame) -> None:
        height, width = frame.rgb.shape[:2]
        if self._texture is None or tuple(self._texture.size) != (width, height):
            self._texture = Texture.create(size=(width, height), colorfmt="rgb")
            self._texture.flip_vertical()  # numpy rows run top-down, GL textures bottom-up
        self._texture.blit_buffer(frame.rgb.tobytes(), colorfmt="rgb", bufferfmt="ubyte")
        view = self._root.ids.view
        view.texture = self._texture
        view.canvas.ask_update()

    def _save_outputs(self, numbers: LiveNumbers) -> None:
        if self.settings.screenshot is not None:
            target = self.settings.screenshot
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
            os.close(handle)
            self._root.export_to_png(staging)
            os.replace(staging, target)
        if self.settings.stats is not None:
            ids = self._root.ids
            atomic_write_json(self.settings.stats, {
                **numbers.as_dict(),
                "widgets": {name: ids[name].text for name in NUMBER_WIDGETS},
                "window": list(Window.size),
                "view_box": self._view_box(),
                "screenshot": str(self.settings.screenshot) if self.settings.screenshot else None,
            })

    def _view_box(self) -> list[int]:
        """Where the frame is drawn: [left, top, width, height] in window pixels from the top left."""
        view = self._root.ids.view
        width, height = view.norm_image_size
        left, bottom = view.center_x - width / 2, view.center_y - height / 2
        return [round(left), round(Window.size[1] - bottom - height), round(width), round(height)]

    def send_prompt(self) -> None:
        """Send the prompt box's text to the STIP server on a worker thread."""
        ids = self._root.ids
        prompt = ids.prompt.text
        ids.send.disabled = True
        ids.chat_error.text = f"asking {self.chat.url or 'nobody'}..."
        threading.Thread(target=self._ask, args=(prompt,), name="stip chat", daemon=True).start()

    def _ask(self, prompt: str) -> None:
        reply = self.chat.ask(prompt)
        Clock.schedule_once(lambda _dt: self._show_reply(reply))

    def _show_reply(self, reply: ChatReply) -> None:
        ids = self._root.ids
        ids.send.disabled = False
        ids.chat_error.text = reply.error or ""
        if reply.error is None:
            ids.prompt.text = ""
            ids.conversation.text += f"[you] {reply.prompt}\n[model] {reply.text}\n\n"
