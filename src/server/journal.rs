//! The durable spool behind `--state-dir`: an append-only journal of state
//! changes, replayed at start-up and rewritten now and then.
//!
//! The file `DIR/journal` starts with [`MAGIC`] and then holds records, each
//! `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`. Payloads
//! are short text lines (see [`Record`]). A record is only trusted when its
//! length is sane, its checksum matches and its payload parses; at the first
//! one that is not (a write torn by a crash, or a damaged disk), replay
//! stops, says so in the log, and cuts the file there, so the next append
//! continues from good data.
//!
//! Appends are grouped: the event loop adds every record of one pass with
//! [`Journal::append`], then calls [`Journal::commit`] once (one write, one
//! `fdatasync`) before it sends any reply of that pass. So nothing is
//! confirmed to anyone before it is on disk, and the cost of a sync is
//! shared by everything that happened in the pass.
//!
//! **Space.** A full disk (or a file-size limit) must not stop the server
//! or lose anything confirmed. The journal reserves space ahead of its end
//! (`fallocate` without changing the file's size), so a write into the
//! reservation cannot fail for lack of space, and tells how much of it new
//! messages may still take ([`Journal::growth_budget`]): the core refuses
//! a message before accepting it rather than after. A reserve is kept back
//! for records that only shrink the state (acknowledgements) or must not be
//! refused (lockouts). Where `fallocate` is not supported, or a write fails
//! all the same (an I/O error), the file is cut back to its last good end,
//! the records are held and retried, new messages are refused meanwhile,
//! and the condition is logged once; the server goes on serving.
//!
//! **Rewriting** ([`Rewrite`]) writes the live state as a new file in
//! chunks over many passes (so no pass stalls for long), starting its
//! writeback as it goes, then syncs it, renames it over the journal and
//! syncs the directory: a crash at any moment leaves the old or the new
//! file whole. Which records go into it is decided by the caller.
//!
//! This module knows the file format and the disk, not the chat: the core
//! produces and consumes [`Record`]s. Files are reached only through
//! [`StateDir`], which refuses links and directories others control.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::state_dir::{Open, StateDir, StateDirError};
use crate::protocol::MsgKind;

/// First bytes of every journal file: format name and version.
pub const MAGIC: &[u8; 8] = b"CHATJNL1";

/// Largest payload accepted on replay: a chat line plus its bookkeeping.
/// Anything longer can only be damage.
const MAX_PAYLOAD: usize = 2 * crate::protocol::MAX_LINE;

/// Bytes of a record before its payload (length and checksum).
const HEADER: usize = 8;

/// The journal is compacted when it exceeds this many times the size of
/// the live state it last rewrote...
const GROWTH_FACTOR: u64 = 4;

/// ...and at least this size, so a small journal is never rewritten.
const MIN_COMPACT_BYTES: u64 = 1 << 20;

/// Space reserved ahead of the journal's end, and renewed when half used:
/// a few seconds of the heaviest traffic, so reserving is rare.
const RESERVE_AHEAD: u64 = 4 << 20;

/// The smallest reservation tried when the disk is nearly full.
const MIN_RESERVATION: u64 = 64 << 10;

/// Journal space new messages may not take: kept for acknowledgements
/// (which let outboxes drain when the disk is full), lockouts and blocks.
pub const SMALL_RECORD_RESERVE: u64 = 256 << 10;

/// How long after a failed write or reservation the next one is tried.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Most bytes of records held in memory while writes fail. Past it they
/// are dropped, and only a rewrite of the whole state (which includes
/// their effect) makes the journal whole again.
const MAX_HELD: usize = 4 << 20;

/// Bytes of a replaced journal freed per pass: freeing a large file's
/// blocks all at once (closing it) holds the thread for tens of
/// milliseconds, a slice of this size for a millisecond or two.
const RETIRE_STEP: u64 = 8 << 20;

/// Name of the journal file, and of a rewrite in progress.
const JOURNAL: &str = "journal";
const REWRITE: &str = "journal.new";

/// One change to the durable state. Users are named, not numbered, so a
/// journal stays valid when the credentials file changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A message entered `user`'s outbox, accepted by the server `at` (for
    /// its lifetime, `--message-ttl`). Written as `M` with the time; the
    /// older `Q` form without it is still read, as accepted at replay.
    Queued { user: String, seq: u64, kind: MsgKind, from: String, text: String, at: Instant },
    /// `user` acknowledged every message up to and including `seq`.
    Acked { user: String, seq: u64 },
    /// `user` blocked `target`.
    Blocked { user: String, target: String },
    /// `user` unblocked `target`.
    Unblocked { user: String, target: String },
    /// `user`'s account is locked until `until`.
    Locked { user: String, until: Instant },
    /// The next sequence number for `user` is at least `next` (written by
    /// compaction, so numbers never go back after their messages are gone).
    NextSeq { user: String, next: u64 },
    /// The operator disabled `user`'s account (`chat-server ctl disable`).
    Disabled { user: String },
    /// The operator enabled `user`'s account again.
    Enabled { user: String },
}

/// Converts between the monotonic clock the core uses and wall-clock time,
/// which is what survives a restart.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    instant: Instant,
    wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        Clock { instant: Instant::now(), wall: SystemTime::now() }
    }

    fn unix_ms_of(self, at: Instant) -> u64 {
        let wall = match at.checked_duration_since(self.instant) {
            Some(ahead) => self.wall.checked_add(ahead),
            None => self.wall.checked_sub(self.instant.duration_since(at)),
        };
        let wall = wall.unwrap_or(UNIX_EPOCH);
        wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// A time that was in the past when written (a message's acceptance):
    /// kept in the past, however far, so its age survives a restart. A
    /// time ahead of the clock (the clock was set back) counts as now.
    fn past_instant_of_unix_ms(self, ms: u64) -> Instant {
        let wall = UNIX_EPOCH.checked_add(Duration::from_millis(ms)).unwrap_or(self.wall);
        match self.wall.duration_since(wall) {
            Ok(ago) => self.instant.checked_sub(ago).unwrap_or(self.instant),
            Err(_) => self.instant,
        }
    }

    fn instant_of_unix_ms(self, ms: u64) -> Instant {
        // A damaged far-future time is capped at a year.
        const YEAR: Duration = Duration::from_secs(365 * 86_400);
        let Some(wall) = UNIX_EPOCH.checked_add(Duration::from_millis(ms)) else {
            return self.instant + YEAR;
        };
        match wall.duration_since(self.wall) {
            Ok(ahead) => self.instant + ahead.min(YEAR),
            // In the past: any instant not after now will do.
            Err(_) => self.instant,
        }
    }
}

impl Record {
    /// Appends the payload (without framing) to `out`.
    fn encode_payload(&self, clock: Clock, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = match self {
            Record::Queued { user, seq, kind, from, text, at } => {
                let at = clock.unix_ms_of(*at);
                write!(out, "M {user} {seq} {} {from} {at} {text}", kind.as_str())
            }
            Record::Acked { user, seq } => write!(out, "A {user} {seq}"),
            Record::Blocked { user, target } => write!(out, "B {user} {target}"),
            Record::Unblocked { user, target } => write!(out, "U {user} {target}"),
            Record::Locked { user, until } => write!(out, "L {user} {}", clock.unix_ms_of(*until)),
            Record::NextSeq { user, next } => write!(out, "S {user} {next}"),
            Record::Disabled { user } => write!(out, "D {user}"),
            Record::Enabled { user } => write!(out, "E {user}"),
        };
    }

    /// Parses a payload; `None` if it is not one this version writes.
    fn parse_payload(payload: &[u8], clock: Clock) -> Option<Record> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut fields = text.splitn(if text.starts_with("M ") { 7 } else { 6 }, ' ');
        let mut next = || fields.next().filter(|f| !f.is_empty());
        let tag = next()?;
        let user = next()?.to_owned();
        let record = match tag {
            "Q" | "M" => {
                let seq = next()?.parse().ok()?;
                let kind = match next()? {
                    "direct" => MsgKind::Direct,
                    "offline" => MsgKind::Offline,
                    "broadcast" => MsgKind::Broadcast,
                    _ => return None,
                };
                let from = next()?.to_owned();
                let at = match tag {
                    "M" => clock.past_instant_of_unix_ms(next()?.parse().ok()?),
                    // Written before messages had a lifetime: it starts now.
                    _ => clock.instant,
                };
                let text = next()?.to_owned();
                return Some(Record::Queued { user, seq, kind, from, text, at });
            }
            "A" => Record::Acked { user, seq: next()?.parse().ok()? },
            "B" => Record::Blocked { user, target: next()?.to_owned() },
            "U" => Record::Unblocked { user, target: next()?.to_owned() },
            "L" => Record::Locked { user, until: clock.instant_of_unix_ms(next()?.parse().ok()?) },
            "S" => Record::NextSeq { user, next: next()?.parse().ok()? },
            "D" => Record::Disabled { user },
            "E" => Record::Enabled { user },
            _ => return None,
        };
        next().is_none().then_some(record)
    }
}

/// Appends one framed record to `out`.
fn frame(record: &Record, clock: Clock, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    record.encode_payload(clock, out);
    let payload = &out[start + HEADER..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + HEADER].copy_from_slice(&crc);
}

/// What replay found wrong at the end of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Where the first bad record starts; the file was cut here.
    pub offset: u64,
    /// How many bytes were cut off.
    pub cut: u64,
}

/// Splits a journal's bytes (after the magic) into records, stopping at
/// the first that is torn, corrupt or unreadable. Returns the records and,
/// if it stopped early, where.
fn parse_records(data: &[u8], clock: Clock) -> (Vec<Record>, Option<usize>) {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let Some(record) = parse_one(&data[pos..], clock) else {
            return (records, Some(pos));
        };
        records.push(record.0);
        pos += record.1;
    }
    (records, None)
}

/// One record from the front of `data` and its framed length.
fn parse_one(data: &[u8], clock: Clock) -> Option<(Record, usize)> {
    let header = data.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    let payload = data.get(HEADER..HEADER + len)?;
    if crc32(payload) != crc {
        return None;
    }
    Some((Record::parse_payload(payload, clock)?, HEADER + len))
}

/// Why the state directory could not be used.
#[derive(Debug)]
pub struct JournalError {
    pub path: PathBuf,
    pub what: String,
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "state directory: {}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for JournalError {}

impl From<StateDirError> for JournalError {
    fn from(e: StateDirError) -> Self {
        JournalError { path: e.path, what: e.what }
    }
}

fn error(path: &Path, what: impl std::fmt::Display) -> JournalError {
    JournalError { path: path.to_owned(), what: what.to_string() }
}

/// What the journal knows of the space it may still write.
#[derive(Debug)]
struct Space {
    /// `fallocate` works on this file system.
    fallocate: bool,
    /// Bytes from the start of the file known to be allocated.
    reserved_end: u64,
    /// The process's file-size limit (`ulimit -f`), or `u64::MAX`.
    file_limit: u64,
    /// After a failed reservation, when to try again.
    retry_at: Option<Instant>,
}

/// Writes are failing: since when to try again.
#[derive(Debug)]
struct Trouble {
    retry_at: Instant,
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    dir: StateDir,
    file: File,
    /// Held for the journal's life: a second server on the same directory
    /// would interleave records.
    _lock: File,
    clock: Clock,
    /// Records appended since the last successful commit, framed.
    pending: Vec<u8>,
    /// Bytes of good data in the file; the next write goes here.
    size: u64,
    /// Size of the file right after the last rewrite (or at open).
    base_size: u64,
    space: Space,
    trouble: Option<Trouble>,
    /// Records were dropped while writes failed: until a rewrite, the
    /// file lacks them.
    stale: bool,
    /// A journal replaced by a rewrite, already unlinked, freed a slice
    /// per pass ([`RETIRE_STEP`]) rather than all at once.
    retired: Option<File>,
}

/// What [`Journal::open`] read back.
#[derive(Debug)]
pub struct Replay {
    pub records: Vec<Record>,
    pub damage: Option<Damage>,
    /// Something the operator should hear (a directory others can read).
    pub warning: Option<String>,
}

/// The process's file-size limit in bytes (`u64::MAX` if none).
fn file_size_limit() -> u64 {
    // SAFETY: getrlimit fills the struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) != 0
            || limit.rlim_cur == libc::RLIM_INFINITY
        {
            return u64::MAX;
        }
        limit.rlim_cur
    }
}

/// Reserves `len` bytes of `file` from `offset` without changing its size.
fn reserve(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: fallocate on an open descriptor with checked arguments.
    let result =
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an error says the operation is not supported here at all.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, reads it back, and
    /// cuts off a damaged tail.
    pub fn open(path: &Path) -> Result<(Journal, Replay), JournalError> {
        // Writing past a file-size limit must fail with EFBIG, which the
        // journal handles, not kill the process with SIGXFSZ.
        // SAFETY: setting a signal's disposition to ignore.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        let (dir, warning) = StateDir::open(path)?;
        let lock = dir.open_file("lock", Open::ReadWrite)?;
        lock.try_lock()
            .map_err(|_| error(path, "in use by another chat-server (could not lock it)"))?;
        // A rewrite interrupted by a crash: the journal itself is whole.
        dir.remove(REWRITE).map_err(|e| error(&dir.file_path(REWRITE), e))?;
        let journal_path = dir.file_path(JOURNAL);
        let mut file = dir.open_file(JOURNAL, Open::ReadWrite)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(|e| error(&journal_path, e))?;
        let clock = Clock::now();
        let (replay, size) = if data.len() < MAGIC.len() && MAGIC.starts_with(&data) {
            // New, or torn while its header was written: start it over, and
            // make its directory entry durable too, or a power loss could
            // take the whole file with it.
            write_new(&mut file, &[]).map_err(|e| error(&journal_path, e))?;
            dir.sync().map_err(|e| error(path, e))?;
            (Replay { records: Vec::new(), damage: None, warning }, MAGIC.len() as u64)
        } else if !data.starts_with(MAGIC) {
            return Err(error(
                &journal_path,
                "not a chat journal (wrong header); refusing to touch it",
            ));
        } else {
            let (records, bad) = parse_records(&data[MAGIC.len()..], clock);
            let mut size = data.len() as u64;
            let damage = bad.map(|at| {
                let offset = (MAGIC.len() + at) as u64;
                Damage { offset, cut: size - offset }
            });
            if let Some(damage) = &damage {
                file.set_len(damage.offset).map_err(|e| error(&journal_path, e))?;
                file.sync_all().map_err(|e| error(&journal_path, e))?;
                size = damage.offset;
            }
            (Replay { records, damage, warning }, size)
        };
        let space = Space {
            fallocate: true,
            reserved_end: size,
            file_limit: file_size_limit(),
            retry_at: None,
        };
        let journal = Journal {
            dir,
            file,
            _lock: lock,
            clock,
            pending: Vec::new(),
            size,
            base_size: size,
            space,
            trouble: None,
            stale: false,
            retired: None,
        };
        Ok((journal, replay))
    }

    /// Adds a record to the next commit.
    pub fn append(&mut self, record: &Record) {
        frame(record, self.clock, &mut self.pending);
    }

    /// Writes and syncs everything appended since the last commit. True
    /// when it is all on disk; false when writes are failing: the records
    /// are held (up to a bound) and tried again after a while.
    pub fn commit(&mut self, now: Instant) -> bool {
        if self.pending.is_empty() {
            return self.trouble.is_none() && !self.stale;
        }
        if self.trouble.as_ref().is_some_and(|t| now < t.retry_at) {
            self.hold();
            return false;
        }
        let written =
            self.file.write_all_at(&self.pending, self.size).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.size += self.pending.len() as u64;
                self.pending.clear();
                if self.pending.capacity() > 1 << 20 {
                    self.pending = Vec::new(); // A burst is over: give the memory back.
                }
                if self.trouble.take().is_some() {
                    log::warn!("journal: writing works again");
                }
                !self.stale
            }
            Err(e) => {
                // Cut off whatever part was written, so the next try (or a
                // replay) continues from good data.
                let _ = self.file.set_len(self.size);
                if self.trouble.is_none() {
                    log::warn!(
                        "journal: cannot write {}: {e}; new messages are refused until it can \
                         (the rest of the service goes on)",
                        self.dir.file_path(JOURNAL).display()
                    );
                }
                self.trouble = Some(Trouble { retry_at: now + RETRY_AFTER });
                self.hold();
                false
            }
        }
    }

    /// Keeps the records that could not be written, within a bound.
    fn hold(&mut self) {
        if self.pending.len() > MAX_HELD {
            if !self.stale {
                log::warn!(
                    "journal: more than {MAX_HELD} bytes of records wait to be written; \
                     dropping them until the whole state can be rewritten"
                );
            }
            self.pending = Vec::new();
            self.stale = true;
        }
    }

    /// Keeps space reserved ahead of the journal's end, and notices when
    /// writing may work again. Call once a pass, after [`Journal::commit`].
    pub fn upkeep(&mut self, now: Instant) {
        self.free_retired();
        if self.trouble.as_ref().is_some_and(|t| now >= t.retry_at) && self.pending.is_empty() {
            // Nothing held to try the disk with: a reservation will do.
            self.trouble = None;
        }
        if !self.space.fallocate || self.space.retry_at.is_some_and(|at| now < at) {
            return;
        }
        let end = self.size + self.pending.len() as u64;
        let limit = self.space.file_limit;
        if self.space.reserved_end >= (end + RESERVE_AHEAD / 2).min(limit) {
            return;
        }
        let start = self.space.reserved_end.max(end);
        let mut len = (end + RESERVE_AHEAD).min(limit).saturating_sub(start);
        while len > 0 {
            match reserve(&self.file, start, len) {
                Ok(()) => {
                    self.space.reserved_end = start + len;
                    self.space.retry_at = None;
                    return;
                }
                Err(e) if unsupported(&e) => {
                    log::info!("journal: this file system cannot reserve space ahead ({e})");
                    self.space.fallocate = false;
                    return;
                }
                Err(_) if len > MIN_RESERVATION => len = (len / 2).max(MIN_RESERVATION),
                Err(_) => break,
            }
        }
        self.space.retry_at = Some(now + RETRY_AFTER);
    }

    /// Frees the next slice of a replaced journal, closing it once empty.
    fn free_retired(&mut self) {
        let Some(old) = &self.retired else {
            return;
        };
        let left = old.metadata().map_or(0, |m| m.len()).saturating_sub(RETIRE_STEP);
        if left == 0 || old.set_len(left).is_err() {
            self.retired = None; // Closing frees the rest.
        }
    }

    /// Whether freeing a replaced journal is under way: the loop should
    /// come back for the next slice rather than sleep.
    pub fn busy(&self) -> bool {
        self.retired.is_some()
    }

    /// Bytes of journal space new messages may still take before the next
    /// commit; `None` when no limit is known (the file system cannot
    /// reserve and no file-size limit applies).
    pub fn growth_budget(&self) -> Option<u64> {
        if self.trouble.is_some() || self.stale {
            return Some(0);
        }
        let end = if self.space.fallocate {
            self.space.reserved_end.min(self.space.file_limit)
        } else if self.space.file_limit < u64::MAX {
            self.space.file_limit
        } else {
            return None;
        };
        let used = self.size + self.pending.len() as u64;
        Some(end.saturating_sub(used).saturating_sub(SMALL_RECORD_RESERVE))
    }

    /// Whether the file lacks records dropped while writes failed.
    pub fn stale(&self) -> bool {
        self.stale
    }

    /// Whether the journal has grown enough to be worth rewriting.
    pub fn wants_compaction(&self) -> bool {
        self.size >= MIN_COMPACT_BYTES && self.size >= self.base_size * GROWTH_FACTOR
    }

    /// Starts writing a new journal beside this one.
    pub fn begin_rewrite(&mut self) -> io::Result<Rewrite> {
        if self.space.fallocate && self.space.reserved_end > self.size {
            // The disk may be short: hand back this file's reservation so
            // the new one can use it. Failing to is harmless.
            let (start, len) = (self.size, self.space.reserved_end - self.size);
            if let (Ok(start), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(len))
            {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                // SAFETY: fallocate on an open descriptor, range past the data.
                if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, start, len) } == 0 {
                    self.space.reserved_end = self.size;
                }
            }
        }
        let mut file = self
            .dir
            .open_file(REWRITE, Open::Fresh)
            .map_err(|e| io::Error::other(e.to_string()))?;
        file.write_all(MAGIC)?;
        Ok(Rewrite { file, buf: Vec::new(), written: MAGIC.len() as u64, clock: self.clock })
    }

    /// Finishes a rewrite: syncs the new file, renames it over the journal,
    /// syncs the directory, and continues appending to it. Everything
    /// appended to the journal must have been committed (or covered by the
    /// rewrite) first.
    pub fn finish_rewrite(&mut self, mut rewrite: Rewrite) -> io::Result<()> {
        let replaced = rewrite
            .flush()
            .and_then(|()| rewrite.file.sync_all())
            .and_then(|()| self.dir.rename(REWRITE, JOURNAL));
        if let Err(e) = replaced {
            self.abort_rewrite(rewrite);
            return Err(e);
        }
        // Renamed: the new file is the journal, whatever happens next.
        let synced = self.dir.sync();
        self.retired = Some(std::mem::replace(&mut self.file, rewrite.file));
        self.size = rewrite.written;
        self.base_size = self.size;
        self.space.reserved_end = self.size;
        self.space.retry_at = None;
        // Whatever was held or dropped is in the new file, as state.
        self.pending.clear();
        self.trouble = None;
        self.stale = false;
        synced
    }

    /// Gives up a rewrite and removes its file.
    pub fn abort_rewrite(&mut self, rewrite: Rewrite) {
        drop(rewrite);
        if let Err(e) = self.dir.remove(REWRITE) {
            log::warn!("journal: cannot remove {}: {e}", self.dir.file_path(REWRITE).display());
        }
    }

    /// Bytes in the journal file (for tests and logs).
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// A new journal being written a chunk at a time.
#[derive(Debug)]
pub struct Rewrite {
    file: File,
    /// Records appended and not yet written to the file.
    buf: Vec<u8>,
    /// Bytes in the file so far.
    written: u64,
    clock: Clock,
}

impl Rewrite {
    /// Adds a record to the new journal.
    pub fn append(&mut self, record: &Record) {
        frame(record, self.clock, &mut self.buf);
    }

    /// Bytes appended so far (written or not).
    pub fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() <= MAGIC.len() as u64
    }

    /// Writes what was appended and starts its writeback, so the final
    /// sync has little left to wait for.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.buf, self.written)?;
        let (Ok(start), Ok(len)) =
            (libc::off64_t::try_from(self.written), libc::off64_t::try_from(self.buf.len()))
        else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        // SAFETY: sync_file_range on an open descriptor over written bytes.
        // Only a hint: a failure here shows up at the final sync.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), start, len, libc::SYNC_FILE_RANGE_WRITE);
        }
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Writes the magic and `records` to an empty or to-be-emptied file, synced.
fn write_new(file: &mut File, records: &[u8]) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(MAGIC, 0)?;
    file.write_all_at(records, MAGIC.len() as u64)?;
    file.sync_all()
}

/// CRC-32 (IEEE 802.3, as in zlib and PNG), a byte at a time from a
/// 1 KiB table. Written here rather than taken from crc32fast, whose
/// 16 KiB of tables and SIMD code cost more of the binary than the journal
/// needs speed: a pass checksums at most a rewrite step (256 KiB) and the
/// records it appends, well under a millisecond at this speed.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                bit += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chat-journal-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// One instant for every sample record, so they compare equal after a
    /// round trip through the journal (which keeps milliseconds).
    fn sample_time() -> Instant {
        static AT: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *AT.get_or_init(Instant::now)
    }

    /// Asserts that records read back are those written: equal, but for
    /// acceptance times, which the journal keeps to the millisecond.
    fn assert_same(got: &[Record], want: &[Record]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (got, want) in got.iter().zip(want) {
            match (got, want) {
                (Record::Queued { at: a, .. }, Record::Queued { at: b, .. }) => {
                    let diff = a.max(b).duration_since(*a.min(b));
                    assert!(diff < Duration::from_millis(5), "{diff:?}");
                    let same_time = |r: &Record| match r.clone() {
                        Record::Queued { user, seq, kind, from, text, .. } => {
                            Record::Queued { user, seq, kind, from, text, at: sample_time() }
                        }
                        other => other,
                    };
                    assert_eq!(same_time(got), same_time(want));
                }
                _ => assert_eq!(got, want),
            }
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Queued {
                user: "A".into(),
                seq: 1,
                kind: MsgKind::Offline,
                from: "B".into(),
                text: "hi  there, é\r".into(),
                at: sample_time(),
            },
            Record::Acked { user: "A".into(), seq: 1 },
            Record::Blocked { user: "A".into(), target: "C".into() },
            Record::Unblocked { user: "A".into(), target: "C".into() },
            Record::NextSeq { user: "B".into(), next: 9 },
            Record::Disabled { user: "C".into() },
            Record::Enabled { user: "C".into() },
        ]
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn records_survive_reopening() {
        let dir = temp_dir("reopen");
        let (mut journal, replay) = Journal::open(&dir).unwrap();
        assert!(replay.records.is_empty());
        for record in sample() {
            journal.append(&record);
        }
        assert!(journal.commit(Instant::now()));
        drop(journal);
        let (_, replay) = Journal::open(&dir).unwrap();
        assert_same(&replay.records, &sample());
        assert_eq!(replay.damage, None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn lock_times_survive_as_wall_clock() {
        let clock = Clock::now();
        let until = clock.instant + Duration::from_secs(90);
        let record = Record::Locked { user: "A".into(), until };
        let mut out = Vec::new();
        frame(&record, clock, &mut out);
        let (Record::Locked { until: back, .. }, _) = parse_one(&out, clock).unwrap() else {
            panic!("not a lock record");
        };
        let diff = back.max(until) - back.min(until);
        assert!(diff < Duration::from_millis(2), "{diff:?}");
    }

    #[test]
    fn acceptance_times_survive_as_wall_clock_and_old_records_start_now() {
        let clock = Clock::now();
        let week = Duration::from_secs(7 * 86_400);
        let at = clock.instant - week;
        let record = Record::Queued {
            user: "A".into(),
            seq: 3,
            kind: MsgKind::Offline,
            from: "B".into(),
            text: "from last week".into(),
            at,
        };
        let mut out = Vec::new();
        frame(&record, clock, &mut out);
        assert!(out[HEADER..].starts_with(b"M A 3 offline B "), "the new form");
        // Read back by a later start: still a week old.
        let later = Clock { instant: clock.instant + week, wall: clock.wall + week };
        let (Record::Queued { at: back, text, .. }, _) = parse_one(&out, later).unwrap() else {
            panic!("not a queued record");
        };
        assert_eq!(text, "from last week");
        let diff = back.max(at) - back.min(at);
        assert!(diff < Duration::from_millis(2), "{diff:?}");
        // The form written before messages had a lifetime.
        let old = Record::parse_payload(b"Q A 4 offline B two  spaces", later);
        let Some(Record::Queued { at, text, seq: 4, .. }) = old else {
            panic!("not read: {old:?}");
        };
        assert_eq!((at, text.as_str()), (later.instant, "two  spaces"));
    }

    #[test]
    fn a_torn_tail_is_cut_and_later_appends_follow_good_data() {
        let dir = temp_dir("torn");
        let (mut journal, _) = Journal::open(&dir).unwrap();
        for record in sample() {
            journal.append(&record);
        }
        assert!(journal.commit(Instant::now()));
        let good = journal.size();
        drop(journal);
        // A crash in the middle of writing the next record.
        let mut file = OpenOptions::new().append(true).open(dir.join("journal")).unwrap();
        file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, b'Q', b' ']).unwrap();
        drop(file);
        let (mut journal, replay) = Journal::open(&dir).unwrap();
        assert_same(&replay.records, &sample());
        assert_eq!(replay.damage, Some(Damage { offset: good, cut: 10 }));
        journal.append(&Record::Acked { user: "B".into(), seq: 3 });
        assert!(journal.commit(Instant::now()));
        drop(journal);
        let (_, replay) = Journal::open(&dir).unwrap();
        assert_eq!(replay.records.len(), sample().len() + 1);
        assert_eq!(replay.damage, None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_flipped_bit_stops_replay_there() {
        let clock = Clock::now();
        let mut data = Vec::new();
        for record in sample() {
            frame(&record, clock, &mut data);
        }
        let second = parse_one(&data, clock).unwrap().1;
        data[second + HEADER + 2] ^= 0x20;
        let (records, bad) = parse_records(&data, clock);
        assert_same(&records, &sample()[..1]);
        assert_eq!(bad, Some(second));
    }

    #[test]
    fn garbage_never_panics_and_is_never_trusted() {
        let clock = Clock::now();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..400 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let (records, _) = parse_records(&data, clock);
            assert!(records.is_empty());
        }
        assert_eq!(Record::parse_payload(b"A B", clock), None);
        assert_eq!(Record::parse_payload(b"A B 1 2", clock), None);
        assert_eq!(Record::parse_payload(b"Q B 1 sideways C hi", clock), None);
        assert_eq!(Record::parse_payload(b"M B 1 direct C soon hi", clock), None);
        assert_eq!(Record::parse_payload(b"M B 1 direct C 123", clock), None);
    }

    #[test]
    fn a_foreign_file_is_refused_not_overwritten() {
        let dir = temp_dir("foreign");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("journal"), b"precious data").unwrap();
        let err = Journal::open(&dir).unwrap_err();
        assert!(err.to_string().contains("not a chat journal"), "{err}");
        assert_eq!(fs::read(dir.join("journal")).unwrap(), b"precious data");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_second_server_cannot_share_the_directory() {
        let dir = temp_dir("lock");
        let (_first, _) = Journal::open(&dir).unwrap();
        let err = Journal::open(&dir).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_rewrite_replaces_the_journal_and_appends_continue_after_it() {
        let dir = temp_dir("compact");
        let (mut journal, _) = Journal::open(&dir).unwrap();
        for record in sample() {
            journal.append(&record);
        }
        assert!(journal.commit(Instant::now()));
        let live = vec![Record::NextSeq { user: "A".into(), next: 2 }];
        let mut rewrite = journal.begin_rewrite().unwrap();
        rewrite.append(&live[0]);
        rewrite.flush().unwrap();
        journal.finish_rewrite(rewrite).unwrap();
        journal.append(&Record::Blocked { user: "B".into(), target: "A".into() });
        assert!(journal.commit(Instant::now()));
        drop(journal);
        let (_, replay) = Journal::open(&dir).unwrap();
        let mut expected = live;
        expected.push(Record::Blocked { user: "B".into(), target: "A".into() });
        assert_eq!(replay.records, expected);
        assert!(!dir.join("journal.new").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_interrupted_rewrite_is_discarded_at_open() {
        let dir = temp_dir("interrupted");
        let (mut journal, _) = Journal::open(&dir).unwrap();
        journal.append(&sample()[0]);
        assert!(journal.commit(Instant::now()));
        let mut rewrite = journal.begin_rewrite().unwrap();
        rewrite.append(&sample()[2]);
        rewrite.flush().unwrap();
        drop(rewrite);
        drop(journal);
        let (_, replay) = Journal::open(&dir).unwrap();
        assert_same(&replay.records, &sample()[..1]);
        assert!(!dir.join("journal.new").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn space_is_reserved_ahead_and_budgeted_for_new_messages() {
        let dir = temp_dir("space");
        let (mut journal, _) = Journal::open(&dir).unwrap();
        let now = Instant::now();
        journal.upkeep(now);
        match journal.growth_budget() {
            // Reserved: the budget is the reservation less the reserve.
            Some(budget) => {
                assert!(budget >= RESERVE_AHEAD - SMALL_RECORD_RESERVE - 64, "{budget}")
            }
            // This file system cannot reserve, and there is no size limit.
            None => assert!(!journal.space.fallocate),
        }
        journal.stale = true;
        assert_eq!(journal.growth_budget(), Some(0), "nothing new while records are missing");
        fs::remove_dir_all(dir).unwrap();
    }
}
