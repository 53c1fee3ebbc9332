//! The tune database: the fastest config found per (kernel, shape bucket), one JSON file per
//! device identity (GPU name, compute capability, SM count, driver; or CPU arch and threads).
//!
//! Files live under `$TPLA_TUNE_DIR`, else `$XDG_CACHE_HOME/tpla/tune`, else
//! `~/.cache/tpla/tune`. Saves are atomic (write a temporary file, then rename). A file that does
//! not parse is reported, moved aside to `NAME.corrupt`, and the database starts empty: a broken
//! tune file never stops a decode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tpla_codegen::Config;

use crate::RuntimeError;

/// Format version written into every file.
pub const TUNE_FORMAT: u32 = 1;

/// One tuned entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    /// The winning config (tune values and shape constants).
    pub config: BTreeMap<String, i64>,
    /// Its median time in microseconds when it was measured.
    pub time_us: f64,
    /// When (YYYY-MM-DD).
    pub date: String,
}

#[derive(Serialize, Deserialize)]
struct TuneFile {
    format: u32,
    device: String,
    entries: BTreeMap<String, TuneEntry>,
}

/// Why an existing tune file was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tune file {path} is unusable ({why}); moved aside to {moved_to} and starting empty")]
pub struct CorruptTuneFile {
    /// The file.
    pub path: String,
    /// The parse error.
    pub why: String,
    /// Where it was moved.
    pub moved_to: String,
}

/// The tuned configs of one device.
#[derive(Clone, Debug)]
pub struct TuneDb {
    path: PathBuf,
    device: String,
    entries: BTreeMap<String, TuneEntry>,
}

/// The default directory of tune files.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TPLA_TUNE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tpla").join("tune")
}

/// A file name for a device identity: letters, digits, `-`, `_` and `.` only.
pub fn file_name(device: &str) -> String {
    let mut s: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(120);
    format!("{s}.json")
}

/// The shape bucket a decode call falls in: heads and latent width exactly, batch and length
/// rounded to the nearest power of two (so a 32K context stays in one bucket while decoding
/// grows it by a few tokens).
pub fn decode_bucket(batch: usize, heads: usize, lat: usize, rope: usize, len: usize) -> String {
    format!(
        "H{heads}-lat{lat}+{rope}-B{}-L{}",
        nearest_pow2(batch),
        nearest_pow2(len)
    )
}

fn nearest_pow2(n: usize) -> usize {
    let up = n.max(1).next_power_of_two();
    let down = up / 2;
    if down > 0 && n - down < up - n {
        down
    } else {
        up
    }
}

impl TuneDb {
    /// Opens (or starts) the database of `device` in `dir`. A corrupt file is moved aside and
    /// reported in the second value.
    pub fn open(dir: &Path, device: &str) -> (TuneDb, Option<CorruptTuneFile>) {
        let path = dir.join(file_name(device));
        let mut db = TuneDb {
            path: path.clone(),
            device: device.to_string(),
            entries: BTreeMap::new(),
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return (db, None);
        };
        let parsed: Result<TuneFile, String> = serde_json::from_str::<TuneFile>(&text)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                if f.format != TUNE_FORMAT {
                    Err(format!("format {} (expected {TUNE_FORMAT})", f.format))
                } else if f.device != device {
                    Err(format!("written for device `{}`", f.device))
                } else {
                    Ok(f)
                }
            });
        match parsed {
            Ok(f) => {
                db.entries = f.entries;
                (db, None)
            }
            Err(why) => {
                let moved = path.with_extension("json.corrupt");
                let moved_to = match std::fs::rename(&path, &moved) {
                    Ok(()) => moved.display().to_string(),
                    Err(e) => format!("(not moved: {e})"),
                };
                (
                    db,
                    Some(CorruptTuneFile {
                        path: path.display().to_string(),
                        why,
                        moved_to,
                    }),
                )
            }
        }
    }

    /// The file backing this database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tuned config of `kernel` for `bucket`, if any.
    pub fn get(&self, kernel: &str, bucket: &str) -> Option<Config> {
        self.entries.get(&format!("{kernel}/{bucket}")).map(|e| {
            let mut c = Config::new();
            for (k, v) in &e.config {
                c.set(k, *v);
            }
            c
        })
    }

    /// The stored entry.
    pub fn entry(&self, kernel: &str, bucket: &str) -> Option<&TuneEntry> {
        self.entries.get(&format!("{kernel}/{bucket}"))
    }

    /// Records `config` as the best for (`kernel`, `bucket`).
    pub fn put(&mut self, kernel: &str, bucket: &str, config: &Config, time_us: f64, date: &str) {
        let config = config.iter().map(|(k, v)| (k.to_string(), v)).collect();
        self.entries.insert(
            format!("{kernel}/{bucket}"),
            TuneEntry {
                config,
                time_us,
                date: date.to_string(),
            },
        );
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the database atomically (temporary file in the same directory, then rename).
    pub fn save(&self) -> Result<(), RuntimeError> {
        let io = |e: std::io::Error| {
            RuntimeError::InvalidInput(format!("writing tune file {}: {e}", self.path.display()))
        };
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = TuneFile {
            format: TUNE_FORMAT,
            device: self.device.clone(),
            entries: self.entries.clone(),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
        let tmp = self
            .path
            .with_extension(format!("json.tmp{}", std::process::id()));
        std::fs::write(&tmp, text + "\n").map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tpla-tune-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_per_device() {
        let d = dir("rt");
        let (mut db, warn) = TuneDb::open(&d, "cuda NVIDIA H200 sm_90 132 SMs driver 13000");
        assert!(warn.is_none() && db.is_empty());
        let cfg = Config::new().with("BLOCK_H", 64).with("LAT", 512);
        db.put(
            "latent_decode",
            "H64-lat512+64-B32-L32768",
            &cfg,
            1234.5,
            "2026-11-26",
        );
        db.save().unwrap();
        let (db2, warn) = TuneDb::open(&d, "cuda NVIDIA H200 sm_90 132 SMs driver 13000");
        assert!(warn.is_none());
        assert_eq!(
            db2.get("latent_decode", "H64-lat512+64-B32-L32768"),
            Some(cfg)
        );
        let (other, _) = TuneDb::open(&d, "cpu x86_64 2 threads");
        assert!(other.is_empty(), "another device has its own file");
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "atomic save leaves no temporary file");
    }

    #[test]
    fn corrupt_file_is_reported_moved_aside_and_rebuilt() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        let dev = "cpu x86_64 2 threads";
        std::fs::write(d.join(file_name(dev)), "{ this is not json").unwrap();
        let (mut db, warn) = TuneDb::open(&d, dev);
        let w = warn.expect("reported");
        assert!(w.to_string().contains("unusable"), "{w}");
        assert!(db.is_empty());
        assert!(d.join(format!("{}.corrupt", file_name(dev))).exists());
        db.put("k", "b", &Config::new().with("X", 1), 1.0, "2026-11-26");
        db.save().unwrap();
        assert_eq!(TuneDb::open(&d, dev).0.len(), 1, "rebuilt");
    }

    #[test]
    fn file_for_another_device_is_not_trusted() {
        let d = dir("other");
        let (mut db, _) = TuneDb::open(&d, "gpu A");
        db.put("k", "b", &Config::new().with("X", 1), 1.0, "d");
        db.save().unwrap();
        std::fs::rename(d.join(file_name("gpu A")), d.join(file_name("gpu B"))).unwrap();
        let (db, warn) = TuneDb::open(&d, "gpu B");
        assert!(warn.is_some() && db.is_empty());
    }

    #[test]
    fn buckets_round_up() {
        assert_eq!(
            decode_bucket(100, 64, 256, 64, 30000),
            "H64-lat256+64-B128-L32768"
        );
    }
}
