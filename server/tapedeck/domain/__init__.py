"""The domain layer: every business rule of Tapedeck, transport-free.

``Domain`` bundles the services; gRPC servicers and REST routes hold one and only translate
requests into calls on it and results (or ``TapedeckError``s) back into responses.
"""

from __future__ import annotations

from dataclasses import dataclass

from tapedeck.auth import Authenticator, Principal, UploadTokens
from tapedeck.clock import Clock
from tapedeck.domain._base import Context
from tapedeck.domain.chunks import Chunks
from tapedeck.domain.devices import Devices
from tapedeck.domain.end_users import EndUsers
from tapedeck.domain.fleet import Fleet
from tapedeck.domain.idempotency import Idempotency, IdempotencyStore
from tapedeck.domain.keys import Keys
from tapedeck.domain.ratelimit import RateLimiter
from tapedeck.domain.recordings import Recordings
from tapedeck.domain.search import Search
from tapedeck.domain.transcriptions import Transcriptions
from tapedeck.domain.voice_profiles import VoiceEmbedder, VoiceProfiles
from tapedeck.domain.webhooks import Webhooks
from tapedeck.infra.db import Database
from tapedeck.infra.jobs import JobSignals
from tapedeck.infra.store import ObjectStore
from tapedeck.server_keys import ServerKeys
from tapedeck.settings import Settings
from tapedeck.webhooks.secretbox import SecretBox


@dataclass
class Domain:
    """All domain services of one deployment, sharing one context."""

    ctx: Context
    auth: Authenticator
    uploads: UploadTokens
    recordings: Recordings
    chunks: Chunks
    idempotency: Idempotency
    limiter: RateLimiter
    devices: Devices
    end_users: EndUsers
    keys: Keys
    webhooks: Webhooks
    transcriptions: Transcriptions
    search: Search
    fleet: Fleet
    voice_profiles: VoiceProfiles
    secret_box: SecretBox  # the one sealer of this process (tapedeck.server_keys)

    @classmethod
    def build(cls, db: Database, store: ObjectStore, clock: Clock, settings: Settings, *,
              signals: JobSignals | None = None) -> Domain:
        """Wire the services from their dependencies (called from ``App.open``/tests).
        ``signals``: the process's ``JobSignals`` (``Runtime.job_signals``), so its worker
        pools hear this domain's enqueues; None = a new one."""
        ctx = Context(db=db, store=store, clock=clock, settings=settings, locks=db,
                      job_signals=JobSignals() if signals is None else signals)
        keys = ServerKeys.from_settings(settings)
        uploads, box = keys.upload_tokens(), keys.secret_box()
        chunks = Chunks(ctx)
        return cls(ctx=ctx, auth=Authenticator(db, uploads, clock), uploads=uploads,
                   recordings=Recordings(ctx, uploads, chunks), chunks=chunks,
                   idempotency=Idempotency(IdempotencyStore(db, clock), box),
                   limiter=RateLimiter(clock, settings.rate_limit_per_s),
                   devices=Devices(ctx), end_users=EndUsers(ctx), keys=Keys(ctx),
                   webhooks=Webhooks(ctx, box),
                   transcriptions=Transcriptions(ctx), search=Search(ctx),
                   fleet=Fleet(ctx), voice_profiles=VoiceProfiles(ctx, _enroller),
                   secret_box=box)

    def authenticate(self, authorization: str | None, *,
                     allow_upload_token: bool = False) -> Principal:
        """The caller of a request (``unauthorized`` if none), after its rate limit
        (``rate_limit_exceeded``). Every transport authenticates through here."""
        p = self.auth.authenticate(authorization, allow_upload_token=allow_upload_token)
        self.limiter.check(p)
        return p


def _enroller() -> VoiceEmbedder:
    """The real voice embedder (loads numpy and the speaker encoder on first enrollment)."""
    from tapedeck.diarize.enroll import Enroller

    return Enroller()
