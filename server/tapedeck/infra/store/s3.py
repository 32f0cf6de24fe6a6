"""``S3Store``: the ``ObjectStore`` contract on any S3-compatible store, via the minio SDK.

Works with the embedded SeaweedFS (``tapedeck.infra.weed``), MinIO, AWS S3, Ceph RGW, Garage.

Contract details beyond ``tapedeck.infra.store.ObjectStore``:

- ``put(length>=0)`` is ONE ``PutObject`` (ETag = hex MD5 of the bytes); the body is read
  into memory first (SigV4 signs its SHA-256), so use it for chunk-sized objects and
  ``length=-1`` (multipart, 5 MiB parts, streamed) for big or unknown-size outputs.
- ``put(if_absent=True)`` sends ``If-None-Match: *`` (the store answers 412 when the key
  exists → ``ObjectExists``). The store must honour it (SeaweedFS, MinIO and AWS S3 do; the
  contract suite checks it).
- ``content_md5_b64`` is sent as ``Content-MD5`` on a single PUT, so the store itself
  refuses other bytes (``checksum_mismatch``, nothing stored). Multipart has no object-level
  Content-MD5: the MD5 is computed while streaming and a mismatch aborts the upload before it
  completes (also ``checksum_mismatch``, nothing stored).
- ``list`` returns keys in S3 key order (UTF-8 byte order). SeaweedFS lists directory-like
  prefixes first, so the listing is collected and sorted: fine for per-recording prefixes,
  not meant for listing a whole bucket.
- Failures: connection errors, timeouts, 5xx and any other refusal (bad credentials, missing
  bucket) raise ``storage_unavailable``; a missing key raises ``ObjectNotFound`` from
  ``open`` (``stat`` returns None, ``delete`` succeeds). The cause is chained (``from``).
- Timeouts: connect 2 s, read 10 s (between bytes), at most 2 retries for connection errors
  and 500/502/503/504 with a short backoff: a down store fails within a few seconds.
- Presigned URLs come from the SDK (host-only signature). The SDK cannot sign extra headers
  into a presigned URL, so ``presign_put(content_md5_b64=...)`` signs ``host;content-md5``
  itself (SigV4 query signing, path-style URL): the client must send exactly that
  ``Content-MD5`` header (else 403) and the store checks the body against it (else 400).
  The same way ``if_absent=True`` signs ``If-None-Match: *`` (a create-only URL: once the key
  exists every PUT to it answers 412, so the URL cannot replace what it wrote) and
  ``content_length`` signs ``Content-Length`` (any other body size answers 403).
- ``public_url`` (e.g. ``https://media.example.com``) puts another scheme/host into the
  presigned URLs than the one the server talks to (a reverse proxy that keeps ``Host``).
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

import minio
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.signer import sign_v4_s3

from tapedeck.errors import TapedeckError, error
from tapedeck.infra.store import ObjectExists, ObjectInfo, ObjectNotFound, check_range, md5_of_b64

PART_SIZE = 5 * 1024 * 1024
MAX_SINGLE_PUT = 5 * 1024 * 1024 * 1024
_BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError, ServerError, InvalidResponseError)
_STREAM_BUFFER = 256 * 1024
_ABORT_BATCH = 1000  # uploads per ListMultipartUploads page


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _unavailable(exc: BaseException) -> TapedeckError:
    """``storage_unavailable`` naming the failure kind (never credentials or keys)."""
    reason = exc.code if isinstance(exc, S3Error) else type(exc).__name__
    return error("storage_unavailable", None, reason=reason)


def _checksum_mismatch() -> TapedeckError:
    return error(
        "checksum_mismatch", "The object store refused the bytes: Content-MD5 does not match."
    )


_S3_CODES: dict[str, Callable[[str], BaseException]] = {
    "NoSuchKey": ObjectNotFound,
    "NoSuchObject": ObjectNotFound,
    "ResourceNotFound": ObjectNotFound,
    "PreconditionFailed": ObjectExists,  # If-None-Match: * on an existing key
    "BadDigest": lambda _key: _checksum_mismatch(),
    "InvalidDigest": lambda _key: _checksum_mismatch(),
    "XAmzContentSHA256Mismatch": lambda _key: _checksum_mismatch(),
}
"""S3 error code → our exception (given the key). Every other refusal, and every transport
failure, is ``storage_unavailable``."""


@contextmanager
def _translated(key: str) -> Iterator[None]:
    """THE error translation of every SDK call about ``key``: S3 codes by ``_S3_CODES``,
    everything else the SDK or the transport raises → ``storage_unavailable``; the cause is
    chained. Callers that treat a missing key as normal catch ``ObjectNotFound``."""
    try:
        yield
    except S3Error as exc:
        make = _S3_CODES.get(exc.code or "")
        raise (make(key) if make else _unavailable(exc)) from exc
    except (MinioException, *_TRANSPORT_ERRORS) as exc:
        raise _unavailable(exc) from exc


def _read_exactly(data: BinaryIO, length: int) -> bytes:
    """Exactly ``length`` bytes of ``data``; a shorter stream is an ``invalid_request``."""
    chunks: list[bytes] = []
    remaining = length
    while remaining > 0:
        chunk = data.read(min(remaining, 1024 * 1024))
        if not chunk:
            raise error(
                "invalid_request",
                f"The body ended after {length - remaining} of {length} bytes.",
                field="body",
            )
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _DigestMismatch(Exception):
    """Raised by ``_CheckingReader`` at end of stream so the SDK aborts the multipart."""


class _CheckingReader:
    """Counts and MD5-hashes what the SDK reads; at EOF compares with ``expected_md5``."""

    def __init__(self, data: BinaryIO, expected_md5: bytes | None) -> None:
        self._data = data
        self._expected = expected_md5
        self._md5 = hashlib.md5()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._data.read(n)
        if chunk:
            self._md5.update(chunk)
            self.size += len(chunk)
        elif self._expected is not None and self._md5.digest() != self._expected:
            raise _DigestMismatch()
        return chunk


class _ResponseStream(io.RawIOBase):
    """A raw stream over a urllib3 response; ``close()`` releases the connection.

    Transport failures while reading (connection drop, truncated body, timeout) raise
    ``storage_unavailable``.
    """

    def __init__(self, response: Any) -> None:
        super().__init__()
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return int(self._response.readinto(buffer))
        except _TRANSPORT_ERRORS as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        if not self.closed:
            try:
                self._response.close()
                self._response.release_conn()
            finally:
                super().close()



def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def presign_v4(
    *,
    method: str,
    url: str,
    region: str,
    access_key: str,
    secret_key: str,
    now: datetime,
    expires: int,
    headers: dict[str, str],
) -> str:
    """AWS SigV4 query-string presigning of ``url`` with ``host`` plus ``headers`` signed.

    ``url`` is ``scheme://host[:port]/bucket/encoded-key`` (path already URI-encoded). The
    client must send every header in ``headers`` with exactly the same value.
    """
    parts = urlsplit(url)
    host = parts.netloc
    if (parts.scheme, parts.port) in (("http", 80), ("https", 443)):
        host = parts.hostname or host
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    signed = {"host": host, **{k.lower(): v.strip() for k, v in headers.items()}}
    names = sorted(signed)
    signed_headers = ";".join(names)
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{access_key}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": signed_headers,
    }
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    canonical_request = "\n".join(
        [
            method,
            parts.path or "/",
            canonical_query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            signed_headers,
            "UNSIGNED-PAYLOAD",
        ]
    )
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{canonical_query}&X-Amz-Signature={signature}"


SUPPORTED_MINIO = ((7, 2), (8, 0))
"""The minio SDK versions ``MinioPrivate`` was checked against: >= 7.2, < 8.0 (pyproject pins
the same range)."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


class MinioPrivate:
    """The three private ``Minio`` methods the store needs, in one place, checked once.

    The public API lacks them: ``put_object()`` turns unknown headers (``Content-MD5``,
    ``If-None-Match``) into ``x-amz-meta-*``, and there is no public ListMultipartUploads or
    AbortMultipartUpload. Building one on an SDK outside ``SUPPORTED_MINIO`` (or one that lost
    a method) raises ``RuntimeError`` naming the installed version, before any request."""

    METHODS = ("_put_object", "_list_multipart_uploads", "_abort_multipart_upload")

    def __init__(self, client: Minio, version: str | None = None) -> None:
        version = version or str(getattr(minio, "__version__", "0"))
        low, high = SUPPORTED_MINIO
        missing = [m for m in self.METHODS if not callable(getattr(client, m, None))]
        if not low <= _version(version) < high or missing:
            raise RuntimeError(
                f"minio {version} is not supported by tapedeck.infra.store.s3 (needs >= 7.2, < 8"
                f"{'; missing ' + ', '.join(missing) if missing else ''}); install minio~=7.2")
        self._client = client

    def put_object_with_headers(self, bucket: str, key: str, body: bytes,
                                headers: dict[str, str | list[str] | tuple[str]]) -> Any:
        """One PutObject with exactly ``headers`` (the store sees ``Content-MD5`` and
        ``If-None-Match``); the SDK's ``ObjectWriteResult``."""
        return self._client._put_object(bucket, key, body, headers)

    def list_multipart_uploads(self, bucket: str, prefix: str,
                               limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` unfinished uploads under ``prefix``: (key, upload id) pairs."""
        result = self._client._list_multipart_uploads(bucket, prefix=prefix, max_uploads=limit)
        return [(str(u.object_name), str(u.upload_id)) for u in result.uploads]

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort one upload (``S3Error`` ``NoSuchUpload`` when it is already gone)."""
        self._client._abort_multipart_upload(bucket, key, upload_id)


class S3Store:
    """``ObjectStore`` on one bucket of an S3-compatible store (see module doc).

    ``endpoint`` is ``host:port`` (no scheme); ``secure`` picks https; an empty ``region``
    means ``us-east-1``. ``clock`` gives the signing time of presigned URLs (pass
    ``tapedeck.clock.Clock.now``; defaults to the system UTC clock).
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
        *,
        public_url: str | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        retries: int = 2,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        region = region or "us-east-1"  # a known region keeps presigning off the network
        self.bucket = bucket
        self.region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._clock = clock
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=64,  # keep-alive connections per host: the gateway runs many uploads at once
            retries=urllib3.Retry(
                total=retries,
                connect=retries,
                read=0,
                status=retries,
                backoff_factor=0.1,
                status_forcelist=(500, 502, 503, 504),
                raise_on_status=False,
            ),
        )
        self._client = Minio(
            endpoint, access_key, secret_key, secure=secure, region=region, http_client=self._http
        )
        self._sdk = MinioPrivate(self._client)
        public = urlsplit(public_url) if public_url else None
        self._public_base = (
            f"{public.scheme}://{public.netloc}"
            if public
            else f"{'https' if secure else 'http'}://{endpoint}"
        )
        # Presigning never touches the network (the region is known), so a second client
        # that only signs for the public host is cheap.
        self._signer = (
            Minio(
                public.netloc,
                access_key,
                secret_key,
                secure=public.scheme == "https",
                region=region,
                http_client=self._http,
            )
            if public
            else self._client
        )

    def close(self) -> None:
        """Drop pooled connections."""
        self._http.clear()

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (safe to race with another creator)."""
        with _translated(self.bucket):
            try:
                if self._client.bucket_exists(self.bucket):
                    return
                self._client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in _BUCKET_EXISTS_CODES:
                    raise

    # -- ObjectStore ----------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: BinaryIO,
        length: int = -1,
        *,
        content_type: str = "application/octet-stream",
        content_md5_b64: str | None = None,
        if_absent: bool = False,
    ) -> ObjectInfo:
        """Store ``data`` under ``key`` (see module doc for single PUT vs multipart)."""
        expected = md5_of_b64(content_md5_b64) if content_md5_b64 is not None else None
        if length < 0:
            if if_absent:
                raise ValueError("if_absent needs a known length (a single PUT)")
            return self._put_multipart(key, data, content_type, expected)
        if length > MAX_SINGLE_PUT:
            raise ValueError("a single PUT is at most 5 GiB; use length=-1")
        body = _read_exactly(data, length)
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": content_type}
        if content_md5_b64 is not None:
            headers["Content-MD5"] = content_md5_b64
        if if_absent:
            headers["If-None-Match"] = "*"
        with _translated(key):
            result = self._sdk.put_object_with_headers(self.bucket, key, body, headers)
        return ObjectInfo(
            key=key,
            size=length,
            etag=(result.etag or "").strip('"').lower(),
            last_modified=self._response_date(result.http_headers),
        )

    def _put_multipart(
        self, key: str, data: BinaryIO, content_type: str, expected_md5: bytes | None
    ) -> ObjectInfo:
        reader = _CheckingReader(data, expected_md5)
        try:
            with _translated(key):
                result = self._client.put_object(
                    self.bucket,
                    key,
                    reader,  # type: ignore[arg-type]  # the SDK only calls read()
                    -1,
                    content_type=content_type,
                    part_size=PART_SIZE,
                    num_parallel_uploads=1,
                )
        except _DigestMismatch as exc:
            raise _checksum_mismatch() from exc
        return ObjectInfo(
            key=key,
            size=reader.size,
            etag=(result.etag or "").strip('"').lower(),
            last_modified=self._response_date(result.http_headers),
        )

    def _response_date(self, headers: Any) -> datetime:
        """The response's ``Date`` (≈ the object's Last-Modified, second precision)."""
        try:
            return parsedate_to_datetime(headers["Date"]).astimezone(UTC)
        except (KeyError, TypeError, ValueError):
            return self._clock()

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        """A buffered stream of the object, or of one ``Range`` of it (``bytes=offset-``
        or ``bytes=offset-last``); ``close()`` releases the connection. A range starting
        past the end (S3 ``InvalidRange``, 416) and ``length=0`` are empty streams of an
        existing key."""
        check_range(offset, length)
        if length == 0:
            if self.stat(key) is None:
                raise ObjectNotFound(key)
            return io.BytesIO(b"")
        with _translated(key):
            try:
                response = self._client.get_object(self.bucket, key, offset=offset,
                                                   length=length or 0)
            except S3Error as exc:
                if exc.code != "InvalidRange":  # 416: the range starts past the end
                    raise
                response = None
        if response is None:
            if self.stat(key) is None:
                raise ObjectNotFound(key)
            return io.BytesIO(b"")
        return io.BufferedReader(_ResponseStream(response), buffer_size=_STREAM_BUFFER)

    def stat(self, key: str) -> ObjectInfo | None:
        """Metadata of ``key``, or None when it does not exist."""
        try:
            with _translated(key):
                obj = self._client.stat_object(self.bucket, key)
        except ObjectNotFound:
            return None
        return ObjectInfo(
            key=key,
            size=int(obj.size or 0),
            etag=(obj.etag or "").strip('"').lower(),
            last_modified=obj.last_modified or self._clock(),
        )

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` in key order (collected, then sorted)."""
        with _translated(prefix):
            found = [
                ObjectInfo(
                    key=str(o.object_name),
                    size=int(o.size or 0),
                    etag=(o.etag or "").strip('"').lower(),
                    last_modified=o.last_modified or self._clock(),
                )
                for o in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if not o.is_dir
            ]
        # Python orders str by code point, which is the UTF-8 byte order S3 uses.
        return iter(sorted(found, key=lambda info: info.key))

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        try:
            with _translated(key):
                self._client.remove_object(self.bucket, key)
        except ObjectNotFound:
            return

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort the unfinished multipart uploads under ``prefix`` (lists again until none
        is left, so more than one listing page is handled); returns how many."""
        aborted = 0
        with _translated(prefix):
            while uploads := self._sdk.list_multipart_uploads(self.bucket, prefix, _ABORT_BATCH):
                for object_name, upload_id in uploads:
                    self._abort_upload(object_name, upload_id)
                    aborted += 1
                if len(uploads) < _ABORT_BATCH:
                    break
        return aborted

    def _abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload; one already gone (aborted concurrently) is fine."""
        try:
            self._sdk.abort_multipart_upload(self.bucket, key, upload_id)
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise

    def presign_put(
        self, key: str, expires: timedelta, *, content_md5_b64: str | None = None,
        if_absent: bool = False, content_length: int | None = None,
    ) -> tuple[str, dict[str, str]]:
        """A URL to PUT ``key`` to directly, and the headers the client must send."""
        headers: dict[str, str] = {}
        if content_md5_b64 is not None:
            md5_of_b64(content_md5_b64)
            headers["Content-MD5"] = content_md5_b64
        if if_absent:
            headers["If-None-Match"] = "*"
        if content_length is not None:
            headers["Content-Length"] = str(int(content_length))
        if not headers:
            url = self._signer.get_presigned_url(
                "PUT", self.bucket, key, expires=expires, request_date=self._clock()
            )
            return url, {}
        if not timedelta(seconds=1) <= expires <= timedelta(days=7):
            raise ValueError("expires must be between 1 second and 7 days")
        url = presign_v4(
            method="PUT",
            url=f"{self._public_base}/{self.bucket}/{quote(key, safe='/~')}",
            region=self.region,
            access_key=self._access_key,
            secret_key=self._secret_key,
            now=self._clock(),
            expires=int(expires.total_seconds()),
            headers=headers,
        )
        return url, headers

    def presign_get(self, key: str, expires: timedelta) -> str:
        """A URL to GET ``key`` from directly."""
        return self._signer.get_presigned_url(
            "GET", self.bucket, key, expires=expires, request_date=self._clock()
        )

    # -- StreamingPut (optional capability) -----------------------------------------------

    def put_stream(
        self,
        key: str,
        blocks: Iterable[bytes],
        length: int,
        *,
        content_type: str = "application/octet-stream",
        content_md5_b64: str | None = None,
        if_absent: bool = False,
    ) -> ObjectInfo:
        """One ``PutObject`` of ``length`` bytes sent while ``blocks`` produces them (see
        ``tapedeck.infra.store.StreamingPut``). The body is signed ``UNSIGNED-PAYLOAD`` (its
        SHA-256 is not known before it was sent); its integrity is the ``Content-MD5``
        when given, and the returned ETag (the store's MD5) for the caller to compare with
        the MD5 it computed. Never retried (the body cannot be replayed)."""
        if not 0 < length <= MAX_SINGLE_PUT:
            raise ValueError("put_stream needs 0 < length <= 5 GiB")
        headers: dict[str, str] = {"Content-Type": content_type, "Content-Length": str(length)}
        if content_md5_b64 is not None:
            md5_of_b64(content_md5_b64)
            headers["Content-MD5"] = content_md5_b64
        if if_absent:
            headers["If-None-Match"] = "*"
        url, signed = self._sign_unsigned_payload("PUT", key, headers)
        try:
            response = self._http.urlopen("PUT", url, body=_held_back(blocks, length),
                                          headers=signed, retries=False, chunked=False)
        except _TRANSPORT_ERRORS as exc:
            raise _unavailable(exc) from exc
        if response.status != 200:
            raise self._put_refusal(key, response)
        return ObjectInfo(
            key=key,
            size=length,
            etag=str(response.headers.get("ETag", "")).strip('"').lower(),
            last_modified=self._response_date(response.headers),
        )

    def _sign_unsigned_payload(
        self, method: str, key: str, headers: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """The URL and SigV4-signed headers of a request on ``key`` whose body is not signed
        (the SDK's own signer; the SDK itself only signs bodies it holds in memory)."""
        creds = self._client._provider.retrieve() if self._client._provider else None
        url = self._client._base_url.build(
            method=method, region=self.region, bucket_name=self.bucket, object_name=key
        )
        date = _utcnow()
        headers = {
            **headers,
            "Host": url.netloc,
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
            "x-amz-date": date.strftime("%Y%m%dT%H%M%SZ"),
        }
        if creds is None:
            return urlunsplit(url), headers
        if creds.session_token:
            headers["X-Amz-Security-Token"] = creds.session_token
        signed = sign_v4_s3(
            method=method,
            url=url,
            region=self.region,
            headers=headers,  # type: ignore[arg-type]  # the SDK's header dict type
            credentials=creds,
            content_sha256="UNSIGNED-PAYLOAD",
            date=date,
        )
        return urlunsplit(url), {k: str(v) for k, v in signed.items()}

    def _put_refusal(self, key: str, response: Any) -> BaseException:
        """Our error for a refused PUT: 412 → ``ObjectExists``, a digest refusal →
        ``checksum_mismatch``, anything else → ``storage_unavailable``."""
        if response.status == 412:
            return ObjectExists(key)
        try:
            exc: BaseException = S3Error.fromxml(response)
        except Exception:  # not an S3 error document (a proxy's page, an empty body)
            exc = ServerError(f"PUT answered HTTP {response.status}", response.status)
        make = _S3_CODES.get(exc.code or "") if isinstance(exc, S3Error) else None
        return make(key) if make else _unavailable(exc)


def _held_back(blocks: Iterable[bytes], length: int) -> Iterator[bytes]:
    """``blocks`` as a request body of exactly ``length`` bytes, always one block behind:
    a block is passed on only once the next one arrived within ``length``, the last only
    once ``blocks`` ended with exactly ``length`` bytes. So until ``blocks`` ended well the
    store has seen fewer than ``length`` bytes and cannot complete the object."""
    seen = 0
    held: bytes | None = None
    for block in blocks:
        if not block:
            continue
        seen += len(block)
        if seen > length:
            raise error("invalid_request", f"The body is longer than its {length} bytes.",
                        field="body")
        if held is not None:
            yield held
        held = block
    if seen != length or held is None:
        raise error("invalid_request", f"The body ended after {seen} of {length} bytes.",
                    field="body")
    yield held
