#!/usr/bin/env python3
"""
test/receiver/poll_drive.py --- the dispatcher's part of polling, done in
Python, to test the pollers' SQL against a real HTTP API (poll_api.py)
without the C worker: claim with hub._poll_claim, send the request with
urllib, hand the response as received to hub._poll_page, follow the next
request, until the run is over.  It talks to PostgreSQL through psql
(PGHOST, PGPORT, PGUSER from the environment).

What the worker reports is mimicked: status 0 and an error for a refused
connection or a timeout; the status, the headers and an error for a body
cut short (what arrived is passed along); every other answer as it came.

Usage:
  poll_drive.py --db DB --poller NAME [--max-requests N] [--now]
      one run (or what is left of it) of the poller; --now makes it due
      first (hub.poll_now).  Prints a JSON line: requests sent, the last
      answer's next_at, and whether the lease was lost.
"""

import argparse
import http.client
import json
import subprocess
import sys
import urllib.error
import urllib.request


def sql(db, text):
    out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-F", "\x1f", "-d", db, "-c", text],
                         check=True, capture_output=True, text=True)
    return [line.split("\x1f") for line in out.stdout.splitlines() if line != ""]


def lit(s):
    if s is None:
        return "NULL"
    tag = "$pd$"
    assert tag not in s
    return tag + s + tag


def arr(xs):
    if xs is None:
        return "NULL"
    return "ARRAY[" + ",".join(lit(x) for x in xs) + "]::text[]" if xs else "'{}'::text[]"


def fetch(url, headers, timeout):
    req = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs = r.status, ["%s: %s" % kv for kv in r.headers.items()]
            try:
                return status, hdrs, r.read(), None
            except http.client.IncompleteRead as e:
                return status, hdrs, e.partial, "transfer closed with %d bytes remaining to read" % (e.expected or 0)
    except urllib.error.HTTPError as e:
        return e.code, ["%s: %s" % kv for kv in e.headers.items()], e.read(), None
    except (urllib.error.URLError, OSError) as e:
        return 0, None, None, "could not connect: %s" % getattr(e, "reason", e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="postgres")
    ap.add_argument("--poller", required=True)
    ap.add_argument("--max-requests", type=int, default=1000)
    ap.add_argument("--now", action="store_true")
    ap.add_argument("--timeout", type=float, default=10)
    a = ap.parse_args()
    if a.now:
        sql(a.db, "SELECT hub.poll_now(%s)" % lit(a.poller))
    eid = sql(a.db, "SELECT endpoint_id FROM hub.pollers WHERE name = %s" % lit(a.poller))[0][0]
    rows = sql(a.db, "SELECT poller_id, lease, url, array_to_json(headers) FROM hub._poll_claim('poll_drive', %s, 100000, 1)" % eid)
    if not rows:
        print(json.dumps({"requests": 0, "claimed": False}))
        return
    pid, lease, url, headers = rows[0][0], rows[0][1], rows[0][2], json.loads(rows[0][3])
    n = 0
    next_at = None
    lost = False
    while url and n < a.max_requests:
        status, rh, body, err = fetch(url, headers, a.timeout)
        n += 1
        res = sql(a.db, "SELECT url, array_to_json(headers), next_at FROM hub._poll_page(%s, %s, %s, %s, %s, %s, %s, 1, %d)" % (
            pid, lease, lit(url), status, arr(rh),
            "NULL" if body is None else "decode('%s', 'hex')" % body.hex(), lit(err), len(body or b"")))
        if not res:
            lost = True
            break
        url, headers, next_at = res[0][0] or None, json.loads(res[0][1] or "null"), res[0][2] or None
    print(json.dumps({"requests": n, "claimed": True, "next_at": next_at, "lost": lost, "open": bool(url)}))


if __name__ == "__main__":
    sys.exit(main())
