"""One watched collection: list once, then watch from the list's resourceVersion.

An :class:`Informer` keeps the objects of one collection path (one kind in one namespace)
that match a label selector, as client-go's reflector does (``Reflector.ListAndWatch``):
one list, then a watch from the list's resourceVersion with ``allowWatchBookmarks``, re-opened
from the last resourceVersion seen when the API server ends it (``timeoutSeconds``). It lists
again (and says which objects changed meanwhile) when the watch expired (410 Gone: etcd
compacted past it), broke (a connection error, an API server restart), or went silent: no
event and no bookmark for ``silent`` seconds, the socket's read timeout (a watch that stalls
without closing). While it lists again, :attr:`synced` is False and readers go to the API
server instead.

Stored objects are compacted (:func:`compact`): every field but ``selfLink``, with
``managedFields`` reduced to the entries and keys ownership checks and drift attribution read
(a subresource's entries, KubeRay's status writes, are a third of a RayService's bytes). Each
is kept frozen (:class:`Kept`): its JSON text, about a fifth of the memory of the decoded
dicts (a RayService with its status: some 4 kB against 22 kB, so 3,000 of them take 13 MB
rather than 66), decoded afresh for each reader (:meth:`Informer.get`,
:meth:`Informer.read`), so no reader can change what the cache holds. Lists are read in
pages (``limit``/``continue``): the decoded page, not the whole collection, is the peak.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from gitsync.kube.client import REQUEST_TIMEOUT

log = logging.getLogger(__name__)

# (type, old, new): ADDED has no old, DELETED no new. Relisting reports what changed the same way.
Event = tuple[str, dict[str, Any] | None, dict[str, Any] | None]

# What is kept of a managedFields entry: who, how, when and which fields.
_MANAGED_KEYS = ("manager", "operation", "time", "fieldsV1")
# Metadata gitsync never reads.
_DROPPED_METADATA = frozenset({"selfLink"})


@dataclass(frozen=True)
class WatchSettings:
    """How the watches behave (``cache`` in the agent config, docs/agent-config.md).

    ``silent``: seconds without an event or bookmark after which a watch is taken for stalled
    and the collection listed again (the API server sends a bookmark about every minute).
    ``timeout``: seconds the API server keeps one watch open (re-opened from where it was).
    ``history``: the changes kept for :meth:`Informer.changes` (a reader that falls further
    behind reads the whole collection again)."""

    silent: float = 150.0
    timeout: float = 300.0
    history: int = 4096
    backoff: float = 1.0
    longest_backoff: float = 30.0
    page: int = 100  # objects per list request (``limit``)


def compact(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the cache keeps it: every field but ``selfLink``; of ``managedFields`` only
    the entries written through the object itself, each with its manager, operation, time and
    field set. Every reader of managedFields (:func:`gitsync.stamp.untouched_since_apply`,
    :func:`gitsync.diff.drift.owners`, :func:`gitsync.kube.cache._writers`) skips the entries
    of a subresource (KubeRay's status writes: a third of a RayService's bytes)."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return obj
    kept = {k: v for k, v in metadata.items() if k not in _DROPPED_METADATA}
    if "managedFields" in metadata:
        kept["managedFields"] = [
            {k: entry[k] for k in _MANAGED_KEYS if k in entry}
            for entry in metadata.get("managedFields") or []
            if not entry.get("subresource")
        ]
    return {**obj, "metadata": kept}


@dataclass(frozen=True, slots=True, eq=False)
class Kept:
    """One object as the cache keeps it: its compacted JSON text (:func:`freeze`), and the
    name, resourceVersion and labels that filtering reads without decoding it."""

    name: str
    version: str
    labels: dict[str, str]
    text: str

    def thaw(self) -> dict[str, Any]:
        """A fresh copy of the object (the reader's own)."""
        found: dict[str, Any] = json.loads(self.text)
        return found


def freeze(obj: dict[str, Any]) -> Kept:
    metadata = obj.get("metadata") or {}
    return Kept(
        str(metadata.get("name") or ""),
        str(metadata.get("resourceVersion") or ""),
        {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
        json.dumps(compact(obj), separators=(",", ":")),
    )


def _thawed(kept: Kept | None) -> dict[str, Any] | None:
    return kept.thaw() if kept is not None else None


# A change as the history keeps it (frozen), thawed for its readers.
_Change = tuple[str, Kept | None, Kept | None]


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class Informer:
    """The objects of one collection ``path`` matching ``selector``, kept by a thread.

    ``on_event`` is called (on that thread) with every change after the first list:
    watch events, and the differences a relist finds. ``kind``/``api_version`` fill what a
    list's items leave out."""

    def __init__(
        self,
        api: client.ApiClient,
        path: str,
        selector: str,
        settings: WatchSettings,
        *,
        kind: str,
        api_version: str,
        on_event: Callable[[Event], None] = lambda event: None,
    ) -> None:
        self.api, self.path, self.selector, self.settings = api, path, selector, settings
        self.kind, self.api_version, self.on_event = kind, api_version, on_event
        self.objects: dict[str, Kept] = {}  # by name (readers: :meth:`get`, :meth:`read`)
        self.version = ""  # the last resourceVersion seen (list, event or bookmark)
        self.sequence = 0  # counts the changes applied to :attr:`objects`
        self.history: deque[tuple[int, _Change]] = deque(maxlen=settings.history)
        self.changed = threading.Condition()
        self.synced = False
        self.lists = 0  # lists made (the first one, then every relist)
        self.watches = 0  # watches opened
        self.reasons: list[str] = []  # why each relist happened (the last 32)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None  # the watch's open response (see :meth:`distrust`)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name=f"gitsync-watch {self.path}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self.halt()
        self.join(timeout)

    def halt(self) -> None:
        """Tells the thread to end, and ends a watch read it is blocked in (a watch of a quiet
        collection would otherwise hold it until its ``silent`` read timeout)."""
        self._stop.set()
        with self.changed:
            self.synced = False
            self.changed.notify_all()
        self._shutdown()

    def join(self, timeout: float = 1.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _shutdown(self) -> None:
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # ends the blocked read on the watch thread
                response.shutdown()

    def distrust(self) -> None:
        """Lists again before serving reads: the API server or etcd failed a request, and a
        watch left open across their restart may have stopped delivering events without
        closing. Readers go to the API server until the relist is in."""
        with self.changed:
            self.synced = False
            self.changed.notify_all()
        self._shutdown()

    def wait_synced(self, timeout: float) -> bool:
        """Waits until the first list is in (or ``timeout`` seconds)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.synced or self._stop.is_set(), timeout)

    def run(self) -> None:
        """List, watch until the watch must be listed again, repeat; a failed list waits
        (doubling from ``backoff`` to ``longest_backoff``) and lists again."""
        wait = self.settings.backoff
        while not self._stop.is_set():
            try:
                self.relist()
            except (client.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                log.info("cannot list %s: %s; again in %.0fs", self.path, exc, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, self.settings.longest_backoff)
                continue
            wait = self.settings.backoff
            reason = self.watch_until_broken()
            self.reasons = [*self.reasons[-31:], reason]
            log.info("watch of %s ended (%s): listing again", self.path, reason)
            with self.changed:
                self.synced = False

    # -- list and watch ----------------------------------------------------------------------

    def _query(self, **extra: str) -> list[tuple[str, str]]:
        return [("labelSelector", self.selector), *extra.items()]

    def relist(self) -> None:
        """One list: the store becomes it, and each difference from what was kept is an
        event (after the first list), so nothing that changed while no watch ran is missed."""
        fresh, version = self._listing()
        self.lists += 1
        with self.changed:
            changes: list[_Change] = []
            if self.lists > 1:
                changes = [("DELETED", o, None) for n, o in self.objects.items() if n not in fresh]
                changes += [
                    ("ADDED" if n not in self.objects else "MODIFIED", self.objects.get(n), o)
                    for n, o in fresh.items()
                    if n not in self.objects or self.objects[n].version != o.version
                ]
            self.objects = fresh
            self.version = version
            self._record(changes)
            self.synced = True
            self.changed.notify_all()
        for change in changes:
            self._tell(change)

    def _listing(self) -> tuple[dict[str, Kept], str]:
        """The collection, frozen, and the list's resourceVersion: a page of
        ``settings.page`` objects per request (one snapshot: the API server's ``continue``)."""
        connect, read = getattr(self.api.rest_client, "timeout", REQUEST_TIMEOUT)
        fresh: dict[str, Kept] = {}
        token = ""
        while True:
            page = {"limit": str(self.settings.page), **({"continue": token} if token else {})}
            response = self._get(self._query(**page), (connect, read + 30))
            data = response.read()
            if response.status != 200:
                raise client.ApiException(status=response.status, reason=response.reason, body=data)
            listing = json.loads(data)
            del data
            for item in listing.get("items") or []:
                item.setdefault("apiVersion", self.api_version)
                item.setdefault("kind", self.kind)
                kept = freeze(item)
                fresh[kept.name] = kept
            metadata = listing.get("metadata") or {}
            token = str(metadata.get("continue") or "")
            if not token:
                return fresh, str(metadata["resourceVersion"])

    def watch_until_broken(self) -> str:
        """Applies watch events until the watch must be listed again; the reason."""
        while not self._stop.is_set():
            try:
                for line in self._stream():
                    self._apply(json.loads(line))
            except Expired:
                return "expired"
            except urllib3.exceptions.ReadTimeoutError:
                return "silent"
            except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                return f"broken: {type(exc).__name__}"
            except ValueError as exc:  # a line cut short by a dying connection
                return f"broken: {type(exc).__name__}"
        return "stopped"

    def _stream(self) -> Iterator[str]:
        """One watch request's lines: ends when the API server ends the watch."""
        connect, _ = getattr(self.api.rest_client, "timeout", REQUEST_TIMEOUT)
        query = self._query(
            watch="1",
            allowWatchBookmarks="true",
            resourceVersion=self.version,
            timeoutSeconds=str(max(1, round(self.settings.timeout))),
        )
        response = self._get(query, (connect, self.settings.silent))
        self.watches += 1
        if response.status == 410:
            raise Expired
        if response.status != 200:
            raise client.ApiException(status=response.status, reason=response.reason)
        self._response = response.response
        try:
            # Distrusted or stopped before the response was kept for them to cut: their
            # shutdown missed it, so the watch ends here.
            if self._stop.is_set():
                return
            if not self.synced:
                raise urllib3.exceptions.ProtocolError("distrusted")
            for line in iter_resp_lines(response.response):
                if self._stop.is_set():
                    return
                if not self.synced:
                    raise urllib3.exceptions.ProtocolError("distrusted")
                if line:
                    yield line
            if not self.synced:  # distrusted while the watch ran: list again
                raise urllib3.exceptions.ProtocolError("distrusted")
        finally:
            self._response = None
            if self._stop.is_set() or not self.synced:
                # Cut (or cut short): its connection, read-shut mid-TLS-record, must not go
                # back to the pool for the relist to reuse.
                response.response.close()
            response.response.release_conn()

    def _get(self, query: list[tuple[str, str]], timeout: tuple[float, float]) -> Any:
        serialized = self.api.param_serialize(
            "GET",
            self.path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        return self.api.call_api(*serialized, _request_timeout=timeout)

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Expired
            raise client.ApiException(status=obj.get("code"), reason=obj.get("message"))
        version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)
        if kind == "BOOKMARK":
            self.version = version
            return
        obj.setdefault("apiVersion", self.api_version)
        obj.setdefault("kind", self.kind)
        name = obj["metadata"]["name"]
        new = None if kind == "DELETED" else freeze(obj)
        with self.changed:
            old = self.objects.get(name)
            self.version = version
            if old is not None and not _newer(version, old):
                # Older than what :meth:`put` kept from gitsync's own write (the stream
                # brings that write's own event later): stale, neither kept nor told. A
                # DELETED event is the deletion's own revision, so it is never older than
                # the object it deletes, only than one gitsync created again since.
                return
            if new is None:
                self.objects.pop(name, None)
            else:
                self.objects[name] = new
            change: _Change = (str(kind), old, new)
            self._record([change])
            self.changed.notify_all()
        self._tell(change)

    def _record(self, changes: list[_Change]) -> None:
        for change in changes:
            self.sequence += 1
            self.history.append((self.sequence, change))

    def _tell(self, change: _Change) -> None:
        try:
            self.on_event((change[0], _thawed(change[1]), _thawed(change[2])))
        except Exception:  # a subscriber's bug must not stop the watch
            log.exception("a watch subscriber failed on %s", self.path)

    # -- what gitsync itself wrote -----------------------------------------------------------

    def put(self, obj: dict[str, Any]) -> None:
        """An object gitsync just wrote (the API server's answer): kept at once, unless the
        watch already brought a newer version."""
        kept = freeze(obj)
        with self.changed:
            if _newer(kept.version, self.objects.get(kept.name)):
                self.objects[kept.name] = kept

    def forget(self, name: str) -> None:
        """An object gitsync just deleted."""
        with self.changed:
            self.objects.pop(name, None)

    # -- readers -----------------------------------------------------------------------------

    def get(self, name: str) -> dict[str, Any] | None:
        """The object ``name`` (the reader's own copy), or None."""
        with self.changed:
            kept = self.objects.get(name)
        return _thawed(kept)

    def read(
        self,
        labelled: Callable[[dict[str, str]], bool] | None = None,
        names: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every object (whose labels ``labelled`` accepts; of ``names`` only, when given),
        each the reader's own copy: decoded outside the lock, so the watch is not held up
        meanwhile, and only those asked for are decoded."""
        with self.changed:
            if names is None:
                kept = list(self.objects.values())
            else:
                kept = [k for name in names if (k := self.objects.get(name)) is not None]
        return [k.thaw() for k in kept if labelled is None or labelled(k.labels)]

    def changes(
        self, since: int, seconds: float, stop: threading.Event | None = None
    ) -> Iterator[Event] | None:
        """The changes after sequence ``since``, waiting up to ``seconds`` for them, as they
        come; None when ``since`` is older than the history kept (read everything again)."""
        with self.changed:
            if self.history and self.history[0][0] > since + 1 and self.sequence > since:
                return None
        return self._follow(since, time.monotonic() + seconds, stop)

    def _follow(self, since: int, deadline: float, stop: threading.Event | None) -> Iterator[Event]:
        seen = since

        def news() -> bool:
            return self.sequence > seen or not self.synced

        while True:
            with self.changed:
                self.changed.wait_for(news, max(0.0, min(0.5, deadline - time.monotonic())))
                fresh = [(n, e) for n, e in self.history if n > seen]
                synced = self.synced
            for number, (kind, old, new) in fresh:
                seen = number
                yield kind, _thawed(old), _thawed(new)
            if not synced or time.monotonic() >= deadline or (stop and stop.is_set()):
                return


def _newer(mine: str, kept: Kept | None) -> bool:
    """Whether resourceVersion ``mine`` is newer than ``kept``'s (resourceVersions are etcd
    revisions: numbers, though clients are told to treat them as opaque, so anything else
    counts as newer)."""
    theirs = kept.version if kept is not None else ""
    if not theirs:
        return True
    if mine.isdigit() and theirs.isdigit():
        return int(mine) >= int(theirs)
    return True
