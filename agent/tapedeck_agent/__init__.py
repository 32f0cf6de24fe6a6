"""Tapedeck device agent: capture, encode, spool, upload, finalize."""
