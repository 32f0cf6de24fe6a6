"""Search through the domain on both backends (SQLite FTS5, PostgreSQL tsvector) and a real
server: matching rules (stemming, accents, unicode, phrases, prefixes, operators), hits and
snippets, ordering, filters, pagination, index upkeep (re-transcription, deletion, reindex)
and isolation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapedeck.auth import Principal
from tapedeck.domain.end_users import NewEndUser
from tapedeck.domain.search import SearchRequest
from tapedeck.domain.search_index import backend_for
from tapedeck.errors import TapedeckError
from tapedeck.infra.db import Database

from searchkit import new_recording, segment, store_transcript
from serverkit import RunningServer

Project = tuple[str, str, Principal]


def check_index(db: Database) -> None:
    """The index agrees with its rows: FTS5's integrity check; on PostgreSQL every row's
    ``tsv`` is its folded text's."""
    if db.dialect == "sqlite":
        with db.write() as tx:
            tx.execute("INSERT INTO search_fts(search_fts) VALUES ('integrity-check')")
        return
    stale = db.read().execute("SELECT count(*) FROM search_segments WHERE folded IS NULL OR"
                              " tsv <> to_tsvector('tapedeck', folded)").fetchone()[0]
    assert stale == 0


def find(srv: RunningServer, p: Principal, q: str, **kw: object) -> list[dict[str, object]]:
    page = srv.app.domain.search.search(p, SearchRequest(q=q, **kw))  # type: ignore[arg-type]
    return [h.to_json() for h in page.data]


def texts(hits: list[dict[str, object]]) -> list[object]:
    return [h["text"] for h in hits]


@pytest.fixture
def lease(srv: RunningServer, project: Project) -> tuple[str, str]:
    """One recording whose transcript mentions the lease at 61.5 s."""
    _, _, p = project
    rec = new_recording(srv, p, name="Monday")
    txn = store_transcript(srv, rec, [
        segment(0, 4_000, "Good morning, let's start the meeting."),
        segment(61_500, 65_250, "We talked about the lease agreement for the office.", "Ana"),
        segment(70_000, 72_000, "The recordings are on the shared drive.", "Ben"),
        segment(80_000, 83_000, "Le café était très bon à Zürich.", "Ana"),
        segment(90_000, 93_000, "東京で会いましょう and Ελληνικά words", "Ben"),
    ])
    return rec, txn


def test_a_hit_names_the_moment_and_marks_the_words(srv: RunningServer, project: Project,
                                                    lease: tuple[str, str]) -> None:
    _, _, p = project
    rec, txn = lease
    [hit] = find(srv, p, "lease")
    assert (hit["recording_id"], hit["transcription_id"], hit["segment_index"]) == (rec, txn, 1)
    assert (hit["start_ms"], hit["end_ms"], hit["speaker"]) == (61_500, 65_250, "Ana")
    assert hit["text"] == "We talked about the lease agreement for the office."
    assert hit["matches"] == [{"start": 20, "end": 25}]
    assert hit["snippet"] == "We talked about the <mark>lease</mark> agreement for the office."
    assert isinstance(hit["score"], float) and hit["score"] > 0


@pytest.mark.parametrize(("q", "expected_start"), [
    ("recording", 70_000),          # stemming: "recordings" is stored
    ("RECORDED", 70_000),           # stem + case
    ("cafe", 80_000),               # accent-insensitive
    ("ZURICH", 80_000),
    ("tres", 80_000),
    ("Ελληνικά", 90_000),           # unicode words
    ("東京で会いましょう", 90_000),
    ('"lease agreement"', 61_500),  # exact phrase
    ("leas*", 61_500),              # prefix
    ('"the lea"*', 61_500),         # phrase with a prefix last word
    ("meeting OR nothingness", 0),
    ("office NOT morning", 61_500),
    ("(lease OR rent) AND office", 61_500),
    ("don't lease", None),          # "don't" is not said: implicit AND fails
])
def test_matching_rules(srv: RunningServer, project: Project, lease: tuple[str, str], q: str,
                        expected_start: int | None) -> None:
    hits = find(srv, project[2], q)
    assert [h["start_ms"] for h in hits] == ([] if expected_start is None else [expected_start])


def test_phrase_order_matters_and_quotes_are_not_syntax(
        srv: RunningServer, project: Project, lease: tuple[str, str]) -> None:
    p = project[2]
    assert find(srv, p, '"agreement lease"') == []
    assert len(find(srv, p, 'lease "')) == 1                   # unterminated quote
    assert find(srv, p, "NEAR(lease office)") == []  # FTS5 syntax is plain words ("near")
    assert len(find(srv, p, "NEAR lease office")) == 0
    assert len(find(srv, p, "lease:* ^lease office+ {lease}")) == 1
    assert len(find(srv, p, "text:lease")) == 0      # no column filters: the phrase "text lease"
    assert len(find(srv, p, "lease and agreement")) == 0        # lower-case "and" is a word


@pytest.mark.parametrize("q", ["", "   ", "AND", "OR NOT", "!!!", '"" ,.;', "*", "()",
                               "((", "-- ?? **"])
def test_queries_without_words_are_invalid_request(srv: RunningServer, project: Project,
                                                   q: str) -> None:
    with pytest.raises(TapedeckError) as info:
        find(srv, project[2], q)
    assert info.value.type == "invalid_request"
    assert info.value.details["field"] == "q"


@pytest.mark.parametrize(("q", "says"), [
    ("lease AND", "missing after AND"), ("NOT lease", "needs a word"),
    ("lease OR OR office", "followed by"), ("(lease", "not closed"),
    ("lease)", "Unexpected"), ("() lease", "Empty parentheses"),
    ("x" * 501, "longer than"), (" ".join(["w"] * 33), "more than 32"),
])
def test_malformed_queries_say_what_is_wrong(srv: RunningServer, project: Project, q: str,
                                             says: str) -> None:
    with pytest.raises(TapedeckError) as info:
        find(srv, project[2], q)
    assert info.value.type == "invalid_request" and says in info.value.message


def test_retranscription_replaces_and_deletion_removes(srv: RunningServer,
                                                      project: Project) -> None:
    _, _, p = project
    rec = new_recording(srv, p)
    store_transcript(srv, rec, [segment(0, 2_000, "the old wording about pineapples")])
    assert len(find(srv, p, "pineapple")) == 1
    newer = store_transcript(srv, rec, [segment(500, 2_500, "the new wording about mangoes")])
    assert find(srv, p, "pineapple") == []
    [hit] = find(srv, p, "mango")
    assert (hit["transcription_id"], hit["start_ms"]) == (newer, 500)
    srv.app.domain.recordings.delete(p, rec)
    assert find(srv, p, "mango") == []
    assert srv.app.db.read().execute("SELECT count(*) FROM search_segments WHERE"
                                     " recording_id = ?", [rec]).fetchone()[0] == 0


def test_reindex_recreates_the_index(srv: RunningServer, project: Project,
                                     lease: tuple[str, str]) -> None:
    _, _, p = project
    db = srv.app.db
    with db.write() as tx:  # an index lost or damaged: every row gone
        tx.execute("DELETE FROM search_segments")
    assert find(srv, p, "lease") == []
    assert backend_for(db).rebuild(db, batch=2) >= 5
    [hit] = find(srv, p, "lease")
    assert hit["start_ms"] == 61_500
    check_index(db)


def test_projects_and_devices_are_isolated(srv: RunningServer, project: Project) -> None:
    _, _, p = project
    other_project = srv.app.domain.auth.authenticate(f"Bearer {srv.api_key}")
    mine = new_recording(srv, p)
    store_transcript(srv, mine, [segment(0, 1_000, "confidential kumquat plans")])
    theirs = new_recording(srv, other_project)
    store_transcript(srv, theirs, [segment(0, 1_000, "their kumquat plans")])
    assert [h["recording_id"] for h in find(srv, p, "kumquat")] == [mine]
    assert [h["recording_id"] for h in find(srv, other_project, "kumquat")] == [theirs]

    _, tok_a = _device(srv, p)
    dev_b, tok_b = _device(srv, p)
    pa = srv.app.domain.auth.authenticate(f"Bearer {tok_a}")
    pb = srv.app.domain.auth.authenticate(f"Bearer {tok_b}")
    rec_a = new_recording(srv, pa)
    store_transcript(srv, rec_a, [segment(0, 1_000, "device kumquat one")])
    rec_b = new_recording(srv, pb)
    store_transcript(srv, rec_b, [segment(0, 1_000, "device kumquat two")])
    assert [h["recording_id"] for h in find(srv, pa, "kumquat")] == [rec_a]
    # a device cannot widen its view by naming another device
    assert [h["recording_id"] for h in find(srv, pa, "kumquat", device_id=dev_b)] == [rec_a]
    assert {h["recording_id"] for h in find(srv, p, "kumquat")} == {mine, rec_a, rec_b}
    assert [h["device_id"] for h in find(srv, p, "kumquat", device_id=dev_b)] == [dev_b]


def _device(srv: RunningServer, p: Principal) -> tuple[str, str]:
    from tapedeck.auth import issue_device_token

    return issue_device_token(srv.app.db, srv.app.clock, p.project_id, None)


def test_restricted_keys_need_the_scope(srv: RunningServer, project: Project,
                                        lease: tuple[str, str]) -> None:
    _, _, p = project
    keys = srv.app.domain.keys
    reader = keys.create(p, scopes=["transcriptions:read"], name="reader").secret
    writer = keys.create(p, scopes=["recordings:read"], name="other").secret
    auth = srv.app.domain.auth
    assert len(find(srv, auth.authenticate(f"Bearer {reader}"), "lease")) == 1
    with pytest.raises(TapedeckError) as info:
        find(srv, auth.authenticate(f"Bearer {writer}"), "lease")
    assert info.value.type == "forbidden"


def test_filters(srv: RunningServer, project: Project) -> None:
    _, _, p = project
    d = srv.app.domain
    eu = d.end_users.create(p, _end_user("wearer-1")).id
    dev, _ = _device(srv, p)
    jan = new_recording(srv, p, started_at=datetime(2026, 1, 10, tzinfo=UTC),
                        metadata={"room": "kitchen", "kind": "call"}, end_user_id=eu)
    feb = new_recording(srv, p, started_at=datetime(2026, 2, 10, tzinfo=UTC),
                        metadata={"room": "office"}, device_id=dev)
    store_transcript(srv, jan, [segment(0, 1_000, "walnut talk", "Ana"),
                                segment(1_000, 2_000, "more walnut talk", "Ben")])
    store_transcript(srv, feb, [segment(0, 1_000, "walnut again", "Ana")])

    def recs(**kw: object) -> list[tuple[object, object]]:
        return [(h["recording_id"], h["segment_index"]) for h in find(srv, p, "walnut", **kw)]

    assert recs(order="newest") == [(feb, 0), (jan, 0), (jan, 1)]
    assert recs(speaker="Ben") == [(jan, 1)]
    assert recs(end_user_id=eu, order="newest") == [(jan, 0), (jan, 1)]
    assert recs(device_id=dev) == [(feb, 0)]
    assert recs(since=datetime(2026, 2, 1, tzinfo=UTC)) == [(feb, 0)]
    assert recs(until=datetime(2026, 2, 1, tzinfo=UTC), order="newest") == [(jan, 0), (jan, 1)]
    assert recs(metadata={"room": "kitchen", "kind": "call"}, speaker="Ana") == [(jan, 0)]
    assert recs(metadata={"room": "kitchen", "kind": "meeting"}) == []
    with pytest.raises(TapedeckError) as info:
        find(srv, p, "walnut", since=datetime(2026, 2, 1, tzinfo=UTC),
             until=datetime(2026, 1, 1, tzinfo=UTC))
    assert info.value.details["field"] == "until"


def _end_user(external_id: str) -> NewEndUser:
    return NewEndUser(external_id=external_id)


@pytest.mark.parametrize("order", ["relevance", "newest"])
def test_cursor_pagination_visits_every_hit_once(srv: RunningServer, project: Project,
                                                 order: str) -> None:
    _, _, p = project
    expected = set()
    for r in range(4):
        rec = new_recording(srv, p)
        segs = [segment(i * 1_000, i * 1_000 + 900, "hazel " * (1 + (i + r) % 3) + f"n{i}")
                for i in range(7)]
        store_transcript(srv, rec, segs)
        expected |= {(rec, i) for i in range(7)}
    seen: list[tuple[str, int]] = []
    scores: list[float] = []
    cursor = None
    while True:
        page = srv.app.domain.search.search(p, SearchRequest(q="hazel", order=order, limit=5,
                                                             cursor=cursor))
        seen += [(h.recording_id, h.segment_index) for h in page.data]
        scores += [h.score for h in page.data]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(expected) == 28 and set(seen) == expected
    if order == "relevance":
        assert scores == sorted(scores, reverse=True)
    # a cursor of the other order
    with pytest.raises(TapedeckError,
                       match=r"^cursor is not a value returned by this API for this order") as info:
        other = "newest" if order == "relevance" else "relevance"
        first = srv.app.domain.search.search(p, SearchRequest(q="hazel", order=other, limit=1))
        srv.app.domain.search.search(p, SearchRequest(q="hazel", order=order,
                                                      cursor=first.next_cursor))
    assert info.value.details["field"] == "cursor"
    for bad in ("nonsense", "e30", "eyJvIjoibmV3ZXN0IiwiayI6WzEsMiwzXX0"):
        with pytest.raises(TapedeckError, match=r"^cursor is not a value returned by this API"):
            srv.app.domain.search.search(p, SearchRequest(q="hazel", order=order, cursor=bad))


def test_bad_order_and_limit(srv: RunningServer, project: Project) -> None:
    for kw, fld in (({"order": "oldest"}, "order"), ({"limit": 0}, "limit"),
                    ({"limit": 101}, "limit")):
        with pytest.raises(TapedeckError) as info:
            find(srv, project[2], "x", **kw)
        assert info.value.details["field"] == fld


def test_a_superseded_transcription_does_not_replace_the_current_one(
        srv: RunningServer, project: Project) -> None:
    _, _, p = project
    rec = new_recording(srv, p)
    old = store_transcript(srv, rec, [segment(0, 1_000, "the first damson")])
    store_transcript(srv, rec, [segment(0, 1_000, "the second damson")])
    with srv.app.db.write() as tx:  # e.g. a late completion of the older transcription
        assert backend_for(tx).replace(tx, old) == 0
    assert texts(find(srv, p, "damson")) == ["the second damson"]


_ALPHABET = st.sampled_from(['"', "(", ")", "*", " ", "AND", "OR", "NOT", "-", ":", "^",
                             "NEAR", "lease", "office", "é", "'", ",", "+", "{", "}", "\\"])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.lists(st.one_of(_ALPHABET, st.text(max_size=4)), max_size=12).map(" ".join))
def test_any_query_is_a_result_or_invalid_request(srv: RunningServer, project: Project,
                                                 lease: tuple[str, str], q: str) -> None:
    try:
        hits = find(srv, project[2], q)
    except TapedeckError as exc:
        assert exc.type == "invalid_request" and exc.details["field"] == "q", exc
    else:
        assert all(h["recording_id"] == lease[0] for h in hits)


@pytest.mark.parametrize("q", ["lea\x00se", "\x00", "lease\x1f", "\"lea\x00"])
def test_control_characters_are_spaces(srv: RunningServer, project: Project,
                                       lease: tuple[str, str], q: str) -> None:
    """FTS5 ends a string at NUL ("unterminated string"): control characters never reach it."""
    try:
        hits = find(srv, project[2], q)
    except TapedeckError as exc:
        assert exc.type == "invalid_request" and exc.details["field"] == "q", exc
    else:
        assert all(h["recording_id"] == lease[0] for h in hits)
    if q == "lease\x1f":
        assert hits, "lease followed by a control character still finds the lease"


def test_end_user_removal_and_cascades(srv: RunningServer, project: Project) -> None:
    _, _, p = project
    d = srv.app.domain
    eu = d.end_users.create(p, _end_user("wearer-cascade")).id
    mine = new_recording(srv, p, end_user_id=eu)
    other = new_recording(srv, p)
    txn = store_transcript(srv, mine, [segment(0, 1_000, "rowan berries")])
    store_transcript(srv, other, [segment(0, 1_000, "rowan wood")])
    with srv.app.db.write() as tx:
        assert backend_for(tx).remove_end_user(tx, p.project_id, eu) == 1
    assert texts(find(srv, p, "rowan")) == ["rowan wood"]
    with srv.app.db.write() as tx:
        backend_for(tx).replace(tx, txn)
        tx.execute("DELETE FROM transcriptions WHERE id = ?", [txn])  # any other deletion path
    assert texts(find(srv, p, "rowan")) == ["rowan wood"]
    with srv.app.db.write() as tx:
        tx.execute("DELETE FROM recordings WHERE id = ?", [other])
    assert find(srv, p, "rowan") == []
    check_index(srv.app.db)
