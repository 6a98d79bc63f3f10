//! `cargo xtask bench --quick` writes a report with every field the full
//! run writes. Figures are not asserted (they depend on the machine), only
//! the structure: that a consumer of `target/bench/report.json` finds what
//! it reads. Needs root, like every test that builds namespaces and loads
//! eBPF; takes well under a minute once the inspector is built.

use std::process::Command;

use serde_json::Value;

/// Keys of every median-and-spread object.
const SUMMARY: &[&str] = &["n", "median", "min", "max", "p25", "p75"];

/// Top-level fields: JSON pointer, and whether it is a summary object.
const FIELDS: &[(&str, bool)] = &[
    ("/schema", false),
    ("/meta/quick", false),
    ("/meta/cpu_model", false),
    ("/meta/cores", false),
    ("/meta/mem_mib", false),
    ("/meta/kernel", false),
    ("/meta/commit", false),
    ("/meta/dirty", false),
    ("/meta/date", false),
    ("/meta/loadavg_start", false),
    ("/meta/loadavg_end", false),
    ("/meta/duration_s", false),
    ("/kernel/method", false),
    ("/kernel/samples", false),
    ("/kernel/repeat", false),
    ("/kernel/fresh_flows", false),
    ("/kernel/cases", false),
    ("/kernel/in_order_fresh_flows", false),
    ("/end_to_end/rounds", false),
    ("/end_to_end/parallel_sessions", false),
    ("/end_to_end/small_messages", false),
    ("/end_to_end/small_message_bytes", false),
    ("/end_to_end/large_messages", false),
    ("/end_to_end/large_message_bytes", false),
    ("/end_to_end/latency_sessions", false),
    ("/end_to_end/offloads", false),
    ("/end_to_end/configs", false),
    ("/end_to_end/memory/flow_key_bytes", false),
    ("/end_to_end/memory/flow_value_bytes", false),
    ("/end_to_end/memory/flow_key_plus_value_bytes", false),
    ("/end_to_end/memory/flow_table_max_entries", false),
    ("/end_to_end/memory/flow_table_memlock_bytes", false),
    ("/end_to_end/memory/kernel_bytes_per_flow", false),
    ("/end_to_end/memory/total_map_memlock_bytes", false),
    ("/end_to_end/memory/process_map_memlock_bytes", false),
    ("/end_to_end/memory/maps", false),
    ("/end_to_end/memory/process_maps", false),
    ("/end_to_end/scale/filter", false),
    ("/end_to_end/scale/idle_flows", false),
    ("/end_to_end/scale/rounds", false),
    ("/end_to_end/scale/small_msgs_per_s_without_idle", true),
    ("/end_to_end/scale/small_msgs_per_s_with_idle", true),
    ("/end_to_end/scale/ratio_with_to_without", false),
    ("/end_to_end/scale/tracked", false),
    ("/notes", false),
];

const CASE_IDS: &[&str] = &["a", "b", "c", "d", "e", "f"];
const CASE_FIELDS: &[(&str, bool)] = &[
    ("id", false),
    ("name", false),
    ("path", false),
    ("mode", false),
    ("frame_bytes", false),
    ("payload_bytes", false),
    ("inspector_ns", true),
    ("inspector_wall_ns", true),
    ("bench_parse_ns", true),
    ("bench_pass_ns", true),
    ("ratio_to_bench_parse", true),
    ("ratio_to_bench_pass", true),
    ("extra_ns_over_bench_parse", true),
];
/// Present for every case, a summary for the SMTP cases (b-f), null for (a).
const CASE_SMTP_FIELDS: &[&str] = &["payload_bytes_per_ns", "extra_ns_per_payload_byte"];

const FRESH_IDS: &[&str] = &["b1", "e1"];
const FRESH_FIELDS: &[(&str, bool)] = &[
    ("id", false),
    ("name", false),
    ("payload_bytes", false),
    ("inspector_ns", true),
    ("bench_parse_ns", true),
    ("extra_ns_over_bench_parse", true),
];

const CONFIG_IDS: &[&str] = &[
    "forwarding",
    "xdp_bench_pass",
    "inspector_xdp",
    "inspector_tc",
    "iptables_string",
    "haproxy_tcp",
];
const CONFIG_FIELDS: &[(&str, bool)] = &[
    ("id", false),
    ("description", false),
    ("small_msgs_per_s", true),
    ("large_mb_per_s", true),
    ("latency_p50_ms", true),
    ("latency_p99_ms", true),
    ("small_ratio_to_forwarding", false),
    ("large_ratio_to_forwarding", false),
    ("latency_p50_ratio_to_forwarding", false),
    ("inspector_counters", false),
];

fn check(v: &Value, at: &str, summary: bool, missing: &mut Vec<String>) {
    match v.pointer(at) {
        None | Some(Value::Null) => missing.push(at.to_string()),
        Some(x) if summary => {
            for k in SUMMARY {
                if x.get(k).is_none_or(Value::is_null) {
                    missing.push(format!("{at}/{k}"));
                }
            }
        }
        Some(_) => {}
    }
}

/// The element of the array at `at` whose `id` is `id`, as a pointer.
fn by_id(v: &Value, at: &str, id: &str) -> Option<String> {
    let i = v
        .pointer(at)?
        .as_array()?
        .iter()
        .position(|x| x["id"] == id)?;
    Some(format!("{at}/{i}"))
}

fn check_items(
    v: &Value,
    at: &str,
    ids: &[&str],
    fields: &[(&str, bool)],
    missing: &mut Vec<String>,
) {
    for id in ids {
        let Some(base) = by_id(v, at, id) else {
            missing.push(format!("{at}[id={id}]"));
            continue;
        };
        for (f, summary) in fields {
            check(v, &format!("{base}/{f}"), *summary, missing);
        }
    }
}

#[test]
fn quick_report_has_every_field() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs `cargo xtask bench --quick`, which needs root (namespaces, XDP, \
         BPF_PROG_TEST_RUN): run it with `cargo xtask test` as root, or sudo"
    );
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-report-test");
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "--quick"])
        .env("INSPECTOR_BENCH_DIR", &dir)
        .output()
        .expect("running xtask bench --quick");
    assert!(
        out.status.success(),
        "xtask bench --quick failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json written");
    let v: Value = serde_json::from_str(&text).expect("report.json is JSON");
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md written");
    assert!(md.contains("| case |") && md.contains("| configuration |"));

    let mut missing = Vec::new();
    for (at, summary) in FIELDS {
        check(&v, at, *summary, &mut missing);
    }
    check_items(&v, "/kernel/cases", CASE_IDS, CASE_FIELDS, &mut missing);
    for id in &CASE_IDS[1..] {
        let Some(base) = by_id(&v, "/kernel/cases", id) else {
            continue;
        };
        check(
            &v,
            &format!("{base}/{}", CASE_SMTP_FIELDS[0]),
            true,
            &mut missing,
        );
        check(
            &v,
            &format!("{base}/{}", CASE_SMTP_FIELDS[1]),
            false,
            &mut missing,
        );
    }
    if let Some(base) = by_id(&v, "/kernel/cases", "a") {
        for f in CASE_SMTP_FIELDS {
            if v.pointer(&format!("{base}/{f}")).is_none() {
                missing.push(format!("{base}/{f}"));
            }
        }
    }
    check_items(
        &v,
        "/kernel/in_order_fresh_flows",
        FRESH_IDS,
        FRESH_FIELDS,
        &mut missing,
    );
    check_items(
        &v,
        "/end_to_end/configs",
        CONFIG_IDS,
        CONFIG_FIELDS,
        &mut missing,
    );
    for m in v
        .pointer("/end_to_end/memory/maps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for k in [
            "pin",
            "type",
            "key_bytes",
            "value_bytes",
            "max_entries",
            "memlock_bytes",
        ] {
            if m.get(k).is_none_or(Value::is_null) {
                missing.push(format!("/end_to_end/memory/maps[{}]/{k}", m["pin"]));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "report.json lacks {} field(s): {missing:#?}",
        missing.len()
    );
}
