"""The optional local server of one listening panel: the page, its clips, and a POST endpoint
that stores each rater's ratings (checked against the key, behind the rater's token) as
``ratings/<rater>.json``. The page itself is built by :mod:`ttt.panel.page`."""
from __future__ import annotations

import hmac
import http.server
import json
import os
import re
import socket
import sys
import threading
from pathlib import Path

from ttt.panel.ratings import RATER_RE, PanelError, check_ratings, load_key, unblind
from ttt.base.files import atomic_write

MAX_POST = 8 << 20  # bytes; a ratings file is a few kB
REQUEST_DEADLINE_S = 30  # a request (line, headers, body) must arrive whole within this (README)


def make_server(panel_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
                deadline_s: float = REQUEST_DEADLINE_S):
    """An HTTP server for one panel folder. It serves only the page and its clips (never
    key.json, the links, the QA notes or other raters' files) and stores POSTed ratings, checked
    against the key, as ``ratings/<rater>.json``. A POST must carry the rater's token (from
    their link) in ``X-Rater-Token``: a rater can write their own file and nothing else. A client
    whose request has not arrived whole after ``deadline_s`` is dropped (a socket timeout alone
    never fires on a client sending a byte every few seconds)."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise PanelError(f"--port {port}: must be an integer in 0-65535 (0 picks a free port)")
    root = Path(panel_dir).resolve()
    key = load_key(root / "key.json")
    tokens = key.get("tokens") or {}
    clip_re = re.compile(r"/clips/[0-9a-f]{12}\.wav")

    class Handler(http.server.SimpleHTTPRequestHandler):
        timeout = deadline_s  # seconds of silence; the deadline below bounds the whole request

        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def handle_one_request(self):
            timer = threading.Timer(deadline_s, self._drop)
            timer.daemon = True
            timer.start()
            try:
                super().handle_one_request()
            finally:
                timer.cancel()

        def _drop(self) -> None:
            """Past the deadline: end the connection; the blocked read returns and the thread
            ends (the reply, if any, fails quietly: see PanelServer.handle_error)."""
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _allowed(self) -> bool:
            path = self.path.split("?", 1)[0]
            if path == "/":
                self.path = "/index.html" + self.path[1:]
            elif path != "/index.html" and not clip_re.fullmatch(path):
                self.send_error(404)
                return False
            return True

        def do_GET(self):
            if self._allowed():
                super().do_GET()

        def do_HEAD(self):
            if self._allowed():
                super().do_HEAD()

        def do_POST(self):
            if self.path.split("?", 1)[0] != "/ratings":
                return self._reply(404, "not found")
            length = _content_length(self.headers.get("Content-Length"))
            if isinstance(length, tuple):
                self.close_connection = True
                return self._reply(*length)
            rater = _rater_of_token(tokens, self.headers.get("X-Rater-Token"))
            if rater is None:
                self.close_connection = True
                return self._reply(403, "no valid rater token: open the page with the link you "
                                        "were given (…?rater=ID&token=…), or send the saved file")
            self._reply(*_store_posted(root, key, rater, self.rfile.read(length)))

        def _reply(self, status: int, message: str) -> None:
            payload = json.dumps({"ok": status == 200, "message": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt, *args):
            pass

    return PanelServer((host, port), Handler)


class PanelServer(http.server.ThreadingHTTPServer):
    """A client that hangs up or is dropped mid-request costs one line on stderr, not a
    traceback (socketserver prints one per dropped connection)."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            print(f"panel serve: client {client_address[0]} disconnected "
                  f"({exc.strerror or type(exc).__name__})", file=sys.stderr, flush=True)
        else:
            super().handle_error(request, client_address)


def _content_length(value: str | None) -> int | tuple[int, str]:
    """The body's length, or (status, message) when absent, malformed or over the cap: the body
    is never read then."""
    if value is None:
        return 411, "Content-Length required"
    if not re.fullmatch(r"[0-9]{1,20}", value.strip()):  # no sign, no "1e3", ASCII digits only
        return 400, f"Content-Length {value[:40]!r} is not a non-negative integer"
    length = int(value)
    if length > MAX_POST:
        return 413, f"body of {length} bytes exceeds the {MAX_POST} byte limit"
    return length


def _rater_of_token(tokens: dict, token: str | None) -> str | None:
    """The rater whose token this is (compared in constant time), or None."""
    if not token:
        return None
    found = None
    for rater, expected in tokens.items():
        if isinstance(expected, str) and hmac.compare_digest(expected.encode(), token.encode()) \
                and RATER_RE.fullmatch(str(rater)):
            found = rater
    return found


def _store_posted(root: Path, key: dict, rater: str, body: bytes) -> tuple[int, str]:
    """Check a posted ratings file and store it as ``ratings/<rater>.json`` (atomic); (status,
    message). Nothing is left behind on any error."""
    where = Path("POST /ratings")
    try:
        doc = check_ratings(json.loads(body.decode("utf-8")), where)
        if doc["rater"] != rater:
            return 403, f"the token is rater {rater!r}'s, the ratings are {doc['rater']!r}'s"
        unblind(where, doc, key)
    except PanelError as exc:
        return 400, str(exc)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:  # not JSON, or JSON of odd shape
        return 400, f"{where}: not a listening-panel ratings file ({type(exc).__name__})"
    target = root / "ratings" / f"{rater}.json"  # rater: a key.json token holder, a RATER_RE id
    try:
        atomic_write(target, lambda tmp: tmp.write_bytes(body))  # a re-save by the rater replaces
    except OSError as exc:  # a full or read-only disk: the rater is told, nothing half-written
        print(f"panel serve: cannot store {target}: {exc.strerror}", file=sys.stderr, flush=True)
        return 507, f"the server cannot store ratings/{rater}.json ({exc.strerror}); keep your saved file"
    return 200, f"saved as ratings/{rater}.json"
