"""The domain calls behind the console's fleet pages, on both database backends (real SQLite
file, real PostgreSQL): ``EndUsers.list`` (newest first, paged, scoped, per project),
``Devices.bound_to``, ``VoiceProfiles.counts`` and ``Keys.get``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tapedeck.auth import Principal, create_project
from tapedeck.clock import ManualClock
from tapedeck.domain import Domain
from tapedeck.domain.devices import NewDevice
from tapedeck.domain.end_users import NewEndUser
from tapedeck.errors import TapedeckError
from tapedeck.infra.db import Database
from tapedeck.infra.store.memory import MemoryStore
from tapedeck.settings import Settings

START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def _domain(database: Database, tmp_path: Path) -> tuple[Domain, ManualClock]:
    clock = ManualClock(START)
    return Domain.build(database, MemoryStore(clock.now), clock,
                        Settings(data_dir=tmp_path / "data")), clock


def _secret(d: Domain, name: str = "p") -> Principal:
    _, key = create_project(d.ctx.db, d.ctx.clock, name)
    return d.authenticate(key)


def test_end_users_list_newest_first_in_pages_per_project(database: Database,
                                                          tmp_path: Path) -> None:
    d, clock = _domain(database, tmp_path)
    p, other = _secret(d), _secret(d, "other")
    made = []
    for i in range(5):
        made.append(d.end_users.create(p, NewEndUser(name=f"u{i}")).id)
        if i != 2:  # two share a created_at: the id breaks the tie
            clock.advance(timedelta(seconds=1))
    d.end_users.create(other, NewEndUser(name="not yours"))
    seen, cursor = [], None
    while True:
        page = d.end_users.list(p, limit=2, cursor=cursor)
        assert len(page.data) <= 2
        seen += [e.id for e in page.data]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    by_time = sorted(made, key=lambda i: (d.end_users.get(p, i).created_at, i), reverse=True)
    assert seen == by_time and len(seen) == 5
    with pytest.raises(TapedeckError) as bad:
        d.end_users.list(p, limit=0)
    assert bad.value.type == "invalid_request"
    with pytest.raises(TapedeckError) as no_scope:
        d.end_users.list(replace(p, scopes=frozenset({"devices:read"})))
    assert no_scope.value.type == "forbidden"


def test_devices_bound_to_and_voice_profile_counts(database: Database,
                                                   tmp_path: Path) -> None:
    d, _ = _domain(database, tmp_path)
    p, other = _secret(d), _secret(d, "other")
    ada, bob = (d.end_users.create(p, NewEndUser(name=n)).id for n in ("ada", "bob"))
    devs = [d.devices.create(p, NewDevice(serial_number=f"SN{i}")).id for i in range(3)]
    d.devices.bind(p, devs[0], ada)
    d.devices.bind(p, devs[2], ada)
    stranger = d.end_users.create(other, NewEndUser(name="x")).id
    d.devices.bind(other, d.devices.create(other, NewDevice()).id, stranger)
    got = d.devices.bound_to(p, [ada, bob, stranger])
    assert {k: [dev.id for dev in v] for k, v in got.items()} == {
        ada: [devs[0], devs[2]], bob: [], stranger: []}
    assert d.devices.bound_to(p, []) == {}
    with database.write() as tx:  # a stored profile row (enrollment itself: tests/diarize)
        tx.execute("INSERT INTO voice_profiles (id, project_id, end_user_id, embedding, source,"
                   " speech_ms, created_at) VALUES ('vp_1', ?, ?, ?, 'sample', 3000, ?)",
                   [p.project_id, ada, b"\0" * 1024, START.isoformat()])
    assert d.voice_profiles.counts(p, [ada, bob, stranger]) == {ada: 1, bob: 0, stranger: 0}
    with pytest.raises(TapedeckError, match="lacks the devices:read scope"):
        d.devices.bound_to(replace(p, scopes=frozenset({"end_users:read"})), [ada])


def test_keys_get_is_for_secret_keys_of_the_project(database: Database,
                                                    tmp_path: Path) -> None:
    d, _ = _domain(database, tmp_path)
    p, other = _secret(d), _secret(d, "other")
    made = d.keys.create(p, scopes=["devices:read"], name="ops")
    assert d.keys.get(p, made.key.id) == made.key
    with pytest.raises(TapedeckError) as elsewhere:
        d.keys.get(other, made.key.id)
    assert elsewhere.value.type == "key_not_found"
    with pytest.raises(TapedeckError) as restricted:
        d.keys.get(d.authenticate(made.secret), made.key.id)
    assert restricted.value.type == "forbidden"
