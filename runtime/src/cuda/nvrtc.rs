//! NVRTC: locating libnvrtc without panicking, compiling generated CUDA C++ to a CUBIN for the
//! exact device (PTX as fallback), and reading ptxas' resource report.
//!
//! # Finding the library
//!
//! cudarc's dynamic loading searches library *names* on the loader's path and panics when none
//! loads. We therefore first look for the file ourselves, in this order:
//!
//! 1. `$TPLA_NVRTC_LIB`: a path to `libnvrtc.so.13` (or to the directory holding it);
//! 2. every directory of `$LD_LIBRARY_PATH`;
//! 3. `/usr/local/cuda/lib64`, `/usr/local/cuda/targets/x86_64-linux/lib`,
//!    `/usr/local/cuda-13.0/lib64`.
//!
//! The file found is opened with `RTLD_GLOBAL` (after its `libnvrtc-builtins.so.13.*` sibling,
//! which NVRTC itself opens by name at compile time). Later `dlopen("libnvrtc.so.13")` calls, by
//! cudarc or by NVRTC, then resolve to the already loaded object through its soname, so neither
//! `LD_LIBRARY_PATH` nor a system install is required. Only then are cudarc's bindings called, and
//! every call is wrapped in `catch_unwind`: a missing library or symbol is a typed
//! [`NvrtcError`], never a panic.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cudarc::nvrtc::sys;

use super::sha256::hex_digest;

/// The CUDA major version the cudarc bindings were generated for (feature `cuda-13000`).
pub const NVRTC_MAJOR: u32 = 13;

/// Errors from locating or running NVRTC.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NvrtcError {
    /// No usable libnvrtc was found.
    #[error(
        "libnvrtc.so.{NVRTC_MAJOR} not found (searched: {}); set TPLA_NVRTC_LIB=/path/to/libnvrtc.so.{NVRTC_MAJOR} \
         or add its directory (e.g. /usr/local/cuda/lib64, or nvidia/cu13/lib of the pip wheel \
         nvidia-cuda-nvrtc) to LD_LIBRARY_PATH",
        searched.join(", ")
    )]
    NotFound {
        /// Every place looked at.
        searched: Vec<String>,
    },
    /// A libnvrtc file exists but could not be loaded or lacks a symbol.
    #[error("libnvrtc at {path} could not be used: {reason}")]
    Load {
        /// The file.
        path: String,
        /// The loader's message.
        reason: String,
    },
    /// An NVRTC API call failed outside compilation proper.
    #[error("NVRTC {call} failed: {message}")]
    Api {
        /// The function.
        call: &'static str,
        /// NVRTC's error string.
        message: String,
    },
    /// The generated source did not compile. The source was saved for inspection.
    #[error(
        "NVRTC could not compile kernel `{kernel}` for {arch}; source saved to {}:\n{log}",
        source_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<not saved>".into())
    )]
    Compile {
        /// The kernel's symbol.
        kernel: String,
        /// The target architecture.
        arch: String,
        /// NVRTC's program log.
        log: String,
        /// Where the failing source was written (`$TMPDIR/tpla-failed/NAME-HASH.cu`).
        source_path: Option<PathBuf>,
    },
}

/// The loaded NVRTC library.
#[derive(Debug, Clone)]
pub struct NvrtcLib {
    /// The file opened by path, or `None` when cudarc found it on the default loader path.
    pub path: Option<PathBuf>,
    /// `nvrtcVersion()`.
    pub version: (i32, i32),
}

static LIB: OnceLock<Result<NvrtcLib, NvrtcError>> = OnceLock::new();

/// Loads libnvrtc once per process (see the module docs); later calls return the same result.
pub fn nvrtc() -> Result<&'static NvrtcLib, NvrtcError> {
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn candidates() -> (Vec<PathBuf>, bool) {
    let name = format!("libnvrtc.so.{NVRTC_MAJOR}");
    let mut out = Vec::new();
    let mut explicit = false;
    if let Some(p) = std::env::var_os("TPLA_NVRTC_LIB").filter(|p| !p.is_empty()) {
        explicit = true;
        let p = PathBuf::from(p);
        if p.is_dir() {
            out.push(p.join(&name));
        } else {
            out.push(p);
        }
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/cuda-13.0/lib64",
    ] {
        dirs.push(PathBuf::from(d));
    }
    for d in dirs {
        out.push(d.join(&name));
    }
    (out, explicit)
}

#[cfg(unix)]
fn open_global(path: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading NVRTC runs its (trusted, vendor) initialisers; the handle is leaked on
    // purpose so the library stays mapped for the life of the process, as cudarc's statics expect.
    let lib =
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| e.to_string())?;
    std::mem::forget(lib);
    Ok(())
}

#[cfg(not(unix))]
fn open_global(_path: &Path) -> Result<(), String> {
    Err("loading by path is only supported on Unix; put libnvrtc on the loader path".into())
}

/// Opens `libnvrtc-builtins.so.13.*` next to `lib` (NVRTC opens it by name when compiling).
fn preload_builtins(lib: &Path) {
    let Some(dir) = lib.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("libnvrtc-builtins.so.{NVRTC_MAJOR}");
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    found.sort();
    for p in found {
        let _ = open_global(&p);
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "panic".into()
    }
}

fn load() -> Result<NvrtcLib, NvrtcError> {
    let (cands, explicit) = candidates();
    let mut searched = Vec::new();
    let mut opened = None;
    if explicit {
        // An explicit choice must work as given.
        let c = &cands[0];
        if !c.is_file() {
            return Err(NvrtcError::Load {
                path: c.display().to_string(),
                reason: "TPLA_NVRTC_LIB does not name an existing file".into(),
            });
        }
        preload_builtins(c);
        open_global(c).map_err(|reason| NvrtcError::Load {
            path: c.display().to_string(),
            reason,
        })?;
        opened = Some(c.clone());
    } else {
        for c in &cands {
            searched.push(c.display().to_string());
            if c.is_file() {
                preload_builtins(c);
                if open_global(c).is_ok() {
                    opened = Some(c.clone());
                    break;
                }
            }
        }
    }
    // cudarc looks the library up by name; with ours already loaded its soname resolves to it.
    // SAFETY: `is_culib_present` only tries `dlopen` on candidate names.
    let present = std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        searched.push("the default loader path".into());
        return Err(NvrtcError::NotFound { searched });
    }
    let (major, minor);
    // SAFETY: both out-pointers are valid for the call; a missing symbol panics inside cudarc,
    // which `catch_unwind` turns into an error.
    let r = std::panic::catch_unwind(move || {
        let (mut a, mut b) = (0i32, 0i32);
        let r = unsafe { sys::nvrtcVersion(&mut a, &mut b) };
        (r, a, b)
    });
    match r {
        Ok((sys::nvrtcResult::NVRTC_SUCCESS, a, b)) => {
            major = a;
            minor = b;
        }
        Ok((e, _, _)) => {
            return Err(NvrtcError::Api {
                call: "nvrtcVersion",
                message: format!("{e:?}"),
            })
        }
        Err(p) => {
            return Err(NvrtcError::Load {
                path: opened
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "libnvrtc".into()),
                reason: panic_message(p),
            })
        }
    }
    Ok(NvrtcLib {
        path: opened,
        version: (major, minor),
    })
}

/// Resources of one compiled function, from ptxas' `-v` report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PtxasReport {
    /// The function.
    pub function: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of local-memory stack frame (a register array demoted to local memory shows here).
    pub stack_frame_bytes: u32,
    /// Bytes of register spill stores.
    pub spill_store_bytes: u32,
    /// Bytes of register spill loads.
    pub spill_load_bytes: u32,
    /// Bytes of static shared memory.
    pub static_shared_bytes: u32,
}

impl PtxasReport {
    /// True when nothing lives in local memory: no stack frame and no spills.
    pub fn spill_free(&self) -> bool {
        self.stack_frame_bytes == 0 && self.spill_store_bytes == 0 && self.spill_load_bytes == 0
    }
}

fn num_before(s: &str, unit: &str) -> Option<u32> {
    let i = s.find(unit)?;
    s[..i].split_whitespace().last()?.parse().ok()
}

/// Parses ptxas' verbose report (in the NVRTC program log): one entry per function.
pub fn parse_ptxas_report(log: &str) -> Vec<PtxasReport> {
    let mut out: Vec<PtxasReport> = Vec::new();
    for line in log.lines() {
        if let Some(i) = line.find("Function properties for ") {
            let name = line[i + "Function properties for ".len()..]
                .trim()
                .to_string();
            // Make this function's entry the current (last) one.
            let entry = match out.iter().position(|r| r.function == name) {
                Some(j) => out.remove(j),
                None => PtxasReport {
                    function: name,
                    ..Default::default()
                },
            };
            out.push(entry);
            continue;
        }
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + "Compiling entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or("").to_string();
            if !out.iter().any(|r| r.function == name) {
                out.push(PtxasReport {
                    function: name,
                    ..Default::default()
                });
            }
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            cur.stack_frame_bytes = num_before(line, "bytes stack frame").unwrap_or(0);
            cur.spill_store_bytes = num_before(line, "bytes spill stores").unwrap_or(0);
            cur.spill_load_bytes = num_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used ") && line.contains(" registers") {
            cur.registers = num_before(line, "registers").unwrap_or(0);
            if let Some(s) = num_before(line, "bytes smem") {
                cur.static_shared_bytes = s;
            }
        }
    }
    out
}

/// A compiled module image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// Device code for the exact architecture.
    Cubin(Vec<u8>),
    /// PTX, JIT-compiled by the driver at load time.
    Ptx(String),
}

impl Image {
    /// The bytes handed to `cuModuleLoadData` (PTX NUL-terminated).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Image::Cubin(b) => b.clone(),
            Image::Ptx(s) => {
                let mut v = s.as_bytes().to_vec();
                v.push(0);
                v
            }
        }
    }
}

/// The result of one NVRTC compilation.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// CUBIN, or PTX when no CUBIN was produced.
    pub image: Image,
    /// The program log (warnings and ptxas' report).
    pub log: String,
    /// ptxas' report for the kernel, when the log has one.
    pub report: Option<PtxasReport>,
    /// Wall time of `nvrtcCompileProgram` plus retrieval.
    pub compile_time: Duration,
}

/// The options tpla compiles with: the exact architecture, ptxas' resource report, C++17.
///
/// Front-end warnings are disabled: NVRTC 13.0 as shipped with the toolkit on the GPU hosts drops
/// the ptxas report from the program log of a translation unit that raised a front-end warning
/// (seen 2026-11-26 on an H200 host: "variable declared but never referenced" left no report),
/// and the report is how spills are checked.
pub fn default_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--ptxas-options=-v".into(),
        "--std=c++17".into(),
        "--disable-warnings".into(),
    ]
}

struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle came from a successful nvrtcCreateProgram and is destroyed once;
        // a panic inside cudarc cannot happen here because the library is already loaded.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            sys::nvrtcDestroyProgram(&mut self.0)
        }));
    }
}

fn err_string(r: sys::nvrtcResult) -> String {
    // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any result code.
    let s = std::panic::catch_unwind(|| unsafe {
        let p = sys::nvrtcGetErrorString(r);
        if p.is_null() {
            format!("{r:?}")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    });
    s.unwrap_or_else(|_| format!("{r:?}"))
}

fn check(call: &'static str, r: sys::nvrtcResult) -> Result<(), NvrtcError> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(NvrtcError::Api {
            call,
            message: err_string(r),
        })
    }
}

/// Writes a failing source to `$TMPDIR/tpla-failed/NAME-HASH.cu`.
pub fn save_failed_source(name: &str, source: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join("tpla-failed");
    std::fs::create_dir_all(&dir).ok()?;
    let hash = hex_digest(source.as_bytes());
    let path = dir.join(format!("{name}-{}.cu", &hash[..16]));
    std::fs::write(&path, source).ok()?;
    Some(path)
}

/// Serialises compilations. NVRTC 13.0 as installed on the GPU hosts returned an empty program
/// log (no ptxas report) for some of the programs compiled concurrently from four threads
/// (2026-11-26, H200 host; the pip wheel 13.0.88 did not), so one program compiles at a time.
static COMPILE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// ptxas reports seen in this process, by a hash of (source, options).
///
/// NVRTC 13.0 as installed on the GPU hosts returns an empty program log, without the ptxas
/// report, when a program identical to one it already compiled in the process is compiled again
/// (2026-11-26, H200 host: the 108 library kernels identical to 108 builder samples compiled
/// earlier in the same test process all came back without a report; the pip wheel 13.0.88 does
/// not do this). The same source and options give the same machine code, so the earlier report
/// stands for it.
fn remember_report(
    source: &str,
    options: &[String],
    report: Option<PtxasReport>,
) -> Option<PtxasReport> {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    static SEEN: std::sync::Mutex<Option<HashMap<u64, PtxasReport>>> = std::sync::Mutex::new(None);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    options.hash(&mut h);
    let key = h.finish();
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let map = seen.get_or_insert_with(HashMap::new);
    match report {
        Some(r) => {
            map.insert(key, r.clone());
            Some(r)
        }
        None => map.get(&key).cloned(),
    }
}

/// Compiles `source` (whose kernel symbol is `name`) with `options` (see [`default_options`]).
pub fn compile(name: &str, source: &str, options: &[String]) -> Result<Compiled, NvrtcError> {
    nvrtc()?;
    let _serial = COMPILE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let arch = options
        .iter()
        .find_map(|o| o.strip_prefix("--gpu-architecture="))
        .unwrap_or("?")
        .to_string();
    let to_c = |s: &str, what: &'static str| {
        CString::new(s).map_err(|_| NvrtcError::Api {
            call: what,
            message: "string contains a NUL byte".into(),
        })
    };
    let src_c = to_c(source, "nvrtcCreateProgram")?;
    let name_c = to_c(&format!("{name}.cu"), "nvrtcCreateProgram")?;
    let opts_c: Vec<CString> = options
        .iter()
        .map(|o| to_c(o, "nvrtcCompileProgram"))
        .collect::<Result<_, _>>()?;
    let run = || -> Result<Compiled, NvrtcError> {
        let t0 = Instant::now();
        let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; no headers are passed (count 0, null arrays).
        check("nvrtcCreateProgram", unsafe {
            sys::nvrtcCreateProgram(
                &mut prog,
                src_c.as_ptr(),
                name_c.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        })?;
        let prog = Program(prog);
        let ptrs: Vec<*const std::ffi::c_char> = opts_c.iter().map(|o| o.as_ptr()).collect();
        // SAFETY: `ptrs` holds `ptrs.len()` valid C strings that outlive the call.
        let compiled =
            unsafe { sys::nvrtcCompileProgram(prog.0, ptrs.len() as i32, ptrs.as_ptr()) };
        let log = program_log(&prog)?;
        if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
            let log = if log.trim().is_empty() {
                err_string(compiled)
            } else {
                log
            };
            return Err(NvrtcError::Compile {
                kernel: name.to_string(),
                arch: arch.clone(),
                log,
                source_path: save_failed_source(name, source),
            });
        }
        let mut size = 0usize;
        // SAFETY: `prog` compiled successfully; `size` is a valid out-pointer.
        let cubin_ok =
            unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) } == sys::nvrtcResult::NVRTC_SUCCESS;
        let image = if cubin_ok && size > 0 {
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` has exactly the size NVRTC reported.
            check("nvrtcGetCUBIN", unsafe {
                sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr() as *mut std::ffi::c_char)
            })?;
            Image::Cubin(buf)
        } else {
            let mut size = 0usize;
            // SAFETY: as above, for the PTX.
            check("nvrtcGetPTXSize", unsafe {
                sys::nvrtcGetPTXSize(prog.0, &mut size)
            })?;
            let mut buf = vec![0u8; size.max(1)];
            // SAFETY: `buf` has the reported size.
            check("nvrtcGetPTX", unsafe {
                sys::nvrtcGetPTX(prog.0, buf.as_mut_ptr() as *mut std::ffi::c_char)
            })?;
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            Image::Ptx(String::from_utf8_lossy(&buf[..end]).into_owned())
        };
        let reports = parse_ptxas_report(&log);
        let report = reports
            .iter()
            .find(|r| r.function == name)
            .or(reports.first())
            .cloned();
        let report = remember_report(source, options, report);
        Ok(Compiled {
            image,
            log,
            report,
            compile_time: t0.elapsed(),
        })
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(p) => Err(NvrtcError::Load {
            path: "libnvrtc".into(),
            reason: panic_message(p),
        }),
    }
}

fn program_log(prog: &Program) -> Result<String, NvrtcError> {
    let mut size = 0usize;
    // SAFETY: valid program handle and out-pointer.
    check("nvrtcGetProgramLogSize", unsafe {
        sys::nvrtcGetProgramLogSize(prog.0, &mut size)
    })?;
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: `buf` has the reported size.
    check("nvrtcGetProgramLog", unsafe {
        sys::nvrtcGetProgramLog(prog.0, buf.as_mut_ptr() as *mut std::ffi::c_char)
    })?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests;
