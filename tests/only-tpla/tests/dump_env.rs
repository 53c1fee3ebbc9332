//! `TPLA_DUMP` naming no stage is a typed error at compile time, not silently ignored. Its own
//! test binary: it sets the variable for the whole process.

use tpla::codegen::{IrError, KernelDef};
use tpla::runtime::{CpuExecutor, HostTensor, RuntimeError};
use tpla_only_tpla::affine_rows;

#[test]
fn bogus_tpla_dump_is_rejected_listing_the_stages() {
    // This binary has one test, so no other thread reads the environment meanwhile.
    std::env::set_var("TPLA_DUMP", "ir,bogus");
    let x = HostTensor::from_vec(&[1, 2], vec![1.0, 2.0]).unwrap();
    let mut y = HostTensor::<f32>::full(&[1, 2], f32::NAN);
    let exec = CpuExecutor::new(1).unwrap();
    let config = affine_rows.default_config(&[("W", 2)]).unwrap();
    let e = affine_rows::launch(&exec, &config, &x, &mut y, 2.0).unwrap_err();
    assert!(
        matches!(&e, RuntimeError::Ir(IrError::BadDump { item, .. }) if item == "bogus"),
        "{e}"
    );
    assert!(e.to_string().contains("ir, clif, cuda, all"), "{e}");
    assert!(y.data().iter().all(|v| v.is_nan()), "nothing was written");
}
