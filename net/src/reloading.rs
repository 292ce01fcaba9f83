//! A file read again when it changes, without a restart: how keys are rotated. On Kubernetes the
//! file is a mounted Secret's key, which the kubelet replaces in place (an atomic symlink swap);
//! in local mode it is a file of the state folder.
//!
//! [`Reloading::current`] looks at the file's modification time and size at most once per
//! `recheck` (one `stat`, on the caller's thread: small enough for an async task) and parses it
//! again when either changed. A changed file that does not parse is refused with a warning and the
//! last good contents stay in force, so a half-written edit never locks everyone out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use iotstamp_core::policies::Policies;

/// How often a file is looked at, by default.
pub const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ReloadError {
    pub path: String,
    pub reason: String,
}

pub struct Reloading<T> {
    path: PathBuf,
    parse: fn(&[u8]) -> Result<T, String>,
    recheck: Duration,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    /// Modification time and size of the contents last read (good or refused).
    seen: Option<(SystemTime, u64)>,
    checked: Instant,
}

impl<T> Reloading<T> {
    /// Reads and parses `path`; a file that cannot be read or parsed is an error here, at start.
    pub fn open(
        path: &Path,
        parse: fn(&[u8]) -> Result<T, String>,
        recheck: Duration,
    ) -> Result<Self, ReloadError> {
        let error = |reason: String| ReloadError {
            path: path.display().to_string(),
            reason,
        };
        let seen = stamp_of(path);
        let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        let value = parse(&bytes).map_err(error)?;
        Ok(Self {
            path: path.to_path_buf(),
            parse,
            recheck,
            state: Mutex::new(State {
                value: Arc::new(value),
                seen,
                checked: Instant::now(),
            }),
        })
    }

    /// The contents in force, read again first if the file changed since it was last looked at.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.lock();
        if state.checked.elapsed() >= self.recheck {
            state.checked = Instant::now();
            let seen = stamp_of(&self.path);
            if seen.is_some() && seen != state.seen {
                state.seen = seen;
                match std::fs::read(&self.path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| (self.parse)(&b))
                {
                    Ok(value) => {
                        tracing::info!(path = %self.path.display(), "reloaded");
                        state.value = Arc::new(value);
                    }
                    Err(reason) => {
                        tracing::warn!(path = %self.path.display(), %reason, "changed file refused; the previous contents stay in force");
                    }
                }
            }
        }
        state.value.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every update is a whole assignment: a panic elsewhere cannot leave the state half-made.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shared access policies ([`Policies`]): the file the hub and the router both read, kept current
/// at the default [`RECHECK`].
pub type ReloadingPolicies = Reloading<Policies>;

/// Opens a policies file; [`Reloading::open`]'s errors name the file and what is wrong in it.
pub fn policies(path: &Path) -> Result<ReloadingPolicies, ReloadError> {
    Reloading::open(
        path,
        |bytes| Policies::parse(bytes).map_err(|e| e.to_string()),
        RECHECK,
    )
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(bytes: &[u8]) -> Result<u32, String> {
        std::str::from_utf8(bytes)
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string())
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_bad_change_keeps_the_last_good_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let file = Reloading::open(&path, number, Duration::ZERO).unwrap();
        assert_eq!(*file.current(), 1);
        std::fs::write(&path, "22").unwrap();
        assert_eq!(*file.current(), 22);
        std::fs::write(&path, "not a number").unwrap();
        assert_eq!(*file.current(), 22, "a bad change is refused");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(*file.current(), 22, "a missing file changes nothing");
        std::fs::write(&path, "333").unwrap();
        assert_eq!(*file.current(), 333);
    }

    #[test]
    fn the_file_is_looked_at_once_per_recheck() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let file = Reloading::open(&path, number, Duration::from_secs(3600)).unwrap();
        std::fs::write(&path, "22").unwrap();
        assert_eq!(*file.current(), 1);
    }

    #[test]
    fn a_file_that_does_not_parse_at_start_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "x").unwrap();
        let err = Reloading::open(&path, number, RECHECK).err().unwrap().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(Reloading::open(&dir.path().join("none"), number, RECHECK).is_err());
    }
}
