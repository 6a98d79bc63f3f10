//! The `inspector` command line, run as an operator would: every error is
//! one line `inspector: error: ...` on stderr with exit status 1, and leaves
//! nothing behind (no XDP program on an interface, no pin dir); the happy
//! path attaches, is visible on the link, and SIGINT/SIGTERM undo it all.
//!
//! Needs root (namespaces, XDP); run with `--test-threads=1`.

use std::{path::Path, process::Command};

use inspector_tests::{
    assert_attach_failed, assert_attach_refused, assert_one_line_error,
    inspector::{stats_command, unique_pin_dir, Attach},
    inspector_bin,
    netns::Veths,
    proc::run,
    Counts, Inspector,
};

/// Drops every privilege: user and group nobody, no capabilities at all.
const UNPRIVILEGED: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
];

fn assert_no_pin_dir(what: &str, dir: &Path) {
    assert!(!dir.exists(), "{what}: pin dir {} exists", dir.display());
}

#[test]
fn attach_shows_on_the_link_and_sigint_undoes_everything() {
    let v = Veths::new("cli");
    let inspector = Inspector::attach(&v.ns, &[&v.a, &v.b]);
    let stderr = inspector.stderr();
    assert!(stderr.contains(&v.a) && stderr.contains(&v.b), "{stderr}");

    for i in [&v.a, &v.b] {
        let text = v.ns.link_text(i);
        assert!(
            text.contains("xdp"),
            "`ip -d link show {i}` shows no xdp:\n{text}"
        );
        assert!(
            v.ns.xdp_prog_id(i).is_some(),
            "no XDP program id on {i}:\n{text}"
        );
    }
    assert_eq!(
        v.ns.xdp_prog_id(&v.a),
        v.ns.xdp_prog_id(&v.b),
        "one program for both"
    );
    assert!(inspector.pin_dir().is_dir());

    let json = inspector.stats_json();
    let obj = json.as_object().expect("stats --json prints an object");
    for k in Counts::NAMES {
        assert!(
            obj.get(k).and_then(|v| v.as_u64()).is_some(),
            "no counter {k} in {json}"
        );
    }

    let pin_dir = inspector.pin_dir().to_path_buf();
    let stopped = inspector.stop();
    assert!(
        stopped.status.success(),
        "attach exited with {} after SIGINT:\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(stopped.stderr.contains("detached"), "{}", stopped.stderr);
    assert!(
        !stopped.pins_left,
        "pin dir {} left behind:\n{}",
        pin_dir.display(),
        stopped.stderr
    );
    v.assert_no_xdp("after SIGINT");
    let after = stats_command(&pin_dir);
    assert_one_line_error(
        "stats after detach",
        after.status.code(),
        &after.stderr,
        &[],
    );
}

#[test]
fn sigterm_detaches_too() {
    let v = Veths::new("cli");
    let mut inspector = Inspector::attach(&v.ns, &[&v.a]);
    assert!(v.ns.xdp_prog_id(&v.a).is_some());
    let stopped = inspector.stop_with(libc::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(!stopped.pins_left);
    v.assert_no_xdp("after SIGTERM");
}

#[test]
fn attach_without_privileges_fails_cleanly() {
    let v = Veths::new("cli");
    let dir = unique_pin_dir();
    let r = Attach::new(&v.ns, &[&v.a])
        .pin_dir(&dir)
        .wrapped_in(UNPRIVILEGED)
        .start();
    assert_attach_failed("unprivileged attach", r, &["root"]);
    assert_no_pin_dir("unprivileged attach", &dir);
    v.assert_no_xdp("unprivileged attach");
}

#[test]
fn stats_without_privileges_fails_cleanly() {
    let v = Veths::new("cli");
    let inspector = Inspector::attach(&v.ns, &[&v.a]);
    let before = inspector.stats();
    let mut c = Command::new(UNPRIVILEGED[0]);
    c.args(&UNPRIVILEGED[1..])
        .arg(inspector_bin())
        .args(["stats", "--json", "--pin-dir"])
        .arg(inspector.pin_dir());
    let out = run(&mut c);
    assert_one_line_error(
        "unprivileged stats",
        out.status.code(),
        &out.stderr,
        &["root"],
    );
    assert!(out.stdout.is_empty(), "{out}");
    assert!(inspector.pin_dir().is_dir());
    // Still attached and readable by root (and nothing arrived meanwhile).
    assert_eq!(
        inspector.stats().packets_inspected,
        before.packets_inspected
    );
    assert!(v.ns.xdp_prog_id(&v.a).is_some());
}

#[test]
fn unknown_interface_fails_cleanly() {
    let v = Veths::new("cli");
    let dir = unique_pin_dir();
    let r = Attach::new(&v.ns, &["nosuch0"]).pin_dir(&dir).start();
    assert_attach_failed("unknown interface", r, &["nosuch0"]);
    assert_no_pin_dir("unknown interface", &dir);

    // A good interface named before the unknown one is not touched either.
    let r = Attach::new(&v.ns, &[&v.a, "nosuch0"]).pin_dir(&dir).start();
    assert_attach_failed("good then unknown interface", r, &["nosuch0"]);
    assert_no_pin_dir("good then unknown interface", &dir);
    v.assert_no_xdp("good then unknown interface");
}

#[test]
fn interface_with_an_xdp_program_fails_cleanly() {
    let v = Veths::new("cli");
    let first = Inspector::attach(&v.ns, &[&v.a]);
    let id = v.ns.xdp_prog_id(&v.a).expect("first attach is on the link");
    let before = first.stats();

    let dir_b = unique_pin_dir();
    let r = Attach::new(&v.ns, &[&v.a]).pin_dir(&dir_b).start();
    assert_attach_failed(
        "second attach, same interface",
        r,
        &[&v.a, "already has an XDP program"],
    );
    assert_no_pin_dir("second attach, same interface", &dir_b);

    // Attaching to b first, then failing on a, must leave b clean.
    let r = Attach::new(&v.ns, &[&v.b, &v.a]).pin_dir(&dir_b).start();
    assert_attach_failed("second attach, new then busy interface", r, &[&v.a]);
    assert_no_pin_dir("second attach, new then busy interface", &dir_b);
    assert_eq!(v.ns.xdp_prog_id(&v.b), None, "{}", v.ns.link_text(&v.b));

    // The first one is untouched.
    assert_eq!(v.ns.xdp_prog_id(&v.a), Some(id));
    assert!(first.pin_dir().is_dir());
    let after = first.stats();
    assert_eq!(after.packets_inspected, before.packets_inspected);
}

#[test]
fn pin_dir_in_use_fails_cleanly() {
    let v = Veths::new("cli");
    let first = Inspector::attach(&v.ns, &[&v.a]);
    let r = Attach::new(&v.ns, &[&v.b]).pin_dir(first.pin_dir()).start();
    assert_attach_failed("second attach, same pin dir", r, &["in use"]);
    assert_eq!(v.ns.xdp_prog_id(&v.b), None, "{}", v.ns.link_text(&v.b));
    // The first one keeps its pins and its link.
    assert!(first.pin_dir().is_dir());
    assert!(v.ns.xdp_prog_id(&v.a).is_some());
    first.stats();
}

#[test]
fn stats_with_nothing_attached_fails_cleanly() {
    let dir = unique_pin_dir();
    let out = stats_command(&dir);
    assert_one_line_error(
        "stats, nothing attached",
        out.status.code(),
        &out.stderr,
        &["no counters"],
    );
    assert!(out.stdout.is_empty(), "{out}");
    assert_no_pin_dir("stats, nothing attached", &dir);
}

#[test]
fn port_465_is_refused() {
    let v = Veths::new("cli");
    let dir = unique_pin_dir();
    let r = Attach::new(&v.ns, &[&v.a])
        .pin_dir(&dir)
        .arg("--port")
        .arg("465")
        .start();
    assert_attach_refused("--port 465", r, &["465"]);
    assert_no_pin_dir("--port 465", &dir);
    v.assert_no_xdp("--port 465");
}

#[test]
fn interface_named_twice_is_refused() {
    let v = Veths::new("cli");
    let dir = unique_pin_dir();
    let r = Attach::new(&v.ns, &[&v.a, &v.a]).pin_dir(&dir).start();
    assert_attach_refused("interface twice", r, &[&v.a]);
    assert_no_pin_dir("interface twice", &dir);
    v.assert_no_xdp("interface twice");
}

#[test]
fn bad_command_line_exits_2() {
    let out = run(Command::new(inspector_bin()).args(["attach"]));
    assert_eq!(out.status.code(), Some(2), "{out}");
    let out = run(Command::new(inspector_bin()).args(["frobnicate"]));
    assert_eq!(out.status.code(), Some(2), "{out}");
}

/// The embedded object with the first instruction of `inspector_xdp`
/// replaced by `r0 = r5`: r5 is never written before, so the verifier must
/// refuse it ("R5 !read_ok").
fn object_with_uninitialised_read() -> Vec<u8> {
    use object::{Object, ObjectSection, ObjectSymbol};

    let mut bytes = inspector_userspace::loader::EBPF_OBJECT.to_vec();
    let (at, section_name) = {
        let file = object::File::parse(&*bytes).expect("the embedded object is an ELF file");
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok(inspector_userspace::loader::XDP_PROGRAM))
            .expect("the object has the symbol inspector_xdp");
        let idx = sym.section_index().expect("the symbol is in a section");
        let section = file.section_by_index(idx).expect("its section");
        let (offset, size) = section.file_range().expect("the section has file bytes");
        assert!(
            sym.address() + 8 <= size,
            "the program is inside its section"
        );
        // A relocation on the first instruction would be rewritten by the
        // loader and hide the patch.
        for (r_off, _) in section.relocations() {
            assert!(
                !(sym.address()..sym.address() + 8).contains(&r_off),
                "the first instruction carries a relocation; patch another one"
            );
        }
        (
            (offset + sym.address()) as usize,
            section.name().unwrap_or("?").to_string(),
        )
    };
    assert_eq!(
        section_name, "xdp.frags",
        "the XDP program's section (multi-buffer aware)"
    );
    // BPF_ALU64 | BPF_MOV | BPF_X, dst r0, src r5.
    bytes[at..at + 8].copy_from_slice(&[0xbf, 0x50, 0, 0, 0, 0, 0, 0]);
    bytes
}

#[test]
fn program_rejected_by_the_verifier_fails_cleanly() {
    let v = Veths::new("cli");
    let tmp = inspector_tests::temp_dir("obj");
    let obj = tmp.path().join("broken.bpf.o");
    std::fs::write(&obj, object_with_uninitialised_read()).unwrap();
    let dir = unique_pin_dir();
    let r = Attach::new(&v.ns, &[&v.a, &v.b])
        .pin_dir(&dir)
        .arg("--object")
        .arg(&obj)
        .start();
    let f = match r {
        Ok(_) => panic!("attach loaded a program the verifier must reject"),
        Err(f) => f,
    };
    assert_eq!(f.status.code(), Some(1), "{}", f.stderr);
    let first = f.stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("inspector: error: "), "{}", f.stderr);
    assert!(
        first.contains("verifier"),
        "the error does not mention the verifier:\n{}",
        f.stderr
    );
    assert!(
        f.stderr.contains("R5 !read_ok"),
        "the verifier's log is not shown:\n{}",
        f.stderr
    );
    assert_no_pin_dir("verifier rejection", &dir);
    v.assert_no_xdp("verifier rejection");
}
