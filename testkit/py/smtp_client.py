#!/usr/bin/python3
"""Scripted SMTP client for the inspector's end-to-end tests.

Connects to --server/--port, reads the greeting, then runs the steps of the
JSON list in --script (a file), in order:

  {"send": HEX, "split": "whole" | "bytes" | [n1, n2, ...], "replies": k}
      sends the bytes, then reads k complete replies (multi-line replies
      count once). "whole": one send() of everything; "bytes": one byte per
      segment; a list: segments of those sizes (the rest in a last one).
      Between the segments of one step the client waits until the peer has
      acknowledged every byte sent (SIOCOUTQ is 0), with TCP_NODELAY on, so
      each piece really leaves in a segment of its own.
  {"touch": PATH}      creates PATH (tells the test "I got here")
  {"wait_file": PATH}  waits until PATH exists (the test says "go on")
  {"close": true}      shuts the connection down and reads to EOF

It prints one JSON object on stdout:

  {"local": [addr, port], "peer": [addr, port], "greeting": TEXT,
   "steps": [{"replies": [TEXT, ...]}, ...], "error": null | TEXT}

Reply texts are decoded as Latin-1, line ends kept. The exit status is 0
unless a step failed (timeout, connection closed early); the JSON is printed
either way, with what was done so far.

Run with /usr/bin/python3, inside the client namespace.
"""

import argparse
import fcntl
import json
import os
import socket
import struct
import sys
import termios
import time

TIMEOUT = 30.0


class Failure(Exception):
    pass


def outq(sock):
    """Bytes sent but not yet acknowledged (or not yet sent)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


def wait_acked(sock):
    deadline = time.monotonic() + TIMEOUT
    pause = 0.0005
    while outq(sock) > 0:
        if time.monotonic() > deadline:
            raise Failure("sent bytes were not acknowledged within %ss" % TIMEOUT)
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def read_reply(rfile):
    lines = []
    while True:
        line = rfile.readline()
        if not line:
            raise Failure("connection closed while reading a reply (got %r)" % b"".join(lines))
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return b"".join(lines).decode("latin-1")


def pieces(data, split):
    if split == "whole":
        return [data]
    if split == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    out, pos = [], 0
    for n in split:
        out.append(data[pos : pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return [p for p in out if p]


def wait_file(path):
    deadline = time.monotonic() + TIMEOUT * 2
    pause = 0.001
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise Failure("%s did not appear" % path)
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def main():
    global TIMEOUT
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, default=25)
    p.add_argument("--script", required=True)
    p.add_argument("--timeout", type=float, default=TIMEOUT, help="bound for every wait, seconds")
    args = p.parse_args()
    TIMEOUT = args.timeout
    with open(args.script, encoding="utf-8") as f:
        steps = json.load(f)

    result = {"local": None, "peer": None, "greeting": None, "steps": [], "error": None}
    status = 0
    sock = None
    try:
        sock = socket.create_connection((args.server, args.port), timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        result["local"] = list(sock.getsockname()[:2])
        result["peer"] = list(sock.getpeername()[:2])
        rfile = sock.makefile("rb")
        result["greeting"] = read_reply(rfile)
        for step in steps:
            done = {"replies": []}
            result["steps"].append(done)
            if "send" in step:
                data = bytes.fromhex(step["send"])
                parts = pieces(data, step.get("split", "whole"))
                for i, piece in enumerate(parts):
                    if i > 0:
                        wait_acked(sock)
                    sock.sendall(piece)
                for _ in range(step.get("replies", 0)):
                    done["replies"].append(read_reply(rfile))
            elif "touch" in step:
                with open(step["touch"], "w", encoding="utf-8"):
                    pass
            elif "wait_file" in step:
                wait_file(step["wait_file"])
            elif step.get("close"):
                sock.shutdown(socket.SHUT_WR)
                rest = rfile.read()
                if rest:
                    done["replies"].append(rest.decode("latin-1"))
            else:
                raise Failure("unknown step %r" % step)
    except (Failure, OSError) as e:
        result["error"] = "%s: %s" % (type(e).__name__, e)
        status = 1
    finally:
        if sock is not None:
            sock.close()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
