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
//! the event loop leaves.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::Waker;

use super::core::{ConnId, PasswordCheck, Verification};

/// Most checks waiting besides the one being made: at about 30 ms each, a
/// full queue is answered within a second.
pub const QUEUE: usize = 32;

/// Puts the calling thread in the idle scheduling class: it runs only when
/// nothing else of the process (the event loop) wants the processor, so a
/// check never delays a pass, even on one core. Where that is not allowed,
/// the lowest nice value does nearly as well; failing both, checks run at
/// normal priority (still off the loop, only less politely).
fn yield_to_the_loop() {
    // SAFETY: both calls only change the calling thread's scheduling, with
    // a valid, zeroed sched_param.
    unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
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
}

impl Verifier {
    /// Starts the thread; `waker` wakes the loop for each answer.
    pub fn start(waker: Arc<Waker>) -> io::Result<Verifier> {
        let (jobs, queue) = mpsc::sync_channel::<Verification>(QUEUE);
        let (answer, answers) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread =
            std::thread::Builder::new().name("password-verifier".into()).spawn(move || {
                yield_to_the_loop();
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
        Ok(Verifier { jobs: Some(jobs), answers, stop, thread: Some(thread) })
    }

    /// Queues a check; gives it back when the queue is full (or, should
    /// the thread have died, always).
    pub fn submit(&self, job: Verification) -> Result<(), Verification> {
        let Some(jobs) = &self.jobs else {
            return Err(job);
        };
        jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }

    /// The next answer that has arrived, if any.
    pub fn answer(&self) -> Option<Answer> {
        // Disconnected only once the thread is gone, after its last answer.
        self.answers.try_recv().ok()
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

    fn job(conn: ConnId, secret: &Secret, attempt: &str) -> Verification {
        Verification { conn, serial: conn as u64, secret: secret.clone(), attempt: attempt.into() }
    }

    /// A waker on a poll of its own, and that poll.
    fn waker() -> (mio::Poll, Arc<Waker>) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        (poll, waker)
    }

    fn next_answer(verifier: &Verifier, poll: &mut mio::Poll) -> Answer {
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
        let verifier = Verifier::start(waker).unwrap();
        verifier.submit(job(1, &secret, "right")).unwrap();
        verifier.submit(job(2, &secret, "wrong")).unwrap();
        let first = next_answer(&verifier, &mut poll);
        assert_eq!(first, Answer { conn: 1, serial: 1, check: PasswordCheck::Right });
        let second = next_answer(&verifier, &mut poll);
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
