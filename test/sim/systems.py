#!/usr/bin/env python3
"""
test/sim/systems.py --- the simulated ERP, WMS, route planner, carrier and
customer portal that `make demo` and test/scripts/scenario.sh run the hub
against.

One process (Python's standard library only), five threaded HTTP/1.1
servers, each on its own free 127.0.0.1 port (bound to port 0, the ports
written as JSON to --port-file), each with its own vocabulary, paging and
quirks, and each exposing its own state:

  erp      NetSuite-like REST.  OAuth2 client credentials
           (POST /services/rest/auth/oauth2/v1/token, basic auth, answers a
           bearer token; every other request needs it, else 401).
           GET  /services/rest/record/v1/salesOrder?limit=&offset=
                {"items": [...], "hasMore", "offset", "count",
                "totalResults"}, ordered by (lastModifiedDate, id); status
                codes SalesOrd:A..H; a record carries its "warehouse"
           GET  /services/rest/record/v1/returnAuthorization  the same
                paging, statuses RtnAuth:A (pending approval), B (pending
                receipt), G (refunded)
           POST /services/rest/record/v1  the hub's webhook: order.shipped
                books an item fulfilment (the sales order becomes
                SalesOrd:F, pending billing), order.exception sets the
                order's fulfilment status, order.route_planned keeps the
                route, order.delivered the delivery date, return.requested
                opens a return authorization (RtnAuth:A), return.received
                refunds it (RtnAuth:G).  Bodies are the hub's canonical
                events whose data a transform wrote in the ERP's fields.
           Taken down (op "down"): every request 503, until op "up".
  wms      Odoo-like.  Bearer API key.
           GET  /api/stock.picking?limit=&offset=&write_date=&picking_type_code=
                a bare JSON array ordered by (write_date, id): offset
                paging, a short page is the last; write_date is naive UTC
                with whole seconds ("2026-05-04 10:00:00"), one value for
                every picking a warehouse action writes (many records
                share one write_date); write_date= keeps those >= it
           POST /api  the hub's webhook: order.released creates the
                order's pick picking (state assigned); return.authorized
                an incoming return picking
           Warehouse staff (ops): pick (short: the pick is recorded with
           the WMS's own state "short"), pack (with packages: SSCCs; the
           pack picking lists them), ship, receive_return.  Done steps
           create the next step's picking (assigned).
  tms      Route planning.  API key (X-API-Key).
           POST /api  a dispatch request (order.ready_for_dispatch) is
                accepted (202) only for a packed order with the packages
                to carry, else 422; an accepted order gets a route with
                its stop sequence
           GET  /api/routes?page=&per_page=  {"routes": [...]}, page
                paging, a short page is the last
  carrier  EasyPost-like.  Basic auth with the API key as user name.
           GET  /v2/events?page_size=&before_id=&start_datetime=
                tracker.updated events, newest first (created_at, id
                descending), {"events": [...], "has_more"}; each carries
                the tracker (result: shipment_id, tracking_code, status,
                updated_at: the scan time)
           Ops: label (a tracker, pre_transit), scan (a status at a scan
           time; a late scan has a time before the tracker's last one and
           arrives after it)
  portal   Customer portal.  Receives signed CloudEvents (Standard Webhooks:
           the signature is checked, a bad one gets 401) at POST /api and
           shows per order the label it was told (data.portal_status), a
           proactive case per order.exception, the route; per return its
           label (which its return list does not change).
           GET  /api/returns?cursor=  {"data": [...], "next_cursor"}: the
                return requests customers made (op request_return)

Every system answers GET /_state (its own state, as JSON) and POST /_op
(a JSON object {"op": ..., ...}: the outside world acting; the answer is
the op's result).  Pushes are deduplicated by webhook-id the way a
receiver should; /_state lists every push request (webhook-id, type,
aggregate, HTTP status answered, whether it was a duplicate), which is
what the exactly-once and per-key order checks read.

Usage: systems.py --port-file F [--log L] [--signing-secret whsec_...]
       [--erp-client ID:SECRET] [--wms-key K] [--tms-key K] [--carrier-key K]
       (or @FILE: the arguments one a line, so that credentials stay off
       the command line)
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

LOCK = threading.RLock()
LOG = None


def utcnow():
    return datetime.now(timezone.utc)


def iso(t):
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(system, what):
    if LOG:
        with LOCK:
            LOG.write(json.dumps({"t": time.time(), "system": system, **what}) + "\n")
            LOG.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def reply(self, status, obj=None, headers=None):
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def dispatch(self, method):
        sysm = self.server.system
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        raw = self.body() if method == "POST" else b""
        try:
            if url.path == "/_state" and method == "GET":
                with LOCK:
                    return self.reply(200, sysm.state())
            if url.path == "/_op" and method == "POST":
                with LOCK:
                    return self.reply(200, sysm.op(json.loads(raw)))
            with LOCK:
                status, obj, headers = sysm.handle(method, url.path, q, self.headers, raw)
            self.reply(status, obj, headers)
        except BrokenPipeError:
            pass
        except Exception as e:  # a simulated system answers, never dies
            self.reply(500, {"error": "%s: %s" % (type(e).__name__, e)})


class System:
    """What every simulated system shares: its pushes, deduplicated."""

    name = "?"

    def __init__(self):
        self.pushes = []        # every push request, in arrival order
        self.seen = set()       # webhook-ids accepted

    def accept_push(self, headers, raw, check=None):
        """(status, event) for one push request: the event is None for a
        duplicate or a refused request."""
        wid = headers.get("webhook-id")
        try:
            ev = json.loads(raw)
        except ValueError:
            return 400, None
        entry = {"webhook_id": wid, "type": ev.get("type"),
                 "aggregate": ev.get("aggregate_id", ev.get("subject"))}
        if check:
            err = check(ev)
            if err:
                entry.update(status=err[0], duplicate=False, error=err[1])
                self.pushes.append(entry)
                log(self.name, {"push": entry})
                return err[0], None
        dup = wid in self.seen
        entry.update(status=200, duplicate=dup)
        self.pushes.append(entry)
        log(self.name, {"push": entry})
        if dup:
            return 200, None
        self.seen.add(wid)
        return 200, ev

    def common_state(self):
        return {"pushes": self.pushes}

    def state(self):
        return self.common_state()

    def op(self, o):
        raise ValueError("unknown op %r" % o.get("op"))


def page_offset(rows, q, default=100):
    off = int(q.get("offset", 0))
    lim = min(int(q.get("limit", default)), 1000)
    return rows[off:off + lim], off, off + lim < len(rows)


# ---------------------------------------------------------------- ERP

class Erp(System):
    name = "erp"
    BASE = "/services/rest/record/v1"
    # what the REST API shows of a record (the rest is the ERP's own state)
    API_FIELDS = ("id", "tranId", "status", "entity", "warehouse", "createdFrom", "resolution",
                  "lastModifiedDate")

    def __init__(self, client):
        super().__init__()
        self.client = client
        self.tokens = set()
        self.down = False
        self.refused = 0
        self.orders = {}        # id -> sales order
        self.rmas = {}          # id -> return authorization

    def stamp(self):
        # NetSuite's lastModifiedDate: whole seconds, UTC
        return iso(utcnow())

    def handle(self, method, path, q, headers, raw):
        if self.down:
            self.refused += 1
            return 503, {"title": "Service Unavailable", "status": 503}, None
        if path == "/services/rest/auth/oauth2/v1/token" and method == "POST":
            auth = headers.get("Authorization", "")
            want = "Basic " + base64.b64encode(self.client.encode()).decode()
            if auth != want:
                return 401, {"error": "invalid_client"}, None
            tok = "ns-" + os.urandom(8).hex()
            self.tokens.add(tok)
            return 200, {"access_token": tok, "token_type": "Bearer", "expires_in": 3600}, None
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return 401, {"title": "Unauthorized", "status": 401}, None
        if method == "GET" and path in (self.BASE + "/salesOrder", self.BASE + "/returnAuthorization"):
            coll = self.orders if path.endswith("salesOrder") else self.rmas
            rows = sorted(({k: r[k] for k in self.API_FIELDS if k in r} for r in coll.values()),
                          key=lambda r: (r["lastModifiedDate"], r["id"]))
            items, off, more = page_offset(rows, q)
            return 200, {"items": items, "hasMore": more, "offset": off, "count": len(items),
                         "totalResults": len(rows)}, None
        if method == "POST" and path == self.BASE:
            status, ev = self.accept_push(headers, raw)
            if ev:
                self.book(ev)
            return status, None if status == 200 else {"error": "bad request"}, None
        return 404, {"title": "Not Found"}, None

    def book(self, ev):
        """What the ERP books from an event the hub pushed (its data holds
        the ERP's own fields, written by the subscription's transform)."""
        d = ev.get("data") or {}
        t = ev.get("type")
        so = self.orders.get(d.get("salesOrder") or "")
        if t == "order.shipped" and so:
            so["fulfillments"].append({"shipStatus": d.get("shipStatus"), "shipDate": d.get("shipDate")})
            so["status"] = "SalesOrd:F"
            so["lastModifiedDate"] = self.stamp()
        elif t == "order.delivered" and so:
            so["deliveredDate"] = d.get("deliveredDate")
        elif t == "order.exception" and so:
            so["custbody_fulfilment_status"] = d.get("fulfilmentStatus")
        elif t == "order.exception_cleared" and so:
            so["custbody_fulfilment_status"] = None
        elif t == "order.route_planned" and so:
            so["custbody_route"] = d.get("route")
        elif t == "return.requested" and so:
            rid = d.get("returnId")
            if rid and rid not in self.rmas:
                self.rmas[rid] = {"id": rid, "createdFrom": so["id"], "status": "RtnAuth:A",
                                  "lastModifiedDate": self.stamp()}
        elif t == "return.received":
            rma = self.rmas.get(d.get("returnId") or "")
            if rma:
                rma["status"] = "RtnAuth:G"     # refunded on receipt
                rma["resolution"] = "refund"
                rma["lastModifiedDate"] = self.stamp()
        if so:
            so["events"].append(t)

    def state(self):
        s = self.common_state()
        s.update(orders=self.orders, returns=self.rmas, down=self.down, refused=self.refused)
        return s

    def op(self, o):
        if o["op"] == "create_order":
            self.orders[o["id"]] = {"id": o["id"], "tranId": o["id"], "status": o.get("status", "SalesOrd:B"),
                                    "entity": o.get("customer"), "warehouse": o.get("warehouse", "WH1"),
                                    "lastModifiedDate": self.stamp(), "fulfillments": [], "events": [],
                                    "custbody_fulfilment_status": None, "custbody_route": None}
            return self.orders[o["id"]]
        if o["op"] == "authorize_return":
            rma = self.rmas[o["id"]]
            rma["status"] = "RtnAuth:B"
            rma["lastModifiedDate"] = self.stamp()
            return rma
        if o["op"] in ("down", "up"):
            self.down = o["op"] == "down"
            return {"down": self.down}
        return super().op(o)


# ---------------------------------------------------------------- WMS

class Wms(System):
    name = "wms"
    STEPS = {"internal_pick": ("PICK", "internal"), "internal_pack": ("PACK", "internal"),
             "outgoing": ("OUT", "outgoing"), "incoming_return": ("RET", "incoming")}

    def __init__(self, key):
        super().__init__()
        self.key = key
        self.pickings = {}
        self.next_id = 1

    def stamp(self):
        # Odoo's write_date: naive UTC, whole seconds
        return utcnow().strftime("%Y-%m-%d %H:%M:%S")

    def new_picking(self, origin, step, when, **extra):
        seq, code = self.STEPS[step]
        p = {"id": self.next_id, "name": "WH/%s/%05d" % (seq, self.next_id), "origin": origin,
             "picking_type_code": code, "step": step, "state": "assigned", "write_date": when,
             "package_ids": []}
        p.update(extra)
        self.pickings[p["id"]] = p
        self.next_id += 1
        return p

    def find(self, origin, step):
        for p in self.pickings.values():
            if p["origin"] == origin and p["step"] == step:
                return p
        raise ValueError("no %s picking for %s" % (step, origin))

    def handle(self, method, path, q, headers, raw):
        if headers.get("Authorization") != "Bearer " + self.key:
            return 401, {"error": "Access Denied"}, None
        if method == "GET" and path == "/api/stock.picking":
            rows = [p for p in self.pickings.values()
                    if ("write_date" not in q or p["write_date"] >= q["write_date"])
                    and ("picking_type_code" not in q or p["picking_type_code"] in q["picking_type_code"].split(","))]
            rows.sort(key=lambda p: (p["write_date"], p["id"]))
            items, _, _ = page_offset(rows, q, 80)
            return 200, items, None
        if method == "POST" and path == "/api":
            status, ev = self.accept_push(headers, raw)
            if ev:
                d = ev.get("data") or {}
                if ev.get("type") == "order.released":
                    self.new_picking(d["order_id"], "internal_pick", self.stamp(),
                                     warehouse=d.get("warehouse"))
                elif ev.get("type") == "return.authorized":
                    self.new_picking(d["return_id"], "incoming_return", self.stamp(),
                                     sale_origin=d.get("order_id"))
            return status, None, None
        return 404, {"error": "not found"}, None

    def state(self):
        s = self.common_state()
        s["pickings"] = sorted(self.pickings.values(), key=lambda p: p["id"])
        return s

    def op(self, o):
        when = self.stamp()     # one write_date for the whole action
        out = []
        for origin in o["orders"]:
            if o["op"] == "pick":
                p = self.find(origin, "internal_pick")
                p.update(state="short" if origin in o.get("short", []) else "done", write_date=when)
                if p["state"] == "done":
                    out.append(self.new_picking(origin, "internal_pack", when))
            elif o["op"] == "pack":
                p = self.find(origin, "internal_pack")
                p.update(state="done", write_date=when, package_ids=[{"name": s} for s in o["packages"][origin]])
                out.append(self.new_picking(origin, "outgoing", when, package_ids=p["package_ids"]))
                out[-1]["shipment_id"] = out[-1]["name"]
            elif o["op"] == "ship":
                p = self.find(origin, "outgoing")
                p.update(state="done", write_date=when)
            elif o["op"] == "receive_return":
                p = self.find(origin, "incoming_return")
                p.update(state="done", write_date=when)
            else:
                return super().op(o)
            out.append(p)
        return out


# ---------------------------------------------------------------- TMS

class Tms(System):
    name = "tms"
    def __init__(self, key):
        super().__init__()
        self.key = key
        self.routes = {}
        self.rejected = []

    def check(self, ev):
        """A dispatch request is planned only for a packed order whose
        packages are all listed (the hub sends it when every one has a
        carrier label)."""
        d = ev.get("data") or {}
        if ev.get("type") != "order.ready_for_dispatch":
            return 422, "not a dispatch request"
        if d.get("state") != "packed" or not d.get("children"):
            return 422, "order %s is not packed, or has no packages" % d.get("order_id")
        return None

    def handle(self, method, path, q, headers, raw):
        if headers.get("X-API-Key") != self.key:
            return 401, {"error": "bad api key"}, None
        if method == "POST" and path == "/api":
            status, ev = self.accept_push(headers, raw, self.check)
            if status != 200:
                self.rejected.append(self.pushes[-1])
                return status, {"error": self.pushes[-1].get("error")}, None
            if ev:
                d = ev["data"]
                n = len(self.routes) + 1
                rid = "RT-%03d" % n
                stops = [{"seq": 1, "kind": "pickup", "location": "WH1"},
                         {"seq": 2, "kind": "delivery", "order": d["order_id"],
                          "packages": sorted(d["children"])}]
                self.routes[rid] = {"id": rid, "order_id": d["order_id"], "vehicle": "VAN-%d" % (1 + n % 3),
                                    "stops": stops, "eta": iso(utcnow() + timedelta(hours=4))}
            return 202, {"status": "accepted"}, None
        if method == "GET" and path == "/api/routes":
            rows = sorted(self.routes.values(), key=lambda r: r["id"])
            per = int(q.get("per_page", 50))
            page = int(q.get("page", 1))
            return 200, {"routes": rows[(page - 1) * per:page * per], "page": page}, None
        return 404, {"error": "not found"}, None

    def state(self):
        s = self.common_state()
        s.update(routes=self.routes, rejected=self.rejected)
        return s


# ---------------------------------------------------------------- carrier

class Carrier(System):
    name = "carrier"

    def __init__(self, key):
        super().__init__()
        self.key = key
        self.trackers = {}      # shipment id (SSCC) -> tracker
        self.events = []        # tracker.updated events, oldest first
        self.n = 0

    def handle(self, method, path, q, headers, raw):
        want = "Basic " + base64.b64encode((self.key + ":").encode()).decode()
        if headers.get("Authorization") != want:
            return 401, {"error": {"code": "APIKEY.INACTIVE"}}, None
        if method == "GET" and path == "/v2/events":
            rows = list(reversed(self.events))          # newest first
            if "start_datetime" in q:
                rows = [e for e in rows if e["created_at"] >= q["start_datetime"]]
            if "before_id" in q:
                ids = [e["id"] for e in rows]
                rows = rows[ids.index(q["before_id"]) + 1:] if q["before_id"] in ids else []
            size = min(int(q.get("page_size", 20)), 100)
            return 200, {"events": rows[:size], "has_more": len(rows) > size}, None
        return 404, {"error": {"code": "NOT_FOUND"}}, None

    def event(self, trk, at):
        self.n += 1
        # created_at: when the carrier recorded it (now); the scan time is
        # the tracker's updated_at, earlier for a late scan
        ev = {"id": "evt_%06d" % self.n, "object": "Event", "description": "tracker.updated",
              "created_at": iso(utcnow()), "result": dict(trk, updated_at=at)}
        self.events.append(ev)
        return ev

    def op(self, o):
        out = []
        if o["op"] == "label":
            for sscc, order in o["packages"].items():
                trk = {"id": "trk_%s" % sscc[-6:], "tracking_code": "1Z%s" % sscc[-10:], "shipment_id": sscc,
                       "order_ref": order, "carrier": "UPS", "status": "pre_transit", "updated_at": iso(utcnow())}
                self.trackers[sscc] = trk
                out.append(self.event(trk, trk["updated_at"]))
            return out
        if o["op"] == "scan":
            base = utcnow() + timedelta(seconds=o.get("offset_s", 0))
            for sscc in o["packages"]:
                trk = self.trackers[sscc]
                at = iso(base)
                if at >= trk["updated_at"]:     # a late scan leaves the tracker as it is
                    trk.update(status=o["status"], updated_at=at)
                out.append(self.event(dict(trk, status=o["status"]), at))
            return out
        return super().op(o)

    def state(self):
        s = self.common_state()
        s.update(trackers=self.trackers, events=len(self.events))
        return s


# ---------------------------------------------------------------- portal

class Portal(System):
    name = "portal"

    def __init__(self, secret):
        super().__init__()
        self.key = base64.b64decode(secret[len("whsec_"):]) if secret else None
        self.orders = {}
        self.cases = []
        self.returns = {}       # id -> return request and its label
        self.bad_signatures = 0

    def verify(self, headers, raw):
        wid, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        mac = hmac.new(self.key, ("%s.%s." % (wid, ts)).encode() + raw, hashlib.sha256).digest()
        want = "v1," + base64.b64encode(mac).decode()
        return any(hmac.compare_digest(s, want) for s in headers.get("webhook-signature", "").split())

    def handle(self, method, path, q, headers, raw):
        if method == "POST" and path == "/api":
            if not headers.get("Content-Type", "").startswith("application/cloudevents+json"):
                return 415, {"error": "CloudEvents structured mode only"}, None
            if self.key and not self.verify(headers, raw):
                self.bad_signatures += 1
                return 401, {"error": "bad signature"}, None
            status, ev = self.accept_push(headers, raw)
            if ev:
                self.show(ev)
            return status, None, None
        if method == "GET" and path == "/api/returns":
            rows = sorted(self.returns.values(), key=lambda r: r["id"])
            start = int(q.get("cursor") or 0)
            page = rows[start:start + 2]
            nxt = str(start + 2) if start + 2 < len(rows) else None
            return 200, {"data": [{k: r[k] for k in ("id", "order_id", "status", "requested_at")} for r in page],
                         "next_cursor": nxt}, None
        return 404, {"error": "not found"}, None

    def show(self, ev):
        d = ev.get("data") or {}
        t = ev.get("type", "")
        if t.startswith("order."):
            o = self.orders.setdefault(d.get("order_id") or ev.get("subject"),
                                       {"status": None, "history": [], "route": None})
            if d.get("portal_status"):
                o["status"] = d["portal_status"]
                if not o["history"] or o["history"][-1] != o["status"]:
                    o["history"].append(o["status"])
            if t == "order.exception":
                self.cases.append({"order_id": d.get("order_id"), "reason": d.get("reason"),
                                   "subject": "We are sorry: part of your order is delayed",
                                   "opened_by": ev.get("id")})
            if t == "order.route_planned":
                o["route"] = {"route": d.get("route_id"), "eta": d.get("eta")}
        elif t.startswith("return."):
            r = self.returns.get(d.get("return_id") or ev.get("subject"))
            if r is not None and d.get("portal_status"):
                r["shown"] = d["portal_status"]

    def state(self):
        s = self.common_state()
        s.update(orders=self.orders, cases=self.cases, returns=self.returns,
                 bad_signatures=self.bad_signatures)
        return s

    def op(self, o):
        if o["op"] == "request_return":
            rid = "RMA-" + o["order"].split("-")[-1]
            self.returns[rid] = {"id": rid, "order_id": o["order"], "status": "Return requested",
                                 "requested_at": iso(utcnow()), "reason": o.get("reason", "")}
            return self.returns[rid]
        return super().op(o)


def main():
    global LOG
    ap = argparse.ArgumentParser(fromfile_prefix_chars="@")
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log")
    ap.add_argument("--signing-secret")
    ap.add_argument("--erp-client", default="hub-demo:erp-client-secret")
    ap.add_argument("--wms-key", default="wms-api-key")
    ap.add_argument("--tms-key", default="tms-api-key")
    ap.add_argument("--carrier-key", default="EZTK-carrier-key")
    a = ap.parse_args()
    if a.log:
        LOG = open(a.log, "a", encoding="utf-8")
    systems = [Erp(a.erp_client), Wms(a.wms_key), Tms(a.tms_key), Carrier(a.carrier_key),
               Portal(a.signing_secret)]
    ports = {}
    for s in systems:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        srv.system = s
        ports[s.name] = srv.server_address[1]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ports, f)
    os.replace(tmp, a.port_file)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
