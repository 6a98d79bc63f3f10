//! Network namespaces, and the gateways of `docs/testbed.md`. The
//! [`Testbed`], three hosts:
//!
//! ```text
//! client ns  ==veth==  gateway ns (forwarding)  ==veth==  server ns
//! 10.200.1.2/24        10.200.1.1 | 10.200.2.1            10.200.2.2/24
//! fd00:200:1::2/64     fd00:200:1::1 | fd00:200:2::1      fd00:200:2::2/64
//! ```
//!
//! and the [`OneArmed`] gateway (router on a stick), where both directions
//! of a flow cross the gateway's one interface:
//!
//! ```text
//! client ns ==veth==+
//!                   bridge ns (br0) ==veth== gateway ns: 10.200.1.1 and 10.200.2.1
//! server ns ==veth==+                        on one interface, redirects off
//! ```
//!
//! Every veth is created directly inside its namespace, so nothing ever
//! appears in the host's namespace, and deleting the namespaces deletes the
//! veths. Names carry [`crate::unique_id`]. A thread can enter a namespace
//! ([`in_netns`], [`NetNs::hold`]) so that sockets or XDP links made
//! from this process live there.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use std::os::fd::AsFd;

use anyhow::{Context, Result};
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::{
    proc::{cmd, run, run_ok},
    unique_id, wait_until, NAME_PREFIX,
};

/// The test bed's addresses (`docs/testbed.md`). Test traffic goes to these only.
pub mod addr {
    use super::*;

    pub const CLIENT_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 1, 2));
    pub const GW_CLIENT_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 1, 1));
    pub const GW_SERVER_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 2, 1));
    pub const SERVER_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 2, 2));
    pub const CLIENT_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 2));
    pub const GW_CLIENT_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 1));
    pub const GW_SERVER_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 2, 0, 0, 0, 0, 1));
    pub const SERVER_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 2, 0, 0, 0, 0, 2));
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `inspt-<pid>x<n>-<role>` with `lo` up and IPv6 duplicate
    /// address detection off (addresses usable at once).
    pub fn new(role: &str) -> NetNs {
        crate::require_root();
        crate::remove_stale_once();
        let name = format!("{NAME_PREFIX}-{}-{role}", unique_id());
        run_ok(&mut cmd("ip", &["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip netns exec NAME program`: for clients and servers. (It gives the
    /// command a private /sys, so pins under /sys/fs/bpf are not visible.)
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `nsenter --net=PATH -- program`: only the network namespace changes;
    /// the host's mounts (and its /sys/fs/bpf) stay visible. Use this for
    /// `inspector`.
    pub fn nsenter(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// `ip -n NAME args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut c = cmd("ip", &["-n", &self.name]);
        c.args(args);
        run_ok(&mut c);
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let mut c = self.exec("sysctl");
        c.args(["-qw", &format!("{key}={value}")]);
        run_ok(&mut c);
    }

    /// `ip -j -d link show dev IF` as JSON (the first and only element).
    pub fn link_json(&self, iface: &str) -> serde_json::Value {
        let out = run_ok(&mut cmd(
            "ip",
            &["-n", &self.name, "-j", "-d", "link", "show", "dev", iface],
        ));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("`ip -j link` printed no JSON ({e}): {}", out.stdout_str()));
        v.get(0)
            .cloned()
            .expect("ip -j link show dev IF lists one link")
    }

    /// `ip -d link show dev IF` as text (what an operator sees).
    pub fn link_text(&self, iface: &str) -> String {
        run_ok(&mut cmd(
            "ip",
            &["-n", &self.name, "-d", "link", "show", "dev", iface],
        ))
        .stdout_str()
    }

    /// Id of the XDP program attached to `iface`, if any (any mode).
    pub fn xdp_prog_id(&self, iface: &str) -> Option<u64> {
        let link = self.link_json(iface);
        let xdp = link.get("xdp")?;
        xdp.pointer("/prog/id")
            .or_else(|| xdp.pointer("/attached/0/prog/id"))
            .and_then(|v| v.as_u64())
    }

    /// Turns off checksum offload and segmentation offload on `iface`, so
    /// that checksums are really computed and verified.
    pub fn offloads_off(&self, iface: &str) {
        let mut c = self.exec("ethtool");
        c.args([
            "-K", iface, "tx", "off", "rx", "off", "tso", "off", "gso", "off",
        ]);
        run_ok(&mut c);
    }

    /// Waits until a TCP socket listens on `addr` (`a.b.c.d:port` or
    /// `[v6]:port`) in this namespace.
    pub fn wait_listening(&self, addr: &str) {
        wait_until(
            &format!("a listener on {addr} in {}", self.name),
            Duration::from_secs(20),
            || {
                let mut c = self.exec("ss");
                c.args(["-Hltn", &format!("src {addr}")]);
                (!run_ok(&mut c).stdout.is_empty()).then_some(())
            },
        );
    }

    /// Makes a value with `make` on a thread that has entered this namespace
    /// and keeps it there until the [`Held`] is dropped; for what must also
    /// be undone in the namespace (an XDP link attached from this process
    /// detaches where its interface is).
    pub fn hold<T: 'static>(
        &self,
        make: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<Held> {
        let file = self.open();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let value = match enter(&file).and_then(|()| make()) {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // Until the Held is dropped (its sender with it).
            let _ = stop_rx.recv();
            drop(value);
        });
        let made = ready_rx
            .recv()
            .context("the namespace thread died before it was ready")?;
        let held = Held {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        made.map(|()| held)
    }

    fn open(&self) -> File {
        File::open(self.path())
            .unwrap_or_else(|e| panic!("opening network namespace {}: {e}", self.path().display()))
    }

    /// Waits until `iface` is operationally up.
    pub fn wait_link_up(&self, iface: &str) {
        wait_until(
            &format!("{iface} in {} to be up", self.name),
            Duration::from_secs(10),
            || (self.link_json(iface)["operstate"] == "UP").then_some(()),
        );
    }
}

/// Runs `f` on a thread that has entered `ns` (setns on that thread only):
/// sockets it creates live there, and can be used from any thread
/// afterwards. A panic in `f` goes on in the caller.
pub fn in_netns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = ns.open();
    std::thread::spawn(move || {
        enter(&file).unwrap_or_else(|e| panic!("{e:#}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Moves the calling thread into the network namespace of `file`.
fn enter(file: &File) -> Result<()> {
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
        .context("setns into a network namespace")
}

/// A value kept in a namespace by [`NetNs::hold`]; dropped there when this
/// is dropped.
pub struct Held {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = run(&mut cmd("ip", &["netns", "delete", &self.name]));
        if !out.status.success() {
            eprintln!(
                "warning: could not delete netns {}: {}",
                self.name,
                out.stderr.trim()
            );
        }
    }
}

/// A namespace of its own with a veth pair `va<id>` / `vb<id>`, both up:
/// interfaces to attach to (and refuse to attach to) in command-line tests.
pub struct Veths {
    pub ns: NetNs,
    pub a: String,
    pub b: String,
}

impl Veths {
    pub fn new(prefix: &str) -> Veths {
        let ns = NetNs::new(prefix);
        let id = unique_id();
        let (a, b) = (format!("va{id}"), format!("vb{id}"));
        ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ns.ip(&["link", "set", &a, "up"]);
        ns.ip(&["link", "set", &b, "up"]);
        Veths { ns, a, b }
    }

    /// Neither interface has an XDP program.
    pub fn assert_no_xdp(&self, what: &str) {
        for i in [&self.a, &self.b] {
            assert_eq!(
                self.ns.xdp_prog_id(i),
                None,
                "{what}: an XDP program is attached to {i}:\n{}",
                self.ns.link_text(i)
            );
        }
    }
}

/// Whether the test bed's veths keep their default offloads or have them
/// all turned off (`docs/testbed.md`: run the suite both ways).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offloads {
    Default,
    Off,
}

/// The client / gateway / server namespaces of `docs/testbed.md`, wired and
/// addressed, with forwarding on in the gateway. Dropping it deletes all
/// three namespaces and so every veth.
pub struct Testbed {
    pub client: NetNs,
    pub gateway: NetNs,
    pub server: NetNs,
    /// The client's veth (10.200.1.2).
    pub client_if: String,
    /// The gateway's veth towards the client (10.200.1.1).
    pub gw_client_if: String,
    /// The gateway's veth towards the server (10.200.2.1).
    pub gw_server_if: String,
    /// The server's veth (10.200.2.2).
    pub server_if: String,
    pub offloads: Offloads,
}

/// The client's and the server's addresses, the same on every gateway.
const CLIENT_ADDRS: [&str; 2] = ["10.200.1.2/24", "fd00:200:1::2/64"];
const SERVER_ADDRS: [&str; 2] = ["10.200.2.2/24", "fd00:200:2::2/64"];

impl NetNs {
    /// Adds `addrs` to `iface`, turns its offloads off if asked, and sets
    /// it up.
    fn configure(&self, iface: &str, addrs: &[&str], offloads: Offloads) {
        for a in addrs {
            if a.contains(':') {
                self.ip(&["-6", "addr", "add", a, "dev", iface, "nodad"]);
            } else {
                self.ip(&["addr", "add", a, "dev", iface]);
            }
        }
        if offloads == Offloads::Off {
            self.offloads_off(iface);
        }
        self.ip(&["link", "set", iface, "up"]);
    }

    /// A veth pair: `name` here, `peer` in `other`.
    fn veth(&self, name: &str, peer: &str, other: &NetNs) {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            other.name(),
        ]);
    }
}

/// Default routes of the client and the server through the gateway, and
/// forwarding on in the gateway.
fn route_through_gateway(client: &NetNs, server: &NetNs, gateway: &NetNs) {
    client.ip(&["route", "add", "default", "via", "10.200.1.1"]);
    client.ip(&["-6", "route", "add", "default", "via", "fd00:200:1::1"]);
    server.ip(&["route", "add", "default", "via", "10.200.2.1"]);
    server.ip(&["-6", "route", "add", "default", "via", "fd00:200:2::1"]);
    gateway.sysctl("net.ipv4.ip_forward", "1");
    gateway.sysctl("net.ipv6.conf.all.forwarding", "1");
}

impl Testbed {
    pub fn new(offloads: Offloads) -> Testbed {
        // Each namespace is its own guard: a failure half-way deletes what
        // was made so far.
        let client = NetNs::new("client");
        let gateway = NetNs::new("gw");
        let server = NetNs::new("server");
        let id = unique_id();
        let client_if = format!("cl{id}");
        let gw_client_if = format!("gc{id}");
        let gw_server_if = format!("gs{id}");
        let server_if = format!("sv{id}");
        for name in [&client_if, &gw_client_if, &gw_server_if, &server_if] {
            assert!(name.len() <= 15, "interface name {name} is too long");
        }

        client.veth(&client_if, &gw_client_if, &gateway);
        gateway.veth(&gw_server_if, &server_if, &server);

        let plan: [(&NetNs, &str, &[&str]); 4] = [
            (&client, &client_if, &CLIENT_ADDRS),
            (
                &gateway,
                &gw_client_if,
                &["10.200.1.1/24", "fd00:200:1::1/64"],
            ),
            (
                &gateway,
                &gw_server_if,
                &["10.200.2.1/24", "fd00:200:2::1/64"],
            ),
            (&server, &server_if, &SERVER_ADDRS),
        ];
        for (ns, iface, addrs) in plan {
            ns.configure(iface, addrs, offloads);
        }
        route_through_gateway(&client, &server, &gateway);

        let bed = Testbed {
            client,
            gateway,
            server,
            client_if,
            gw_client_if,
            gw_server_if,
            server_if,
            offloads,
        };
        for (ns, iface) in bed.veths() {
            ns.wait_link_up(iface);
        }
        bed
    }

    /// Every veth with its namespace.
    pub fn veths(&self) -> [(&NetNs, &str); 4] {
        [
            (&self.client, &self.client_if),
            (&self.gateway, &self.gw_client_if),
            (&self.gateway, &self.gw_server_if),
            (&self.server, &self.server_if),
        ]
    }

    /// Reorders what the client sends to port 25 (this kernel may have no
    /// netem, so two HTB classes on the client's link do it): segments whose
    /// TCP sequence number has bit 10 set wait in a class limited to `slow`
    /// (a rate, such as `20mbit`), the others leave at once and overtake
    /// them. Bit 10 flips every 1024 bytes of stream, so about half the
    /// segments of a bulk transfer, and some of a burst of commands, are
    /// held back. [`Testbed::stop_reordering`] undoes it.
    pub fn reorder_client(&self, slow: &str) {
        reorder(&self.client, &self.client_if, "dport", slow);
    }

    /// The same for what the server sends from port 25 (its replies).
    pub fn reorder_server(&self, slow: &str) {
        reorder(&self.server, &self.server_if, "sport", slow);
    }

    /// Undoes [`Testbed::reorder_client`] and [`Testbed::reorder_server`].
    pub fn stop_reordering(&self) {
        for (ns, dev) in [
            (&self.client, &self.client_if),
            (&self.server, &self.server_if),
        ] {
            // Absent where nothing was reordered.
            let _ = ns
                .exec("tc")
                .args(["qdisc", "del", "dev", dev, "root"])
                .output();
        }
    }

    /// The gateway's two interfaces, where the inspector attaches.
    pub fn gateway_ifaces(&self) -> [&str; 2] {
        [&self.gw_client_if, &self.gw_server_if]
    }

    /// Checks that the client reaches the server through the gateway (see
    /// [`assert_reachable`]).
    pub fn assert_reachable(&self, server_addr: IpAddr) {
        assert_reachable(&self.client, server_addr);
    }
}

/// Two HTB classes on `dev` in `ns` (see [`Testbed::reorder_client`]):
/// TCP segments with port 25 as their `port` ("dport" or "sport") whose
/// sequence number has bit 10 set wait in the class limited to `slow`.
fn reorder(ns: &NetNs, dev: &str, port: &str, slow: &str) {
    let tc = |args: &[&str]| crate::proc::run_ok(ns.exec("tc").args(args));
    tc(&[
        "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
    ]);
    tc(&[
        "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit",
    ]);
    tc(&[
        "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", slow,
        "burst", "1600", "cburst", "1600",
    ]);
    // The sequence number: at 24 behind an IPv4 header without options, at
    // 44 behind an IPv6 header.
    for (proto, ip, at, prio) in [("ip", "ip", "24", "1"), ("ipv6", "ip6", "44", "2")] {
        tc(&[
            "filter", "add", "dev", dev, "parent", "1:", "protocol", proto, "prio", prio, "u32",
            "match", ip, port, "25", "0xffff", "match", "u32", "0x400", "0x400", "at", at,
            "flowid", "1:20",
        ]);
    }
}

/// The one-armed gateway of `docs/testbed.md`: a bridge namespace joins the
/// client, the server and the gateway; the gateway's one interface carries
/// both subnets and forwards back out of the interface it received on, so
/// both directions of every flow cross that one interface (in and out).
/// Redirects are off, or the hosts would learn to talk to each other
/// directly and the gateway would see nothing. Dropping it deletes all four
/// namespaces and so every veth.
pub struct OneArmed {
    pub client: NetNs,
    pub gateway: NetNs,
    pub server: NetNs,
    /// Holds the bridge `br0` and the peers of the three veths.
    pub bridge: NetNs,
    /// The client's veth (10.200.1.2).
    pub client_if: String,
    /// The gateway's one veth (10.200.1.1 and 10.200.2.1).
    pub gw_if: String,
    /// The server's veth (10.200.2.2).
    pub server_if: String,
    pub offloads: Offloads,
}

impl OneArmed {
    pub fn new(offloads: Offloads) -> OneArmed {
        let client = NetNs::new("client");
        let gateway = NetNs::new("gw");
        let server = NetNs::new("server");
        let bridge = NetNs::new("br");
        let id = unique_id();
        let (client_if, gw_if, server_if) =
            (format!("cl{id}"), format!("g1{id}"), format!("sv{id}"));
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        for (ns, iface, port) in [
            (&client, &client_if, format!("bc{id}")),
            (&gateway, &gw_if, format!("bg{id}")),
            (&server, &server_if, format!("bs{id}")),
        ] {
            assert!(port.len() <= 15, "interface name {port} is too long");
            ns.veth(iface, &port, &bridge);
            bridge.ip(&["link", "set", &port, "master", "br0"]);
            if offloads == Offloads::Off {
                bridge.offloads_off(&port);
            }
            bridge.ip(&["link", "set", &port, "up"]);
        }
        // The gateway must not tell the hosts to go direct (IPv4: the
        // effective value is `all` OR the interface's, so both are off).
        for key in ["all", "default"] {
            gateway.sysctl(&format!("net.ipv4.conf.{key}.send_redirects"), "0");
        }
        gateway.sysctl(&format!("net.ipv4.conf.{gw_if}.send_redirects"), "0");
        // ...and the hosts must not listen if it does (IPv6 has no switch
        // for sending them).
        for (ns, iface) in [(&client, &client_if), (&server, &server_if)] {
            for key in ["all", iface.as_str()] {
                ns.sysctl(&format!("net.ipv4.conf.{key}.accept_redirects"), "0");
                ns.sysctl(&format!("net.ipv6.conf.{key}.accept_redirects"), "0");
            }
        }
        client.configure(&client_if, &CLIENT_ADDRS, offloads);
        gateway.configure(
            &gw_if,
            &[
                "10.200.1.1/24",
                "10.200.2.1/24",
                "fd00:200:1::1/64",
                "fd00:200:2::1/64",
            ],
            offloads,
        );
        server.configure(&server_if, &SERVER_ADDRS, offloads);
        route_through_gateway(&client, &server, &gateway);
        let bed = OneArmed {
            client,
            gateway,
            server,
            bridge,
            client_if,
            gw_if,
            server_if,
            offloads,
        };
        for (ns, iface) in [
            (&bed.client, &bed.client_if),
            (&bed.gateway, &bed.gw_if),
            (&bed.server, &bed.server_if),
        ] {
            ns.wait_link_up(iface);
        }
        bed
    }

    /// The gateway's one interface, where the inspector attaches.
    pub fn gateway_ifaces(&self) -> [&str; 1] {
        [&self.gw_if]
    }

    /// Checks that the client reaches the server through the gateway (see
    /// [`assert_reachable`]).
    pub fn assert_reachable(&self, server_addr: IpAddr) {
        assert_reachable(&self.client, server_addr);
    }
}

/// Checks that `client` reaches the server, by connecting to a closed TCP
/// port of `server_addr` and expecting a refusal (a RST from the server:
/// the path works both ways).
pub fn assert_reachable(client: &NetNs, server_addr: IpAddr) {
    let script = "import socket, sys\n\
        fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n\
        s = socket.socket(fam, socket.SOCK_STREAM)\n\
        s.settimeout(10)\n\
        try:\n    s.connect((sys.argv[1], 9))\n    print('connected')\n\
        except ConnectionRefusedError:\n    print('refused')\n";
    let mut c = client.exec("/usr/bin/python3");
    c.args(["-c", script, &server_addr.to_string()]);
    let out = run_ok(&mut c);
    assert_eq!(
        out.stdout_str().trim(),
        "refused",
        "client could not reach {server_addr} through the gateway: {out}"
    );
}
