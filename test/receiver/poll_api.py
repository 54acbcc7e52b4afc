#!/usr/bin/env python3
"""
test/receiver/poll_api.py --- the loopback list API the poller tests poll.

A threaded HTTP/1.1 server (Python's standard library only), listening on
127.0.0.1 only, that serves one collection of records, paged every way the
pollers support, and misbehaves on request.  Every request it receives
(control requests excepted) is logged as one JSON line: arrival time,
method, path with query, headers; tests read the log (or GET /_requests).

The collection: records {"id", "updated_at", "n", ...}, ordered by
(updated_at, id).  ?since=ISO (or epoch seconds with ?since_format=epoch)
keeps those with updated_at >= since.  Ids are JSON numbers (exact, also
above 2^53: Python integers) or strings.

Paging (the first path element chooses it; the rest is ignored):
  /link/...     bare JSON array; Link: <abs URL>; rel="next" (with
                ?multi=1: several links in one header, rel="next last",
                a comma inside the URL, and a second Link header), the
                position as ?after=<index>; ?relative=1 makes it relative
  /odata/...    {"value": [...], "@odata.nextLink": "<relative URL>"}
  /next/...     {"data": {"items": [...]}, "links": {"next": "<abs URL>"}}
  /cursor/...   {"results": [...], "meta": {"next_cursor": "<token>"}},
                ?cursor=<token>; no token on the last page
  /offset/...   {"items": [...], "has_more": bool}, ?offset=&limit=
  /page/...     bare JSON array, ?page= (from 1) &per_page=; a short page
                is the last
Page size: ?limit= (or per_page), default 100.
Every first page (no position) carries ETag (the collection's version)
and Last-Modified; If-None-Match with the current ETag gets a 304.

Control (POST /_control with a JSON object; never logged):
  {"op": "reset", "count": N, "ids_from": K, "ts": "2026-01-01T00:00:00Z",
   "ts_step": S, "string_ids": false}
        N records with ids K.. (default 1), timestamps ts + i*S seconds
        (S 0: one timestamp for all: equal timestamps across pages)
  {"op": "add", "records": [{...}]}      add or replace records by id (a
        record "committed late" has an updated_at behind what was served)
  {"op": "update", "ids": [...], "updated_at": "..."}  a new version
  {"op": "misbehave", "mode": M, "times": T, ...}  the next T (default 1)
        collection requests misbehave (queued in order), mode M:
        status        answer "code" (default 503) with "retry_after"
                      (seconds, or "date:S" for an HTTP date S seconds
                      ahead) and/or "reset" (X-RateLimit-Remaining: 0,
                      X-RateLimit-Reset: seconds)
        ratelimited   a good page with X-RateLimit-Remaining: 0 and
                      X-RateLimit-Reset: "reset" (seconds, default 2)
        html          200 text/html maintenance page
        notjson       200 application/json that is not JSON
        not_array     200 JSON whose items are an object
        cut           a good page's Content-Length, half the body, close
        bad_utf8      200 JSON with an invalid UTF-8 byte in a string
        foreign_next  a good page whose next link points to another host
        repeat_next   a good page whose next link / token is the request's
                      own (a token repeated)
        cycle         a good page whose next link / token is the run's
                      first page's (tokens cycling)
        empty_more    an empty page that announces more (same position)
        mutate        a good page, then the records "ids" get a new
                      "updated_at" (records updated between pages)
        slow          a good page after "ms" milliseconds
        pass          a good page (to let requests through before the next
                      misbehaviour)
  {"op": "clear"}   drop queued misbehaviours
GET /_requests: the request log as a JSON array.

Usage:
  poll_api.py serve --port-file F --log L [--port P] [--count N] [--ids-from K]
  poll_api.py control --port P JSON     (prints the answer)
"""

import argparse
import email.utils
import hashlib
import json
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"records": {}, "version": 0, "queue": [], "log": None, "log_lines": []}


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_time(s):
    s = s.strip()
    if s.replace(".", "", 1).isdigit():
        return float(s)
    s = s.replace("Z", "+00:00")
    from datetime import datetime
    d = datetime.fromisoformat(s)
    if d.tzinfo is None:
        from datetime import timezone
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


def reset(count=0, ids_from=1, ts="2026-01-01T00:00:00Z", ts_step=1, string_ids=False):
    base = parse_time(ts)
    recs = {}
    for i in range(count):
        rid = ids_from + i
        rid = "R-%d" % rid if string_ids else rid
        recs[str(rid)] = {"id": rid, "updated_at": iso(base + i * ts_step), "n": i, "status": "open"}
    STATE["records"] = recs
    STATE["version"] += 1


def ordered(since=None):
    recs = list(STATE["records"].values())
    if since is not None:
        recs = [r for r in recs if parse_time(r["updated_at"]) >= since]
    recs.sort(key=lambda r: (parse_time(r["updated_at"]), str(r["id"]).rjust(40, "0")))
    return recs


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, code, body=b"", ctype="application/json", headers=(), cut=False):
        self.send_response(code)
        if code != 304:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for h, v in headers:
            self.send_header(h, v)
        if cut:
            self.send_header("Connection", "close")
        self.end_headers()
        if code != 304:
            self.wfile.write(body[: len(body) // 2] if cut else body)
        if cut:
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def do_POST(self):
        u = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if u.path != "/_control":
            return self.send(405, b'{"error": "read-only API"}')
        cmd = json.loads(raw or b"{}")
        with LOCK:
            op = cmd.get("op")
            if op == "reset":
                reset(cmd.get("count", 0), cmd.get("ids_from", 1), cmd.get("ts", "2026-01-01T00:00:00Z"),
                      cmd.get("ts_step", 1), cmd.get("string_ids", False))
            elif op == "add":
                for r in cmd["records"]:
                    STATE["records"][str(r["id"])] = r
                STATE["version"] += 1
            elif op == "update":
                for i in cmd["ids"]:
                    STATE["records"][str(i)]["updated_at"] = cmd["updated_at"]
                STATE["version"] += 1
            elif op == "misbehave":
                for _ in range(cmd.get("times", 1)):
                    STATE["queue"].append(cmd)
            elif op == "clear":
                STATE["queue"].clear()
            else:
                return self.send(400, b'{"error": "unknown op"}')
            answer = {"records": len(STATE["records"]), "version": STATE["version"], "queued": len(STATE["queue"])}
        self.send(200, json.dumps(answer).encode())

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        if u.path == "/_requests":
            with LOCK:
                body = ("[" + ",".join(STATE["log_lines"]) + "]").encode()
            return self.send(200, body)
        line = json.dumps({"at": time.time(), "method": "GET", "path": self.path,
                           "headers": {k: v for k, v in self.headers.items()}})
        with LOCK:
            STATE["log_lines"].append(line)
            if STATE["log"]:
                STATE["log"].write(line + "\n")
                STATE["log"].flush()
            bad = STATE["queue"].pop(0) if STATE["queue"] else None
            version = STATE["version"]
        self.collection(u, bad, version)

    def collection(self, u, bad, version):
        q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        kind = u.path.strip("/").split("/")[0]
        mode = bad["mode"] if bad else None
        if mode == "status":
            hdrs = []
            ra = bad.get("retry_after")
            if isinstance(ra, str) and ra.startswith("date:"):
                hdrs.append(("Retry-After", email.utils.formatdate(time.time() + int(ra[5:]), usegmt=True)))
            elif ra is not None:
                hdrs.append(("Retry-After", str(ra)))
            if bad.get("reset") is not None:
                hdrs += [("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", str(bad["reset"]))]
            return self.send(bad.get("code", 503), b'{"error": "unavailable", "api_key": "sk_live_leak"}', headers=hdrs)
        if mode == "html":
            return self.send(200, b"<html><body>Down for maintenance</body></html>", "text/html")
        if mode == "notjson":
            return self.send(200, b"OK, here are your orders", "application/json")
        if mode == "slow":
            time.sleep(bad.get("ms", 500) / 1000.0)
        etag = '"v%d"' % version
        first = not any(k in q for k in ("after", "$skiptoken", "cursor", "next")) \
            and q.get("offset", "0") == "0" and q.get("page", "1") == "1"
        if first and self.headers.get("If-None-Match") == etag and mode is None:
            return self.send(304, headers=[("ETag", etag)])
        limit = int(q.get("limit") or q.get("per_page") or q.get("$top") or 100)
        since = None
        if "since" in q:
            since = float(q["since"]) if q.get("since_format") == "epoch" else parse_time(q["since"])
        with LOCK:
            recs = ordered(since)
        # the position: an index into the ordered collection
        if kind == "offset":
            pos = int(q.get("offset", 0))
        elif kind == "page":
            pos = (int(q.get("page", 1)) - 1) * limit
        elif kind == "cursor":
            pos = int(q["cursor"].split("-")[1]) if q.get("cursor") else 0
        elif kind == "odata":
            pos = int(q.get("$skiptoken", 0))
        else:
            pos = int(q.get("after", 0))
        items = recs[pos: pos + limit]
        nxt = pos + len(items)
        more = nxt < len(recs)
        if mode == "empty_more":
            items, nxt, more = [], pos, True
        base = "http://127.0.0.1:%d%s" % (self.server.server_address[1], u.path)
        keep = {k: v for k, v in q.items() if k in ("since", "since_format", "limit", "per_page", "multi", "relative")}

        def link(p):
            if mode == "foreign_next":
                return "http://evil.invalid:%d%s?%s" % (self.server.server_address[1], u.path,
                                                        urllib.parse.urlencode(dict(keep, after=p)))
            if mode == "repeat_next":
                p = pos
            if mode == "cycle":
                p = 0 if kind in ("link", "next", "odata") else 0
            return base + "?" + urllib.parse.urlencode(dict(keep, after=p))

        token = None
        if more or mode in ("repeat_next", "cycle", "foreign_next"):
            p = pos if mode == "repeat_next" else (0 if mode == "cycle" else nxt)
            token = "c-%d-%s" % (p, hashlib.sha1(str(p).encode()).hexdigest()[:6])
        hdrs = []
        if first:
            hdrs += [("ETag", etag), ("Last-Modified", email.utils.formatdate(1767225600 + version, usegmt=True))]
        if kind == "link":
            body = items
            if more or mode in ("repeat_next", "cycle", "foreign_next"):
                target = link(nxt)
                if q.get("relative"):
                    target = target.split("/", 3)[3]
                    target = "/" + target
                if q.get("multi"):
                    hdrs.append(("Link", '<%s?a=1,2>; rel="first", <%s>; rel="next last"; title="x, y"'
                                 % (base, target)))
                    hdrs.append(("Link", '<%s?after=0>; rel="prev"' % base))
                else:
                    hdrs.append(("Link", '<%s>; rel="next"' % target))
        elif kind == "odata":
            body = {"value": items}
            if more or mode in ("repeat_next", "cycle", "foreign_next"):
                p = pos if mode == "repeat_next" else (0 if mode == "cycle" else nxt)
                body["@odata.nextLink"] = (link(nxt) if mode == "foreign_next" else
                                           u.path.rsplit("/", 1)[-1] + "?" + urllib.parse.urlencode(dict(keep, **{"$skiptoken": p})))
        elif kind == "next":
            body = {"data": {"items": items}, "links": {"next": link(nxt) if (more or mode) else None}}
        elif kind == "cursor":
            body = {"results": items, "meta": {"next_cursor": token}}
        elif kind == "offset":
            body = {"items": items, "has_more": more}
        else:
            body = items
        if mode == "not_array":
            body = {"items": {"oops": True}, "results": {"oops": True}, "value": {"oops": True},
                    "data": {"items": {"oops": True}}} if kind != "link" and kind != "page" else {"oops": True}
        if mode == "ratelimited":
            hdrs += [("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", str(bad.get("reset", 2)))]
        raw = json.dumps(body).encode()
        if mode == "bad_utf8":
            raw = raw.replace(b'"open"', b'"op\xffen"', 1) if b'"open"' in raw else b'["\xff"]'
        self.send(200, raw, headers=hdrs, cut=(mode == "cut"))
        if mode == "mutate":
            with LOCK:
                for i in bad.get("ids", []):
                    if str(i) in STATE["records"]:
                        STATE["records"][str(i)]["updated_at"] = bad["updated_at"]
                STATE["version"] += 1


def serve(args):
    reset(args.count, args.ids_from)
    STATE["log"] = open(args.log, "a") if args.log else None
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)
    srv.serve_forever()


def control(args):
    req = urllib.request.Request("http://127.0.0.1:%d/_control" % args.port, data=args.json.encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        sys.stdout.write(r.read().decode() + "\n")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port-file", required=True)
    s.add_argument("--log")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--count", type=int, default=0)
    s.add_argument("--ids-from", type=int, default=1)
    c = sub.add_parser("control")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("json")
    args = ap.parse_args()
    serve(args) if args.cmd == "serve" else control(args)


if __name__ == "__main__":
    main()
