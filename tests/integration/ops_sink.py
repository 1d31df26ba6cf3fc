"""A local HTTP server that stands in for Slack and Microsoft Teams: it speaks their answers over a
real socket and records every request (tests of the alert node, and the e2e test).

* ``/slack/...`` (incoming webhook): 200 ``ok``
* ``/api/chat.postMessage`` (Web API): 200 ``{"ok": true, ...}``; 401-style ``{"ok": false}`` without
  ``Authorization: Bearer``
* ``/teams/...`` (connector webhook): 200 ``1``
``script(path, [(status, headers, body), ...])`` queues scripted answers (429 with Retry-After, 500...).
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Request:
    def __init__(self, path, headers, body):
        self.path, self.headers, self.body = path, headers, body
        try:
            self.json = json.loads(body.decode())
        except ValueError:
            self.json = None
        self.status = None

    def __repr__(self):
        return f"Request({self.path} -> {self.status})"


class Sink:
    def __init__(self):
        self.requests = []
        self._scripts = {}
        self._cv = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                req = Request(self.path, dict(self.headers), self.rfile.read(n))
                status, headers, body = sink._answer(req)     # records req, in answer order
                payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                with sink._cv:
                    sink._cv.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(2)

    def script(self, path, answers):
        with self._cv:
            self._scripts.setdefault(path, []).extend(answers)

    def _answer(self, req):
        """Choose the answer and record the request under one lock: a client that retries at once
        (429 with Retry-After: 0) cannot see its retry recorded before the first attempt."""
        ans = self._choose(req)
        with self._cv:
            req.status = ans[0]
            self.requests.append(req)
        return ans

    def _choose(self, req):
        with self._cv:
            q = self._scripts.get(req.path)
            if q:
                return q.pop(0)
        if req.path.endswith("/chat.postMessage"):
            if not req.headers.get("Authorization", "").startswith("Bearer "):
                return 200, {"Content-Type": "application/json"}, {"ok": False, "error": "not_authed"}
            return 200, {"Content-Type": "application/json"}, {"ok": True, "channel": "C1", "ts": "1.1"}
        if req.path.startswith("/teams"):
            return 200, {}, "1"
        return 200, {}, "ok"

    def on(self, path_prefix):
        with self._cv:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def wait_for(self, pred, timeout=5.0, what="requests"):
        """Wait until ``pred(list_of_requests)`` is true; returns the list."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not pred(list(self.requests)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what}: not seen within {timeout} s; got {self.requests}")
                self._cv.wait(left)
            return list(self.requests)
