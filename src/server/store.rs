//! The durable store: the journal, fed by the core's records and
//! snapshots, once per loop pass.
//!
//! [`Store::commit`] appends the pass's records and syncs them (one group
//! commit). [`Store::upkeep`] then does a bounded step of work: a chunk of
//! a journal rewrite (compaction), space reservation, and the storage
//! budget the core may spend on new messages in the next pass. It logs the
//! storage condition when it changes, not on every refusal.
//!
//! **Rewriting without stalling.** A rewrite writes the live state a chunk
//! per pass ([`REWRITE_CHUNK`]), so no pass stalls for long and no second
//! copy of the state is held. Changes made while it runs go into the new
//! file only when the part of the state they change is already written
//! ([`SnapshotCursor::covers`]); otherwise that part, written later,
//! shows them already. The old journal gets every record as usual until
//! the new file replaces it, so a crash at any moment loses nothing.
//!
//! A rewrite starts when the journal has grown well past the live state,
//! or when space is short and rewriting would at least halve the file (the
//! way back to service on a full disk), or when records had to be dropped
//! while writes failed.

use std::time::{Duration, Instant};

use super::core::{Core, SnapshotCursor, SNAPSHOT_RECORD_BYTES};
use super::journal::{Journal, JournalError, Replay, Rewrite};
use crate::protocol::MAX_TEXT;

/// Bytes of snapshot records written per pass during a rewrite: small
/// enough that a pass stays within a millisecond or two.
pub const REWRITE_CHUNK: usize = 256 * 1024;

/// After a rewrite fails, how long until the next attempt.
const REWRITE_RETRY: Duration = Duration::from_secs(10);

/// How often, while space is short, to check whether a rewrite would help.
const SHORT_CHECK: Duration = Duration::from_secs(1);

/// A rewrite in progress.
struct InProgress {
    rewrite: Rewrite,
    cursor: SnapshotCursor,
    started: Instant,
    /// The journal's size when it started, for the log.
    from: u64,
}

/// The journal and the work it needs between passes.
pub struct Store {
    journal: Journal,
    rewrite: Option<InProgress>,
    /// After a failed rewrite, none starts before this.
    retry_rewrite_at: Option<Instant>,
    /// While space is short, when next to check whether a rewrite helps.
    next_short_check: Option<Instant>,
    /// New messages are being refused for lack of space (for the log).
    refusing: bool,
}

impl Store {
    /// Opens the journal in `dir` and reads it back.
    pub fn open(dir: &std::path::Path) -> Result<(Store, Replay), JournalError> {
        let (journal, replay) = Journal::open(dir)?;
        let store = Store {
            journal,
            rewrite: None,
            retry_rewrite_at: None,
            next_short_check: None,
            refusing: false,
        };
        Ok((store, replay))
    }

    /// Appends the records the core produced and syncs them: call after
    /// the core has run and before any reply is written.
    pub fn commit(&mut self, core: &mut Core, now: Instant) {
        for (user, record) in core.records() {
            self.journal.append(&record);
            if let Some(work) = &mut self.rewrite {
                if work.cursor.covers(user, &record) {
                    work.rewrite.append(&record);
                }
            }
        }
        self.journal.commit(now);
    }

    /// Whether a rewrite (or freeing the journal it replaced) is under way:
    /// the loop should come back at once rather than sleep.
    pub fn busy(&self) -> bool {
        self.rewrite.is_some() || self.journal.busy()
    }

    /// A bounded step of the work between passes; sets the core's storage
    /// budget for the next pass. Call once a pass, after [`Store::commit`].
    pub fn upkeep(&mut self, core: &mut Core, now: Instant) {
        self.journal.upkeep(now);
        if self.rewrite.is_none() && self.should_rewrite(core, now) {
            match self.journal.begin_rewrite() {
                Ok(rewrite) => {
                    let from = self.journal.size();
                    let cursor = SnapshotCursor::default();
                    self.rewrite = Some(InProgress { rewrite, cursor, started: now, from });
                }
                Err(e) => self.rewrite_failed(&e, now),
            }
        }
        self.step_rewrite(core, now);
        // After the rewrite step: a new journal needs its reservation.
        self.journal.upkeep(now);
        let budget = self.journal.growth_budget();
        // Refusing: not even the longest message would fit.
        let longest = (SNAPSHOT_RECORD_BYTES + MAX_TEXT) as u64;
        let refusing = budget.is_some_and(|b| b < longest);
        if refusing != self.refusing {
            self.refusing = refusing;
            if refusing {
                log::warn!(
                    "journal: out of space; refusing new messages, blocks and unblocks \
                     (FAIL storage) until there is room again; everything else goes on"
                );
            } else {
                log::warn!("journal: space available again; accepting new messages");
            }
        }
        core.set_storage_budget(budget);
    }

    fn should_rewrite(&mut self, core: &Core, now: Instant) -> bool {
        if self.retry_rewrite_at.is_some_and(|at| now < at) {
            return false;
        }
        if self.journal.wants_compaction() || self.journal.stale() {
            return true;
        }
        if self.journal.growth_budget() != Some(0)
            || self.next_short_check.is_some_and(|at| now < at)
        {
            return false;
        }
        // Short of space: rewriting helps if the file is mostly dead.
        self.next_short_check = Some(now + SHORT_CHECK);
        core.snapshot_size_estimate().saturating_mul(2) < self.journal.size()
    }

    /// Writes the next chunk of a rewrite in progress, or finishes it.
    fn step_rewrite(&mut self, core: &Core, now: Instant) {
        let Some(work) = &mut self.rewrite else {
            return;
        };
        let mut records = Vec::new();
        let next = core.snapshot_step(work.cursor, REWRITE_CHUNK, now, &mut records);
        for record in &records {
            work.rewrite.append(record);
        }
        if let Some(cursor) = next {
            work.cursor = cursor;
            if let Err(e) = work.rewrite.flush() {
                self.rewrite_failed(&e, now);
            }
            return;
        }
        let Some(work) = self.rewrite.take() else {
            return;
        };
        let InProgress { rewrite, started, from, .. } = work;
        match self.journal.finish_rewrite(rewrite) {
            Ok(()) => {
                let took = now.saturating_duration_since(started);
                log::info!(
                    "journal compacted from {from} to {} bytes in {} ms",
                    self.journal.size(),
                    took.as_millis()
                );
                self.retry_rewrite_at = None;
            }
            Err(e) => {
                log::warn!("journal: rewrite failed: {e}; trying again in 10 s");
                self.retry_rewrite_at = Some(now + REWRITE_RETRY);
            }
        }
    }

    fn rewrite_failed(&mut self, e: &std::io::Error, now: Instant) {
        log::warn!("journal: rewrite failed: {e}; trying again in 10 s");
        if let Some(work) = self.rewrite.take() {
            self.journal.abort_rewrite(work.rewrite);
        }
        self.retry_rewrite_at = Some(now + REWRITE_RETRY);
    }

    /// At shutdown: a rewrite in progress is given up (the journal itself
    /// is complete).
    pub fn close(&mut self) {
        if let Some(work) = self.rewrite.take() {
            self.journal.abort_rewrite(work.rewrite);
        }
    }

    /// Bytes in the journal file.
    pub fn size(&self) -> u64 {
        self.journal.size()
    }
}
