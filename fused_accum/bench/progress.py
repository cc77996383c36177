"""Progress lines on stderr, so stdout carries only the report."""

import sys
import time


class Progress:
    def __init__(self, stream=None):
        self._stream = stream if stream is not None else sys.stderr
        self._start = time.monotonic()

    def say(self, message):
        elapsed = time.monotonic() - self._start
        print(f"[{elapsed:6.1f}s] {message}", file=self._stream, flush=True)
