"""A chunk body on its way to the store: counted, hashed and checked as its bytes pass.

``Passing(body, ...).blocks()`` yields the body block by block (for a streaming PUT,
``tapedeck.infra.store.StreamingPut``) while it counts the bytes against ``max_chunk_bytes``,
computes the MD5 (and the SHA-256 when the client sent one) and, with ``check_audio``, feeds
the blocks to the Ogg Opus check (issue 16) running beside it. Every verdict that needs the
whole body (empty body, checksums, the audio's end) is given when the body ends, by raising
from ``blocks()`` before it returns; the store holds the last block back until then, so a
refused chunk is never completed in the store. Memory: the blocks in flight, plus what the
audio check has not read yet (it keeps up with the network; at worst the bounded body).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator

from tapedeck.errors import TapedeckError, error, invalid
from tapedeck.oggopus import InvalidAudio
from tapedeck.oggopus.check import check_stream


def too_large(limit: int) -> TapedeckError:
    """``payload_too_large`` for a chunk over ``limit`` bytes."""
    return error("payload_too_large", f"A chunk may be at most {limit} bytes.", max_bytes=limit)


def empty_chunk() -> TapedeckError:
    return invalid("body", "A chunk must not be empty; nothing was stored.")


def mismatch(name: str, expected: str, actual: str) -> TapedeckError:
    """``checksum_mismatch`` naming the digest that differs."""
    return error("checksum_mismatch",
                 f"The chunk's {name} does not match its bytes; nothing was stored.",
                 algorithm=name, expected=expected, actual=actual)


class _AudioCheck:
    """``check_stream`` in a thread of its own over the blocks fed to it (the check pulls
    its input; the body is pushed to the store): ``feed`` raises once the check failed,
    ``finish`` gives the verdict on the whole stream."""

    def __init__(self) -> None:
        self._blocks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._failure: InvalidAudio | None = None
        self._thread = threading.Thread(target=self._run, name="chunk-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            check_stream(iter(self._blocks.get, None), lambda _block: None)
        except InvalidAudio as exc:
            self._failure = exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise error("invalid_audio", f"The chunk is not valid Ogg Opus: "
                        f"{self._failure.reason}; nothing was stored.",
                        reason=self._failure.reason)

    def feed(self, block: bytes) -> None:
        self._raise_failure()
        self._blocks.put(block)

    def finish(self) -> None:
        """Wait for the check of everything fed; ``invalid_audio`` if it failed."""
        self._blocks.put(None)
        self._thread.join()
        self._raise_failure()

    def abandon(self) -> None:
        """Stop the check early (the upload failed for another reason)."""
        self._blocks.put(None)


class Passing:
    """Counts, hashes and checks a chunk body while it is passed on (see module doc).
    After ``blocks()`` ended: ``size`` and ``md5`` (lowercase hex) of what passed."""

    def __init__(self, body: Iterable[bytes], limit: int, *, md5: str | None,
                 sha256: str | None, check_audio: bool) -> None:
        self._body = body
        self._limit = limit
        self._expected = {"md5": md5, "sha256": sha256}
        self._check_audio = check_audio
        self._md5 = hashlib.md5()
        self._sha = hashlib.sha256() if sha256 is not None else None
        self.size = 0

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def expected_md5(self) -> str | None:
        """The MD5 the client sent (lowercase hex), if any."""
        return self._expected["md5"]

    def blocks(self) -> Iterator[bytes]:
        """The body; raises instead of ending if the chunk is refused (see module doc)."""
        check = _AudioCheck() if self._check_audio else None
        finished = False
        try:
            for block in self._body:
                self._take(block, check)
                yield block
            if self.size == 0:
                raise empty_chunk()
            if check is not None:
                finished = True
                check.finish()
            self._verify()
        finally:
            if check is not None and not finished:
                check.abandon()

    def _take(self, block: bytes, check: _AudioCheck | None) -> None:
        self.size += len(block)
        if self.size > self._limit:
            raise too_large(self._limit)
        self._md5.update(block)
        if self._sha is not None:
            self._sha.update(block)
        if check is not None:
            check.feed(block)

    def _verify(self) -> None:
        actual = {"md5": self.md5,
                  "sha256": self._sha.hexdigest() if self._sha is not None else None}
        for name, expected in self._expected.items():
            if expected is not None and expected != actual[name]:
                raise mismatch(name, expected, str(actual[name]))
