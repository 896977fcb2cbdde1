//! The durable spool behind `--state-dir`: an append-only journal of state
//! changes, replayed at start-up and compacted now and then.
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
//! Compaction rewrites the live state as a fresh journal (new file, fsync,
//! rename, fsync of the directory), so a crash at any moment leaves either
//! the old or the new file whole. It runs between passes once the journal
//! has grown to several times the live state, which keeps its cost
//! amortised: O(1) per record appended.
//!
//! This module knows the file format, not the chat: the core produces and
//! consumes [`Record`]s.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// One change to the durable state. Users are named, not numbered, so a
/// journal stays valid when the credentials file changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A message entered `user`'s outbox.
    Queued { user: String, seq: u64, kind: MsgKind, from: String, text: String },
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
            Record::Queued { user, seq, kind, from, text } => {
                write!(out, "Q {user} {seq} {} {from} {text}", kind.as_str())
            }
            Record::Acked { user, seq } => write!(out, "A {user} {seq}"),
            Record::Blocked { user, target } => write!(out, "B {user} {target}"),
            Record::Unblocked { user, target } => write!(out, "U {user} {target}"),
            Record::Locked { user, until } => write!(out, "L {user} {}", clock.unix_ms_of(*until)),
            Record::NextSeq { user, next } => write!(out, "S {user} {next}"),
        };
    }

    /// Parses a payload; `None` if it is not one this version writes.
    fn parse_payload(payload: &[u8], clock: Clock) -> Option<Record> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut fields = text.splitn(6, ' ');
        let mut next = || fields.next().filter(|f| !f.is_empty());
        let tag = next()?;
        let user = next()?.to_owned();
        let record = match tag {
            "Q" => {
                let seq = next()?.parse().ok()?;
                let kind = match next()? {
                    "direct" => MsgKind::Direct,
                    "offline" => MsgKind::Offline,
                    "broadcast" => MsgKind::Broadcast,
                    _ => return None,
                };
                let from = next()?.to_owned();
                let text = next()?.to_owned();
                return Some(Record::Queued { user, seq, kind, from, text });
            }
            "A" => Record::Acked { user, seq: next()?.parse().ok()? },
            "B" => Record::Blocked { user, target: next()?.to_owned() },
            "U" => Record::Unblocked { user, target: next()?.to_owned() },
            "L" => Record::Locked { user, until: clock.instant_of_unix_ms(next()?.parse().ok()?) },
            "S" => Record::NextSeq { user, next: next()?.parse().ok()? },
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

fn error(path: &Path, what: impl std::fmt::Display) -> JournalError {
    JournalError { path: path.to_owned(), what: what.to_string() }
}

/// An open journal, positioned at its end.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    /// Held for the journal's life: a second server on the same directory
    /// would interleave records.
    _lock: File,
    clock: Clock,
    /// Records appended since the last commit, framed.
    pending: Vec<u8>,
    /// Bytes in the file.
    size: u64,
    /// Size of the file right after the last compaction (or at open).
    base_size: u64,
}

/// What [`Journal::open`] read back.
#[derive(Debug)]
pub struct Replay {
    pub records: Vec<Record>,
    pub damage: Option<Damage>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, reads it back, and
    /// cuts off a damaged tail.
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        fs::create_dir_all(dir).map_err(|e| error(dir, e))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(|e| error(&lock_path, e))?;
        lock.try_lock()
            .map_err(|_| error(dir, "in use by another chat-server (could not lock it)"))?;
        let path = dir.join("journal");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| error(&path, e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(|e| error(&path, e))?;
        let clock = Clock::now();
        let (replay, size) = if data.len() < MAGIC.len() && MAGIC.starts_with(&data) {
            // New, or torn while its header was written: start it over, and
            // make its directory entry durable too, or a power loss could
            // take the whole file with it.
            write_new(&mut file, &[]).map_err(|e| error(&path, e))?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| error(dir, e))?;
            (Replay { records: Vec::new(), damage: None }, MAGIC.len() as u64)
        } else if !data.starts_with(MAGIC) {
            return Err(error(&path, "not a chat journal (wrong header); refusing to touch it"));
        } else {
            let (records, bad) = parse_records(&data[MAGIC.len()..], clock);
            let mut size = data.len() as u64;
            let damage = bad.map(|at| {
                let offset = (MAGIC.len() + at) as u64;
                Damage { offset, cut: size - offset }
            });
            if let Some(damage) = &damage {
                file.set_len(damage.offset).map_err(|e| error(&path, e))?;
                file.sync_all().map_err(|e| error(&path, e))?;
                size = damage.offset;
            }
            (Replay { records, damage }, size)
        };
        file.seek(SeekFrom::End(0)).map_err(|e| error(&path, e))?;
        let journal = Journal {
            dir: dir.to_owned(),
            file,
            _lock: lock,
            clock,
            pending: Vec::new(),
            size,
            base_size: size,
        };
        Ok((journal, replay))
    }

    /// Adds a record to the next commit.
    pub fn append(&mut self, record: &Record) {
        frame(record, self.clock, &mut self.pending);
    }

    /// Writes and syncs everything appended since the last commit.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending)?;
        self.file.sync_data()?;
        self.size += self.pending.len() as u64;
        self.pending.clear();
        if self.pending.capacity() > 1 << 20 {
            self.pending = Vec::new(); // A burst is over: give the memory back.
        }
        Ok(())
    }

    /// Whether the journal has grown enough to be worth rewriting.
    pub fn wants_compaction(&self) -> bool {
        self.size >= MIN_COMPACT_BYTES && self.size >= self.base_size * GROWTH_FACTOR
    }

    /// Replaces the journal with `live`, the records that rebuild the
    /// current state. Call right after [`Journal::commit`].
    pub fn compact(&mut self, live: impl Iterator<Item = Record>) -> io::Result<()> {
        let mut data = Vec::new();
        for record in live {
            frame(&record, self.clock, &mut data);
        }
        let tmp = self.dir.join("journal.new");
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        write_new(&mut file, &data)?;
        fs::rename(&tmp, self.dir.join("journal"))?;
        File::open(&self.dir)?.sync_all()?;
        file.seek(SeekFrom::End(0))?;
        self.file = file;
        self.size = (MAGIC.len() + data.len()) as u64;
        self.base_size = self.size;
        Ok(())
    }

    /// Bytes in the journal file (for tests and logs).
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Writes the magic and `records` to an empty or to-be-emptied file, synced.
fn write_new(file: &mut File, records: &[u8]) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(MAGIC)?;
    file.write_all(records)?;
    file.sync_all()
}

/// CRC-32 (IEEE 802.3, as in zlib and PNG), table-driven.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chat-journal-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Queued {
                user: "A".into(),
                seq: 1,
                kind: MsgKind::Offline,
                from: "B".into(),
                text: "hi  there, é\r".into(),
            },
            Record::Acked { user: "A".into(), seq: 1 },
            Record::Blocked { user: "A".into(), target: "C".into() },
            Record::Unblocked { user: "A".into(), target: "C".into() },
            Record::NextSeq { user: "B".into(), next: 9 },
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
        journal.commit().unwrap();
        drop(journal);
        let (_, replay) = Journal::open(&dir).unwrap();
        assert_eq!(replay.records, sample());
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
    fn a_torn_tail_is_cut_and_later_appends_follow_good_data() {
        let dir = temp_dir("torn");
        let (mut journal, _) = Journal::open(&dir).unwrap();
        for record in sample() {
            journal.append(&record);
        }
        journal.commit().unwrap();
        let good = journal.size();
        drop(journal);
        // A crash in the middle of writing the next record.
        let mut file = OpenOptions::new().append(true).open(dir.join("journal")).unwrap();
        file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, b'Q', b' ']).unwrap();
        drop(file);
        let (mut journal, replay) = Journal::open(&dir).unwrap();
        assert_eq!(replay.records, sample());
        assert_eq!(replay.damage, Some(Damage { offset: good, cut: 10 }));
        journal.append(&Record::Acked { user: "B".into(), seq: 3 });
        journal.commit().unwrap();
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
        assert_eq!(records, sample()[..1]);
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
    fn compaction_keeps_only_live_records() {
        let dir = temp_dir("compact");
        let (mut journal, _) = Journal::open(&dir).unwrap();
        for record in sample() {
            journal.append(&record);
        }
        journal.commit().unwrap();
        let live = vec![Record::NextSeq { user: "A".into(), next: 2 }];
        journal.compact(live.clone().into_iter()).unwrap();
        journal.append(&Record::Blocked { user: "B".into(), target: "A".into() });
        journal.commit().unwrap();
        drop(journal);
        let (_, replay) = Journal::open(&dir).unwrap();
        let mut expected = live;
        expected.push(Record::Blocked { user: "B".into(), target: "A".into() });
        assert_eq!(replay.records, expected);
        assert!(!dir.join("journal.new").exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
