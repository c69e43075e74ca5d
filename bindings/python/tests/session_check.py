"""The Python binding against a real hushgate, run by ffi/tests/c_abi.rs.

Settings come from the environment (HG_CONTROL_URL, HG_CA_FILE, HG_USER,
HG_PASSWORD, HG_SERVER, HG_PATH, HG_SHA256; HUSHGATE_FFI_LIB points at the
library). It signs in, downloads HG_PATH through the local address and
checks its sha256, prints "DOWNLOADED <sha256>", then waits for the
revocation the test makes and checks it is seen everywhere. With
HG_SIGN_IN=code it signs in by code instead (HG_DEVICE_FILE keeps the
device's credential): it prints "CODE <user code> <link>" for the test to
approve, and after the revocation starts again, signed in by the saved
credential without a new code. Exit 0 only
if every check held. No pytest: plain asserts, so the test harness needs
nothing but python3.
"""

import hashlib
import http.client
import os
import re
import sys
import threading

import hushgate
from hushgate import EventKind, HushgateError, Session, State, Status

env = os.environ
HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "..", "ffi", "include", "hushgate.h")


def header_matches_the_enums():
    """The Python enums hold the header's values, so the two cannot drift."""
    text = open(HEADER).read()
    consts = {m[0]: int(m[1]) for m in re.findall(r"\b(HG_[A-Z_]+) = (\d+)", text)}
    mine = {}
    for cls, prefix in (
        (Status, "HG_ERR_"),
        (State, "HG_STATE_"),
        (EventKind, "HG_EVENT_"),
        (hushgate.CredentialKind, "HG_CREDENTIAL_"),
    ):
        for m in cls:
            name = "HG_OK" if (cls is Status and m.name == "OK") else prefix + m.name
            mine[name] = int(m)
    assert mine == consts, f"enums differ from the header: {set(mine.items()) ^ set(consts.items())}"


def session(**kw):
    return Session(
        env["HG_CONTROL_URL"],
        env["HG_SERVER"],
        ca_pem=open(env["HG_CA_FILE"]).read(),
        **kw,
    )


def errors_have_codes_and_messages():
    try:
        Session(env["HG_CONTROL_URL"], env["HG_SERVER"], ca_pem="not pem", user="u", password="p")
        raise AssertionError("a bad CA was accepted")
    except HushgateError as e:
        assert e.code == Status.BAD_CA and "PEM" in e.message, e
    with session(user=env["HG_USER"], password="wrong " + env["HG_PASSWORD"]) as s:
        s.start()
        try:
            s.wait_ready(timeout=60)
            raise AssertionError("a wrong password got in")
        except HushgateError as e:
            assert e.code == Status.WRONG_PASSWORD, e
        assert s.state == State.FAILED
        kinds = [ev.kind for ev in s.events(timeout=0)]
        assert kinds == [EventKind.CONNECTING, EventKind.FAILED], kinds


def download(addr, path):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    assert r.status == 200, r.status
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = r.read(1 << 16)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    c.close()
    return n, h.hexdigest()


def main():
    print("hushgate", hushgate.version(), flush=True)
    header_matches_the_enums()
    errors_have_codes_and_messages()

    seen = []
    threads = set()
    by_code = env.get("HG_SIGN_IN") == "code"

    def on_event(ev):
        seen.append(ev)
        threads.add(threading.get_ident())
        if ev.kind == EventKind.WAITING_FOR_APPROVAL:
            assert ev.state == State.WAITING_FOR_APPROVAL, ev
            assert re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", ev.user_code), ev
            assert ev.verification_uri.startswith("https://"), ev
            assert ev.user_code in ev.verification_uri_complete, ev
            assert ev.expires_at is not None, ev
            print("CODE", ev.user_code, ev.verification_uri_complete, flush=True)
        else:
            assert ev.user_code is None and ev.verification_uri is None, ev

    if by_code:
        creds = dict(device_name="python player", device_file=env.get("HG_DEVICE_FILE"))
    else:
        creds = dict(user=env["HG_USER"], password=env["HG_PASSWORD"])
    with session(on_event=on_event, **creds) as s:
        assert s.state == State.IDLE
        s.start()
        addr = s.wait_ready(timeout=60)
        print("READY", addr, flush=True)
        n, digest = download(addr, env["HG_PATH"])
        assert digest == env["HG_SHA256"], (digest, env["HG_SHA256"])
        print(f"DOWNLOADED {n} bytes sha256 {digest}", flush=True)

        # The test revokes the admission now.
        events = list(s.events(timeout=60))
        print("events:", [e.kind.name for e in events], flush=True)
        last = events[-1]
        assert last.kind == EventKind.REVOKED and last.code == Status.REVOKED, last
        assert last.local_addr is None and "revoked" in last.message, last
        assert s.state == State.REVOKED
        try:
            s.local_addr
            raise AssertionError("a revoked session still has an address")
        except HushgateError as e:
            assert e.code == Status.BAD_STATE, e
        s.stop()  # an ended session: nothing to do, and every callback is done
        kinds = [e.kind for e in seen]
        assert kinds[0] == EventKind.CONNECTING and EventKind.READY in kinds, kinds
        assert kinds[-1] == EventKind.REVOKED, kinds
        if by_code:
            assert kinds[:3] == [
                EventKind.CONNECTING,
                EventKind.WAITING_FOR_APPROVAL,
                EventKind.CONNECTING,
            ], kinds
            assert oct(os.stat(env["HG_DEVICE_FILE"]).st_mode & 0o777) == "0o600"
            # Started again: the saved credential signs in, no new code.
            del seen[:]
            s.start()
            addr = s.wait_ready(timeout=60)
            n, digest = download(addr, env["HG_PATH"])
            assert digest == env["HG_SHA256"], (digest, env["HG_SHA256"])
            s.stop()
            kinds = [e.kind for e in seen]
            assert EventKind.WAITING_FOR_APPROVAL not in kinds, kinds
            print("SIGNED IN AGAIN by the device file", flush=True)

    assert threading.get_ident() not in threads, "a callback ran on the caller's thread"
    print("REVOKED seen by events() and the callback", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAIL:", e, flush=True)
        sys.exit(1)
