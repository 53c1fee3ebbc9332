//! `if` on constants in a kernel body (decided when the kernel is built) and shape constants with
//! a default (`constants(MODE = 1)`): each branch runs for its config, and a config without the
//! constant builds with the default.

use tpla_codegen::KernelDef;
use tpla_macros::kernel;
use tpla_runtime::{CpuExecutor, HostTensor};

#[kernel(crate = tpla_kernels, grid = (batch), constants(D, MODE = 1))]
pub fn by_mode<#[tune(16)] const BH: usize>(
    x: Tensor<f32, dims![batch, heads, D]>,
    y: TensorMut<f32, dims![batch, heads, D]>,
) {
    let b = program_id(0);
    let mut t = load(x.tile([b, 0..BH, ..]));
    if MODE == 1 {
        t = t * 2.0;
    } else if MODE == 2 && D > 1 {
        t = t * 3.0;
    } else {
        t = t * 4.0;
    }
    store(y.tile([b, 0..BH, ..]), t);
}

#[test]
fn each_branch_runs_for_its_config_and_the_default_is_mode_1() {
    let exec = CpuExecutor::new(1).unwrap();
    let x = HostTensor::from_vec(&[2, 3, 4], (0..24).map(|i| i as f32 + 1.0).collect()).unwrap();
    assert_eq!(by_mode.constant_defaults(), &[("MODE", 1)]);
    for (mode, factor) in [(None, 2.0), (Some(1), 2.0), (Some(2), 3.0), (Some(7), 4.0)] {
        let mut consts = vec![("D", 4)];
        consts.extend(mode.map(|m| ("MODE", m)));
        let cfg = by_mode.default_config(&consts).unwrap();
        assert_eq!(
            cfg.try_get("MODE"),
            mode,
            "a default stays out of the config"
        );
        let mut y = HostTensor::<f32>::full(&[2, 3, 4], f32::NAN);
        by_mode::launch(&exec, &cfg, &x, &mut y).unwrap();
        let want: Vec<f32> = x.data().iter().map(|v| v * factor).collect();
        assert_eq!(y.data(), &want[..], "MODE {mode:?}");
    }
    let bad = by_mode.default_config(&[("D", 4), ("MODE", 0)]).unwrap();
    assert!(
        by_mode.build(&bad).is_err(),
        "a constant set to 0 is still refused"
    );
}
