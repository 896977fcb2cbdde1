//! The password verifier: one helper thread that checks argon2id hashes,
//! so that a check (tens of milliseconds) never stalls the event loop.
//!
//! Checks wait in a bounded queue ([`QUEUE`] of them); one that finds it
//! full is not queued, and the login is answered `DENIED busy` (the client
//! tries again after a pause). Answers come back over a channel, and the
//! thread wakes the loop's poll for each. The verifier does not decide
//! what an answer means (the core does), checks plain passwords not at all
//! (the core compares those at once), and keeps nothing once a check is
//! answered: no cache of any kind, which would weaken the hash. The thread
//! runs in the idle scheduling class, so it only ever uses processor time
//! the event loop leaves. The idle class also yields to every other
//! process, though, and a host kept busy by something else would starve it
//! for good: when checks wait and none has been answered for [`STARVED`],
//! the loop moves the thread to the normal class at the lowest priority
//! (nice 19: a share, however small, of a busy processor), and back to the
//! idle class once nothing waits ([`Starvation`] decides).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Waker;

use super::core::{ConnId, PasswordCheck, Verification};

/// Most checks waiting besides the one being made: at about 30 ms each, a
/// full queue is answered within a second.
pub const QUEUE: usize = 32;

/// How long checks may wait with none answered before the thread is
/// taken out of the idle class: a check takes tens of milliseconds, so
/// this long without an answer means the thread gets no processor time.
pub const STARVED: Duration = Duration::from_millis(500);

/// Puts thread `tid` (0: the calling one) in the idle scheduling class: it
/// runs only when nothing else wants the processor, so a check never
/// delays a pass of the event loop, even on one core. Where that is not
/// allowed, the lowest nice value does nearly as well; failing both, checks
/// run at normal priority (still off the loop, only less politely).
fn idle_class(tid: libc::pid_t) {
    // SAFETY: both calls only change a thread's scheduling, with a valid,
    // zeroed sched_param; a stale id fails harmlessly.
    unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        if libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) != 0 {
            let tid = if tid == 0 { libc::gettid() } else { tid };
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        }
    }
}

/// Moves thread `tid` to the normal class at nice 19: a small share of a
/// processor others keep busy, instead of none. Any thread may lower its
/// own priority so far, so this needs no privilege.
fn lowest_normal_class(tid: libc::pid_t) {
    // SAFETY: as in `idle_class`.
    unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

/// Whether checks are starving: how many wait, since when no answer has
/// come, and which class the thread is in. Pure, so that it can be tested
/// with a fake clock; the [`Verifier`] carries out what it says.
#[derive(Debug, Default)]
pub struct Starvation {
    waiting: usize,
    /// The last answer, or the submission that ended a time with nothing
    /// waiting: no answer has come since.
    progress_at: Option<Instant>,
    raised: bool,
}

/// What [`Starvation::tend`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Out of the idle class: checks starve.
    Raise,
    /// Back to the idle class: nothing waits any more.
    Lower,
}

impl Starvation {
    pub fn submitted(&mut self, now: Instant) {
        if self.waiting == 0 {
            self.progress_at = Some(now);
        }
        self.waiting += 1;
    }

    pub fn answered(&mut self, now: Instant) {
        self.waiting = self.waiting.saturating_sub(1);
        self.progress_at = Some(now);
    }

    /// The move the thread needs at `now`, if any.
    pub fn tend(&mut self, now: Instant) -> Option<Move> {
        if self.waiting == 0 {
            return std::mem::take(&mut self.raised).then_some(Move::Lower);
        }
        let starving = self.progress_at.is_some_and(|at| now >= at + STARVED);
        (starving && !self.raised).then(|| {
            self.raised = true;
            Move::Raise
        })
    }

    /// When [`Starvation::tend`] may next have something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.waiting, self.raised) {
            (0, _) | (_, true) => None,
            _ => self.progress_at.map(|at| at + STARVED),
        }
    }
}

/// A check's answer, for [`crate::server::core::Core::verified`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub conn: ConnId,
    pub serial: u64,
    pub check: PasswordCheck,
}

/// The helper thread and its two channels.
pub struct Verifier {
    /// `None` once stopping: the thread's queue then ends.
    jobs: Option<SyncSender<Verification>>,
    answers: Receiver<Answer>,
    /// Tells the thread to drop what is queued rather than check it.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The thread's id, for changing its scheduling (0 until it started).
    tid: Arc<AtomicI32>,
    starvation: Starvation,
}

impl Verifier {
    /// Starts the thread; `waker` wakes the loop for each answer.
    pub fn start(waker: Arc<Waker>) -> io::Result<Verifier> {
        let (jobs, queue) = mpsc::sync_channel::<Verification>(QUEUE);
        let (answer, answers) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let tid = Arc::new(AtomicI32::new(0));
        let own_tid = Arc::clone(&tid);
        let thread =
            std::thread::Builder::new().name("password-verifier".into()).spawn(move || {
                // SAFETY: gettid has no preconditions.
                own_tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
                idle_class(0);
                for job in queue {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    let check = match job.secret.verify(&job.attempt) {
                        true => PasswordCheck::Right,
                        false => PasswordCheck::Wrong,
                    };
                    let (conn, serial) = (job.conn, job.serial);
                    drop(job);
                    if answer.send(Answer { conn, serial, check }).is_err() {
                        return;
                    }
                    // A loop that cannot be woken finds the answer on its
                    // next pass anyway.
                    let _ = waker.wake();
                }
            })?;
        let starvation = Starvation::default();
        Ok(Verifier { jobs: Some(jobs), answers, stop, thread: Some(thread), tid, starvation })
    }

    /// Queues a check; gives it back when the queue is full (or, should
    /// the thread have died, always).
    pub fn submit(&mut self, job: Verification) -> Result<(), Verification> {
        let Some(jobs) = &self.jobs else {
            return Err(job);
        };
        jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })?;
        self.starvation.submitted(Instant::now());
        Ok(())
    }

    /// The next answer that has arrived, if any.
    pub fn answer(&mut self) -> Option<Answer> {
        // Disconnected only once the thread is gone, after its last answer.
        let answer = self.answers.try_recv().ok()?;
        self.starvation.answered(Instant::now());
        Some(answer)
    }

    /// Takes the thread out of the idle class while checks starve, and
    /// puts it back once nothing waits; returns when to call again.
    pub fn tend(&mut self, now: Instant) -> Option<Instant> {
        let tid = self.tid.load(Ordering::Relaxed);
        match self.starvation.tend(now) {
            Some(Move::Raise) if tid != 0 => {
                // An operator should know: logins with hashed passwords
                // are slow while the host is this busy.
                log::warn!(
                    "password checks got no processor time for {} ms (the host is busy): \
                     the verifier now takes a small share at the lowest priority",
                    STARVED.as_millis()
                );
                lowest_normal_class(tid);
            }
            Some(Move::Lower) if tid != 0 => idle_class(tid),
            _ => {}
        }
        self.starvation.deadline()
    }

    /// Whether the thread is still there to check passwords.
    pub fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Verifier {
    /// Stops the thread after the check it is making, if any: what is
    /// queued is dropped unchecked, since no one waits for it any more.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::credentials::{hash_password, Secret};
    use std::time::{Duration, Instant};

    #[test]
    fn starving_checks_raise_the_thread_once_and_an_empty_queue_lowers_it() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        assert_eq!((s.tend(t0), s.deadline()), (None, None), "nothing waits");
        s.submitted(t0);
        s.submitted(t0 + STARVED / 2);
        assert_eq!(s.deadline(), Some(t0 + STARVED), "the first submission starts the clock");
        assert_eq!(s.tend(t0 + STARVED / 2), None);
        // An answer is progress: the clock starts again.
        s.answered(t0 + STARVED / 2);
        assert_eq!(s.tend(t0 + STARVED), None);
        let late = t0 + STARVED / 2 + STARVED;
        assert_eq!(s.tend(late), Some(Move::Raise));
        assert_eq!((s.tend(late), s.deadline()), (None, None), "raised once");
        s.answered(late);
        assert_eq!(s.tend(late), Some(Move::Lower), "nothing waits any more");
        assert_eq!(s.tend(late), None);
    }

    #[test]
    fn checks_answered_in_time_never_raise_the_thread() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        for i in 0..100u32 {
            let at = t0 + STARVED / 4 * i;
            s.submitted(at);
            assert_eq!(s.tend(at), None);
            s.answered(at + STARVED / 8);
        }
        assert_eq!(s.tend(t0 + STARVED * 100), None);
    }

    fn job(conn: ConnId, secret: &Secret, attempt: &str) -> Verification {
        Verification { conn, serial: conn as u64, secret: secret.clone(), attempt: attempt.into() }
    }

    /// A waker on a poll of its own, and that poll.
    fn waker() -> (mio::Poll, Arc<Waker>) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        (poll, waker)
    }

    fn next_answer(verifier: &mut Verifier, poll: &mut mio::Poll) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut events = mio::Events::with_capacity(4);
        loop {
            if let Some(answer) = verifier.answer() {
                return answer;
            }
            assert!(Instant::now() < deadline, "no answer");
            poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        }
    }

    #[test]
    fn checks_hashes_in_order_and_a_full_queue_gives_the_job_back() {
        let secret = Secret::Argon2id(hash_password("right").unwrap());
        let (mut poll, waker) = waker();
        let mut verifier = Verifier::start(waker).unwrap();
        verifier.submit(job(1, &secret, "right")).unwrap();
        verifier.submit(job(2, &secret, "wrong")).unwrap();
        let first = next_answer(&mut verifier, &mut poll);
        assert_eq!(first, Answer { conn: 1, serial: 1, check: PasswordCheck::Right });
        let second = next_answer(&mut verifier, &mut poll);
        assert_eq!(second, Answer { conn: 2, serial: 2, check: PasswordCheck::Wrong });
        // The thread holds one job and the queue QUEUE more: past that,
        // jobs come back at once.
        let mut refused = 0;
        for conn in 0..QUEUE + 8 {
            if let Err(back) = verifier.submit(job(conn, &secret, "x")) {
                assert_eq!(back.conn, conn);
                refused += 1;
            }
        }
        assert!(refused >= 7, "a bounded queue: {refused} refused");
        assert!(verifier.alive());
        // Dropping it stops the thread (the queue is dropped unchecked).
        drop(verifier);
    }
}
