//! Invalid kernels are compile errors at the author's span (checked-in .stderr files).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
