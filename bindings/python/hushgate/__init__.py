"""hushgate for Python: the client shim through its C ABI, with ctypes.

A thin layer over ``libhushgate_ffi.so`` (the ``hushgate-ffi`` crate): no
compilation step. The library is found, in order, at the path in the
``HUSHGATE_FFI_LIB`` environment variable, next to this package, or by
the system's library search (``ctypes.util.find_library``).

    import hushgate

    with hushgate.Session("https://control.example:8443", "living-room",
                          ca_pem=open("ca.pem").read(),
                          user="alice", password=password) as session:
        session.start()
        session.wait_ready(timeout=30)
        print("point the player at http://" + session.local_addr)
        for event in session.events():      # until the session ends
            print(event.kind.name, event.message)

A TV or player without a keyboard signs in by code instead: give
``device_name=`` (and ``device_file=`` to remember the device), watch for
the ``WAITING_FOR_APPROVAL`` event and show its ``user_code`` and
``verification_uri``; a user approves the code on a phone, the session
goes on by itself:

    def show(event):
        if event.kind == hushgate.EventKind.WAITING_FOR_APPROVAL:
            print(f"open {event.verification_uri} and enter {event.user_code}")

    with hushgate.Session(url, "living-room", ca_pem=ca,
                          device_name="living-room TV",
                          device_file="/var/lib/player/hushgate-device",
                          on_event=show) as session:
        session.start()
        session.wait_ready(timeout=600)

Every failure raises :class:`HushgateError` with the library's code and
message. Callbacks (``on_event=``) run on the session's own thread (see
docs/embedding.md); ``events()`` polls from the calling thread. Both see
every event.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import enum
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

__all__ = [
    "CredentialKind",
    "Event",
    "EventKind",
    "HushgateError",
    "Session",
    "State",
    "Status",
    "version",
]


class Status(enum.IntEnum):
    """``hg_status``: what a call returns, and why a session failed."""

    OK = 0
    INVALID_ARGUMENT = 1
    BAD_STATE = 2
    REENTRANT = 3
    TIMEOUT = 4
    UNSUPPORTED = 5
    INTERNAL = 6
    BAD_CA = 10
    BAD_CONFIG = 11
    WRONG_PASSWORD = 20
    TOKEN_REJECTED = 21
    RATE_LIMITED = 22
    NO_ACCESS = 23
    REVOKED = 24
    CODE_EXPIRED = 25
    CODE_DENIED = 26
    CONTROL_UNREACHABLE = 30
    CERTIFICATE_NOT_TRUSTED = 31
    GATEWAY_OFFLINE = 32
    GATEWAY_UNREACHABLE = 33
    LISTEN_IN_USE = 40
    LISTEN = 41
    BAD_ANSWER = 50
    TUNNEL = 51
    CONTROL = 52
    OTHER = 99


class State(enum.IntEnum):
    """``hg_state``: where a session is."""

    IDLE = 0
    CONNECTING = 1
    WAITING_FOR_APPROVAL = 2
    READY = 3
    RENEWING = 4
    RECONNECTING = 5
    REVOKED = 6
    FAILED = 7
    STOPPED = 8

    @property
    def is_final(self) -> bool:
        return self in (State.REVOKED, State.FAILED, State.STOPPED)


class EventKind(enum.IntEnum):
    """``hg_event_kind``: what happened."""

    CONNECTING = 1
    WAITING_FOR_APPROVAL = 2
    READY = 3
    RENEWING = 4
    RENEWED = 5
    LOST = 6
    RECONNECTING = 7
    READMITTED = 8
    REVOKED = 9
    FAILED = 10
    STOPPED = 11


class CredentialKind(enum.IntEnum):
    """``hg_credential_kind``: how the user signs in."""

    PASSWORD = 1
    TOKEN = 2
    DEVICE_CODE = 3


def _enum(cls, value):
    try:
        return cls(value)
    except ValueError:  # a newer library: keep the number
        return value


class HushgateError(Exception):
    """A call failed: ``code`` (a :class:`Status`) and the library's message."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{_name(code)}: {message}")
        self.code = _enum(Status, code)
        self.message = message


class _Event(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int32),
        ("state", ctypes.c_int32),
        ("code", ctypes.c_int32),
        ("attempt", ctypes.c_uint32),
        ("expires_at", ctypes.c_int64),
        ("missed", ctypes.c_uint64),
        ("message", ctypes.c_char_p),
        ("local_addr", ctypes.c_char_p),
        ("user_code", ctypes.c_char_p),
        ("verification_uri", ctypes.c_char_p),
        ("verification_uri_complete", ctypes.c_char_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.POINTER(_Event), ctypes.c_void_p)


@dataclass(frozen=True)
class Event:
    """One state change of a session (a copy of ``hg_event``)."""

    kind: EventKind
    state: State
    code: Status
    attempt: int
    expires_at: Optional[datetime.datetime]
    missed: int
    message: str
    local_addr: Optional[str]
    user_code: Optional[str]
    verification_uri: Optional[str]
    verification_uri_complete: Optional[str]

    @classmethod
    def _from(cls, e: _Event) -> "Event":
        def s(b):
            return None if b is None else b.decode("utf-8", "replace")

        return cls(
            kind=_enum(EventKind, e.kind),
            state=_enum(State, e.state),
            code=_enum(Status, e.code),
            attempt=e.attempt,
            expires_at=(
                datetime.datetime.fromtimestamp(e.expires_at, datetime.timezone.utc)
                if e.expires_at
                else None
            ),
            missed=e.missed,
            message=s(e.message) or "",
            local_addr=s(e.local_addr),
            user_code=s(e.user_code),
            verification_uri=s(e.verification_uri),
            verification_uri_complete=s(e.verification_uri_complete),
        )


def _load() -> ctypes.CDLL:
    path = os.environ.get("HUSHGATE_FFI_LIB")
    if not path:
        beside = os.path.join(os.path.dirname(__file__), "libhushgate_ffi.so")
        path = beside if os.path.exists(beside) else ctypes.util.find_library("hushgate_ffi")
    if not path:
        raise OSError(
            "libhushgate_ffi.so not found: set HUSHGATE_FFI_LIB to its path "
            "(cargo build --release -p hushgate-ffi makes target/release/libhushgate_ffi.so)"
        )
    lib = ctypes.CDLL(path)
    p, i32, st = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32
    cs = ctypes.c_char_p
    sigs = {
        "hg_version": ([], cs),
        "hg_status_name": ([i32], cs),
        "hg_last_error_code": ([], st),
        "hg_last_error_message": ([], cs),
        "hg_session_new": ([cs, cs, cs, ctypes.POINTER(p)], st),
        "hg_session_set_credential": ([p, i32, cs, cs], st),
        "hg_session_set_service": ([p, cs], st),
        "hg_session_set_listen": ([p, cs], st),
        "hg_session_set_callback": ([p, _CALLBACK, p], st),
        "hg_session_start": ([p], st),
        "hg_session_wait_ready": ([p, i32], st),
        "hg_session_state": ([p, ctypes.POINTER(i32)], st),
        # A char* the caller frees: kept as a raw pointer, not c_char_p
        # (which would copy it and lose the pointer to free).
        "hg_session_local_addr": ([p, ctypes.POINTER(p)], st),
        "hg_session_poll_event": ([p, i32, ctypes.POINTER(ctypes.POINTER(_Event))], st),
        "hg_event_free": ([ctypes.POINTER(_Event)], None),
        "hg_session_stop": ([p], st),
        "hg_session_free": ([p], None),
        "hg_string_free": ([p], None),
    }
    for name, (args, res) in sigs.items():
        f = getattr(lib, name)
        f.argtypes = args
        f.restype = res
    return lib


_lib = _load()


def _name(code: int) -> str:
    return _lib.hg_status_name(code).decode()


def _check(status: int) -> None:
    if status != Status.OK:
        raise HushgateError(status, _lib.hg_last_error_message().decode("utf-8", "replace"))


def _b(s: Optional[str]) -> Optional[bytes]:
    return None if s is None else s.encode("utf-8")


def _ms(timeout: Optional[float]) -> int:
    if timeout is None:
        return -1
    return max(0, min(int(timeout * 1000), 2**31 - 1))


def version() -> str:
    """The library's version."""
    return _lib.hg_version().decode()


class Session:
    """One hushgate session: a local address that behaves like the media
    server while the admission lasts.

    Give ``user`` and ``password``, or ``token`` (a login token), or
    ``device_name`` to sign in by code (with ``device_file``, where the
    device's credential is kept, 0600, for later starts; without it each
    start shows a new code). The strings are copied into the library at
    once. ``on_event(event)`` is
    called on the session's own thread for every event; it must not call
    :meth:`stop` or :meth:`close`.
    """

    def __init__(
        self,
        control_url: str,
        server: str,
        *,
        ca_pem: Optional[str] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
        token: Optional[str] = None,
        device_name: Optional[str] = None,
        device_file: Optional[str] = None,
        service: Optional[str] = None,
        listen: Optional[str] = None,
        on_event: Optional[Callable[[Event], None]] = None,
    ):
        self._h = None
        handle = ctypes.c_void_p()
        _check(_lib.hg_session_new(_b(control_url), _b(ca_pem), _b(server), ctypes.byref(handle)))
        self._h = handle
        if device_name is not None:
            _check(
                _lib.hg_session_set_credential(
                    self._h,
                    CredentialKind.DEVICE_CODE,
                    _b(device_name),
                    _b(None if device_file is None else os.fspath(device_file)),
                )
            )
        elif token is not None:
            _check(_lib.hg_session_set_credential(self._h, CredentialKind.TOKEN, None, _b(token)))
        elif user is not None and password is not None:
            _check(
                _lib.hg_session_set_credential(
                    self._h, CredentialKind.PASSWORD, _b(user), _b(password)
                )
            )
        else:
            self.close()
            raise ValueError("give user and password, token, or device_name")
        if service is not None:
            _check(_lib.hg_session_set_service(self._h, _b(service)))
        if listen is not None:
            _check(_lib.hg_session_set_listen(self._h, _b(listen)))
        self._callback = None
        if on_event is not None:
            def trampoline(ev, _user_data):
                on_event(Event._from(ev.contents))

            # Kept on the object: ctypes must not collect it while the
            # library may call it.
            self._callback = _CALLBACK(trampoline)
            _check(_lib.hg_session_set_callback(self._h, self._callback, None))

    def _handle(self):
        if self._h is None:
            raise HushgateError(Status.BAD_STATE, "the session is closed")
        return self._h

    def start(self) -> None:
        """Starts signing in; returns at once (see :meth:`wait_ready`)."""
        _check(_lib.hg_session_start(self._handle()))

    def wait_ready(self, timeout: Optional[float] = None) -> str:
        """Waits until the local address works and returns it; raises
        :class:`HushgateError` if the session fails, is revoked or the
        timeout (seconds) passes."""
        _check(_lib.hg_session_wait_ready(self._handle(), _ms(timeout)))
        return self.local_addr

    @property
    def state(self) -> State:
        out = ctypes.c_int32()
        _check(_lib.hg_session_state(self._handle(), ctypes.byref(out)))
        return _enum(State, out.value)

    @property
    def local_addr(self) -> str:
        """``"127.0.0.1:PORT"``: where the player connects."""
        out = ctypes.c_void_p()
        _check(_lib.hg_session_local_addr(self._handle(), ctypes.byref(out)))
        try:
            return ctypes.string_at(out.value).decode()
        finally:
            _lib.hg_string_free(out)

    def poll(self, timeout: Optional[float] = 0) -> Optional[Event]:
        """The next event, waiting up to ``timeout`` seconds (None: no
        limit); None if none came."""
        out = ctypes.POINTER(_Event)()
        _check(_lib.hg_session_poll_event(self._handle(), _ms(timeout), ctypes.byref(out)))
        if not out:
            return None
        try:
            return Event._from(out.contents)
        finally:
            _lib.hg_event_free(out)

    def events(self, timeout: Optional[float] = None) -> Iterator[Event]:
        """Yields events as they come, until one that ends the session;
        stops early (without raising) if ``timeout`` seconds pass with
        no event."""
        while True:
            ev = self.poll(timeout)
            if ev is None:
                return
            yield ev
            if isinstance(ev.state, State) and ev.state.is_final:
                return

    def stop(self) -> None:
        """Closes the local address, revokes the admission and waits for
        the session to end. The session may be started again."""
        _check(_lib.hg_session_stop(self._handle()))

    def close(self) -> None:
        """Stops the session if it runs and frees it."""
        if self._h is not None:
            h, self._h = self._h, None
            _lib.hg_session_free(h)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
