"""A small application that decides herald subscriptions (`--auth-url`), for
tests/it/auth_callback.rs. It listens on 127.0.0.1 (port 0), prints `port N` on stdout,
and answers each POST by the `user` cookie:

  alice   200 {"topics": ["news", "alice/*"]}
  load    200 {} (anything: for load tests)
  ttl<S>  200 {"expires_in": S}            (seconds; the stream ends then)
  bearer  200 when Authorization is `Bearer good`, else 401
  mallory 403
  broken  500
  garbage 200 with a body that is not JSON
  slow    sleeps 3 s, then 200
  stall   sleeps 60 s, then 200 (a stalled application)
  (none)  401

Without a `user` cookie, the subscription's `token` query parameter names the user
(`/events?topic=a&token=alice`), for load generators that cannot set cookies.

GET /calls answers the JSON list of every POST it received: its body and the Cookie,
Authorization and Origin headers.
"""

import json
import sys
import threading
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CALLS = []
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            body = json.dumps(CALLS).encode()
        self.answer(200, body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            CALLS.append(
                {
                    "body": request,
                    "cookie": self.headers.get("Cookie"),
                    "authorization": self.headers.get("Authorization"),
                    "origin": self.headers.get("Origin"),
                    "content_type": self.headers.get("Content-Type"),
                }
            )
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        user = cookie["user"].value if "user" in cookie else request.get("token")
        if user == "alice":
            self.answer(200, json.dumps({"topics": ["news", "alice/*"]}).encode())
        elif user == "load":
            self.answer(200, b"{}")
        elif user is not None and user.startswith("ttl"):
            self.answer(200, json.dumps({"expires_in": float(user[3:])}).encode())
        elif user == "bearer":
            ok = self.headers.get("Authorization") == "Bearer good"
            self.answer(200 if ok else 401)
        elif user == "mallory":
            self.answer(403)
        elif user == "broken":
            self.answer(500)
        elif user == "garbage":
            self.answer(200, b"not json")
        elif user == "slow":
            time.sleep(3)
            self.answer(200)
        elif user == "stall":
            time.sleep(60)
            self.answer(200)
        else:
            self.answer(401)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
