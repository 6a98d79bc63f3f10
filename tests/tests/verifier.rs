//! The verifier is part of the suite: every program of the embedded object
//! must load on this kernel, with a margin below the verifier's limit of one
//! million processed instructions, so that growth is caught here before a
//! kernel with a tighter verifier refuses the program.

use aya::{
    programs::{SchedClassifier, Xdp},
    EbpfLoader,
};
use inspector_userspace::loader::EBPF_OBJECT;

/// Half the verifier's budget.
const BUDGET: u32 = 500_000;

#[test]
fn every_program_loads_within_budget() {
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .expect("parsing the embedded object");
    for name in ["inspector_xdp", "inspector_tc", "bench_pass", "bench_parse"] {
        let prog = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("program {name} missing"));
        let info = if name == "inspector_tc" {
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
