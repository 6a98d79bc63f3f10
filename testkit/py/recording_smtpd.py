#!/usr/bin/python3
"""Recording SMTP server for the inspector's end-to-end tests.

An aiosmtpd server that writes down, as JSON lines in --log, exactly what it
received, so that a test can judge the inspector by what the server saw:

  {"event": "listening", "host": H, "port": P}
  {"event": "connect", "conn": N, "peer": [addr, port, ...]}
  {"event": "line", "conn": N, "phase": "command"|"data"|"auth", "hex": ...}
      every line (or line piece) the SMTP engine read, as the raw bytes it
      read them (CRLF included, before any stripping or dot-unstuffing);
      "command" lines are SMTP commands, "data" lines are between DATA's 354
      and the final ".", "auth" lines answer an AUTH challenge
  {"event": "message", "conn": N, "mail_from": ..., "rcpt_tos": [...],
   "hex": ..., "size": n, "sha256": ...}
      one accepted message: the DATA content as aiosmtpd delivers it
      (dot-unstuffed, CRLF line ends kept); written before the 250 reply
  {"event": "close", "conn": N, "hex": ..., "sent_hex": ...}
      the connection's whole received byte stream, in order, and everything
      the server wrote to it; written when the connection is lost

Bytes are hex so that the log stays valid UTF-8 whatever arrives. Each record
is flushed before the server answers, so once the client has the server's
reply to a command, the record of that command is on disk.

Readiness: once every listening socket is bound, the server writes --ready
(atomically, by rename). SIGTERM or SIGINT stops it.

Run with /usr/bin/python3 (Debian's python3-aiosmtpd installs only there).
"""

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import signal
import sys

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, AuthResult


class Recorder:
    def __init__(self, path):
        self._f = open(path, "a", encoding="utf-8")

    def write(self, **record):
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        self._f.flush()


class RecordingReader:
    """Wraps the StreamReader the SMTP engine reads from and reports every
    chunk it returns. Everything else (including attribute writes, which the
    STARTTLS path does) goes to the real reader."""

    _OWN = ("_reader", "_on_read")

    def __init__(self, reader, on_read):
        object.__setattr__(self, "_reader", reader)
        object.__setattr__(self, "_on_read", on_read)

    async def readuntil(self, separator=b"\n"):
        data = await self._reader.readuntil(separator)
        self._on_read(data)
        return data

    async def readline(self):
        data = await self._reader.readline()
        self._on_read(data)
        return data

    async def readexactly(self, n):
        data = await self._reader.readexactly(n)
        self._on_read(data)
        return data

    async def read(self, n=-1):
        data = await self._reader.read(n)
        self._on_read(data)
        return data

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def __setattr__(self, name, value):
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._reader, name, value)


class RecordingWriter:
    """Wraps the StreamWriter the SMTP engine answers through and keeps a
    copy of everything written."""

    _OWN = ("_writer", "_on_write")

    def __init__(self, writer, on_write):
        object.__setattr__(self, "_writer", writer)
        object.__setattr__(self, "_on_write", on_write)

    def write(self, data):
        self._on_write(data)
        return self._writer.write(data)

    def writelines(self, lines):
        for data in lines:
            self.write(data)

    def __getattr__(self, name):
        return getattr(self._writer, name)

    def __setattr__(self, name, value):
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._writer, name, value)


class RecordingSMTP(SMTP):
    _ids = itertools.count(1)

    def __init__(self, handler, recorder, **kwargs):
        super().__init__(handler, **kwargs)
        self.recorder = recorder
        self.conn_id = next(self._ids)
        self._phase = "command"
        self._raw = bytearray()
        self._sent = bytearray()

    def connection_made(self, transport):
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            self.recorder.write(event="connect", conn=self.conn_id, peer=list(peer or []))

    def _client_connected_cb(self, reader, writer):
        super()._client_connected_cb(
            RecordingReader(reader, self._record_read),
            RecordingWriter(writer, self._sent.extend),
        )

    def _record_read(self, data):
        if data:
            self.recorder.write(event="line", conn=self.conn_id, phase=self._phase, hex=data.hex())

    def data_received(self, data):
        self._raw.extend(data)
        super().data_received(data)

    def connection_lost(self, error):
        self.recorder.write(
            event="close",
            conn=self.conn_id,
            hex=bytes(self._raw).hex(),
            sent_hex=bytes(self._sent).hex(),
        )
        super().connection_lost(error)

    async def smtp_DATA(self, arg):
        self._phase = "data"
        try:
            await super().smtp_DATA(arg)
        finally:
            self._phase = "command"

    async def challenge_auth(self, *args, **kwargs):
        self._phase = "auth"
        try:
            return await super().challenge_auth(*args, **kwargs)
        finally:
            self._phase = "command"


class Handler:
    def __init__(self, recorder):
        self.recorder = recorder

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or b""
        self.recorder.write(
            event="message",
            conn=server.conn_id,
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            hex=content.hex(),
            size=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
        )
        return "250 2.0.0 OK recorded"


def accept_any_login(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=True)


def accept_only(user, password):
    """An authenticator that accepts exactly one login and password (PLAIN
    and LOGIN), so that a mangled base64 line fails the authentication."""

    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            getattr(auth_data, "login", None) == user.encode()
            and getattr(auth_data, "password", None) == password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


async def serve(args):
    recorder = Recorder(args.log)
    handler = Handler(recorder)
    loop = asyncio.get_running_loop()
    kwargs = dict(
        hostname=args.hostname,
        enable_SMTPUTF8=args.smtputf8,
        timeout=args.timeout,
    )
    if args.auth_user:
        user, _, password = args.auth_user.partition(":")
        kwargs.update(auth_require_tls=False, authenticator=accept_only(user, password))
    elif args.auth:
        kwargs.update(auth_require_tls=False, authenticator=accept_any_login)

    # aiosmtpd hangs up after 5 unrecognised commands in a session; the
    # tests send more masked commands than that on purpose.
    aiosmtpd.smtp.BOGUS_LIMIT = args.bogus_limit

    def factory():
        return RecordingSMTP(handler, recorder, loop=loop, **kwargs)

    servers = []
    for host in args.host:
        servers.append(await loop.create_server(factory, host=host, port=args.port))
        recorder.write(event="listening", host=host, port=args.port)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tmp = args.ready + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "hosts": args.host, "port": args.port}, f)
    os.replace(tmp, args.ready)

    await stop.wait()
    for s in servers:
        s.close()
        await s.wait_closed()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", action="append", required=True, help="address to listen on (repeat)")
    p.add_argument("--port", type=int, default=25)
    p.add_argument("--log", required=True, help="JSON-lines record of what was received")
    p.add_argument("--ready", required=True, help="file written once listening")
    p.add_argument("--hostname", default="server.test", help="name in the greeting")
    p.add_argument("--smtputf8", action="store_true", help="advertise SMTPUTF8 and accept 8-bit arguments")
    p.add_argument("--auth", action="store_true", help="offer AUTH without TLS and accept any credentials")
    p.add_argument("--auth-user", metavar="USER:PASSWORD", help="offer AUTH without TLS and accept only this login")
    p.add_argument("--bogus-limit", type=int, default=1000, help="unrecognised commands before aiosmtpd hangs up (its own default: 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="idle timeout of a session, seconds")
    args = p.parse_args()
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
