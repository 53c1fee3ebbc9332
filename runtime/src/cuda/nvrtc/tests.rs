//! Tests of the NVRTC loader (`nvrtc.rs`).

use super::*;

#[test]
fn parses_the_ptxas_report() {
    let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'tpla_k' for 'sm_90a'\n\
ptxas info    : Function properties for tpla_k\n\
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 168 registers, used 1 barriers, 1024 bytes smem, 380 bytes cmem[0]\n\
ptxas info    : Compile time = 8.587 ms\n";
    let r = parse_ptxas_report(log);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0],
        PtxasReport {
            function: "tpla_k".into(),
            registers: 168,
            stack_frame_bytes: 8,
            spill_store_bytes: 4,
            spill_load_bytes: 12,
            static_shared_bytes: 1024,
        }
    );
    assert!(!r[0].spill_free());
}
