//! The kernel of this crate, run on the CPU backend against values worked out by hand.

use tpla::codegen::KernelDef;
use tpla::runtime::{CpuExecutor, HostTensor};
use tpla_only_tpla::affine_rows;

#[test]
fn affine_rows_runs_on_the_cpu_through_tpla_alone() {
    // 3 rows of width 2 with BLOCK = 2: the second program covers row 2 and a masked row 3.
    let x = HostTensor::from_vec(&[3, 2], vec![0.0, 1.0, -2.0, 0.5, 3.0, -1.0]).unwrap();
    let mut y = HostTensor::<f32>::full(&[3, 2], f32::NAN);
    let exec = CpuExecutor::new(1).unwrap();
    let config = affine_rows.default_config(&[("W", 2)]).unwrap();
    affine_rows::launch(&exec, &config, &x, &mut y, 2.0).unwrap();
    // y = 2x + 1
    assert_eq!(y.data(), &[1.0, 3.0, -3.0, 2.0, 7.0, -1.0]);
}
