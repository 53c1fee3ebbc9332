//! `docs/dsl-ops.md` is what the op table generates; `TPLA_BLESS=1` rewrites it.

use std::path::PathBuf;

#[test]
fn docs_dsl_ops_md_matches_the_table() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dsl-ops.md");
    let want = tpla_optable::markdown();
    if std::env::var_os("TPLA_BLESS").is_some() {
        let tmp = path.with_extension("md.tmp");
        std::fs::write(&tmp, &want).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/dsl-ops.md differs from what the op table generates; regenerate it with `{}`",
        tpla_optable::REGENERATE
    );
}
