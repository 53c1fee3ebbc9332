//! `include/tpla.h` is what cbindgen generates from this crate; `TPLA_BLESS=1` rewrites it.

use std::path::PathBuf;

#[test]
fn include_tpla_h_matches_the_crate() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut want = Vec::new();
    // The sources alone (no `cargo metadata`): every module of the crate.
    let mut builder = cbindgen::Builder::new().with_config(config);
    for file in ["lib.rs", "status.rs", "api.rs", "cuda_mem.rs"] {
        builder = builder.with_src(dir.join("src").join(file));
    }
    builder
        .generate()
        .expect("cbindgen parses the crate")
        .write(&mut want);
    let path = dir.join("include/tpla.h");
    if std::env::var_os("TPLA_BLESS").is_some() {
        let tmp = path.with_extension("h.tmp");
        std::fs::write(&tmp, &want).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        return;
    }
    let have = std::fs::read(&path).unwrap_or_default();
    assert!(
        have == want,
        "capi/include/tpla.h differs from what cbindgen generates; regenerate it with \
         `TPLA_BLESS=1 cargo test -p tpla-capi --test header`"
    );
}
