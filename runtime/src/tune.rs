//! The tune database: the fastest config found per (kernel, shape bucket), one JSON file per
//! device identity (GPU name, compute capability, SM count, driver; or CPU arch and threads).
//!
//! Files live under `$TPLA_TUNE_DIR`, else `$XDG_CACHE_HOME/tpla/tune`, else
//! `~/.cache/tpla/tune`. Nothing in a tune file ever stops a decode:
//! - a file that does not parse (random bytes, truncated JSON), of another format version, for
//!   another device, or none of whose entries fits the current schedule space (a stale file) is
//!   reported once, moved aside to `NAME.json.corrupt`, and the database starts empty;
//! - an entry that does not fit the schedule space of its kernel (a tune parameter missing, a
//!   value that is not one of the candidates, an unknown parameter) is reported and dropped, and
//!   the file is rewritten without it.
//!
//! Format 2 stores, beside the kernel's `#[tune]` values and shape constants, the schedule knobs
//! `tpla tune` searches ([`tpla_codegen::schedule::SEARCHED_SETTINGS`]: producer warpgroup, TMA,
//! ...) and the split policy of the winner ([`SplitPolicy`]). Format 3 (this one) has the same
//! fields; what changed is the clock: on CUDA every `time_us` is the device's own time (events
//! behind a cache flush, as `tpla bench` times, since 266204e), where format 2's were the host
//! clock around a launch and a synchronisation, which adds more to short kernels than to long
//! ones, so a format-2 entry's time cannot be compared with a new one's. Files of formats 1 and 2
//! are moved aside like any other unusable file.
//!
//! Writers serialise on a lock file (`NAME.json.lock`); a save re-reads the file under the lock,
//! merges its own new entries over what is there and replaces the file atomically, so concurrent
//! `tpla tune` runs of different shapes keep each other's entries.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tpla_codegen::schedule::is_searched;
use tpla_codegen::{Config, KernelDef, TuneParam};

use crate::fsutil::write_atomic;
use crate::RuntimeError;

/// Format version written into every file.
pub const TUNE_FORMAT: u32 = 3;

/// How a tuned decode splits each sequence's tokens across programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitPolicy {
    /// The same number of splits for every sequence, chosen on the host for whole waves of
    /// resident programs (`tpla_kernels::ops::choose_splits`).
    Uniform,
    /// Pieces balanced over the sequences' lengths on the device
    /// (`tpla_kernels::ops::decode_attention_balanced`).
    Balanced,
}

impl std::fmt::Display for SplitPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SplitPolicy::Uniform => "uniform",
            SplitPolicy::Balanced => "balanced",
        })
    }
}

/// One tuned entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    /// The winning config (tune values and shape constants).
    pub config: BTreeMap<String, i64>,
    /// Its median time in microseconds when it was measured.
    pub time_us: f64,
    /// When (YYYY-MM-DD).
    pub date: String,
    /// The split policy it was timed with (absent: the caller's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_policy: Option<SplitPolicy>,
    /// The uniform split count `tpla tune` found fastest (only with [`SplitPolicy::Uniform`];
    /// absent: the occupancy rule's count). Older files have none and still load; older tpla
    /// versions ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<usize>,
}

/// The most uniform splits a stored entry may name (the occupancy rule's own cap).
pub const MAX_TUNED_SPLITS: usize = 64;

impl TuneEntry {
    /// Why the entry's split choice is unusable, if it is: a count outside
    /// `1..=`[`MAX_TUNED_SPLITS`], or a count stored with a policy other than uniform.
    fn check_splits(&self) -> Result<(), String> {
        match (self.splits, self.split_policy) {
            (None, _) => Ok(()),
            (Some(n), _) if n == 0 || n > MAX_TUNED_SPLITS => {
                Err(format!("splits={n} is outside 1..={MAX_TUNED_SPLITS}"))
            }
            (Some(_), Some(SplitPolicy::Uniform)) => Ok(()),
            (Some(n), p) => Err(format!(
                "splits={n} is stored with the {} split policy (only uniform splits have a count)",
                p.map(|p| p.to_string()).unwrap_or_else(|| "default".into())
            )),
        }
    }

    /// How the entry splits the tokens, for messages: `", uniform splits (8)"`,
    /// `", balanced splits"`, or nothing where the entry names no policy.
    pub fn split_description(&self) -> String {
        match (self.split_policy, self.splits) {
            (Some(p), Some(n)) => format!(", {p} splits ({n})"),
            (Some(p), None) => format!(", {p} splits"),
            (None, _) => String::new(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TuneFile {
    format: u32,
    device: String,
    entries: BTreeMap<String, TuneEntry>,
}

/// A problem with a tune file that was handled (never fatal): print it and go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TuneWarning {
    /// The whole file was unusable (does not parse, stale, another device) and was moved aside.
    #[error("tune file {path} is unusable ({why}); moved aside to {moved_to}, using defaults")]
    Unusable {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
        /// Where it was moved (or why it could not be).
        moved_to: String,
    },
    /// One entry did not fit its kernel's schedule space and was dropped.
    #[error("tune file {path}: entry `{key}` dropped ({why}); that shape uses the defaults")]
    Dropped {
        /// The file.
        path: String,
        /// The entry (`kernel/bucket`).
        key: String,
        /// Why it does not fit.
        why: String,
    },
    /// The file exists but could not be read or repaired (permissions, a failing disk...).
    #[error("tune file {path}: {why}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        why: String,
    },
}

/// The schedule space of one kernel: what a stored config must fit.
#[derive(Clone, Copy, Debug)]
struct Space {
    params: &'static [TuneParam],
    shape_constants: &'static [&'static str],
}

impl Space {
    fn of(def: &dyn KernelDef) -> Space {
        Space {
            params: def.tune_params(),
            shape_constants: def.shape_constants(),
        }
    }

    /// Why `config` does not fit this space, if it does not.
    fn check(&self, config: &BTreeMap<String, i64>) -> Result<(), String> {
        for t in self.params {
            match config.get(t.name) {
                None => return Err(format!("no value for tune parameter {}", t.name)),
                Some(v) if !t.candidates.contains(v) => {
                    return Err(format!(
                        "{}={v} is not one of the candidates {:?}",
                        t.name, t.candidates
                    ))
                }
                Some(_) => {}
            }
        }
        for (k, v) in config {
            if self.params.iter().any(|t| t.name == k) {
                continue;
            }
            match is_searched(k, *v) {
                Some(true) => continue,
                Some(false) => {
                    return Err(format!(
                        "schedule knob {k}={v} is not one of the searched values"
                    ))
                }
                None => {}
            }
            if !self.shape_constants.contains(&k.as_str()) {
                return Err(format!("unknown parameter {k}"));
            }
            if *v <= 0 {
                return Err(format!("shape constant {k}={v} is not positive"));
            }
        }
        Ok(())
    }
}

/// The tuned configs of one device.
#[derive(Clone, Debug)]
pub struct TuneDb {
    path: PathBuf,
    device: String,
    spaces: BTreeMap<String, Space>,
    entries: BTreeMap<String, TuneEntry>,
    /// Keys put by this process: a save writes these over whatever the file holds then.
    touched: BTreeSet<String>,
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

/// What reading a tune file found.
#[derive(Default)]
struct Loaded {
    /// Entries that fit (and those of kernels this process does not know, kept as they are).
    entries: BTreeMap<String, TuneEntry>,
    /// Entries that do not fit: (key, why).
    dropped: Vec<(String, String)>,
    /// Why the whole file is unusable.
    unusable: Option<String>,
    /// Why the file could not be read (it is left where it is).
    unreadable: Option<String>,
}

/// Reads and checks the file at `path` (a missing file is an empty database).
fn load(path: &Path, device: &str, spaces: &BTreeMap<String, Space>) -> Loaded {
    let mut out = Loaded::default();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.unreadable = Some(format!("cannot be read: {e}"));
            return out;
        }
    };
    let file = match serde_json::from_slice::<TuneFile>(&bytes) {
        Ok(f) => f,
        Err(e) => {
            out.unusable = Some(format!("not a tune file: {e}"));
            return out;
        }
    };
    if file.format != TUNE_FORMAT {
        out.unusable = Some(format!(
            "format {} (this tpla reads {TUNE_FORMAT})",
            file.format
        ));
        return out;
    }
    if file.device != device {
        out.unusable = Some(format!("written for device `{}`", file.device));
        return out;
    }
    for (key, entry) in file.entries {
        let kernel = key.split('/').next().unwrap_or_default();
        let fits = spaces.get(kernel).map(|s| s.check(&entry.config));
        match fits.unwrap_or(Ok(())).and_then(|()| entry.check_splits()) {
            Err(why) => out.dropped.push((key, why)),
            _ => {
                out.entries.insert(key, entry);
            }
        }
    }
    if out.entries.is_empty() && !out.dropped.is_empty() {
        let (key, why) = &out.dropped[0];
        out.unusable = Some(format!(
            "stale: none of its {} entries fits the current schedule space, e.g. `{key}`: {why}",
            out.dropped.len()
        ));
        out.dropped.clear();
    }
    out
}

/// Takes the exclusive lock of the database at `path` (held until the file is dropped).
fn lock(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("json.lock"))?;
    f.lock()?;
    Ok(f)
}

impl TuneDb {
    /// Opens (or starts) the database of `device` in `dir`, checking every entry against the
    /// schedule space of `kernels` (entries of other kernels are kept but never checked). What
    /// was wrong with the file (moved aside, entries dropped) comes back as warnings to print.
    pub fn open(
        dir: &Path,
        device: &str,
        kernels: &[&dyn KernelDef],
    ) -> (TuneDb, Vec<TuneWarning>) {
        let spaces: BTreeMap<String, Space> = kernels
            .iter()
            .map(|k| (k.name().to_string(), Space::of(*k)))
            .collect();
        let mut db = TuneDb {
            path: dir.join(file_name(device)),
            device: device.to_string(),
            spaces,
            entries: BTreeMap::new(),
            touched: BTreeSet::new(),
        };
        let mut loaded = load(&db.path, device, &db.spaces);
        let mut warnings = Vec::new();
        if loaded.unusable.is_some() || !loaded.dropped.is_empty() {
            // Repair under the lock, from a fresh read: a writer may have replaced the file.
            match lock(&db.path) {
                Ok(_guard) => {
                    loaded = load(&db.path, device, &db.spaces);
                    warnings = db.repair(&loaded);
                }
                Err(e) => {
                    let what = match &loaded.unusable {
                        Some(why) => format!("unusable ({why})"),
                        None => format!("{} entries do not fit", loaded.dropped.len()),
                    };
                    warnings.push(db.io_warning(format!("{what}; not repaired (lock: {e})")));
                }
            }
        }
        if let Some(why) = loaded.unreadable.take() {
            warnings.push(db.io_warning(format!("{why}; using defaults")));
        }
        db.entries = loaded.entries;
        (db, warnings)
    }

    fn io_warning(&self, why: String) -> TuneWarning {
        TuneWarning::Io {
            path: self.path.display().to_string(),
            why,
        }
    }

    /// Moves an unusable file aside or rewrites it without its dropped entries (lock held).
    fn repair(&self, loaded: &Loaded) -> Vec<TuneWarning> {
        let path = self.path.display().to_string();
        if let Some(why) = &loaded.unusable {
            let moved = self.path.with_extension("json.corrupt");
            let moved_to = match std::fs::rename(&self.path, &moved) {
                Ok(()) => moved.display().to_string(),
                Err(e) => format!("(not moved: {e})"),
            };
            return vec![TuneWarning::Unusable {
                path,
                why: why.clone(),
                moved_to,
            }];
        }
        let mut warnings: Vec<TuneWarning> = loaded
            .dropped
            .iter()
            .map(|(key, why)| TuneWarning::Dropped {
                path: path.clone(),
                key: key.clone(),
                why: why.clone(),
            })
            .collect();
        if !loaded.dropped.is_empty() {
            if let Err(e) = self.write(&loaded.entries) {
                warnings.push(self.io_warning(format!("not rewritten: {e}")));
            }
        }
        warnings
    }

    fn write(&self, entries: &BTreeMap<String, TuneEntry>) -> Result<(), RuntimeError> {
        let file = TuneFile {
            format: TUNE_FORMAT,
            device: self.device.clone(),
            entries: entries.clone(),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
        write_atomic(&self.path, (text + "\n").as_bytes()).map_err(|e| {
            RuntimeError::InvalidInput(format!("writing tune file {}: {e}", self.path.display()))
        })
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

    /// The split policy stored with the tuned config of `kernel` for `bucket`, if any.
    pub fn split_policy(&self, kernel: &str, bucket: &str) -> Option<SplitPolicy> {
        self.entry(kernel, bucket).and_then(|e| e.split_policy)
    }

    /// The uniform split count stored with the tuned config of `kernel` for `bucket`, if any.
    pub fn uniform_splits(&self, kernel: &str, bucket: &str) -> Option<usize> {
        self.entry(kernel, bucket).and_then(|e| e.splits)
    }

    /// Records `config` as the best for (`kernel`, `bucket`).
    pub fn put(&mut self, kernel: &str, bucket: &str, config: &Config, time_us: f64, date: &str) {
        self.put_with_policy(kernel, bucket, config, None, time_us, date)
    }

    /// Records `config`, timed with `policy`, as the best for (`kernel`, `bucket`).
    pub fn put_with_policy(
        &mut self,
        kernel: &str,
        bucket: &str,
        config: &Config,
        policy: Option<SplitPolicy>,
        time_us: f64,
        date: &str,
    ) {
        let config = config.iter().map(|(k, v)| (k.to_string(), v)).collect();
        let key = format!("{kernel}/{bucket}");
        self.touched.insert(key.clone());
        self.entries.insert(
            key,
            TuneEntry {
                config,
                time_us,
                date: date.to_string(),
                split_policy: policy,
                splits: None,
            },
        );
    }

    /// Records `config`, fastest with `splits` uniform splits, as the best for (`kernel`,
    /// `bucket`).
    pub fn put_with_uniform_splits(
        &mut self,
        kernel: &str,
        bucket: &str,
        config: &Config,
        splits: usize,
        time_us: f64,
        date: &str,
    ) {
        self.put_with_policy(
            kernel,
            bucket,
            config,
            Some(SplitPolicy::Uniform),
            time_us,
            date,
        );
        if let Some(e) = self.entries.get_mut(&format!("{kernel}/{bucket}")) {
            e.splits = Some(splits.clamp(1, MAX_TUNED_SPLITS));
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Saves the entries put since `open`: under the file's lock, re-reads the file (another
    /// process may have saved meanwhile), puts this database's new entries over it and replaces
    /// the file atomically. Afterwards this database holds the merged entries. A file that became
    /// unusable meanwhile is moved aside (returned as a warning).
    pub fn save(&mut self) -> Result<Vec<TuneWarning>, RuntimeError> {
        let _guard = lock(&self.path).map_err(|e| {
            RuntimeError::InvalidInput(format!("locking tune file {}: {e}", self.path.display()))
        })?;
        let disk = load(&self.path, &self.device, &self.spaces);
        if let Some(why) = &disk.unreadable {
            return Err(RuntimeError::InvalidInput(format!(
                "tune file {} {why}",
                self.path.display()
            )));
        }
        let warnings = if disk.unusable.is_some() {
            self.repair(&disk)
        } else {
            Vec::new()
        };
        let mut merged = disk.entries;
        for key in &self.touched {
            if let Some(e) = self.entries.get(key) {
                merged.insert(key.clone(), e.clone());
            }
        }
        self.write(&merged)?;
        self.entries = merged;
        Ok(warnings)
    }
}

#[cfg(test)]
#[path = "tune_tests.rs"]
mod tests;
