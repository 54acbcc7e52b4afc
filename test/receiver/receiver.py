#!/usr/bin/env python3
"""
test/receiver/receiver.py --- the loopback HTTP receiver the push tests talk to.

A small threaded HTTP/1.1 server (Python's standard library only, so the
harness needs nothing beyond Debian's python3) that misbehaves on purpose,
chosen by the request path, and records every request it got as one JSON
line in a log file: arrival time, method, path, headers, the body (text)
and its SHA-256.  Tests read that log to assert what reached the receiver
(every committed event, none from a rolled-back transaction, duplicates
with the same webhook-id and body, signatures, order per key, rate).

Paths (a query string is allowed after each):

  /ok, /anything-else        204 No Content
  /status/CODE               answer CODE; ?retry_after=V adds Retry-After: V,
                             ?retry_after_date=S Retry-After: the HTTP date
                             S seconds from now (whole seconds, rounded down)
  /fail-first/N/CODE         CODE for the first N requests carrying one
                             webhook-id, then 200 (retries that succeed);
                             CODE may also be reset or close-mid-body
  /fail-aggregate/KEY        500 for events whose aggregate_id is KEY (in a
                             canonical or CloudEvents body) while the control
                             value "fail_KEY" is "1", its default; 200 for the
                             other events; set fail_KEY to 0 to heal
  /fail-prefix/P             the same for every aggregate_id starting with P
                             (several keys failing), control value "fail_P"
  /fail-marked[?delay=MS]    500 for an event whose data has "refuse": true
                             while the control value "fail_marked" is "1",
                             its default; 200 for the others; every answer
                             after MS milliseconds
  /throttle-first/N[/NAME]   429 for the first N requests to this path (its
                             query string aside), then 204; ?retry_after=V
                             adds Retry-After: V, ?reset_in=S adds
                             X-RateLimit-Remaining: 0 and X-RateLimit-Reset:
                             the epoch second S seconds from now
                             (?reset_delta=1: S itself, as delta seconds),
                             ?status=C answers C instead of 429
  /delay/MS                  wait MS milliseconds, then 200
  /hang                      read the request and never answer
  /drip                      headers (Content-Length 1000, under any size
                             cap), then one body byte a second
  /reset                     read the request, then close with a TCP RST
  /close-mid-body            promise 1000 bytes, send 10, close
  /huge                      a 64 MiB body with Content-Length
  /endless                   a chunked body that never ends
  /badstatus                 a status line with a four-digit code
  /garbage                   500 (?status=S: S) with a body of NULs, invalid
                             UTF-8 and every byte value, as "JSON"
  /redirect?to=URL           302 to URL
  /redirect-loop             302 to itself, forever
  /echo-headers              200 with the request's headers as a JSON object
                             (a receiver that echoes what it got, credentials
                             included); ?header=NAME echoes only that
                             header's value, ?pad=N puts N "x" before it
  /oauth/token               OAuth2 client-credentials token endpoint:
                             {"access_token": "tok-N", "expires_in": E};
                             ?delay=MS answers after MS milliseconds (a slow
                             token endpoint), with the N current then;
                             ?expires_in=E overrides E (default: the control
                             value oauth_expires_in, else 3600)
  /oauth/api                 401 unless "Authorization: Bearer tok-N" with
                             the current N; 200 then
  /_control?name=X&value=Y   set control value X (empty value clears it);
                             "oauth_rotate" issues a new token number;
                             control requests are not logged

Usage:
  receiver.py serve --port-file F --log L [--port P] [--tls-cert C --tls-key K]
                             (with a certificate: HTTPS)
  receiver.py verify --log L --secret whsec_... [--secret ...] [--path S]
                             Standard Webhooks check of every logged request
                             carrying a webhook-signature (only those whose
                             path contains S, with --path), independent of the
                             extension's C implementation: the signature is
                             recomputed over the logged body, which must be
                             the exact bytes received (its SHA-256 is checked),
                             and every secret given must match one of the
                             request's signatures (key rotation sends one per
                             secret)
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
CONTROL = {}
COUNTS = {}
OAUTH = {"n": 1, "issued": 0}
LOG = None


def record(handler, body):
    entry = {
        "t": time.time(),
        "method": handler.command,
        "path": handler.path,
        "headers": {k.lower(): v for k, v in handler.headers.items()},
        "body": body.decode("utf-8", "replace"),
        "sha256": hashlib.sha256(body).hexdigest(),
        "peer": handler.client_address[0],
    }
    line = json.dumps(entry, separators=(",", ":")) + "\n"
    with LOCK:
        LOG.write(line)
        LOG.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def answer(self, code, body=b"", headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if code != 204 and code >= 200:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and code != 204:
            self.wfile.write(body)

    def do_GET(self):
        self.do_POST()

    def do_POST(self):
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = self.read_body()
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] == ["_control"]:
            with LOCK:
                if q.get("name") == "oauth_rotate":
                    OAUTH["n"] += 1
                elif q.get("value"):
                    CONTROL[q["name"]] = q["value"]
                else:
                    CONTROL.pop(q.get("name", ""), None)
            return self.answer(200, b"ok")
        record(self, body)
        head = parts[0] if parts else "ok"
        if head == "status" and len(parts) > 1:
            extra = {"Retry-After": q["retry_after"]} if "retry_after" in q else None
            if "retry_after_date" in q:
                extra = {"Retry-After": formatdate(time.time() + float(q["retry_after_date"]), usegmt=True)}
            return self.answer(int(parts[1]), b'{"error": "as asked"}', extra)
        if head == "fail-first" and len(parts) > 2:
            key = (url.path, self.headers.get("webhook-id"))
            with LOCK:
                COUNTS[key] = COUNTS.get(key, 0) + 1
                seen = COUNTS[key]
            if seen <= int(parts[1]):
                if parts[2] == "reset":
                    return self.reset()
                if parts[2] == "close-mid-body":
                    return self.close_mid_body()
                return self.answer(int(parts[2]), b"failing on purpose")
            return self.answer(200, b"ok")
        if head == "throttle-first" and len(parts) > 1:
            with LOCK:
                COUNTS[url.path] = COUNTS.get(url.path, 0) + 1
                seen = COUNTS[url.path]
            if seen > int(parts[1]):
                return self.answer(204)
            extra = {}
            if "retry_after" in q:
                extra["Retry-After"] = q["retry_after"]
            if "reset_in" in q:
                extra["X-RateLimit-Remaining"] = "0"
                extra["X-RateLimit-Reset"] = q["reset_in"] if q.get("reset_delta") == "1" else \
                    str(int(time.time() + float(q["reset_in"])))
            return self.answer(int(q.get("status", "429")), b'{"error": "slow down"}', extra)
        if head in ("fail-aggregate", "fail-prefix") and len(parts) > 1:
            try:
                agg = json.loads(body).get("aggregate_id")
            except (ValueError, AttributeError):
                agg = None
            if agg is None:
                try:
                    agg = json.loads(body).get("subject")
                except (ValueError, AttributeError):
                    agg = None
            hit = agg == parts[1] if head == "fail-aggregate" else \
                isinstance(agg, str) and agg.startswith(parts[1])
            if hit and CONTROL.get("fail_" + parts[1], "1") == "1":
                return self.answer(500, b"this key is failing")
            return self.answer(200, b"ok")
        if head == "fail-marked":
            # refuse (500) an event whose data says "refuse": true while the
            # control fail_marked is on (the default); answer every request
            # after delay ms
            try:
                data = json.loads(body).get("data")
            except (ValueError, AttributeError):
                data = None
            time.sleep(int(q.get("delay", "0")) / 1000.0)
            if isinstance(data, dict) and data.get("refuse") is True and CONTROL.get("fail_marked", "1") == "1":
                return self.answer(500, b"this event is refused")
            return self.answer(200, b"ok")
        if head == "delay" and len(parts) > 1:
            time.sleep(int(parts[1]) / 1000.0)
            return self.answer(200, b"ok")
        if head == "hang":
            self.hang()
            return
        if head == "drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.drip()
            return
        if head == "reset":
            return self.reset()
        if head == "close-mid-body":
            return self.close_mid_body()
        if head == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(64 << 20))
            self.end_headers()
            self.stream(64 << 20)
            return
        if head == "endless":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.stream(None)
            return
        if head == "badstatus":
            self.wfile.write(b"HTTP/1.1 9999 Nope\r\nContent-Length: 0\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if head == "garbage":
            junk = b"\xff\xfe\x00not utf-8 \xc3\x28 {\"access_token\": \x00" + bytes(range(256))
            return self.answer(int(q.get("status", "500")), junk, {"Content-Type": "application/json"})
        if head == "redirect-loop":
            return self.answer(302, b"", {"Location": self.path})
        if head == "redirect":
            return self.answer(302, b"", {"Location": q.get("to", "/ok")})
        if head == "echo-headers":
            if "header" in q:
                echoed = self.headers.get(q["header"], "")
            else:
                echoed = json.dumps({k: v for k, v in self.headers.items()})
            out = ("x" * int(q.get("pad", "0")) + echoed).encode()
            return self.answer(200, out, {"Content-Type": "application/json"})
        if head == "oauth" and parts[1:2] == ["token"]:
            if "delay" in q:
                time.sleep(int(q["delay"]) / 1000.0)
            with LOCK:
                OAUTH["issued"] += 1
                tok = "tok-%d" % OAUTH["n"]
            doc = {"access_token": tok, "token_type": "Bearer",
                   "expires_in": int(q.get("expires_in", CONTROL.get("oauth_expires_in", "3600")))}
            return self.answer(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        if head == "oauth":
            if self.headers.get("Authorization") != "Bearer tok-%d" % OAUTH["n"]:
                return self.answer(401, b"token expired", {"WWW-Authenticate": "Bearer"})
            return self.answer(200, b"ok")
        return self.answer(204)

    def reset(self):
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def close_mid_body(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def hang(self):
        # hold the connection until the client goes away (or an hour)
        self.connection.settimeout(1.0)
        end = time.time() + 3600
        while time.time() < end:
            try:
                if self.connection.recv(1, socket.MSG_PEEK) == b"":
                    break
            except socket.timeout:
                continue
            except OSError:
                break
        self.close_connection = True

    def drip(self):
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(1.0)
        except OSError:
            pass
        self.close_connection = True

    def stream(self, total):
        chunk = b"y" * 65536
        sent = 0
        try:
            while total is None or sent < total:
                if total is None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    self.wfile.write(chunk[: min(len(chunk), total - sent)])
                sent += len(chunk)
        except OSError:
            pass
        self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


def serve(args):
    global LOG
    LOG = open(args.log, "a", encoding="utf-8")
    srv = Server(("127.0.0.1", args.port), Handler)
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, args.port_file)
    srv.serve_forever()


def verify(args):
    """Standard Webhooks: v1,base64(HMAC-SHA256(key, id.timestamp.body))."""
    keys = [base64.b64decode(k[len("whsec_"):] if k.startswith("whsec_") else k) for k in args.secret]
    good = bad = 0
    with open(args.log, encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            h = e["headers"]
            if "webhook-signature" not in h or (args.path and args.path not in e["path"]):
                continue
            body = e["body"].encode("utf-8")
            if hashlib.sha256(body).hexdigest() != e["sha256"]:
                bad += 1
                print("body of %s is not valid UTF-8 as logged" % h.get("webhook-id"), file=sys.stderr)
                continue
            signed = ("%s.%s." % (h["webhook-id"], h["webhook-timestamp"])).encode() + body
            sigs = [s.split(",", 1)[1] for s in h["webhook-signature"].split() if s.startswith("v1,")]
            matched = 0
            for key in keys:
                want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
                if any(hmac.compare_digest(want, s) for s in sigs):
                    matched += 1
            if matched == len(keys):
                good += 1
            else:
                bad += 1
                print("bad signature on %s (%d of %d secrets matched)" % (h["webhook-id"], matched, len(keys)),
                      file=sys.stderr)
    print("%d verified, %d bad" % (good, bad))
    return 0 if bad == 0 and good > 0 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--port-file", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    s.add_argument("--tls-key", help="and this key (PEM)")
    v = sub.add_parser("verify")
    v.add_argument("--log", required=True)
    v.add_argument("--secret", required=True, action="append")
    v.add_argument("--path", default=None)
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args)
        return 0
    return verify(args)


if __name__ == "__main__":
    sys.exit(main())
