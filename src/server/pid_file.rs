//! `--pid-file`: the server's process id in a file, for init systems
//! without systemd.
//!
//! [`PidFile::write`] writes it crash-safely (a new file beside it, synced,
//! renamed over the path, the directory synced), so a reader sees the old
//! content or the whole new one, never a torn one. Dropping the
//! [`PidFile`] removes the file if it still names this process (another
//! instance may have taken the path over since). It does not lock the
//! file or check for a running server: the listening port already keeps a
//! second server from starting.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A pid file written by this process, removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

/// Why the pid file could not be written: one line naming the path.
#[derive(Debug)]
pub struct PidFileError {
    pub path: PathBuf,
    pub error: io::Error,
}

impl fmt::Display for PidFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write the pid file {}: {}", self.path.display(), self.error)
    }
}

impl std::error::Error for PidFileError {}

impl PidFile {
    /// Writes this process's id and a newline to `path`.
    pub fn write(path: &Path) -> Result<PidFile, PidFileError> {
        let pid = std::process::id();
        let fail = |error| PidFileError { path: path.to_owned(), error };
        let Some(name) = path.file_name() else {
            return Err(fail(io::Error::new(io::ErrorKind::InvalidInput, "not a file name")));
        };
        let mut temp_name = name.to_owned();
        temp_name.push(format!(".{pid}.new"));
        let temp = path.with_file_name(temp_name);
        let written = write_synced(&temp, pid).and_then(|()| std::fs::rename(&temp, path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(fail(error));
        }
        // The rename is durable once the directory is synced; a failure to
        // sync it leaves a pid file that works until a power cut, so it is
        // not worth refusing to start for.
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            log::debug!("pid file: cannot sync {}: {e}", dir.display());
        }
        Ok(PidFile { path: path.to_owned(), pid })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_synced(path: &Path, pid: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    writeln!(file, "{pid}")?;
    file.sync_all()
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim().parse::<u32>().ok() == Some(self.pid));
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove the pid file {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chat-pid-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn holds_the_pid_and_is_removed_when_dropped() {
        let dir = temp_dir("ok");
        let path = dir.join("chat.pid");
        std::fs::write(&path, "stale\n").unwrap();
        let pid_file = PidFile::write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        drop(pid_file);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_taken_over_by_another_process_is_left_alone() {
        let dir = temp_dir("taken");
        let path = dir.join("chat.pid");
        let pid_file = PidFile::write(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pid_file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_place_is_one_clear_error() {
        let dir = temp_dir("bad");
        let error = PidFile::write(&dir.join("missing/chat.pid")).unwrap_err().to_string();
        assert!(error.starts_with("cannot write the pid file "), "{error}");
        assert!(error.contains("missing/chat.pid"), "{error}");
        let error = PidFile::write(&dir).unwrap_err().to_string();
        assert!(error.contains("cannot write the pid file"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
