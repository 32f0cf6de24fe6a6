"""Tapedeck: a self-hostable backend for audio recorders.

This package root imports nothing heavy: the device agent uses `tapedeck.v1` (generated
protobuf code), `tapedeck.errors` and `tapedeck.oggopus` without any server dependency.
"""
