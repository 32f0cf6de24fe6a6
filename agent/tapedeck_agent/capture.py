"""Audio sources: a PortAudio capture device (pyaudio), a WAV file, or any file ffmpeg reads.

Every source yields int16 little-endian interleaved PCM at the configured rate and channel
count through ``read(frames)``, which returns up to ``frames`` frames and ``b""`` only at the
end of a file (a live device never ends). Live capture uses PortAudio's callback mode: the
PortAudio thread only appends buffers to a queue, so a slow disk (an SD card's fsync) never
makes the device overflow; overflows PortAudio still reports are counted in ``overflows``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol


class CaptureError(RuntimeError):
    """The capture device or file cannot be opened or read; the message says why."""


class AudioSource(Protocol):
    """int16 LE interleaved PCM at ``sample_rate`` with ``channels`` channels."""

    sample_rate: int
    channels: int
    live: bool  # True for a device (cannot wait), False for a file (can be paused)

    def read(self, frames: int) -> bytes:
        """Up to ``frames`` frames; ``b""`` at the end of a file."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio input device."""

    index: int
    name: str
    max_input_channels: int
    default_sample_rate: float
    host_api: str


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 while PortAudio probes ALSA/JACK (they print dozens of harmless lines)."""
    if os.environ.get("TAPEDECK_AGENT_DEBUG_PORTAUDIO"):
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError:
        raise CaptureError("pyaudio is not installed: pip install 'tapedeck[agent]' "
                           "(needs portaudio19-dev to build)") from None
    return pyaudio


def open_portaudio() -> Any:
    """A fresh ``pyaudio.PyAudio`` (PortAudio initialized with stderr silenced)."""
    with quiet_stderr():
        return _pyaudio().PyAudio()


def list_devices(pa: Any) -> list[DeviceInfo]:
    """Input-capable devices, in PortAudio index order."""
    out = []
    for i in range(pa.get_device_count()):
        d = pa.get_device_info_by_index(i)
        if int(d["maxInputChannels"]) > 0:
            api = pa.get_host_api_info_by_index(d["hostApi"])["name"]
            out.append(DeviceInfo(i, str(d["name"]), int(d["maxInputChannels"]),
                                  float(d["defaultSampleRate"]), str(api)))
    return out


def resolve_device(devices: list[DeviceInfo], spec: str) -> DeviceInfo | None:
    """``spec`` as an index, an exact name, or a unique case-insensitive name substring;
    None (default device) for an empty spec. Raises ``CaptureError`` if nothing matches."""
    if not spec:
        return None
    if spec.isdigit():
        for d in devices:
            if d.index == int(spec):
                return d
        raise CaptureError(f"no input device with index {spec}")
    exact = [d for d in devices if d.name == spec]
    if exact:
        return exact[0]
    partial = [d for d in devices if spec.lower() in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    names = ", ".join(repr(d.name) for d in (partial or devices)) or "none"
    what = "several" if partial else "no"
    raise CaptureError(f"{what} input device(s) match {spec!r}; candidates: {names}")


class PortAudioSource:
    """Live capture from a PortAudio input device in callback mode."""

    live = True

    def __init__(self, device: str, sample_rate: int, channels: int,
                 frames_per_buffer: int) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.overflows = 0
        self._queue: queue.Queue[bytes] = queue.Queue()
        self._buffer = bytearray()
        pyaudio = _pyaudio()
        self._continue, self._overflow_flag = pyaudio.paContinue, pyaudio.paInputOverflow
        self._pa = open_portaudio()
        try:
            info = resolve_device(list_devices(self._pa), device)
            self.device_name = info.name if info else "default"
            with quiet_stderr():
                self._stream = self._pa.open(
                    format=pyaudio.paInt16, channels=channels, rate=sample_rate, input=True,
                    input_device_index=info.index if info else None,
                    frames_per_buffer=frames_per_buffer, stream_callback=self._callback)
        except CaptureError:
            self._pa.terminate()
            raise
        except (OSError, ValueError) as exc:
            self._pa.terminate()
            raise CaptureError(f"cannot open capture device {device or 'default'!r} at "
                               f"{sample_rate} Hz x{channels}: {exc}") from None

    def _callback(self, in_data: bytes | None, frame_count: int, time_info: Any,
                  status: int) -> tuple[None, int]:
        """PortAudio thread: hand the buffer over, count overflows, never block."""
        if status & self._overflow_flag:
            self.overflows += 1
        if in_data:
            self._queue.put(in_data)
        return None, self._continue

    def read(self, frames: int) -> bytes:
        want = frames * 2 * self.channels
        while len(self._buffer) < want:
            try:
                self._buffer += self._queue.get(timeout=5.0)
            except queue.Empty:
                raise CaptureError(f"capture device {self.device_name!r} delivered no audio "
                                   "for 5 s") from None
        out = bytes(self._buffer[:want])
        del self._buffer[:want]
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.stop_stream()
            self._stream.close()
        self._pa.terminate()


class WavSource:
    """A 16-bit PCM WAV file whose rate and channels already match (no resampling)."""

    live = False

    def __init__(self, path: Path) -> None:
        self._wav = wave.open(str(path), "rb")  # noqa: SIM115  # closed by close()
        self.sample_rate = self._wav.getframerate()
        self.channels = self._wav.getnchannels()

    def read(self, frames: int) -> bytes:
        return self._wav.readframes(frames)

    def close(self) -> None:
        self._wav.close()


class FfmpegSource:
    """Any audio file ffmpeg can read, decoded and resampled to the wanted PCM on a pipe."""

    live = False

    def __init__(self, path: Path, sample_rate: int, channels: int) -> None:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise CaptureError(f"{path}: only matching 16-bit WAV files can be read without "
                               "ffmpeg (apt install ffmpeg)")
        self.sample_rate = sample_rate
        self.channels = channels
        self._proc = subprocess.Popen(
            [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-f", "s16le",
             "-acodec", "pcm_s16le", "-ac", str(channels), "-ar", str(sample_rate), "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._out: IO[bytes] = self._proc.stdout
        self._errors: list[bytes] = []
        self._err_thread = threading.Thread(target=self._drain, args=(self._proc.stderr,),
                                            daemon=True)
        self._err_thread.start()
        self._path = path

    def _drain(self, stream: IO[bytes]) -> None:
        self._errors.append(stream.read())

    def read(self, frames: int) -> bytes:
        want = frames * 2 * self.channels
        data = self._out.read(want)
        if len(data) < want:  # end of the pipe: make sure ffmpeg succeeded
            code = self._proc.wait()
            self._err_thread.join()
            if code != 0:
                message = b"".join(self._errors).decode(errors="replace").strip()
                raise CaptureError(f"ffmpeg could not decode {self._path}: {message}")
        return data

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._out.close()


class PacedSource:
    """A file source delivered no faster than real time, like a capture device (used by
    ``record --input FILE``: exercises live recording without a sound card)."""

    live = True

    def __init__(self, inner: AudioSource) -> None:
        self.sample_rate = inner.sample_rate
        self.channels = inner.channels
        self._inner = inner
        self._frames = 0
        self._start: float | None = None

    def read(self, frames: int) -> bytes:
        if self._start is None:
            self._start = time.monotonic()
        data = self._inner.read(frames)
        self._frames += len(data) // (2 * self.channels)
        delay = self._start + self._frames / self.sample_rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return data

    def close(self) -> None:
        self._inner.close()


def open_file_source(path: Path, sample_rate: int, channels: int) -> AudioSource:
    """A WAV reader when the file is 16-bit PCM at the wanted rate and channels, else ffmpeg."""
    if not path.is_file():
        raise CaptureError(f"{path}: no such file")
    try:
        with wave.open(str(path), "rb") as w:
            matches = (w.getsampwidth() == 2 and w.getframerate() == sample_rate
                       and w.getnchannels() == channels and w.getcomptype() == "NONE")
    except (wave.Error, EOFError):
        matches = False
    if matches:
        return WavSource(path)
    return FfmpegSource(path, sample_rate, channels)
