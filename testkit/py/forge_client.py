#!/usr/bin/python3
"""A hostile SMTP client for the inspector's end-to-end tests: it speaks TCP
itself with scapy, from the client namespace, so that it can also send what
a normal client cannot (docs/testbed.md, "Forging packets from the client's
side"): segments that die at the gateway (TTL 1), and packets that claim to
come from the server, sent at layer 2 to the gateway's MAC with the client
interface's own source MAC.

  forge_client.py --iface IF --gw-mac MAC --client ADDR --server ADDR
                  --sport N --scenario NAME

Scenarios (each ends with QUIT; the test reads what the server received):

  forged-354     EHLO; DATA with TTL 1; a forged "354"; DATA for real (the
                 server refuses it: no recipients); VERB.
  forged-ack     EHLO; NOOP with TTL 1; a forged ACK of it from the server;
                 VERB in its place (same sequence number).
  forged-synack  SYN with TTL 1; a forged SYN-ACK; the real SYN and the
                 rest of the handshake; a forged "250" ahead of the server's
                 own greeting; EHLO; VERB.
  zero-length    (IPv6) EHLO; VERB in a packet whose payload length is 0,
                 with a hop-by-hop header and no jumbo option (which Linux
                 takes as "as long as the frame"), then VERB again, plainly.
  reorder        EHLO; then "VERB x" sent before the "NOOP" that precedes
                 it in the stream (--pause-ms between the two; with
                 --ready and --go, it creates the file READY after the
                 first and waits for the file GO before the second); if
                 the server has not acknowledged both once NOOP is
                 answered, "VERB x" is sent again, in order, as TCP would.

It prints one JSON object: {"replies": [TEXT, ...], "error": null | TEXT}.
The client's kernel must not reset the connection scapy owns: the test adds
an iptables rule in the client namespace that drops its RSTs.

Run with /usr/bin/python3, inside the client namespace.
"""

import argparse
import json
import logging
import os
import random
import sys
import time

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.all import (  # noqa: E402
    IP,
    TCP,
    AsyncSniffer,
    Ether,
    IPv6,
    IPv6ExtHdrHopByHop,
    conf,
    get_if_hwaddr,
    sendp,
)

TIMEOUT = 5.0
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


class Conn:
    def __init__(self, a):
        self.a = a
        self.v6 = ":" in a.client
        self.sport = a.sport
        # Every frame carries the interface's own MAC: scapy would take the
        # source MAC of the route to the destination, which for a forged
        # reply is this host itself (loopback, all zeros, which a bridge
        # drops).
        self.mac = get_if_hwaddr(a.iface)
        self.isn = random.randrange(1 << 32)
        self.seq = (self.isn + 1) % (1 << 32)  # next byte to send
        self.rcv = None  # next byte expected from the server
        self.got = []  # server segments, in arrival order
        self.sniffer = AsyncSniffer(
            iface=a.iface,
            store=False,
            lfilter=self.from_server,
            prn=self.got.append,
        )
        self.sniffer.start()
        time.sleep(0.3)  # the sniffer's socket must be open before SYN

    def from_server(self, p):
        # The sniffer also sees this client's own forgeries leave: only
        # frames the gateway sent count.
        return (
            TCP in p
            and p[Ether].src.lower() == self.a.gw_mac.lower()
            and p[TCP].sport == 25
            and p[TCP].dport == self.sport
            and self.l3(p).src == self.a.server
        )

    def l3(self, p):
        return p[IPv6] if self.v6 else p[IP]

    def ip(self, src, dst, ttl):
        if self.v6:
            return IPv6(src=src, dst=dst, hlim=ttl)
        return IP(src=src, dst=dst, ttl=ttl)

    def send(self, flags, payload=b"", seq=None, ttl=64):
        """A client segment (through the gateway, as any client sends)."""
        seq = self.seq if seq is None else seq
        ack = self.rcv or 0
        p = (
            Ether(dst=self.a.gw_mac, src=self.mac)
            / self.ip(self.a.client, self.a.server, ttl)
            / TCP(sport=self.sport, dport=25, seq=seq, ack=ack, flags=flags, window=65535)
        )
        if payload:
            p = p / payload
        sendp(p, iface=self.a.iface, verbose=False)

    def forge(self, flags, payload=b"", seq=None, ack=None):
        """A segment that claims to come from the server, sent from the
        client's interface to the gateway's MAC."""
        p = (
            Ether(dst=self.a.gw_mac, src=self.mac)
            / self.ip(self.a.server, self.a.client, 64)
            / TCP(
                sport=25,
                dport=self.sport,
                seq=self.rcv if seq is None else seq,
                ack=self.seq if ack is None else ack,
                flags=flags,
                window=65535,
            )
        )
        if payload:
            p = p / payload
        sendp(p, iface=self.a.iface, verbose=False)

    def wait(self, pred, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in list(self.got):
                if pred(p):
                    return p
            time.sleep(0.01)
        return None

    def handshake_reply(self):
        p = self.wait(lambda p: p[TCP].flags & (SYN | ACK) == SYN | ACK)
        if p is None:
            raise RuntimeError("no SYN-ACK")
        self.rcv = (p[TCP].seq + 1) % (1 << 32)
        self.send(ACK)

    def connect(self):
        self.send(SYN, seq=self.isn)
        self.handshake_reply()

    def reply(self, timeout=TIMEOUT):
        """The server's next complete reply (all lines up to one whose
        fourth character is a space), acknowledged; None on timeout."""
        text = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.wait(
                lambda p: p[TCP].seq == self.rcv and len(bytes(p[TCP].payload)) > 0,
                max(0.0, deadline - time.monotonic()),
            )
            if p is None:
                break
            data = bytes(p[TCP].payload)
            if self.v6:
                # Frame padding never reaches TCP over IPv6, but be exact.
                data = data[: p[IPv6].plen - p[TCP].dataofs * 4]
            else:
                data = data[: p[IP].len - p[IP].ihl * 4 - p[TCP].dataofs * 4]
            self.rcv = (self.rcv + len(data)) % (1 << 32)
            self.send(ACK)
            text += data
            lines = text.split(b"\r\n")
            if len(lines) >= 2 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
                return text.decode("latin-1")
        return text.decode("latin-1") if text else None

    def command(self, line, ttl=64):
        self.send(PSH | ACK, line, ttl=ttl)
        if ttl > 1:
            self.seq = (self.seq + len(line)) % (1 << 32)

    def stop(self):
        self.sniffer.stop()


def forged_354(c, out):
    c.connect()
    out.append(c.reply())
    c.command(b"EHLO client.test\r\n")
    out.append(c.reply())
    data_at = c.seq
    c.command(b"DATA\r\n", ttl=1)  # the inspector sees it, the server never
    c.forge(PSH | ACK, b"354 go ahead\r\n", ack=(data_at + 6) % (1 << 32))
    time.sleep(0.2)
    c.command(b"DATA\r\n")
    out.append(c.reply())
    c.command(b"VERB\r\n")
    out.append(c.reply())


def forged_ack(c, out):
    c.connect()
    out.append(c.reply())
    c.command(b"EHLO client.test\r\n")
    out.append(c.reply())
    at = c.seq
    c.command(b"NOOP\r\n", ttl=1)
    c.forge(ACK, ack=(at + 6) % (1 << 32))
    time.sleep(0.2)
    c.command(b"VERB\r\n")
    # Masked, the server answers; dropped as conflicting bytes, it never
    # hears of it.
    out.append(c.reply(timeout=2.0))
    # A retransmission at the same place, as a real TCP would send.
    c.send(PSH | ACK, b"VERB\r\n", seq=at)
    out.append(c.reply(timeout=2.0))


def forged_synack(c, out):
    c.send(SYN, seq=c.isn, ttl=1)
    fake_isn = random.randrange(1 << 32)
    c.forge(SYN | ACK, seq=fake_isn, ack=c.seq)
    time.sleep(0.2)
    c.send(SYN, seq=c.isn)
    c.handshake_reply()
    # A forged reply in the forged sequence space, then in the real one.
    c.forge(PSH | ACK, b"250 forged\r\n", seq=(fake_isn + 1) % (1 << 32))
    out.append(c.reply())
    c.command(b"EHLO client.test\r\n")
    out.append(c.reply())
    c.command(b"VERB\r\n")
    out.append(c.reply())


def zero_length(c, out):
    if not c.v6:
        raise RuntimeError("zero-length is an IPv6 scenario")
    c.connect()
    out.append(c.reply())
    c.command(b"EHLO client.test\r\n")
    out.append(c.reply())
    line = b"VERB\r\n"
    p = (
        Ether(dst=c.a.gw_mac, src=c.mac)
        / IPv6(src=c.a.client, dst=c.a.server, plen=0)
        / IPv6ExtHdrHopByHop()
        / TCP(sport=c.sport, dport=25, seq=c.seq, ack=c.rcv, flags=PSH | ACK, window=65535)
        / line
    )
    sendp(p, iface=c.a.iface, verbose=False)
    c.seq = (c.seq + len(line)) % (1 << 32)
    out.append(c.reply(timeout=2.0))
    # As TCP would: sent again, if the server did not take it.
    c.send(PSH | ACK, line, seq=(c.seq - len(line)) % (1 << 32))
    out.append(c.reply(timeout=2.0))


def seq_ge(a, b):
    """a is at or after b in sequence space."""
    return (a - b) % (1 << 32) < (1 << 31)


def reorder(c, out):
    c.connect()
    out.append(c.reply())
    c.command(b"EHLO client.test\r\n")
    out.append(c.reply())
    first, second = b"NOOP\r\n", b"VERB x\r\n"
    at = c.seq
    second_at = (at + len(first)) % (1 << 32)
    c.send(PSH | ACK, second, seq=second_at)
    # An adversary that waits: longer than the fallback may hold a segment,
    # if the test asks for it.
    time.sleep(c.a.pause_ms / 1000.0)
    if c.a.ready:
        open(c.a.ready, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(c.a.go):
            if time.monotonic() > deadline:
                raise RuntimeError("no go file")
            time.sleep(0.01)
    c.send(PSH | ACK, first, seq=at)
    c.seq = (second_at + len(second)) % (1 << 32)
    out.append(c.reply())
    end = c.seq
    if c.wait(lambda p: seq_ge(p[TCP].ack, end), timeout=1.0) is None:
        c.send(PSH | ACK, second, seq=second_at)
    out.append(c.reply())


SCENARIOS = {
    "forged-354": forged_354,
    "forged-ack": forged_ack,
    "forged-synack": forged_synack,
    "reorder": reorder,
    "zero-length": zero_length,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--gw-mac", required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--sport", type=int, required=True)
    ap.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    ap.add_argument("--pause-ms", type=int, default=0)
    ap.add_argument("--ready")
    ap.add_argument("--go")
    a = ap.parse_args()
    conf.verb = 0
    c = Conn(a)
    out = []
    err = None
    try:
        SCENARIOS[a.scenario](c, out)
        c.command(b"QUIT\r\n")
        out.append(c.reply(timeout=2.0))
    except Exception as e:  # reported to the test, which shows it
        err = "%s: %s" % (type(e).__name__, e)
    finally:
        c.stop()
    print(json.dumps({"replies": out, "error": err}))
    sys.exit(0 if err is None else 1)


if __name__ == "__main__":
    main()
