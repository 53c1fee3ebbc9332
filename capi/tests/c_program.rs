//! Compiles the C programs against `include/tpla.h` and the `libtpla_capi` cargo built for this
//! test (the crate's cdylib, made with its rlib before any test of the crate runs), then runs
//! them on the CPU backend: `tests/c/test_decode.c` (engine-style decode, append, combine
//! against a naive C reference, and the error paths) and `examples/c/decode.c`. Without a C
//! compiler (`$CC` or `cc`) the tests skip with a notice; `TPLA_REQUIRE_CC=1` makes that a
//! failure. On a machine with a CUDA device the test program's GPU variant and `decode cuda`
//! run too (`TPLA_REQUIRE_GPU=1` makes their absence a failure).

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};
use std::process::Command;

fn compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let works = Command::new(&cc)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(cc);
    }
    assert!(
        std::env::var_os("TPLA_REQUIRE_CC").is_none(),
        "TPLA_REQUIRE_CC is set but no C compiler `{cc}` runs"
    );
    eprintln!("SKIP: no C compiler (`{cc}`, or set $CC): the C ABI programs are not compiled");
    None
}

/// The shared library cargo built next to this test (`target/<profile>/deps/`, or its parent).
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let name = format!("{DLL_PREFIX}tpla_capi{DLL_SUFFIX}");
    let deps = exe.parent().expect("the test's folder");
    [deps, deps.parent().unwrap_or(deps)]
        .iter()
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found next to {}", exe.display()))
}

/// A compiled C program in a temporary folder.
struct Program {
    exe: PathBuf,
    _dir: tempfile::TempDir,
}

/// Compiles `source` (warnings are errors) against the header and the library; panics with the
/// compiler's output when that fails.
fn compile(cc: &str, source: &Path) -> Program {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = library();
    let lib_dir = lib.parent().expect("the library's folder");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let exe = dir.path().join(source.file_stem().expect("a file name"));
    let built = Command::new(cc)
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(source)
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-lm")
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("running the C compiler");
    assert!(
        built.status.success(),
        "compiling {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    Program { exe, _dir: dir }
}

impl Program {
    /// Runs the program with `args` and returns its stdout; panics with its output when it
    /// fails.
    fn run(&self, args: &[&str]) -> String {
        let ran = Command::new(&self.exe)
            .args(args)
            .output()
            .expect("running the C program");
        let stdout = String::from_utf8_lossy(&ran.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&ran.stderr);
        println!("{stdout}{stderr}");
        assert!(
            ran.status.success(),
            "{} {args:?} exited with {:?}:\n{stdout}\n{stderr}",
            self.exe.display(),
            ran.status
        );
        stdout
    }
}

#[test]
fn c_test_program_passes_on_the_cpu_backend() {
    let Some(cc) = compiler() else { return };
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/test_decode.c");
    let stdout = compile(&cc, &source).run(&[]);
    // The program counts its checks; a run that checked nothing is no pass.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("test_decode:"))
        .expect("the summary line");
    assert!(
        line.ends_with(" 0 failed") && !line.contains(": 0 passed"),
        "{line}"
    );
}

#[test]
fn c_example_runs_on_the_cpu_backend() {
    let Some(cc) = compiler() else { return };
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/c/decode.c");
    let program = compile(&cc, &source);
    let stdout = program.run(&[]);
    assert!(
        stdout.starts_with("cpu: ") && stdout.contains("lse"),
        "{stdout}"
    );
    if tpla_capi::tpla_cuda_available() == 1 {
        let stdout = program.run(&["cuda"]);
        assert!(stdout.starts_with("cuda: "), "{stdout}");
    } else {
        assert!(
            std::env::var("TPLA_REQUIRE_GPU").as_deref() != Ok("1"),
            "TPLA_REQUIRE_GPU=1 but no CUDA device"
        );
        eprintln!("SKIP: no CUDA device, `decode cuda` did not run");
    }
}
