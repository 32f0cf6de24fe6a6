"""What runs in the background, draining the durable job queue (``tapedeck.infra.jobs``).

``worker`` is the role that leases jobs and runs their handlers by kind (stitching in
``stitch/``, transcription and live pieces in ``transcribe/``); ``sweeper`` is the role
that runs the periodic rounds (expiry, retention, event redaction, devices going offline).
The webhook dispatcher is its own role in ``tapedeck.webhooks``.
"""
