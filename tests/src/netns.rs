//! Network namespaces, and the three-host test bed of `docs/testbed.md`:
//!
//! ```text
//! client ns  ==veth==  gateway ns (forwarding)  ==veth==  server ns
//! 10.200.1.2/24        10.200.1.1 | 10.200.2.1            10.200.2.2/24
//! fd00:200:1::2/64     fd00:200:1::1 | fd00:200:2::1      fd00:200:2::2/64
//! ```
//!
//! Every veth is created directly inside its namespace, so nothing ever
//! appears in the host's namespace, and deleting the namespaces deletes the
//! veths. Names carry [`crate::unique_id`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

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

    /// Waits until `iface` is operationally up.
    pub fn wait_link_up(&self, iface: &str) {
        wait_until(
            &format!("{iface} in {} to be up", self.name),
            Duration::from_secs(10),
            || (self.link_json(iface)["operstate"] == "UP").then_some(()),
        );
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

        client.ip(&[
            "link",
            "add",
            &client_if,
            "type",
            "veth",
            "peer",
            "name",
            &gw_client_if,
            "netns",
            gateway.name(),
        ]);
        gateway.ip(&[
            "link",
            "add",
            &gw_server_if,
            "type",
            "veth",
            "peer",
            "name",
            &server_if,
            "netns",
            server.name(),
        ]);

        let plan: [(&NetNs, &str, &[&str]); 4] = [
            (&client, &client_if, &["10.200.1.2/24", "fd00:200:1::2/64"]),
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
            (&server, &server_if, &["10.200.2.2/24", "fd00:200:2::2/64"]),
        ];
        for (ns, iface, addrs) in plan {
            for a in addrs {
                if a.contains(':') {
                    ns.ip(&["-6", "addr", "add", a, "dev", iface, "nodad"]);
                } else {
                    ns.ip(&["addr", "add", a, "dev", iface]);
                }
            }
            if offloads == Offloads::Off {
                ns.offloads_off(iface);
            }
            ns.ip(&["link", "set", iface, "up"]);
        }

        client.ip(&["route", "add", "default", "via", "10.200.1.1"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00:200:1::1"]);
        server.ip(&["route", "add", "default", "via", "10.200.2.1"]);
        server.ip(&["-6", "route", "add", "default", "via", "fd00:200:2::1"]);
        gateway.sysctl("net.ipv4.ip_forward", "1");
        gateway.sysctl("net.ipv6.conf.all.forwarding", "1");

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

    /// The gateway's two interfaces, where the inspector attaches.
    pub fn gateway_ifaces(&self) -> [&str; 2] {
        [&self.gw_client_if, &self.gw_server_if]
    }

    /// Checks that the client reaches the server through the gateway, by
    /// connecting to a closed TCP port of `server_addr` and expecting a
    /// refusal (a RST from the server: the path works both ways).
    pub fn assert_reachable(&self, server_addr: IpAddr) {
        let script = "import socket, sys\n\
            fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n\
            s = socket.socket(fam, socket.SOCK_STREAM)\n\
            s.settimeout(10)\n\
            try:\n    s.connect((sys.argv[1], 9))\n    print('connected')\n\
            except ConnectionRefusedError:\n    print('refused')\n";
        let mut c = self.client.exec("/usr/bin/python3");
        c.args(["-c", script, &server_addr.to_string()]);
        let out = run_ok(&mut c);
        assert_eq!(
            out.stdout_str().trim(),
            "refused",
            "client could not reach {server_addr} through the gateway: {out}"
        );
    }
}
