"""What runs in the background: the durable job queue and the processes that drain it.

``jobs`` is the queue (enqueue, lease, retry, dead-letter), ``worker`` the role that leases
jobs and runs their handlers (stitching in ``tapedeck.stitch``, transcription in
``tapedeck.transcribe``, the webhook dispatcher in ``tapedeck.webhooks``), ``sweeper`` the
periodic cleanups (expiry, retention, abandoned uploads) and ``failpoints`` the test-only
crash injection the worker honours when a test sets it.
"""
