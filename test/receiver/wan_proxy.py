#!/usr/bin/env python3
"""test/receiver/wan_proxy.py --- a TCP proxy on loopback that plays a WAN
link which goes silent: while frozen (SIGUSR1 toggles), it forwards nothing in
either direction and closes nothing, as a link that drops packets without a
reset does; new connections are accepted and left hanging.  Used by
test/scripts/site_relay.sh between a site hub and a central hub.

    wan_proxy.py LISTEN_PORT TARGET_PORT PIDFILE

Listens on 127.0.0.1 only.  Python standard library only.
"""
import signal
import socket
import sys
import threading
import time

frozen = threading.Event()


def toggle(signum, frame):
    if frozen.is_set():
        frozen.clear()
    else:
        frozen.set()


def pump(src, dst):
    try:
        while True:
            while frozen.is_set():
                time.sleep(0.02)
            data = src.recv(65536)
            if not data:
                break
            while frozen.is_set():
                time.sleep(0.02)
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def serve(client, target_port):
    while frozen.is_set():
        time.sleep(0.02)
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port))
    except OSError:
        client.close()
        return
    threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


def main():
    listen_port, target_port, pidfile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    signal.signal(signal.SIGUSR1, toggle)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(64)
    with open(pidfile, "w") as f:
        f.write("%d\n" % __import__("os").getpid())
    while True:
        client, _ = srv.accept()
        threading.Thread(target=serve, args=(client, target_port), daemon=True).start()


if __name__ == "__main__":
    main()
