//! Shared by the NVRTC test files (`#[path]`-included): whether NVRTC is there to test with.

use tpla_runtime::cuda::nvrtc::nvrtc;

/// Returns false (after printing SKIP) when NVRTC is unavailable and not required.
pub fn nvrtc_or_skip(test: &str) -> bool {
    match nvrtc() {
        Ok(lib) => {
            println!(
                "{test}: NVRTC {}.{} from {}",
                lib.version.0,
                lib.version.1,
                lib.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the loader path".into())
            );
            true
        }
        Err(e) => {
            if std::env::var("TPLA_REQUIRE_NVRTC").as_deref() == Ok("1") {
                panic!("{test}: TPLA_REQUIRE_NVRTC=1 but NVRTC is unavailable: {e}");
            }
            tpla_runtime::cuda::device::skip_notice(&format!(
                "SKIP {test}: NVRTC unavailable ({e})"
            ));
            false
        }
    }
}
