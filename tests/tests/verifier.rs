//! The verifier is part of the suite: every program must load on this
//! kernel, with a margin below the verifier's limit of one million processed
//! instructions, so that growth is caught here before a kernel with a
//! tighter verifier refuses the program. Two objects: the one `inspector`
//! embeds, which must hold the production programs and not the benchmark
//! baselines, and the one `cargo xtask bench` loads (built with the eBPF
//! crate's `bench` feature; `cargo xtask test` builds it and passes its path
//! in `INSPECTOR_BENCH_OBJ`).

use aya::{
    programs::{SchedClassifier, Xdp},
    EbpfLoader,
};
use inspector_userspace::loader::{EBPF_OBJECT, TC_EGRESS_PROGRAM, TC_PROGRAM, XDP_PROGRAM};
use object::{Object, ObjectSymbol};

/// Half the verifier's budget.
const BUDGET: u32 = 500_000;

const PRODUCTION: [&str; 3] = [XDP_PROGRAM, TC_PROGRAM, TC_EGRESS_PROGRAM];
const BENCH: [&str; 3] = ["bench_pass", "bench_parse", "bench_track"];

/// Loads (verifies) the programs `names` of `object`, each within budget.
fn load_within_budget(object: &[u8], names: &[&str]) {
    let mut ebpf = EbpfLoader::new().load(object).expect("parsing the object");
    for &name in names {
        let prog = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("program {name} missing"));
        let info = if name == TC_PROGRAM || name == TC_EGRESS_PROGRAM {
            let p: &mut SchedClassifier = prog.try_into().unwrap();
            p.load().unwrap_or_else(|e| {
                panic!("{}", inspector_userspace::loader::verifier_error(name, e))
            });
            p.info().unwrap()
        } else {
            let p: &mut Xdp = prog.try_into().unwrap();
            p.load().unwrap_or_else(|e| {
                panic!("{}", inspector_userspace::loader::verifier_error(name, e))
            });
            p.info().unwrap()
        };
        let n = info
            .verified_instruction_count()
            .expect("the kernel reports the verified instruction count");
        println!("{name}: {n} instructions processed by the verifier");
        assert!(
            n < BUDGET,
            "{name}: the verifier processed {n} instructions, over the budget of {BUDGET}"
        );
    }
}

/// The names of the function symbols of an object.
fn functions(object: &[u8]) -> Vec<String> {
    let file = object::File::parse(object).expect("the object is an ELF file");
    file.symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text)
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect()
}

#[test]
fn every_program_loads_within_budget() {
    load_within_budget(EBPF_OBJECT, &PRODUCTION);
}

#[test]
fn the_embedded_object_has_no_bench_programs() {
    let names = functions(EBPF_OBJECT);
    for p in PRODUCTION {
        assert!(names.iter().any(|n| n == p), "{p} missing from {names:?}");
    }
    for b in BENCH {
        assert!(
            !names.iter().any(|n| n == b),
            "{b} is in the object `inspector` embeds"
        );
    }
}

/// The object built with the `bench` feature: `$INSPECTOR_BENCH_OBJ`, else
/// where `cargo xtask test` builds it.
fn bench_object() -> Vec<u8> {
    let path = std::env::var_os("INSPECTOR_BENCH_OBJ")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            inspector_tests::workspace_root()
                .join("target/ebpf-bench/bpfel-unknown-none/release/inspector")
        });
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading the eBPF object built with --features bench at {}: {e}; `cargo xtask \
             test` builds it, or point INSPECTOR_BENCH_OBJ at it",
            path.display()
        )
    })
}

#[test]
fn the_bench_object_loads_within_budget() {
    let object = bench_object();
    let every: Vec<&str> = PRODUCTION.iter().chain(&BENCH).copied().collect();
    load_within_budget(&object, &every);
}
