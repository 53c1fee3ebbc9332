//! The kernel cache: compiled images in memory and on disk.
//!
//! The key is the SHA-256 of (source, NVRTC version, options — which include the architecture).
//! Disk entries live in `$TPLA_KERNEL_CACHE_DIR`, else `$XDG_CACHE_HOME/tpla/kernels`, else
//! `~/.cache/tpla/kernels` (`TPLA_KERNEL_CACHE_DIR=off` disables the disk level). An entry is one
//! file `KEY.bin`: a magic line, a JSON header (kind, length, SHA-256 of the payload, ptxas
//! report) and the image. Entries are written to a temporary file and renamed, so readers never see
//! a partial file; an entry that fails any check is treated as absent and rewritten. Disk errors
//! never fail a compilation.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::nvrtc::{compile, nvrtc, Image, NvrtcError, PtxasReport};
use super::sha256::hex_digest;

const MAGIC: &[u8] = b"TPLA-KERNEL-CACHE 1\n";

/// A compiled kernel image and what ptxas said about it.
#[derive(Clone, Debug)]
pub struct CachedKernel {
    /// The cache key (hex SHA-256).
    pub key: String,
    /// CUBIN or PTX.
    pub image: Image,
    /// ptxas' resource report, when available.
    pub report: Option<PtxasReport>,
}

/// Where a lookup was served from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSource {
    /// This process had it.
    Memory,
    /// Read from the disk cache.
    Disk,
    /// Compiled by NVRTC now.
    Compiled,
}

/// The result of [`KernelCache::get_or_compile`].
#[derive(Clone, Debug)]
pub struct Lookup {
    /// The kernel.
    pub kernel: Arc<CachedKernel>,
    /// Where it came from.
    pub source: CacheSource,
    /// Time spent in the lookup (hashing, reading, compiling).
    pub elapsed: Duration,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    key: String,
    kind: String,
    len: usize,
    sha256: String,
    report: Option<PtxasReport>,
}

/// Compiled kernels in memory and (optionally) on disk.
#[derive(Debug)]
pub struct KernelCache {
    dir: Option<PathBuf>,
    mem: Mutex<HashMap<String, Arc<CachedKernel>>>,
}

impl KernelCache {
    /// A cache using `dir` for its disk level (`None`: memory only).
    pub fn new(dir: Option<PathBuf>) -> KernelCache {
        KernelCache {
            dir,
            mem: Mutex::new(HashMap::new()),
        }
    }

    /// A cache at [`KernelCache::default_dir`].
    pub fn with_default_dir() -> KernelCache {
        KernelCache::new(KernelCache::default_dir())
    }

    /// `$TPLA_KERNEL_CACHE_DIR` (`off` for none), else `$XDG_CACHE_HOME/tpla/kernels`, else
    /// `$HOME/.cache/tpla/kernels`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("TPLA_KERNEL_CACHE_DIR") {
            let s = d.to_string_lossy();
            if s.is_empty() || s == "off" || s == "0" {
                return None;
            }
            return Some(PathBuf::from(d));
        }
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return Some(PathBuf::from(x).join("tpla").join("kernels"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache").join("tpla").join("kernels"))
    }

    /// The disk directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The key of a compilation: SHA-256 of source, NVRTC version and options.
    pub fn key(source: &str, options: &[String]) -> Result<String, NvrtcError> {
        let v = nvrtc()?.version;
        let mut material = Vec::with_capacity(source.len() + 256);
        material.extend_from_slice(source.as_bytes());
        material.extend_from_slice(format!("\0nvrtc {}.{}", v.0, v.1).as_bytes());
        for o in options {
            material.push(0);
            material.extend_from_slice(o.as_bytes());
        }
        Ok(hex_digest(&material))
    }

    /// The compiled kernel for `source` (symbol `name`) and `options`, from memory, disk, or a
    /// fresh NVRTC compilation (then stored in both).
    pub fn get_or_compile(
        &self,
        name: &str,
        source: &str,
        options: &[String],
    ) -> Result<Lookup, NvrtcError> {
        let t0 = Instant::now();
        let key = KernelCache::key(source, options)?;
        if let Some(k) = self.mem.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Lookup {
                kernel: k,
                source: CacheSource::Memory,
                elapsed: t0.elapsed(),
            });
        }
        if let Some(k) = self.read_disk(&key) {
            let k = Arc::new(k);
            if let Ok(mut m) = self.mem.lock() {
                m.insert(key, k.clone());
            }
            return Ok(Lookup {
                kernel: k,
                source: CacheSource::Disk,
                elapsed: t0.elapsed(),
            });
        }
        let c = compile(name, source, options)?;
        let k = Arc::new(CachedKernel {
            key: key.clone(),
            image: c.image,
            report: c.report,
        });
        self.write_disk(&k);
        if let Ok(mut m) = self.mem.lock() {
            m.insert(key, k.clone());
        }
        Ok(Lookup {
            kernel: k,
            source: CacheSource::Compiled,
            elapsed: t0.elapsed(),
        })
    }

    fn entry_path(&self, key: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{key}.bin")))
    }

    /// Reads and verifies an entry; anything wrong makes it absent.
    fn read_disk(&self, key: &str) -> Option<CachedKernel> {
        let bytes = std::fs::read(self.entry_path(key)?).ok()?;
        let rest = bytes.strip_prefix(MAGIC)?;
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let header: Header = serde_json::from_slice(&rest[..nl]).ok()?;
        let payload = &rest[nl + 1..];
        if header.key != key || header.len != payload.len() || hex_digest(payload) != header.sha256
        {
            return None;
        }
        let image = match header.kind.as_str() {
            "cubin" => Image::Cubin(payload.to_vec()),
            "ptx" => Image::Ptx(String::from_utf8(payload.to_vec()).ok()?),
            _ => return None,
        };
        Some(CachedKernel {
            key: key.to_string(),
            image,
            report: header.report,
        })
    }

    /// Writes an entry atomically (temporary file + rename); failures are ignored.
    fn write_disk(&self, k: &CachedKernel) {
        let (Some(dir), Some(path)) = (self.dir.as_ref(), self.entry_path(&k.key)) else {
            return;
        };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let (kind, payload): (&str, &[u8]) = match &k.image {
            Image::Cubin(b) => ("cubin", b),
            Image::Ptx(s) => ("ptx", s.as_bytes()),
        };
        let header = Header {
            key: k.key.clone(),
            kind: kind.into(),
            len: payload.len(),
            sha256: hex_digest(payload),
            report: k.report.clone(),
        };
        let Ok(json) = serde_json::to_vec(&header) else {
            return;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(".{}.{}.{nanos}.tmp", k.key, std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.write_all(payload)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if write().is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
