//! The state directory (`--state-dir`), opened safely.
//!
//! [`StateDir`] holds the directory open and reaches every file in it
//! relative to that descriptor (`openat`, `renameat`, `unlinkat`), so
//! nothing can swap the directory or a file under the server between a
//! check and a use. It owns these rules:
//!
//! - The directory is created mode 0700 and must be owned by the server's
//!   user and not writable by anyone else; a directory someone else
//!   controls (a `/tmp` path another local user created first) is refused,
//!   as is a symbolic link to it that another user owns.
//! - Every file is opened with `O_NOFOLLOW` (a planted symbolic link is
//!   refused, never followed), `O_CLOEXEC`, and `O_NONBLOCK` (a planted
//!   FIFO cannot block the open); it must be a regular file owned by the
//!   server's user, and is kept at mode 0600: queued messages are private.
//! - A directory others can read is accepted with a warning.
//!
//! It does not know what the files hold: that is the journal's business.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the state directory or a file in it cannot be used: one line for
/// the operator, naming the path.
#[derive(Debug)]
pub struct StateDirError {
    pub path: PathBuf,
    pub what: String,
}

impl std::fmt::Display for StateDirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "state directory: {}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for StateDirError {}

fn error(path: &Path, what: impl std::fmt::Display) -> StateDirError {
    StateDirError { path: path.to_owned(), what: what.to_string() }
}

/// The state directory, open.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// How to open a file in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Read and write; create it if missing.
    ReadWrite,
    /// Write only; a new empty file, replacing any entry of that name
    /// (removed first, then created exclusively: nothing unchecked is
    /// ever truncated).
    Fresh,
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `fstat` of an open descriptor.
fn stat_fd(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the zeroed struct; the descriptor is open.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// Names the part of `path` that is a file where a directory must be.
fn not_a_directory_above(path: &Path) -> String {
    let file =
        path.ancestors().skip(1).find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
    match file {
        Some(file) => format!("cannot create it: {} is a file, not a directory", file.display()),
        None => "cannot create it: a part of the path is not a directory".to_string(),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

impl StateDir {
    /// Opens `path`, creating it (and missing parents) mode 0700, and
    /// checks that only the server's user controls it. Returns a warning
    /// for the log when others can read it.
    pub fn open(path: &Path) -> Result<(StateDir, Option<String>), StateDirError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta)
                if meta.file_type().is_symlink() && meta.uid() != euid() && meta.uid() != 0 =>
            {
                return Err(error(
                    path,
                    format!(
                        "is a symbolic link owned by another user (uid {}); refusing to follow it",
                        meta.uid()
                    ),
                ));
            }
            Ok(meta) if meta.is_file() => {
                return Err(error(path, "is a file, not a directory"));
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(error(path, not_a_directory_above(path)));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(
                    |e| match e.raw_os_error() {
                        // A missing parent that appeared as a file meanwhile.
                        Some(libc::EEXIST | libc::ENOTDIR) => {
                            error(path, not_a_directory_above(path))
                        }
                        _ => error(path, format!("cannot create it: {e}")),
                    },
                )?;
            }
            Err(e) => return Err(error(path, e)),
        }
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| error(path, "the path contains a NUL byte"))?;
        // SAFETY: open with a valid C string; the result is checked.
        let raw = unsafe {
            libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            let what = if e.raw_os_error() == Some(libc::ENOTDIR) {
                "is not a directory".to_string()
            } else {
                format!("cannot open it: {e}")
            };
            return Err(error(path, what));
        }
        // SAFETY: raw is a descriptor this function just opened.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let st = stat_fd(&fd).map_err(|e| error(path, e))?;
        let mode = st.st_mode & 0o7777;
        if st.st_uid != euid() {
            return Err(error(
                path,
                format!(
                    "is owned by uid {}, not by this server's user (uid {}); refusing to use it",
                    st.st_uid,
                    euid()
                ),
            ));
        }
        if mode & 0o022 != 0 {
            return Err(error(
                path,
                format!(
                    "can be written by other users (mode {mode:o}); refusing to use it \
                     (chmod 700 {} if it is yours)",
                    path.display()
                ),
            ));
        }
        let warning = (mode & 0o055 != 0).then(|| {
            format!(
                "state directory {} can be read by other users (mode {mode:o}), and it holds \
                 queued messages; run: chmod 700 {}",
                path.display(),
                path.display()
            )
        });
        Ok((StateDir { path: path.to_owned(), fd }, warning))
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file's path, for messages.
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` in the directory: never through a symbolic link, only
    /// a regular file owned by the server's user, kept at mode 0600.
    pub fn open_file(&self, name: &str, how: Open) -> Result<File, StateDirError> {
        let path = self.file_path(name);
        let fail = |what: String| error(&path, what);
        let c = c_name(name).map_err(|e| fail(e.to_string()))?;
        let access = match how {
            Open::ReadWrite => libc::O_RDWR | libc::O_CREAT,
            Open::Fresh => {
                self.remove(name).map_err(|e| fail(format!("cannot replace it: {e}")))?;
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL
            }
        };
        let flags = access | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: openat on our directory descriptor with a valid C string.
        let raw = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, 0o600) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(fail(if e.raw_os_error() == Some(libc::ELOOP) {
                "is a symbolic link; refusing to follow it".to_string()
            } else {
                format!("cannot open it: {e}")
            }));
        }
        // SAFETY: raw is a descriptor just opened here.
        let file = unsafe { File::from_raw_fd(raw) };
        let st = stat_fd(&file).map_err(|e| fail(e.to_string()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(fail("is not a regular file; refusing to use it".into()));
        }
        if st.st_uid != euid() {
            return Err(fail(format!(
                "is owned by uid {}, not by this server's user; refusing to use it",
                st.st_uid
            )));
        }
        if st.st_mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fail(format!("cannot make it private (chmod 600): {e}")))?;
        }
        // The descriptor was opened non-blocking only to keep a FIFO from
        // blocking the open; regular files ignore the flag.
        Ok(file)
    }

    /// Renames `from` to `to` within the directory, atomically.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (c_name(from)?, c_name(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: renameat within our directory descriptor, valid C strings.
        if unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes `name` if it exists.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: unlinkat within our directory descriptor.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Makes the directory's entries durable (after a create or rename).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync on our directory descriptor.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chat-statedir-{name}-{}-{:?}",
            std::process::id(),
            std::time::Instant::now()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_new_directory_and_its_files_are_private() {
        let path = temp_path("fresh").join("nested");
        let (dir, warning) = StateDir::open(&path).unwrap();
        assert_eq!(warning, None);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let file = dir.open_file("journal", Open::ReadWrite).unwrap();
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_named_in_one_line() {
        let base = temp_path("is-a-file");
        std::fs::create_dir_all(&base).unwrap();
        let file = base.join("state");
        std::fs::write(&file, b"").unwrap();
        let err = StateDir::open(&file).unwrap_err().to_string();
        assert_eq!(err, format!("state directory: {}: is a file, not a directory", file.display()));
        let below = file.join("sub/dir");
        let err = StateDir::open(&below).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "state directory: {}: cannot create it: {} is a file, not a directory",
                below.display(),
                file.display()
            )
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_planted_symbolic_link_is_refused_and_its_target_untouched() {
        let path = temp_path("symlink");
        let (dir, _) = StateDir::open(&path).unwrap();
        let target = path.with_extension("target");
        std::fs::write(&target, b"precious").unwrap();
        std::os::unix::fs::symlink(&target, path.join("lock")).unwrap();
        let err = dir.open_file("lock", Open::ReadWrite).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // A fresh file replaces the link itself, never what it points to.
        std::os::unix::fs::symlink(&target, path.join("journal.new")).unwrap();
        dir.open_file("journal.new", Open::Fresh).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::remove_file(target).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused_and_one_they_can_read_warned_about() {
        let path = temp_path("modes");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::open(&path).unwrap_err().to_string();
        assert!(err.contains("written by other users (mode 777)"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (_, warning) = StateDir::open(&path).unwrap();
        assert!(warning.unwrap().contains("read by other users (mode 755)"));
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_fifo_or_directory_in_place_of_a_file_is_refused_without_blocking() {
        let path = temp_path("fifo");
        let (dir, _) = StateDir::open(&path).unwrap();
        let fifo = CString::new(path.join("journal").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = dir.open_file("journal", Open::ReadWrite).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::create_dir(path.join("lock")).unwrap();
        assert!(dir.open_file("lock", Open::ReadWrite).is_err());
        std::fs::remove_dir_all(&path).unwrap();
    }
}
