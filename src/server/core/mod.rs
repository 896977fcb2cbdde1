//! The chat server's state machine: accounts, admission of connections,
//! sessions, presence, block lists, outboxes (with their caps, send rates
//! and lifetimes), consent and lockouts.
//!
//! It does no I/O and reads no clock. The event loop feeds it events (a
//! connection opened, a line arrived, a connection closed, a timer fired)
//! with the current time, and drains [`Effect`]s: lines to send, connections
//! to close, timers to arm. Tests drive it with a fake clock.
//!
//! Identity is bound to the connection: a connection's user is set by a
//! successful LOGIN and nothing a frame says can change it.
//!
//! Plain passwords are checked at once; an argon2id hash is not checked
//! here at all (it takes tens of milliseconds): the core asks for it with
//! [`Effect::Verify`] and concludes the login when [`Core::verified`]
//! brings the answer. Until then it takes no further line from that
//! connection ([`Core::awaits_verification`]).
//!
//! The chat commands themselves live in `commands.rs`; this file holds the
//! state, the login and session life cycle, and the timers.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};

use crate::server::credentials::{Account, Secret};
use crate::server::journal::Record;
use crate::server::logging::refusals::{Refusals, Verdict};
mod admission;
mod commands;
mod confirm;
mod online;
mod operator;
mod outbox;
mod presence;
mod send_rate;
mod stats;
mod throttle;
mod users;

use admission::{AddressTable, Arrivals, Over};
use confirm::Confirmations;
pub use confirm::CONFIRM_DELAY;
use online::Online;
pub use operator::{Census, Changed, OperatorError, SessionInfo};
use outbox::{Accepted, Caps, Outboxes};
use presence::{Decision, Presence};
use send_rate::RateLimit;
pub use stats::{Refused, Stats, MESSAGE_REFUSALS};
pub(crate) use throttle::throttle_key;
use throttle::{LoginThrottle, Refusal};
pub use throttle::{BURST_SECONDS, DEFAULT_THROTTLE_TABLE, THROTTLE_WINDOW};
use users::Users;

use crate::protocol::{
    ByeReason, ClientMsg, DenyReason, Failure, QueueReason, ServerMsg, MAX_DELIVERED_COUNT, VERSION,
};

/// The event loop's name for a connection (its slab key).
pub type ConnId = usize;

/// Index of a user in the account list.
pub type UserId = usize;

/// Consecutive wrong passwords that lock an account.
pub const MAX_FAILURES: u8 = 3;

/// Most chat messages sent to a session and not yet acknowledged. The rest
/// wait in the outbox, so a large backlog (at login, or for a slow reader)
/// never piles up in the connection's output buffer.
pub const SEND_WINDOW: usize = 64;

/// Tunables of the state machine.
#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    /// A connection silent this long is considered gone.
    pub timeout: Duration,
    /// How long an account stays locked after [`MAX_FAILURES`].
    pub block_time: Duration,
    /// Most messages one outbox holds; past it, senders are refused.
    pub max_queued: usize,
    /// Most bytes of chat messages sent to a session and not yet
    /// acknowledged (besides [`SEND_WINDOW`]); the event loop sets it below
    /// its output cap, so a slow reader's backlog waits in its outbox.
    pub window_bytes: usize,
    /// Emit [`Record`]s for a journal (`--state-dir`).
    pub durable: bool,
    /// A connection that has not logged in this long after connecting is
    /// closed.
    pub login_timeout: Duration,
    /// Most failed logins from one address (an IPv6 /64) per
    /// [`THROTTLE_WINDOW`]; past it, logins from there are refused unchecked.
    pub login_attempts: u32,
    /// Most connections open at once. When the table is full, a newcomer
    /// takes the place of the oldest connection that has not logged in.
    pub max_connections: usize,
    /// Most connections open at once from one address (an IPv6 /64).
    pub max_per_address: usize,
    /// New connections a second from one address, after a burst of
    /// `max_per_address`.
    pub connection_rate: u32,
    /// Most login attempts, failed or not, from one address per second,
    /// with a burst of [`BURST_SECONDS`] of them; past it, logins from
    /// there are refused unchecked.
    pub login_rate: u32,
    /// Most addresses (and IPv6 /48s) the login throttle tracks at once.
    pub throttle_table: usize,
    /// MESSAGE and BROADCAST commands a user may send per second, steadily
    /// (0: no limit)...
    pub send_rate: u32,
    /// ...and at once, after a pause.
    pub send_burst: u32,
    /// Most bytes of message text in all outboxes together; past it, new
    /// messages are refused.
    pub max_queued_bytes: usize,
    /// How long a message waits for an offline recipient before it expires.
    pub message_ttl: Duration,
}

impl CoreConfig {
    /// The defaults of `chat-server`'s options, for tests and embedders.
    pub fn new(timeout: Duration, block_time: Duration) -> Self {
        CoreConfig {
            timeout,
            block_time,
            max_queued: DEFAULT_MAX_QUEUED,
            window_bytes: DEFAULT_WINDOW_BYTES,
            durable: false,
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            login_attempts: DEFAULT_LOGIN_ATTEMPTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_address: default_max_per_address(DEFAULT_MAX_CONNECTIONS),
            connection_rate: DEFAULT_CONNECTION_RATE,
            login_rate: DEFAULT_LOGIN_RATE,
            throttle_table: DEFAULT_THROTTLE_TABLE,
            send_rate: DEFAULT_SEND_RATE,
            send_burst: DEFAULT_SEND_BURST,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            message_ttl: DEFAULT_MESSAGE_TTL,
        }
    }

    fn caps(&self) -> Caps {
        Caps { max_queued: self.max_queued, max_bytes: self.max_queued_bytes }
    }
}

/// `--max-connections` when the file descriptor limit is not known (an
/// embedded server): within a common limit of 1024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;

/// Default connections per address: room for a script that starts
/// hundreds of local clients, a quarter of a table of about a thousand.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 256;

/// Default new connections a second per address (after a burst of the
/// per-address share): far more than people or scripts reconnect, far
/// fewer than a flood.
pub const DEFAULT_CONNECTION_RATE: u32 = 64;

/// The per-address share when none is given: [`DEFAULT_MAX_PER_ADDRESS`],
/// but never more than half the table, so one address cannot take it.
pub fn default_max_per_address(max_connections: usize) -> usize {
    DEFAULT_MAX_PER_ADDRESS.min(max_connections / 2).max(1)
}

/// Default login deadline: time enough for a person to type a name and a
/// password at the prompts.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Default failed logins per address per [`THROTTLE_WINDOW`]: generous for
/// a person who mistypes, slow for anyone guessing names or passwords.
pub const DEFAULT_LOGIN_ATTEMPTS: u32 = 10;

/// Default login attempts per address per second: with its burst (200 at
/// once) a script can log in hundreds of local users, while one address
/// cannot keep the server checking passwords for it alone.
pub const DEFAULT_LOGIN_RATE: u32 = 20;

/// Default outbox cap: a thousand messages of at most 4 KiB bound what one
/// absent user can make the server hold to 4 MiB.
pub const DEFAULT_MAX_QUEUED: usize = 1000;

/// Default bytes in flight per session (half the default output cap).
pub const DEFAULT_WINDOW_BYTES: usize = 128 * 1024;

/// Default steady send rate per user, per second: far above what a person
/// types, ample for scripts, and a hundredth of what the server delivers.
pub const DEFAULT_SEND_RATE: u32 = 100;

/// Default burst per user: a script may send this many at once.
pub const DEFAULT_SEND_BURST: u32 = 200;

/// Default bytes of message text held for all users together: sized for a
/// small host (the server's whole footprint stays well under 256 MiB).
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 << 20;

/// Default lifetime of a message waiting for an offline recipient.
pub const DEFAULT_MESSAGE_TTL: Duration = Duration::from_secs(7 * 86_400);

/// A deadline the event loop keeps in its timer wheel for the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Check whether the connection has been silent too long. `serial`
    /// tells a current timer from a stale one left by an earlier connection
    /// that had the same id (a connection has one live at a time: armed at
    /// accept, and again only by the check of the one that fired).
    Heartbeat { conn: ConnId, serial: u64 },
    /// The user's lockout may have ended.
    Lockout(UserId),
    /// The connection must have logged in by now. `due` tells it from a
    /// stale timer of an earlier connection with the same id.
    Login { conn: ConnId, due: Instant },
    /// Refusals counted rather than logged may be due for their summary.
    RefusalSummary,
    /// A user's presence changes were held back to coalesce them; the
    /// state they are in now may be due for a notice.
    Presence(UserId),
    /// The oldest message waiting for `user` may have expired. `due` tells
    /// the live timer from a stale one (each user has at most one live).
    Expiry { user: UserId, due: Instant },
}

/// What the event loop must do on the core's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Queue encoded lines (newlines included) for the connection: bytes
    /// `start..end` of the pass's output, [`Effects::bytes`]. Lines are
    /// encoded into one buffer rather than a string each, so steady
    /// traffic allocates nothing per message, and lines for the same
    /// connection in a row share one effect.
    Send { conn: ConnId, start: usize, end: usize },
    /// Close the connection once what is queued for it has been written.
    /// The core has already forgotten it.
    Close { conn: ConnId },
    /// Call [`Core::timer_fired`] with `timer` at or after `at`.
    Arm { at: Instant, timer: Timer },
    /// Check a password against an argon2id hash off the loop's thread,
    /// then call [`Core::verified`] with the answer. Until then, feed no
    /// line from the connection to the core.
    Verify(Box<Verification>),
}

/// A password to check against a hash, and whose login it concludes.
#[derive(Clone, PartialEq, Eq)]
pub struct Verification {
    pub conn: ConnId,
    /// Tells this login's answer from a late one for an earlier login on
    /// a connection that had the same id.
    pub serial: u64,
    pub secret: Secret,
    /// The password the client sent.
    pub attempt: String,
}

/// Passwords never reach a log line, not even through `{:?}`.
impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verification {{ conn: {}, serial: {}, .. }}", self.conn, self.serial)
    }
}

/// The answer to an [`Effect::Verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The password matches the hash.
    Right,
    /// It does not.
    Wrong,
    /// It was not checked: too many checks are waiting. The client is
    /// told `DENIED busy` and may try again after a pause.
    Busy,
}

/// A login waiting for its password check.
#[derive(Debug)]
struct Pending {
    serial: u64,
    user: UserId,
    p2p_port: u16,
    /// The hash checked: if a reload changes it meanwhile, the answer is
    /// about a password that no longer applies.
    secret: Secret,
}

/// The answer to a connection just accepted ([`Core::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Keep it.
    Accept,
    /// Keep it; this connection, which had not logged in, was told
    /// `BYE server-full` and is closed (an [`Effect::Close`] is queued) to
    /// make room.
    Evict(ConnId),
    /// Tell it `HELLO 1 0` and `BYE reason`, and close it.
    Refuse(ByeReason),
}

/// Whether `id` is still the connection with `serial` and has not logged in.
fn waiting(conns: &ConnTable, id: ConnId, serial: u64) -> bool {
    conns.get(&id).is_some_and(|c| c.serial == serial && c.logged_in.is_none())
}

/// One open connection.
#[derive(Debug)]
struct Conn {
    pub ip: IpAddr,
    /// Its user once logged in (see [`Conn::user`]): four bytes, as user
    /// ids are (the [`Users`] index holds them as `u32`).
    logged_in: Option<u32>,
    pub p2p_port: u16,
    /// The fingerprint of the certificate its peer-to-peer listener
    /// presents (TLS), from its last LOGIN; handed out with its address.
    p2p_cert: Option<Box<str>>,
    last_seen: Instant,
    /// Tells this connection from a later one reusing its id.
    serial: u64,
    /// When it was accepted; once its user logged in, when they did (only
    /// a connection that has not logged in is compared by age). Until the
    /// login, its deadline is this plus the login timeout (not a field of
    /// its own: every connection would carry it long after logging in).
    connected: Instant,
    /// A login whose password is being checked off the loop. Boxed: only
    /// a connection in the middle of a login has one, and every other
    /// connection should not carry its room.
    verifying: Option<Box<Pending>>,
    /// After a `rate-limited` refusal: when its user has a token again.
    /// Until then the event loop reads no more from it ([`Core::read_hold`]).
    read_hold: Option<Instant>,
    /// The user its last command named, found by name (a cache: checked
    /// against the name each time, see `other_user`).
    recent: Option<u32>,
}

impl Conn {
    /// The user logged in on this connection.
    #[inline]
    fn user(&self) -> Option<UserId> {
        self.logged_in.map(|id| id as UserId)
    }

    /// The user its last command named.
    #[inline]
    fn recent_user(&self) -> Option<UserId> {
        self.recent.map(|id| id as UserId)
    }

    /// Remembers the user its last command named (a cache: an id that
    /// does not fit is simply not remembered).
    #[inline]
    fn set_recent_user(&mut self, user: UserId) {
        self.recent = u32::try_from(user).ok();
    }
}

/// Open connections by id. Ids are the event loop's slab keys, small and
/// dense, so a vector indexed by id beats hashing on every line.
#[derive(Debug, Default)]
struct ConnTable {
    slots: Vec<Option<Conn>>,
    len: usize,
}

impl ConnTable {
    pub fn get(&self, id: &ConnId) -> Option<&Conn> {
        self.slots.get(*id)?.as_ref()
    }

    pub fn get_mut(&mut self, id: &ConnId) -> Option<&mut Conn> {
        self.slots.get_mut(*id)?.as_mut()
    }

    fn insert(&mut self, id: ConnId, conn: Conn) {
        if id >= self.slots.len() {
            self.slots.resize_with(id + 1, || None);
        }
        if self.slots[id].replace(conn).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, id: &ConnId) -> Option<Conn> {
        let conn = self.slots.get_mut(*id)?.take();
        if conn.is_some() {
            self.len -= 1;
        }
        conn
    }

    fn keys(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots.iter().enumerate().filter(|(_, c)| c.is_some()).map(|(id, _)| id)
    }

    /// Gives back the room a burst of connections left behind.
    fn shrink(&mut self) {
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        self.slots.shrink_to_fit();
    }
}

/// Buffers bigger than this after a pass are released, not kept.
const BURST_BYTES: usize = 256 * 1024;

/// The effects of a pass and the bytes their lines live in. Dropping it
/// clears both, ready for the next pass.
pub struct Effects<'a> {
    list: &'a mut Vec<Effect>,
    next: usize,
    out: &'a mut String,
}

impl Effects<'_> {
    /// The bytes of an [`Effect::Send`].
    pub fn bytes(&self, start: usize, end: usize) -> &[u8] {
        self.out.as_bytes().get(start..end).unwrap_or_default()
    }
}

impl Iterator for Effects<'_> {
    type Item = Effect;

    fn next(&mut self) -> Option<Effect> {
        let effect = self.list.get(self.next).cloned();
        self.next += 1;
        effect
    }
}

impl Drop for Effects<'_> {
    fn drop(&mut self) {
        self.list.clear();
        self.out.clear();
        // A burst (a backlog at login, a storm of presence notices) is
        // over: give its memory back rather than keep the peak for good.
        if self.out.capacity() > BURST_BYTES {
            *self.out = String::new();
        }
        if self.list.capacity() * std::mem::size_of::<Effect>() > BURST_BYTES {
            *self.list = Vec::new();
        }
    }
}

/// The chat server's whole state.
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    /// Every account, listed in the credentials file or not, by id and by
    /// name ([`Core::user_id`] finds only listed ones).
    users: Users,
    conns: ConnTable,
    /// Every user's messages not yet acknowledged (by user id, in step
    /// with `users`), and their total size.
    outboxes: Outboxes,
    /// The send rate every user is held to.
    rate_limit: RateLimit,
    /// New messages were refused for `--max-queued-bytes`, and the log
    /// said so (it says so once, and again when there is room).
    server_full_logged: bool,
    /// Logged-in users.
    online: Online,
    /// Login attempts and failed logins per address, for throttling.
    throttle: LoginThrottle,
    /// Connections open, and the pace of new ones, per address.
    addresses: AddressTable,
    /// Connections in connect order, to find the oldest not logged in.
    arrivals: Arrivals,
    /// The next connection's serial number.
    next_serial: u64,
    /// Which refusals are logged one by one and which are summarised.
    refusals: Refusals,
    /// Presence notices: coalescing and each recipient's allowance.
    presence: Presence,
    effects: Vec<Effect>,
    /// The lines of this pass's `Send` effects, back to back.
    out: String,
    /// Changes to durable state since the last drain (only when durable),
    /// each with the user whose state it changes.
    records: Vec<(UserId, Record)>,
    /// Journal space new messages may still take (`None`: no limit known);
    /// set by the event loop each pass from [`Journal::growth_budget`].
    ///
    /// [`Journal::growth_budget`]: crate::server::journal::Journal::growth_budget
    storage_budget: Option<u64>,
    /// Fills a buffer with unpredictable bytes for grant tokens; the OS
    /// generator, or a fixed sequence in tests.
    random: fn(&mut [u8]) -> bool,
    /// Serial of the latest [`Effect::Verify`].
    verifications: u64,
    /// Kept between acknowledgements so that one does not allocate.
    delivered_scratch: Vec<(UserId, u64)>,
    /// `DELIVERED` frames gathered for a moment before they are sent.
    confirmations: Confirmations,
    /// Counters since start, for the operator.
    stats: Stats,
    /// The wall-clock time of a recent monotonic one.
    wall: WallClock,
}

/// A monotonic time and the wall-clock time it was (milliseconds since
/// the Unix epoch), to date what the core accepts without reading a clock.
/// Until the event loop sets it, every time is the epoch.
#[derive(Debug, Clone, Copy, Default)]
struct WallClock {
    anchor: Option<(Instant, u64)>,
}

impl WallClock {
    /// The acceptance of something at `at`, with its wall-clock time.
    #[inline]
    fn accepted(&self, at: Instant) -> Accepted {
        let Some((then, ms)) = self.anchor else {
            return Accepted { at, unix_ms: 0 };
        };
        let unix_ms = match at.checked_duration_since(then) {
            Some(after) => ms.saturating_add(after.as_millis() as u64),
            None => ms.saturating_sub(then.duration_since(at).as_millis() as u64),
        };
        Accepted { at, unix_ms }
    }
}

/// Journal bytes a record takes besides a message's text, near enough
/// (framing, names, numbers), for budgets and estimates.
pub(super) const SNAPSHOT_RECORD_BYTES: usize = 128;

/// Where an incremental snapshot ([`Core::snapshot_step`]) stands: every
/// user before `user` is written; of `user`, nothing yet (`after` is
/// `None`), or the header and the messages up to sequence number `after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotCursor {
    user: UserId,
    after: Option<u64>,
}

impl SnapshotCursor {
    /// Whether a change to `user`'s state made while the snapshot is being
    /// written must be added to it too: only for the part already written.
    /// A change to a part not yet written is not: that part, written later,
    /// already shows it. (A new message always lands past what is written.)
    pub fn covers(&self, user: UserId, record: &Record) -> bool {
        match user.cmp(&self.user) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                self.after.is_some() && !matches!(record, Record::Queued { .. })
            }
        }
    }
}

/// Bytes of randomness in a peer-to-peer grant token (printed as hex).
const TOKEN_BYTES: usize = 16;

/// The operating system's random generator.
fn os_random(buf: &mut [u8]) -> bool {
    getrandom::fill(buf).is_ok()
}

/// Encodes `msg` at the end of `out` and queues it for `conn`. A free
/// function, so callers can encode frames that borrow other parts of the
/// core (user names) without copying them.
#[inline]
fn emit(out: &mut String, effects: &mut Vec<Effect>, conn: ConnId, msg: &ServerMsg<'_>) {
    let start = out.len();
    msg.encode(out);
    let end = out.len();
    // Lines for one connection back to back (a window of messages) make
    // one effect: the loop then queues them with one copy.
    if let Some(Effect::Send { conn: last, end: last_end, .. }) = effects.last_mut() {
        if *last == conn && *last_end == start {
            *last_end = end;
            return;
        }
    }
    effects.push(Effect::Send { conn, start, end });
}

impl Core {
    pub fn new(mut accounts: Vec<Account>, config: CoreConfig) -> Self {
        accounts.sort_by(|a, b| a.name.cmp(&b.name));
        let users = Users::new(accounts.into_iter().map(|a| (a.name, a.password)));
        let online = Online::with_accounts(users.len());
        Core {
            config,
            outboxes: Outboxes::new(users.len()),
            rate_limit: RateLimit::new(config.send_rate, config.send_burst),
            server_full_logged: false,
            users,
            conns: ConnTable::default(),
            online,
            addresses: AddressTable::new(
                config.max_per_address,
                config.connection_rate,
                config.max_per_address,
            ),
            arrivals: Arrivals::default(),
            next_serial: 0,
            throttle: LoginThrottle::new(
                config.login_attempts,
                config.login_rate,
                config.throttle_table,
            ),
            refusals: Refusals::new(),
            presence: Presence::default(),
            effects: Vec::new(),
            out: String::new(),
            records: Vec::new(),
            storage_budget: None,
            random: os_random,
            verifications: 0,
            delivered_scratch: Vec::new(),
            confirmations: Confirmations::default(),
            wall: WallClock::default(),
            stats: Stats::default(),
        }
    }

    /// A fresh grant token: 128 random bits as 32 hex digits.
    fn new_token(&mut self) -> Option<String> {
        let mut bytes = [0u8; TOKEN_BYTES];
        if !(self.random)(&mut bytes) {
            return None;
        }
        Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The effects produced since the last call, in order.
    pub fn effects(&mut self) -> Effects<'_> {
        Effects { list: &mut self.effects, next: 0, out: &mut self.out }
    }

    /// Whether effects are waiting to be drained.
    pub fn has_effects(&self) -> bool {
        !self.effects.is_empty()
    }

    /// The journal records produced since the last call, in order, each
    /// with the user whose state it changes.
    pub fn records(&mut self) -> std::vec::Drain<'_, (UserId, Record)> {
        self.records.drain(..)
    }

    /// Keeps a change to `user`'s state for the journal, if there is one.
    fn record(&mut self, user: UserId, make: impl FnOnce(&Self) -> Record) {
        if self.config.durable {
            let record = make(self);
            self.records.push((user, record));
        }
    }

    /// Ties the core's monotonic times to the wall clock: `now` is `wall`.
    /// The event loop calls it every pass, so the times messages carry
    /// follow the system clock's adjustments.
    pub fn set_wall_clock(&mut self, now: Instant, wall: SystemTime) {
        self.wall = WallClock { anchor: Some((now, crate::time::unix_ms(wall))) };
    }

    /// Sets how much journal space new messages may take until the next
    /// call (`None`: no limit known). Only a durable core uses it.
    pub fn set_storage_budget(&mut self, budget: Option<u64>) {
        self.storage_budget = budget;
    }

    /// Takes journal space for a new record of about `bytes`; false (and
    /// nothing taken) when the journal could not hold it.
    fn take_storage(&mut self, bytes: usize) -> bool {
        if !self.config.durable {
            return true;
        }
        match &mut self.storage_budget {
            None => true,
            Some(budget) if *budget >= bytes as u64 => {
                *budget -= bytes as u64;
                true
            }
            Some(_) => false,
        }
    }

    /// Number of open connections the core knows.
    pub fn connections(&self) -> usize {
        self.conns.len
    }

    /// The id of the account `name`, if the credentials file lists it.
    #[inline]
    fn user_id(&self, name: &str) -> Option<UserId> {
        self.users.find(name).filter(|&id| self.users[id].password.is_some())
    }

    /// Whether `id` is the account `name` and the credentials file lists
    /// it: what [`Core::user_id`] would say, without hashing.
    #[inline]
    fn listed_as(&self, id: UserId, name: &str) -> bool {
        self.users.get(id).is_some_and(|u| u.password.is_some() && u.name == name)
    }

    /// The id of `name`, listed or not, creating an unlisted account for a
    /// name never seen (journal replay); true when it was created.
    fn id_or_unlisted(&mut self, name: &str) -> (UserId, bool) {
        if let Some(id) = self.users.find(name) {
            return (id, false);
        }
        let id = self.users.add(name.to_owned(), None);
        self.outboxes.add_user();
        (id, true)
    }

    /// Whether `user` has blocked `other`.
    #[inline]
    fn has_blocked(&self, user: UserId, other: UserId) -> bool {
        self.users[user].state().blocked.contains(&other)
    }

    /// Whether anyone at all has blocked `user`, online or not.
    fn blocked_by_anyone(&self, user: UserId) -> bool {
        self.users[user].state().blocked_by > 0
    }

    /// Makes `user` block or unblock `target`, keeping the target's count
    /// of blockers in step; true if that changed anything.
    fn set_block(&mut self, user: UserId, target: UserId, block: bool) -> bool {
        let changed = if block {
            self.users[user].state_mut().blocked.insert(target)
        } else {
            self.users[user].state_mut().blocked.remove(&target)
        };
        if changed {
            let count = &mut self.users[target].state_mut().blocked_by;
            *count = if block { *count + 1 } else { count.saturating_sub(1) };
        }
        changed
    }

    #[inline]
    fn name(&self, user: UserId) -> &str {
        &self.users[user].name
    }

    // -- output helpers ------------------------------------------------------

    #[inline]
    fn send(&mut self, conn: ConnId, msg: &ServerMsg<'_>) {
        emit(&mut self.out, &mut self.effects, conn, msg);
    }

    fn fail(&mut self, conn: ConnId, failure: Failure<'_>) {
        self.send(conn, &ServerMsg::Fail(failure));
    }

    /// Sends to `user` if they are logged in.
    fn send_to_user(&mut self, user: UserId, msg: &ServerMsg<'_>) {
        if let Some(conn) = self.users.session(user) {
            self.send(conn, msg);
        }
    }

    /// Sends the delivery confirmations gathered for `conn` now.
    fn confirm_now(&mut self, conn: ConnId) {
        if self.confirmations.has(conn) {
            let pending = self.confirmations.take(conn);
            self.send_confirmations(conn, &pending);
        }
    }

    /// `DELIVERED` frames for `conn`: one per recipient, split only where
    /// a count would pass what one frame may say.
    fn send_confirmations(&mut self, conn: ConnId, pending: &[(UserId, u64)]) {
        for &(recipient, mut count) in pending {
            let user = &self.users[recipient].name;
            while count > 0 {
                let part = count.min(MAX_DELIVERED_COUNT);
                let msg = ServerMsg::Delivered { user, count: part };
                emit(&mut self.out, &mut self.effects, conn, &msg);
                count -= part;
            }
        }
    }

    /// When [`Core::tick`] must next be called (for delivery confirmations
    /// gathered to be sent together), if there is anything to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.confirmations.due()
    }

    /// Does what is due at `now` that is finer than the timer wheel's
    /// seconds: sends the gathered delivery confirmations.
    pub fn tick(&mut self, now: Instant) {
        if self.confirmations.due().is_some_and(|due| due <= now) {
            for (conn, pending) in self.confirmations.take_all() {
                self.send_confirmations(conn, &pending);
            }
        }
    }

    /// Sends `BYE reason`, forgets the connection, and asks the loop to
    /// close it after flushing.
    fn bye(&mut self, conn: ConnId, reason: ByeReason) {
        // What was delivered is said before goodbye.
        self.confirm_now(conn);
        self.send(conn, &ServerMsg::Bye { reason });
        self.effects.push(Effect::Close { conn });
        self.forget(conn);
    }

    // -- connection life cycle -----------------------------------------------

    /// Whether a connection just accepted from `ip` may stay: refused when
    /// its address holds its share or opens connections too fast, or when
    /// the table is full and every connection has logged in; otherwise
    /// accepted, after closing the oldest connection that has not logged
    /// in (`BYE server-full`) if the table is full. A logged-in user is
    /// never closed for a newcomer, nor a connection accepted at `now`: the
    /// event loop passes one `now` for a whole batch of accepts, so that a
    /// connection has its input read (its LOGIN) before a flood arriving
    /// in the same batch can push it out. Call [`Core::connected`] next if
    /// it is accepted.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admit {
        let over = self.addresses.check(ip, now);
        if over == Err(Over::Share) {
            let why = "at --max-connections-per-address";
            return self.refuse_connection(ip, ByeReason::TooManyConnections, why, now);
        }
        let mut victim = None;
        if self.conns.len >= self.config.max_connections {
            let conns = &self.conns;
            victim = self.arrivals.oldest(|id, serial| waiting(conns, id, serial));
            // The oldest is not older than now: neither is any other.
            victim = victim.filter(|id| conns.get(id).is_some_and(|c| c.connected < now));
            if victim.is_none() {
                let why = "at --max-connections, every connection logged in";
                return self.refuse_connection(ip, ByeReason::ServerFull, why, now);
            }
        }
        if over == Err(Over::Rate) {
            let why = "opening connections faster than --connection-rate";
            return self.refuse_connection(ip, ByeReason::TooManyConnections, why, now);
        }
        let Some(victim) = victim else {
            return Admit::Accept;
        };
        if let Some(state) = self.conns.get(&victim) {
            let (victim_ip, since) = (state.ip, now.saturating_duration_since(state.last_seen));
            if self.note_refusal(victim_ip, "evicted", now) {
                info!(
                    "closed connection {victim} ({victim_ip}), not logged in, to make room for \
                     one from {ip} (at --max-connections; silent for {}s)",
                    since.as_secs()
                );
            }
        }
        self.stats.refused(Refused::Bye, ByeReason::ServerFull.as_str());
        self.bye(victim, ByeReason::ServerFull);
        Admit::Evict(victim)
    }

    /// Logs a refused connection (summarised when repeated) and answers.
    fn refuse_connection(
        &mut self,
        ip: IpAddr,
        reason: ByeReason,
        why: &str,
        now: Instant,
    ) -> Admit {
        self.stats.refused(Refused::Bye, reason.as_str());
        if self.note_refusal(ip, reason.as_str(), now) {
            info!("refused connection from {ip}: {} ({why})", reason.as_str());
        }
        Admit::Refuse(reason)
    }

    /// A connection was accepted from `peer`.
    pub fn connected(&mut self, conn: ConnId, peer: SocketAddr, now: Instant) {
        let due = now + self.config.timeout;
        let login_due = now + self.config.login_timeout;
        let ip = peer.ip();
        let serial = self.next_serial;
        self.next_serial += 1;
        let state = Conn {
            ip,
            logged_in: None,
            p2p_port: 0,
            p2p_cert: None,
            last_seen: now,
            serial,
            connected: now,
            verifying: None,
            read_hold: None,
            recent: None,
        };
        self.conns.insert(conn, state);
        self.addresses.opened(ip, now);
        let conns = &self.conns;
        self.arrivals.push(conn, serial, conns.len, |id, serial| waiting(conns, id, serial));
        self.effects.push(Effect::Arm { at: due, timer: Timer::Heartbeat { conn, serial } });
        let login = Timer::Login { conn, due: login_due };
        self.effects.push(Effect::Arm { at: login_due, timer: login });
        let timeout_secs = self.config.timeout.as_secs();
        self.send(conn, &ServerMsg::Hello { version: VERSION, timeout_secs });
        debug!("connection {conn} from {peer}");
    }

    /// A complete line (line ending removed) arrived on `conn`.
    pub fn received(&mut self, conn: ConnId, line: &[u8], now: Instant) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return; // Closed earlier in this pass; the rest is ignored.
        };
        state.last_seen = now;
        let Ok(text) = std::str::from_utf8(line) else {
            self.refuse(conn, Failure::BadEncoding);
            return;
        };
        match ClientMsg::parse(text) {
            Ok(msg) => self.dispatch(conn, msg, now),
            Err(error) => {
                let detail = error.to_string();
                self.refuse(conn, Failure::BadCommand { detail: &detail });
            }
        }
    }

    /// Until when the event loop should read no more from `conn`: its user
    /// was just refused for their send rate, and whatever else they have
    /// sent would most likely be refused too. Waiting for their next token
    /// lets TCP slow a flooder down, so the server spends its time on
    /// everyone else rather than on refusing one user's lines; nothing is
    /// lost, the lines are read and answered then. `None`: read on.
    pub fn read_hold(&mut self, conn: ConnId, now: Instant) -> Option<Instant> {
        let state = self.conns.get_mut(&conn)?;
        let hold = state.read_hold.filter(|&until| until > now);
        state.read_hold = hold;
        hold
    }

    /// Whether the event loop may feed `conn` its next line now: not while
    /// its password is being checked ([`Core::awaits_verification`]) nor
    /// during a read hold ([`Core::read_hold`]). One lookup, for every line.
    pub fn takes_more_lines(&mut self, conn: ConnId, now: Instant) -> bool {
        let Some(state) = self.conns.get_mut(&conn) else {
            return true; // Closed: the rest is ignored as it comes.
        };
        if state.read_hold.is_some_and(|until| until <= now) {
            state.read_hold = None;
        }
        state.verifying.is_none() && state.read_hold.is_none()
    }

    /// A line longer than the protocol allows arrived and was dropped.
    pub fn line_too_long(&mut self, conn: ConnId, now: Instant) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.last_seen = now;
            self.refuse(conn, Failure::LineTooLong);
        }
    }

    /// Answers a refused request and logs it for the operator, in the
    /// words of the reply (`bad-command unknown verb`); repeats from one
    /// address are summarised instead (see [`Refusals`]).
    fn refuse(&mut self, conn: ConnId, failure: Failure<'_>) {
        self.stats.refused(Refused::Fail, failure.code());
        // Every refusal answers a line just received, so the connection's
        // last_seen is the current time.
        let logged = match self.conns.get(&conn) {
            Some(state) => self.note_refusal(state.ip, failure.code(), state.last_seen),
            None => true,
        };
        if logged {
            let detail = match failure {
                Failure::BadCommand { detail } => Some(detail),
                _ => failure.user(),
            };
            let (who, code) = (self.describe(conn), failure.code());
            match detail {
                Some(detail) => info!("refused {who}: {code} {detail}"),
                None => info!("refused {who}: {code}"),
            }
        }
        self.fail(conn, failure);
    }

    /// Whether a refusal from `ip` is to be logged on its own; arms the
    /// summary timer when one is needed.
    fn note_refusal(&mut self, ip: IpAddr, code: &'static str, now: Instant) -> bool {
        match self.refusals.note(ip, code, now) {
            Verdict::Log => true,
            Verdict::Counted => false,
            Verdict::CountedReportAt(at) => {
                self.effects.push(Effect::Arm { at, timer: Timer::RefusalSummary });
                false
            }
        }
    }

    /// "user A (1.2.3.4)" or "connection 7 (1.2.3.4)", for log lines.
    fn describe(&self, conn: ConnId) -> String {
        let Some(state) = self.conns.get(&conn) else {
            return format!("connection {conn}");
        };
        match state.user() {
            Some(user) => format!("user {} ({})", self.name(user), state.ip),
            None => format!("connection {conn} ({})", state.ip),
        }
    }

    fn dispatch(&mut self, conn: ConnId, msg: ClientMsg<'_>, now: Instant) {
        match self.conns.get(&conn).and_then(Conn::user) {
            Some(user) => self.command(conn, user, msg, now),
            None => self.before_login(conn, msg, now),
        }
    }

    fn hello(&mut self, conn: ConnId, version: u32) {
        if version != VERSION {
            self.refuse(conn, Failure::Version);
            self.bye(conn, ByeReason::ProtocolError);
        }
    }

    /// The connection closed (end of file, reset, or error) without LOGOUT.
    /// The user goes offline silently, as after Ctrl-C in the original.
    pub fn disconnected(&mut self, conn: ConnId) {
        if self.conns.get(&conn).and_then(Conn::user).is_some() {
            info!("{} disconnected without logging out", self.describe(conn));
        }
        self.forget(conn);
    }

    /// Removes a connection and, if it carried a session, takes its user
    /// offline: their outbox stays, their pending consent requests go.
    fn forget(&mut self, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        // A connection gone without a goodbye cannot be told any more.
        self.confirmations.take(conn);
        self.addresses.closed(state.ip);
        let Some(user) = state.user() else {
            return;
        };
        if self.users.session(user) != Some(conn) {
            return;
        }
        self.users.set_session(user, None);
        self.online.remove(user);
        self.tell_senders_unreachable(user);
        // Offline, the user's messages can expire again.
        self.arm_expiry(user);
        for target in std::mem::take(&mut self.users[user].state_mut().asking) {
            self.users[target].state_mut().asked_by.remove(&user);
        }
        for asker in std::mem::take(&mut self.users[user].state_mut().asked_by) {
            self.users[asker].state_mut().asking.remove(&user);
        }
        // Offline with nothing pending, the user costs no more than before
        // their first login. (The connection's last line is recent enough
        // a time to tell whether their send rate is back to full.)
        self.users[user].tidy(state.last_seen);
    }

    /// `user`'s session ended with live messages not acknowledged: they
    /// stay in the outbox for the next login, and their senders hear so.
    fn tell_senders_unreachable(&mut self, user: UserId) {
        let mut senders = Vec::new();
        self.outboxes.session_ended(user, |sender| senders.push(sender));
        let name = self.users[user].name.clone();
        for sender in senders {
            // Confirmations of earlier messages first: the sender's client
            // matches both to its messages in the order they were sent.
            if let Some(conn) = self.users.session(sender) {
                self.confirm_now(conn);
            }
            let msg = ServerMsg::Queued { user: &name, reason: QueueReason::Unreachable };
            self.send_to_user(sender, &msg);
        }
    }

    /// `about` logged in (`online`) or out: tells the others now, or once
    /// the change is no longer part of a rapid series (see [`Presence`]).
    fn presence_changed(&mut self, about: UserId, online: bool, now: Instant) {
        match self.presence.changed(about, online, now) {
            Decision::Now => self.announce_presence(about, online, now),
            Decision::Later(at) => {
                self.effects.push(Effect::Arm { at, timer: Timer::Presence(about) })
            }
            Decision::Wait => {}
        }
        if self.presence.is_large(self.online.len()) {
            self.presence.tidy(now);
        }
    }

    /// Tells every online user that `about` came or went, but those
    /// `about` has blocked and those who have blocked `about`, and those
    /// who have had their share of notices for now.
    fn announce_presence(&mut self, about: UserId, online: bool, now: Instant) {
        let name = self.users[about].name.clone();
        let msg = ServerMsg::Presence { user: &name, online };
        let audience: Vec<UserId> = self
            .online
            .iter()
            .filter(|&u| u != about && !self.has_blocked(about, u) && !self.has_blocked(u, about))
            .collect();
        for user in audience {
            if self.presence.allow(user, now) {
                self.send_to_user(user, &msg);
            }
        }
    }

    /// LOGOUT: goodbye to the leaver, then a presence notice to the others.
    fn logout(&mut self, conn: ConnId, user: UserId, now: Instant) {
        info!("{} logged out", self.describe(conn));
        self.bye(conn, ByeReason::Logout);
        self.presence_changed(user, false, now);
    }

    /// Server shutdown: every connection is told and closed, and refusals
    /// counted for a summary are reported now.
    pub fn shutdown(&mut self, now: Instant) {
        let conns: Vec<ConnId> = self.conns.keys().collect();
        for conn in conns {
            self.bye(conn, ByeReason::Shutdown);
        }
        for summary in self.refusals.finish(now) {
            info!("{summary}");
        }
    }

    // -- login ---------------------------------------------------------------

    /// Keeps the peer-to-peer certificate fingerprint a LOGIN names (or
    /// forgets an earlier one): it is the logged-in session's once the
    /// login succeeds.
    fn note_p2p_cert(&mut self, conn: ConnId, cert: Option<&str>) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.p2p_cert = cert.map(Box::from);
        }
    }

    fn login(&mut self, conn: ConnId, name: &str, p2p_port: u16, password: &str, now: Instant) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        let ip = state.ip;
        if state.verifying.is_some() {
            // The event loop feeds no line while a login is being checked;
            // should one come anyway, it is not checked alongside.
            self.stats.refused(Refused::Denied, DenyReason::Busy.as_str());
            self.send(conn, &ServerMsg::Denied { reason: DenyReason::Busy });
            return;
        }
        if let Err(refusal) = self.throttle.attempt(ip, now) {
            self.stats.refused(Refused::Denied, DenyReason::Throttled.as_str());
            if self.note_refusal(ip, DenyReason::Throttled.as_str(), now) {
                let why = match refusal {
                    Refusal::Failures => "too many failed logins from there",
                    Refusal::Rate => "too many logins from there",
                };
                info!("refused login for {name} from {ip}: {why}");
            }
            self.send(conn, &ServerMsg::Denied { reason: DenyReason::Throttled });
            return;
        }
        let Some(user) = self.user_id(name) else {
            self.deny_login(conn, name, DenyReason::UnknownUser, now);
            return;
        };
        if self.locked(user, now) {
            self.deny_login(conn, name, DenyReason::Locked, now);
            return;
        }
        if self.users[user].state().disabled {
            self.deny_login(conn, name, DenyReason::Disabled, now);
            return;
        }
        match &self.users[user].password {
            Some(Secret::Argon2id(_)) => self.ask_verification(conn, user, p2p_port, password),
            Some(secret) => {
                let right = secret.verify(password);
                self.conclude_login(conn, user, p2p_port, right, now);
            }
            None => self.deny_login(conn, name, DenyReason::UnknownUser, now),
        }
    }

    /// Asks the event loop to check `password` against `user`'s hash, and
    /// holds the connection's further lines until the answer.
    fn ask_verification(&mut self, conn: ConnId, user: UserId, p2p_port: u16, password: &str) {
        let (Some(state), Some(secret)) = (self.conns.get_mut(&conn), &self.users[user].password)
        else {
            return;
        };
        self.verifications += 1;
        let serial = self.verifications;
        state.verifying =
            Some(Box::new(Pending { serial, user, p2p_port, secret: secret.clone() }));
        let secret = secret.clone();
        let job = Verification { conn, serial, secret, attempt: password.to_owned() };
        self.effects.push(Effect::Verify(Box::new(job)));
    }

    /// Whether `conn`'s login is being checked: the event loop must feed
    /// it no line until [`Core::verified`] has concluded it.
    pub fn awaits_verification(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.verifying.is_some())
    }

    /// The answer to the [`Effect::Verify`] numbered `serial` for `conn`
    /// arrived: concludes that login. Returns false (and does nothing) for
    /// an answer no connection waits for any longer (closed, or its id
    /// reused); true when the connection may be fed lines again.
    pub fn verified(
        &mut self,
        conn: ConnId,
        serial: u64,
        check: PasswordCheck,
        now: Instant,
    ) -> bool {
        let Some(state) = self.conns.get_mut(&conn) else {
            return false;
        };
        if state.verifying.as_ref().is_none_or(|p| p.serial != serial) {
            return false;
        }
        let Some(pending) = state.verifying.take() else {
            return false;
        };
        let name = self.users[pending.user].name.clone();
        // A reload changed the password meanwhile: this answer is about
        // one that no longer applies, so the client is asked to try again.
        let current = self.users[pending.user].password.as_ref() == Some(&pending.secret);
        match check {
            PasswordCheck::Busy => self.deny_login(conn, &name, DenyReason::Busy, now),
            _ if !current => self.deny_login(conn, &name, DenyReason::Busy, now),
            PasswordCheck::Right | PasswordCheck::Wrong => {
                let right = check == PasswordCheck::Right;
                self.conclude_login(conn, pending.user, pending.p2p_port, right, now);
            }
        }
        true
    }

    /// Ends a login whose password was found `right` or not.
    fn conclude_login(
        &mut self,
        conn: ConnId,
        user: UserId,
        p2p_port: u16,
        right: bool,
        now: Instant,
    ) {
        // Checked again: answers that come back after the account was
        // locked say nothing, so guesses checked side by side gain no more
        // than three in a row.
        // So is a disable that came meanwhile.
        let result = match self.locked(user, now) {
            true => Err(DenyReason::Locked),
            false if self.users[user].state().disabled => Err(DenyReason::Disabled),
            false => self.count_password(conn, user, right, now),
        };
        match result {
            Ok(()) => self.start_session(conn, user, p2p_port, now),
            Err(reason) => {
                let name = self.users[user].name.clone();
                self.deny_login(conn, &name, reason, now);
            }
        }
    }

    /// Answers `DENIED reason` to a login for `name`, logs it, and counts a
    /// failure against the address when the login checked something.
    fn deny_login(&mut self, conn: ConnId, name: &str, reason: DenyReason, now: Instant) {
        let Some(ip) = self.conns.get(&conn).map(|c| c.ip) else {
            return;
        };
        self.stats.refused(Refused::Denied, reason.as_str());
        if self.note_refusal(ip, reason.as_str(), now) {
            info!("refused login for {name} from {ip}: {}", reason.as_str());
        }
        // A locked account checks nothing, so guessing gains nothing; a
        // busy server checked nothing either.
        if matches!(
            reason,
            DenyReason::BadPassword | DenyReason::NowLocked | DenyReason::UnknownUser
        ) {
            self.throttle.count_failure(ip, now);
        }
        self.send(conn, &ServerMsg::Denied { reason });
    }

    /// Whether `user` is locked now; forgets a lockout that is over.
    fn locked(&mut self, user: UserId, now: Instant) -> bool {
        let account = &self.users[user];
        if account.state().locked_until.is_some_and(|until| now < until) {
            return true;
        }
        if account.state().locked_until.is_some() {
            self.users[user].state_mut().locked_until = None;
        }
        false
    }

    /// Applies the lockout rules to a password found `right` or not; on
    /// success the failure count starts over.
    fn count_password(
        &mut self,
        conn: ConnId,
        user: UserId,
        right: bool,
        now: Instant,
    ) -> Result<(), DenyReason> {
        let block_time = self.config.block_time;
        let from = self.conns.get(&conn).map(|c| c.ip);
        if right {
            if self.users[user].state().failures != 0 {
                self.users[user].state_mut().failures = 0;
            }
            return Ok(());
        }
        let account = self.users[user].state_mut();
        account.failures += 1;
        if account.failures < MAX_FAILURES {
            return Err(DenyReason::BadPassword);
        }
        account.failures = 0;
        let until = now + block_time;
        account.locked_until = Some(until);
        let from = from.map_or_else(String::new, |ip| format!(", the last from {ip}"));
        warn!(
            "account {} locked for {}s after {MAX_FAILURES} failed logins{from}",
            self.users[user].name,
            block_time.as_secs()
        );
        self.effects.push(Effect::Arm { at: until, timer: Timer::Lockout(user) });
        self.record(user, |core| Record::Locked { user: core.name(user).to_owned(), until });
        Err(DenyReason::NowLocked)
    }

    fn start_session(&mut self, conn: ConnId, user: UserId, p2p_port: u16, now: Instant) {
        let replaced = self.users.session(user);
        if let Some(old) = replaced {
            let ip = self.conns.get(&conn).map(|state| state.ip);
            let ip = ip.map_or_else(String::new, |ip| format!(" from {ip}"));
            info!("{} logged in again{ip}; ending the older session", self.describe(old));
            self.bye(old, ByeReason::Replaced);
        }
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        // User ids fit in u32 (see `Users::add`).
        state.logged_in = u32::try_from(user).ok();
        state.p2p_port = p2p_port;
        state.connected = now;
        let ip = state.ip;
        self.stats.login();
        self.users.set_session(user, Some(conn));
        self.online.insert(user);
        info!("user {} logged in from {ip}", self.name(user));
        let name = self.users[user].name.clone();
        self.send(conn, &ServerMsg::Welcome { user: &name });
        self.pump(user);
        // Taken only if there are any: reading allocates no state, so a
        // user with nothing to keep costs nothing while logged in.
        let holders = match self.users[user].state().address_holders.is_empty() {
            true => Default::default(),
            false => std::mem::take(&mut self.users[user].state_mut().address_holders),
        };
        for holder in holders {
            self.send_to_user(holder, &ServerMsg::AddressChanged { user: &name });
        }
        if replaced.is_none() {
            self.presence_changed(user, true, now);
        }
    }

    /// Sends outbox entries not yet sent in this session, oldest first,
    /// while the send window (a count and a byte budget) has room.
    fn pump(&mut self, user: UserId) {
        let Some(conn) = self.users.session(user) else {
            return;
        };
        let window_bytes = self.config.window_bytes;
        let positions = self.outboxes.send_window(user, SEND_WINDOW, window_bytes);
        let outbox = self.outboxes.get(user);
        for stored in outbox.at(positions) {
            let from = &self.users[stored.from].name;
            let text = outbox.text(stored);
            let accepted_ms = stored.accepted.unix_ms;
            let msg =
                ServerMsg::Msg { seq: stored.seq, kind: stored.kind, from, accepted_ms, text };
            emit(&mut self.out, &mut self.effects, conn, &msg);
        }
    }

    /// Takes a re-read credentials file (SIGHUP) without dropping anyone:
    /// passwords change, new users appear, and users no longer listed can
    /// no longer be found by name (logins, messages to them), while a
    /// session they have open goes on. Their state is kept, should they
    /// come back.
    pub fn reload(&mut self, accounts: Vec<Account>) {
        for user in self.users.iter_mut() {
            user.password = None;
        }
        for account in accounts {
            let (id, _) = self.id_or_unlisted(&account.name);
            self.users[id].password = Some(account.password);
        }
    }

    // -- durable state -------------------------------------------------------

    /// Rebuilds outboxes, block lists and lockouts from journal records, at
    /// start-up before any connection. Records naming users the
    /// credentials file lacks are kept too (their accounts stay unlisted
    /// until a reload lists them): a missing line in the file must never
    /// cost anyone their queued messages. Returns those users' names.
    pub fn restore(&mut self, records: Vec<Record>, now: Instant) -> Vec<String> {
        let mut unlisted = Vec::new();
        for record in &records {
            self.restore_one(record, now, &mut unlisted);
        }
        // Everyone is offline at start-up: their messages' lifetimes run.
        for user in 0..self.users.len() {
            self.arm_expiry(user);
        }
        unlisted
    }

    /// Applies one record, adding to `unlisted` any user it creates.
    fn restore_one(&mut self, record: &Record, now: Instant, unlisted: &mut Vec<String>) {
        let mut id = |core: &mut Self, name: &str| {
            let (id, created) = core.id_or_unlisted(name);
            if created {
                unlisted.push(name.to_owned());
            }
            id
        };
        match record {
            Record::Queued { user, seq, kind, from, text, at } => {
                let (user, from) = (id(self, user), id(self, from));
                let accepted = self.wall.accepted(*at);
                self.outboxes.restore(user, *seq, *kind, from, text, accepted);
            }
            Record::Acked { user, seq } => {
                let user = id(self, user);
                self.outboxes.restore_acknowledged(user, *seq);
            }
            Record::Blocked { user, target } | Record::Unblocked { user, target } => {
                let (user, target) = (id(self, user), id(self, target));
                self.set_block(user, target, matches!(record, Record::Blocked { .. }));
            }
            Record::Locked { user, until } => {
                let user = id(self, user);
                if *until > now {
                    self.users[user].state_mut().locked_until = Some(*until);
                    self.effects.push(Effect::Arm { at: *until, timer: Timer::Lockout(user) });
                }
            }
            Record::NextSeq { user, next } => {
                let user = id(self, user);
                self.outboxes.raise_next_seq(user, *next);
            }
            Record::Disabled { user } | Record::Enabled { user } => {
                let user = id(self, user);
                let disabled = matches!(record, Record::Disabled { .. });
                if self.users[user].state().disabled != disabled {
                    self.users[user].state_mut().disabled = disabled;
                }
            }
        }
    }

    /// Appends to `out` the records that rebuild the durable state from
    /// `cursor` on, about `max_bytes` of them, and returns where to go on
    /// from (`None`: the snapshot is complete). Users go in id order, each
    /// with its header (next sequence number, lockout, blocks) before its
    /// outbox, oldest message first; a large outbox may be split across
    /// steps. See [`SnapshotCursor::covers`] for the changes made meanwhile.
    pub fn snapshot_step(
        &self,
        mut cursor: SnapshotCursor,
        max_bytes: usize,
        now: Instant,
        out: &mut Vec<Record>,
    ) -> Option<SnapshotCursor> {
        let mut bytes = 0;
        while let Some(account) = self.users.get(cursor.user) {
            let user = &account.name;
            let outbox = self.outboxes.get(cursor.user);
            let after = match cursor.after {
                Some(after) => after,
                None => {
                    let next = outbox.next_seq();
                    if next > 1 {
                        out.push(Record::NextSeq { user: user.clone(), next });
                    }
                    let state = account.state();
                    if let Some(until) = state.locked_until.filter(|&until| until > now) {
                        out.push(Record::Locked { user: user.clone(), until });
                    }
                    for &target in &state.blocked {
                        let target = self.users[target].name.clone();
                        out.push(Record::Blocked { user: user.clone(), target });
                    }
                    if state.disabled {
                        out.push(Record::Disabled { user: user.clone() });
                    }
                    bytes += SNAPSHOT_RECORD_BYTES * (2 + state.blocked.len());
                    0
                }
            };
            cursor.after = Some(after);
            for stored in outbox.after(after) {
                if bytes >= max_bytes {
                    return Some(cursor);
                }
                out.push(Record::Queued {
                    user: user.clone(),
                    seq: stored.seq,
                    kind: stored.kind,
                    from: self.users[stored.from].name.clone(),
                    text: outbox.text(stored).to_owned(),
                    at: stored.accepted.at,
                });
                bytes += SNAPSHOT_RECORD_BYTES + stored.text_len();
                cursor.after = Some(stored.seq);
            }
            cursor = SnapshotCursor { user: cursor.user + 1, after: None };
            if bytes >= max_bytes {
                return Some(cursor);
            }
        }
        None
    }

    /// About how many bytes a snapshot of the durable state takes: to tell
    /// whether rewriting the journal would free space.
    pub fn snapshot_size_estimate(&self) -> u64 {
        self.users
            .iter()
            .enumerate()
            .map(|(id, account)| {
                let outbox = self.outboxes.get(id);
                let messages = outbox.text_bytes();
                let records = 2 + account.state().blocked.len() + outbox.len();
                (messages + SNAPSHOT_RECORD_BYTES * records) as u64
            })
            .sum()
    }

    /// The records that rebuild today's durable state, all at once.
    #[cfg(test)]
    pub fn snapshot(&self, now: Instant) -> std::vec::IntoIter<Record> {
        let mut out = Vec::new();
        let mut cursor = Some(SnapshotCursor::default());
        while let Some(at) = cursor {
            cursor = self.snapshot_step(at, usize::MAX, now, &mut out);
        }
        out.into_iter()
    }

    // -- timers --------------------------------------------------------------

    /// Whether an armed timer can still do anything when it fires. The
    /// event loop drops those that cannot (a closed connection's heartbeat
    /// and login deadline), so a burst of short connections leaves nothing.
    pub fn timer_wanted(&self, timer: &Timer) -> bool {
        match *timer {
            Timer::Heartbeat { conn, serial } => {
                self.conns.get(&conn).is_some_and(|c| c.serial == serial)
            }
            Timer::Login { conn, due } => self.login_pending(conn, due),
            Timer::Lockout(user) => self.users[user].state().locked_until.is_some(),
            Timer::Expiry { user, due } => self.users[user].state().expiry_due == Some(due),
            Timer::RefusalSummary | Timer::Presence(_) => true,
        }
    }

    /// Whether `conn` is the connection whose login deadline is `due` (not
    /// a later one with its id) and has not logged in.
    fn login_pending(&self, conn: ConnId, due: Instant) -> bool {
        let login_timeout = self.config.login_timeout;
        self.conns
            .get(&conn)
            .is_some_and(|c| c.logged_in.is_none() && c.connected + login_timeout == due)
    }

    /// Gives back memory a burst left in the core's tables.
    pub fn shrink(&mut self, now: Instant) {
        self.conns.shrink();
        self.outboxes.release();
        self.presence.tidy(now);
        self.presence.shrink();
        // A pass's buffers keep up to `BURST_BYTES` between passes, for
        // steady traffic; once quiet, an idle server keeps none.
        if self.effects.is_empty() && self.out.is_empty() {
            self.effects = Vec::new();
            self.out = String::new();
        }
        self.delivered_scratch = Vec::new();
    }

    /// A timer armed through [`Effect::Arm`] came due.
    pub fn timer_fired(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Heartbeat { conn, serial } => self.check_heartbeat(conn, serial, now),
            Timer::Login { conn, due } => {
                if self.login_pending(conn, due) {
                    info!("{} did not log in within the login deadline", self.describe(conn));
                    self.bye(conn, ByeReason::LoginTimeout);
                }
            }
            Timer::Lockout(user) => {
                let account = &mut self.users[user];
                if account.state().locked_until.is_some_and(|until| until <= now) {
                    account.state_mut().locked_until = None;
                    info!("lockout of {} expired", account.name);
                }
            }
            Timer::Presence(user) => {
                let online = self.users.session(user).is_some();
                if self.presence.due(user, online, now) {
                    self.announce_presence(user, online, now);
                }
            }
            Timer::RefusalSummary => {
                let (summaries, next) = self.refusals.report(now);
                for summary in summaries {
                    info!("{summary}");
                }
                if let Some(at) = next {
                    self.effects.push(Effect::Arm { at, timer: Timer::RefusalSummary });
                }
            }
            Timer::Expiry { user, due } => self.expire(user, due, now),
        }
    }

    /// Arms `user`'s expiry timer for their oldest message, unless one is
    /// armed already (it is then due no later: messages only get younger
    /// towards the back) or they are online (their messages are being
    /// delivered and do not expire).
    fn arm_expiry(&mut self, user: UserId) {
        if self.users.session(user).is_some() || self.users[user].state().expiry_due.is_some() {
            return;
        }
        let Some(oldest) = self.outboxes.get(user).oldest() else {
            return;
        };
        // A lifetime past the clock's range never ends.
        let Some(due) = oldest.checked_add(self.config.message_ttl) else {
            return;
        };
        self.users[user].state_mut().expiry_due = Some(due);
        self.effects.push(Effect::Arm { at: due, timer: Timer::Expiry { user, due } });
    }

    /// `user`'s expiry timer fired: if they are still offline, every
    /// message at the front of their outbox that has waited its lifetime
    /// goes, journalled as acknowledged so replay agrees, logged once, and
    /// each sender who is online is told how many of theirs expired. Then
    /// the timer is armed for the next oldest.
    fn expire(&mut self, user: UserId, due: Instant, now: Instant) {
        if self.users[user].state().expiry_due != Some(due) {
            return; // Stale: a later timer is the live one.
        }
        self.users[user].state_mut().expiry_due = None;
        if self.users.session(user).is_some() {
            return; // Re-armed when the user goes offline.
        }
        let ttl = self.config.message_ttl;
        let mut senders: Vec<(UserId, u64)> = Vec::new();
        let last = self.outboxes.expire(user, ttl, now, |stored| {
            match senders.iter_mut().find(|(from, _)| *from == stored.from) {
                Some((_, count)) => *count += 1,
                None => senders.push((stored.from, 1)),
            }
        });
        if let Some(seq) = last {
            self.record(user, |core| Record::Acked { user: core.name(user).to_owned(), seq });
            let total: u64 = senders.iter().map(|(_, count)| count).sum();
            self.stats.expired(total);
            info!(
                "{total} messages for {} expired unread after {} s offline",
                self.name(user),
                ttl.as_secs()
            );
            let (name, after_secs) = (self.users[user].name.clone(), ttl.as_secs());
            for (sender, count) in senders {
                self.send_to_user(sender, &ServerMsg::Expired { user: &name, count, after_secs });
            }
        }
        self.arm_expiry(user);
    }

    /// Ends a silent connection, or re-arms for the latest activity. The
    /// timer is re-armed lazily here rather than on every line, so a busy
    /// connection costs nothing in the wheel.
    fn check_heartbeat(&mut self, conn: ConnId, serial: u64, now: Instant) {
        let timeout = self.config.timeout;
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        if state.serial != serial {
            return; // Stale: armed for an earlier connection with this id.
        }
        let next = state.last_seen + timeout;
        if next > now {
            self.effects.push(Effect::Arm { at: next, timer: Timer::Heartbeat { conn, serial } });
            return;
        }
        info!("{} timed out after {}s of silence", self.describe(conn), timeout.as_secs());
        self.bye(conn, ByeReason::Timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// Predictable "randomness" for tests: each call fills with a counter.
    fn counting_random(buf: &mut [u8]) -> bool {
        use std::sync::atomic::{AtomicU8, Ordering};
        static NEXT: AtomicU8 = AtomicU8::new(1);
        buf.fill(NEXT.fetch_add(1, Ordering::Relaxed));
        true
    }

    pub const TIMEOUT: Duration = Duration::from_secs(35);
    pub const BLOCK: Duration = Duration::from_secs(60);

    /// A core with users A, B, C, D and a fake clock.
    pub struct Harness {
        pub core: Core,
        pub now: Instant,
        pub armed: Vec<(Instant, Timer)>,
        pub closed: Vec<ConnId>,
        /// Password checks asked for and not yet answered.
        pub checks: Vec<Verification>,
        sent: Vec<(ConnId, String)>,
        times: Vec<u64>,
    }

    /// The wall-clock time a harness starts at, in ms since the Unix epoch.
    pub const WALL_AT_START: u64 = 1_795_610_096_789;

    /// `MSG <seq> <kind> <from> <time> <text>` without its time, which goes
    /// to `times`; any other line as it is.
    fn without_time(line: &str, times: &mut Vec<u64>) -> String {
        match ServerMsg::parse(line) {
            Ok(ServerMsg::Msg { seq, kind, from, accepted_ms, text }) => {
                times.push(accepted_ms);
                format!("MSG {seq} {} {from} {text}", kind.as_str())
            }
            _ => line.to_owned(),
        }
    }

    impl Harness {
        pub fn new() -> Self {
            Self::with_users(&["A", "B", "C", "D"])
        }

        /// A core whose users' passwords are their names plus `_pwd`.
        pub fn with_users(names: &[&str]) -> Self {
            let accounts = Self::accounts(names);
            let config = CoreConfig { durable: true, ..CoreConfig::new(TIMEOUT, BLOCK) };
            Self::with_config(accounts, config)
        }

        pub fn accounts(names: &[&str]) -> Vec<Account> {
            names
                .iter()
                .map(|n| Account {
                    name: n.to_string(),
                    password: Secret::Plain(format!("{n}_pwd")),
                })
                .collect()
        }

        pub fn with_config(accounts: Vec<Account>, config: CoreConfig) -> Self {
            let mut core = Core::new(accounts, config);
            core.random = counting_random;
            let now = Instant::now();
            core.set_wall_clock(now, UNIX_EPOCH + Duration::from_millis(WALL_AT_START));
            let (armed, closed, checks, sent) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            Harness { core, now, armed, closed, checks, sent, times: Vec::new() }
        }

        /// Moves the core's effects into the harness's records.
        fn collect(&mut self) {
            let mut effects = self.core.effects();
            while let Some(effect) = effects.next() {
                match effect {
                    Effect::Send { conn, start, end } => {
                        let lines = String::from_utf8_lossy(effects.bytes(start, end));
                        assert!(lines.ends_with('\n'), "whole lines only: {lines:?}");
                        for line in lines.lines() {
                            self.sent.push((conn, without_time(line, &mut self.times)));
                        }
                    }
                    Effect::Close { conn } => self.closed.push(conn),
                    Effect::Arm { at, timer } => self.armed.push((at, timer)),
                    Effect::Verify(job) => self.checks.push(*job),
                }
            }
        }

        /// The acceptance times (`MSG`'s time field) of the messages sent
        /// since the last call, in order: [`Harness::take`] shows `MSG`
        /// lines without them, so that the other tests read as the chat.
        pub fn times(&mut self) -> Vec<u64> {
            self.collect();
            std::mem::take(&mut self.times)
        }

        /// Lines sent since the last call, as (conn, line without newline).
        pub fn take(&mut self) -> Vec<(ConnId, String)> {
            self.collect();
            std::mem::take(&mut self.sent)
        }

        /// Lines sent to `conn` since the last call (others are dropped).
        pub fn to(&mut self, conn: ConnId) -> Vec<String> {
            self.take().into_iter().filter(|(c, _)| *c == conn).map(|(_, l)| l).collect()
        }

        pub fn connect(&mut self, conn: ConnId) {
            let peer = SocketAddr::from(([127, 0, 0, 1], 40000 + conn as u16));
            self.core.connected(conn, peer, self.now);
        }

        pub fn line(&mut self, conn: ConnId, line: &str) {
            self.core.received(conn, line.as_bytes(), self.now);
        }

        /// Connects `conn` and logs `name` in on it, discarding the output.
        pub fn login(&mut self, conn: ConnId, name: &str) {
            self.connect(conn);
            self.line(conn, &format!("LOGIN {name} {} {name}_pwd", 5000 + conn));
            self.take();
        }

        /// Answers the oldest password check asked for, as a verifier
        /// would: the stand-in hash `$argon2id$<password>` matches only
        /// `<password>`. Returns whether the core still wanted it.
        pub fn answer_check(&mut self) -> bool {
            let job = self.next_check();
            let Secret::Argon2id(hash) = &job.secret else { panic!("only hashes are checked") };
            let right = hash.strip_prefix("$argon2id$") == Some(job.attempt.as_str());
            let check = if right { PasswordCheck::Right } else { PasswordCheck::Wrong };
            self.core.verified(job.conn, job.serial, check, self.now)
        }

        /// Takes the oldest password check asked for, unanswered.
        pub fn next_check(&mut self) -> Verification {
            self.collect();
            assert!(!self.checks.is_empty(), "no password check was asked for");
            self.checks.remove(0)
        }

        /// Moves the fake clock and fires every timer that came due.
        pub fn advance(&mut self, by: Duration) {
            self.collect();
            self.now += by;
            loop {
                let now = self.now;
                self.core.tick(now);
                self.collect();
                let (due, later) = self.armed.drain(..).partition(|(at, _)| *at <= now);
                self.armed = later;
                if due.is_empty() {
                    return;
                }
                for (_, timer) in due {
                    self.core.timer_fired(timer, now);
                }
                self.collect();
            }
        }
    }

    #[test]
    fn hello_then_login_welcomes_and_announces() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.connect(2);
        assert_eq!(h.to(2), vec!["HELLO 1 35"]);
        h.line(2, "HELLO 1");
        h.line(2, "LOGIN B 6000 B_pwd");
        assert_eq!(h.take(), vec![(2, "WELCOME B".into()), (1, "PRESENCE B on".into())]);
    }

    #[test]
    fn wrong_password_three_times_locks_until_block_time_passes() {
        let mut h = Harness::new();
        h.connect(1);
        h.take();
        h.line(1, "LOGIN A 1 nope");
        assert_eq!(h.to(1), vec!["DENIED bad-password"]);
        h.line(1, "LOGIN A 1 nope");
        assert_eq!(h.to(1), vec!["DENIED bad-password"]);
        h.line(1, "LOGIN A 1 nope");
        assert_eq!(h.to(1), vec!["DENIED now-locked"]);
        h.line(1, "LOGIN A 1 A_pwd");
        assert_eq!(h.to(1), vec!["DENIED locked"]);
        h.advance(BLOCK - Duration::from_secs(1));
        h.connect(2);
        h.line(2, "LOGIN A 1 A_pwd");
        assert_eq!(h.to(2), vec!["HELLO 1 35", "DENIED locked"]);
        h.advance(Duration::from_secs(1));
        assert!(
            h.core.users[0].state().locked_until.is_none(),
            "the lockout timer cleared the lock"
        );
        h.line(2, "LOGIN A 1 A_pwd");
        assert_eq!(h.to(2), vec!["WELCOME A"]);
    }

    #[test]
    fn a_good_login_resets_the_failure_count() {
        let mut h = Harness::new();
        h.connect(1);
        h.line(1, "LOGIN A 1 nope");
        h.line(1, "LOGIN A 1 nope");
        h.line(1, "LOGIN A 1 A_pwd");
        h.line(1, "LOGOUT");
        h.connect(2);
        h.take();
        h.line(2, "LOGIN A 1 nope");
        assert_eq!(h.to(2), vec!["DENIED bad-password"]);
    }

    #[test]
    fn a_connection_that_never_logs_in_is_closed_at_the_deadline() {
        let mut h = Harness::new();
        h.connect(1);
        h.connect(2);
        h.line(2, "LOGIN B 1 B_pwd");
        h.take();
        // Pings keep both alive (heartbeat), but do not log anyone in.
        for _ in 0..(DEFAULT_LOGIN_TIMEOUT.as_secs() - 1) {
            h.advance(Duration::from_secs(1));
            h.line(1, "PING");
            h.line(2, "PING");
        }
        assert!(h.closed.is_empty());
        h.advance(Duration::from_secs(1));
        let sent: Vec<_> = h.take().into_iter().filter(|(_, line)| line != "PONG").collect();
        assert_eq!(sent, vec![(1, "BYE login-timeout".into())]);
        assert_eq!(h.closed, vec![1], "the logged-in connection stays");
    }

    #[test]
    fn failed_logins_from_one_address_are_throttled_for_a_window() {
        let mut h = Harness::with_config(
            Harness::accounts(&["A", "B"]),
            CoreConfig { login_attempts: 3, ..CoreConfig::new(TIMEOUT, BLOCK) },
        );
        h.connect(1);
        h.take();
        for login in ["LOGIN Zed 1 x", "LOGIN Yan 1 x", "LOGIN A 1 wrong"] {
            h.line(1, login);
        }
        h.line(1, "LOGIN B 1 B_pwd");
        assert_eq!(
            h.to(1),
            vec![
                "DENIED unknown-user",
                "DENIED unknown-user",
                "DENIED bad-password",
                "DENIED throttled"
            ],
            "guessing names counts too, and the right password is not even checked"
        );
        // Another address is not affected.
        let other = SocketAddr::from(([127, 0, 0, 2], 4000));
        h.core.connected(2, other, h.now);
        h.line(2, "LOGIN B 1 B_pwd");
        assert_eq!(h.to(2), vec!["HELLO 1 35", "WELCOME B"]);
        h.advance(THROTTLE_WINDOW);
        h.connect(3);
        h.line(3, "LOGIN A 1 A_pwd");
        assert_eq!(h.to(3), vec!["HELLO 1 35", "WELCOME A"], "the window has passed");
    }

    #[test]
    fn right_logins_count_against_the_address_rate_too() {
        let mut h = Harness::with_config(
            Harness::accounts(&["A", "B"]),
            CoreConfig { login_rate: 2, ..CoreConfig::new(TIMEOUT, BLOCK) },
        );
        // A burst of ten seconds' worth: 20 logins at once, then refused.
        for conn in 1..=20 {
            h.connect(conn);
            h.line(conn, "LOGIN A 1 A_pwd");
            assert_eq!(h.to(conn), vec!["HELLO 1 35", "WELCOME A"], "login {conn}");
        }
        h.connect(21);
        h.line(21, "LOGIN A 1 A_pwd");
        assert_eq!(h.to(21), vec!["HELLO 1 35", "DENIED throttled"]);
        let other = SocketAddr::from(([127, 0, 0, 2], 4000));
        h.core.connected(22, other, h.now);
        h.line(22, "LOGIN B 1 B_pwd");
        assert_eq!(h.to(22), vec!["HELLO 1 35", "WELCOME B"], "another address is not affected");
        // Half a second later, one more login's worth is back.
        h.advance(Duration::from_millis(500));
        h.line(21, "LOGIN A 1 A_pwd");
        h.line(21, "LOGOUT");
        assert_eq!(h.to(21), vec!["WELCOME A", "BYE logout"]);
    }

    /// A harness whose user H has a (stand-in) argon2id hash of `right`.
    fn with_hashed_user() -> Harness {
        with_hashed_user_and(CoreConfig::new(TIMEOUT, BLOCK))
    }

    fn with_hashed_user_and(config: CoreConfig) -> Harness {
        let mut accounts = Harness::accounts(&["A", "B"]);
        let hash = Secret::Argon2id("$argon2id$right".into());
        accounts.push(Account { name: "H".into(), password: hash });
        Harness::with_config(accounts, config)
    }

    #[test]
    fn a_hashed_password_is_checked_off_the_loop_and_the_answer_concludes_the_login() {
        let mut h = with_hashed_user();
        h.login(1, "A");
        h.connect(2);
        h.take();
        h.line(2, "LOGIN H 7 right");
        assert_eq!(h.take(), vec![], "nothing is answered before the check");
        assert!(h.core.awaits_verification(2));
        assert!(!h.core.awaits_verification(1));
        assert_eq!(h.checks.len(), 1);
        assert_eq!(h.checks[0].attempt, "right");
        assert!(!format!("{:?}", h.checks[0]).contains("right"), "never printed");
        assert!(h.answer_check());
        assert!(!h.core.awaits_verification(2));
        assert_eq!(h.take(), vec![(2, "WELCOME H".into()), (1, "PRESENCE H on".into())]);
        // A wrong one is answered when its check comes back too.
        h.connect(3);
        h.line(3, "LOGIN H 7 wrong");
        assert_eq!(h.to(3), vec!["HELLO 1 35"]);
        h.answer_check();
        assert_eq!(h.to(3), vec!["DENIED bad-password"]);
    }

    #[test]
    fn guesses_checked_side_by_side_gain_no_more_than_three() {
        let mut h = with_hashed_user();
        for conn in 1..=5 {
            h.connect(conn);
            h.line(conn, "LOGIN H 1 guess");
        }
        h.connect(6);
        h.line(6, "LOGIN H 1 right");
        h.take();
        assert_eq!(h.checks.len(), 6, "all asked for before any answer");
        for _ in 0..6 {
            h.answer_check();
        }
        let answers: Vec<(ConnId, String)> = h.take();
        assert_eq!(
            answers,
            vec![
                (1, "DENIED bad-password".into()),
                (2, "DENIED bad-password".into()),
                (3, "DENIED now-locked".into()),
                (4, "DENIED locked".into()),
                (5, "DENIED locked".into()),
                (6, "DENIED locked".into()),
            ],
            "answers after the lock say nothing, not even the right one"
        );
    }

    #[test]
    fn a_late_answer_for_a_closed_or_reused_connection_is_ignored() {
        let mut h = with_hashed_user();
        h.connect(1);
        h.line(1, "LOGIN H 1 right");
        h.core.disconnected(1);
        h.connect(1);
        h.take();
        assert!(!h.core.awaits_verification(1), "the new connection waits for nothing");
        assert!(!h.answer_check(), "the answer is for the old connection");
        assert_eq!(h.take(), vec![]);
        assert!(h.core.users.session(2).is_none());
    }

    #[test]
    fn a_busy_verifier_answers_denied_busy_and_counts_no_failure() {
        let config = CoreConfig { login_attempts: 1, ..CoreConfig::new(TIMEOUT, BLOCK) };
        let mut h = with_hashed_user_and(config);
        h.connect(1);
        h.take();
        for _ in 0..4 {
            h.line(1, "LOGIN H 1 right");
            let job = h.next_check();
            assert!(h.core.verified(1, job.serial, PasswordCheck::Busy, h.now));
            assert_eq!(h.to(1), vec!["DENIED busy"]);
        }
        assert_eq!(h.core.users[2].state().failures, 0);
        h.line(1, "LOGIN H 1 right");
        h.answer_check();
        assert_eq!(h.to(1), vec!["WELCOME H"], "not throttled: nothing failed");
    }

    #[test]
    fn a_password_changed_while_it_was_checked_asks_the_client_to_try_again() {
        let mut h = with_hashed_user();
        h.connect(1);
        h.line(1, "LOGIN H 1 right");
        h.take();
        let hash = Secret::Argon2id("$argon2id$new".into());
        h.core.reload(vec![Account { name: "H".into(), password: hash }]);
        h.answer_check();
        assert_eq!(h.to(1), vec!["DENIED busy"]);
        h.line(1, "LOGIN H 1 new");
        h.answer_check();
        assert_eq!(h.to(1), vec!["WELCOME H"]);
    }

    #[test]
    fn reload_changes_passwords_adds_and_hides_users_without_dropping_anyone() {
        let mut h = Harness::new();
        h.login(1, "C");
        h.line(1, "MESSAGE D kept for later");
        h.take();
        let accounts = ["A new", "B B_pwd", "AA AA_pwd", "D D_pwd"]
            .iter()
            .map(|line| {
                let (name, password) = line.split_once(' ').unwrap();
                Account { name: name.into(), password: Secret::Plain(password.into()) }
            })
            .collect();
        h.core.reload(accounts);
        h.connect(2);
        h.line(2, "LOGIN A 1 A_pwd");
        h.line(2, "LOGIN A 1 new");
        assert_eq!(h.to(2), vec!["HELLO 1 35", "DENIED bad-password", "WELCOME A"]);
        h.login(3, "AA");
        h.line(3, "ONLINE");
        assert_eq!(h.to(3), vec!["ONLINE A C"], "C is still online, the list still sorted");
        h.line(1, "MESSAGE AA hello newcomer");
        assert_eq!(h.to(3), vec!["MSG 1 direct C hello newcomer"]);
        h.connect(4);
        h.line(4, "LOGIN C 1 C_pwd");
        assert_eq!(h.to(4), vec!["HELLO 1 35", "DENIED unknown-user"]);
        h.line(3, "MESSAGE C hi");
        assert_eq!(h.to(3), vec!["FAIL unknown-user C"]);
        h.connect(5);
        h.line(5, "LOGIN D 1 D_pwd");
        assert_eq!(h.to(5), vec!["HELLO 1 35", "WELCOME D", "MSG 1 offline C kept for later"]);
    }

    #[test]
    fn an_account_costs_no_state_before_its_first_login_nor_while_idle_or_after_its_last() {
        let mut h = Harness::new();
        assert!(h.core.users.iter().all(|u| !u.has_state()), "nothing preallocated");
        h.login(1, "A");
        assert_eq!(h.core.users.session(0), Some(1));
        assert!(!h.core.users[0].has_state(), "an idle session allocates no state");
        h.line(1, "LOGOUT");
        assert!(!h.core.users[0].has_state(), "logged out with nothing pending");
        h.login(2, "B");
        h.line(2, "BLOCK C");
        h.line(2, "LOGOUT");
        assert!(h.core.users[1].has_state(), "a block list is kept");
        assert!(h.core.users[2].has_state(), "as is the count of who blocked C");
    }

    #[test]
    fn a_connection_entry_stays_small() {
        // Every open connection has one, idle or not: what is needed only
        // during a login is boxed or derived. 216 bytes before that.
        assert!(std::mem::size_of::<Option<Conn>>() <= 160);
    }

    #[test]
    fn a_user_named_before_is_not_found_once_the_file_no_longer_lists_them() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.line(1, "MESSAGE B one");
        h.line(1, "MESSAGE B two");
        assert_eq!(h.to(1), vec!["QUEUED B offline", "QUEUED B offline"]);
        h.core.reload(Harness::accounts(&["A", "C"]));
        h.line(1, "MESSAGE B three");
        h.line(1, "MESSAGE C four");
        h.line(1, "MESSAGE A self");
        let answers = vec!["FAIL unknown-user B", "QUEUED C offline", "FAIL not-yourself"];
        assert_eq!(h.to(1), answers);
    }

    #[test]
    fn unknown_user_is_denied() {
        let mut h = Harness::new();
        h.connect(1);
        h.take();
        h.line(1, "LOGIN Zed 1 pw");
        assert_eq!(h.to(1), vec!["DENIED unknown-user"]);
    }

    #[test]
    fn a_ping_is_answered_after_the_answers_to_the_frames_before_it() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.line(1, "MESSAGE B hi");
        h.line(1, "PING");
        h.line(1, "BLOCK A");
        h.line(1, "PING");
        assert_eq!(h.to(1), vec!["QUEUED B offline", "PONG", "FAIL not-yourself", "PONG"]);
    }

    #[test]
    fn only_hello_login_and_ping_before_login() {
        let mut h = Harness::new();
        h.connect(1);
        h.take();
        h.line(1, "PING");
        h.line(1, "MESSAGE B hi");
        h.line(1, "ACK 3");
        assert_eq!(h.to(1), vec!["PONG", "FAIL not-logged-in", "FAIL not-logged-in"]);
        h.line(1, "LOGIN A 1 A_pwd");
        h.take();
        h.line(1, "LOGIN B 1 B_pwd");
        h.line(1, "HELLO 1");
        assert_eq!(h.to(1), vec!["FAIL already-logged-in", "FAIL already-logged-in"]);
    }

    #[test]
    fn bad_input_gets_a_reply_and_changes_nothing() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.core.received(1, b"MESSAGE B \xff\xfe", h.now);
        h.line(1, "FROB");
        h.line(1, "MESSAGE");
        h.line(1, "");
        h.core.line_too_long(1, h.now);
        assert_eq!(
            h.to(1),
            vec![
                "FAIL bad-encoding",
                "FAIL bad-command unknown verb",
                "FAIL bad-command missing username",
                "FAIL bad-command empty line",
                "FAIL line-too-long"
            ]
        );
        assert!(h.closed.is_empty());
    }

    #[test]
    fn repeated_refusals_are_all_answered_and_arm_one_summary_timer() {
        let mut h = Harness::new();
        h.connect(1);
        h.take();
        for _ in 0..20 {
            h.line(1, "FROB");
        }
        assert_eq!(h.to(1), vec!["FAIL bad-command unknown verb"; 20]);
        let summary = |h: &Harness| -> Vec<Instant> {
            let armed = h.armed.iter().filter(|(_, t)| *t == Timer::RefusalSummary);
            armed.map(|(at, _)| *at).collect()
        };
        assert_eq!(summary(&h), vec![h.now + crate::server::logging::refusals::WINDOW]);
        h.advance(crate::server::logging::refusals::WINDOW);
        assert_eq!(summary(&h), Vec::<Instant>::new(), "reported, and nothing left to report");
    }

    #[test]
    fn wrong_version_is_refused_and_closed() {
        let mut h = Harness::new();
        h.connect(1);
        h.take();
        h.line(1, "HELLO 2");
        assert_eq!(h.to(1), vec!["FAIL version", "BYE protocol-error"]);
        assert_eq!(h.closed, vec![1]);
    }

    #[test]
    fn silent_connection_times_out_and_busy_one_does_not() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        for _ in 0..4 {
            h.advance(Duration::from_secs(20));
            h.line(2, "PING");
        }
        let sent = h.take();
        assert!(sent.contains(&(1, "BYE timeout".into())));
        assert_eq!(h.closed, vec![1]);
        let to_b = sent.iter().filter(|(c, line)| *c == 2 && line != "PONG");
        assert_eq!(to_b.count(), 0, "B was active and stays: {sent:?}");
        assert_eq!(h.core.online.iter().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_timed_out_user_is_not_announced_and_gets_messages_later() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.advance(TIMEOUT / 2);
        h.line(2, "PING");
        h.advance(TIMEOUT / 2 + Duration::from_secs(1));
        assert_eq!(h.take(), vec![(2, "PONG".into()), (1, "BYE timeout".into())]);
        h.line(2, "MESSAGE A are you there?");
        assert_eq!(h.take(), vec![(2, "QUEUED A offline".into())]);
        h.login(3, "A");
        // login() discarded the output; log in on a fresh conn to see it.
        h.line(3, "LOGOUT");
        h.take();
        h.connect(4);
        h.take();
        h.line(4, "LOGIN A 1 A_pwd");
        assert_eq!(
            h.to(4),
            vec!["WELCOME A", "MSG 1 offline B are you there?"],
            "unacknowledged messages come again at every login"
        );
    }

    #[test]
    fn stale_heartbeat_timer_of_a_reused_id_is_ignored() {
        let mut h = Harness::new();
        h.connect(1);
        h.core.disconnected(1);
        h.advance(Duration::from_secs(10));
        h.connect(1);
        h.take();
        h.advance(TIMEOUT - Duration::from_secs(5));
        assert!(h.closed.is_empty(), "the old timer must not close the new connection");
        h.advance(Duration::from_secs(5));
        assert_eq!(h.to(1), vec!["BYE timeout"]);
        assert_eq!(h.closed, vec![1]);
    }

    #[test]
    fn login_elsewhere_replaces_the_old_session_quietly() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.connect(3);
        h.take();
        h.line(3, "LOGIN A 1 A_pwd");
        assert_eq!(
            h.take(),
            vec![(1, "BYE replaced".into()), (3, "WELCOME A".into())],
            "no second presence notice for a user who never went offline"
        );
        assert_eq!(h.closed, vec![1]);
    }

    /// A harness whose table holds `max` connections, `share` per address,
    /// new ones at `rate` a second per address after a burst of `share`.
    fn admission(max: usize, share: usize, rate: u32) -> Harness {
        let config = CoreConfig {
            max_connections: max,
            max_per_address: share,
            connection_rate: rate,
            ..CoreConfig::new(TIMEOUT, BLOCK)
        };
        Harness::with_config(Harness::accounts(&["A", "B", "C"]), config)
    }

    /// What the core answers a connection `conn` from `ip`; connects it
    /// unless refused, as the event loop does.
    fn arrive(h: &mut Harness, conn: ConnId, ip: [u8; 4]) -> Admit {
        let peer = SocketAddr::from((ip, 40000 + conn as u16));
        let answer = h.core.admit(peer.ip(), h.now);
        if !matches!(answer, Admit::Refuse(_)) {
            h.core.connected(conn, peer, h.now);
        }
        answer
    }

    #[test]
    fn a_full_table_closes_the_oldest_connection_not_logged_in_never_a_user() {
        let mut h = admission(3, 100, 1000);
        let here = [127, 0, 0, 1];
        assert_eq!(arrive(&mut h, 1, here), Admit::Accept);
        h.line(1, "LOGIN A 1 A_pwd");
        assert_eq!(arrive(&mut h, 2, here), Admit::Accept);
        assert_eq!(arrive(&mut h, 3, here), Admit::Accept);
        h.take();
        // Full: the newcomer takes the place of 2, the oldest waiting one.
        h.advance(Duration::from_millis(1));
        assert_eq!(arrive(&mut h, 4, [10, 0, 0, 1]), Admit::Evict(2));
        assert_eq!(h.take(), vec![(2, "BYE server-full".into()), (4, "HELLO 1 35".into())]);
        assert_eq!(h.closed, vec![2]);
        // 3 logs in meanwhile: 4 is now the oldest waiting one.
        h.line(3, "LOGIN B 1 B_pwd");
        h.advance(Duration::from_millis(1));
        assert_eq!(arrive(&mut h, 5, here), Admit::Evict(4));
        h.line(5, "LOGIN C 1 C_pwd");
        h.take();
        // Everyone has logged in: nobody is closed for a newcomer.
        assert_eq!(arrive(&mut h, 6, here), Admit::Refuse(ByeReason::ServerFull));
        assert_eq!(h.closed, vec![2, 4]);
        assert_eq!(h.core.online.len(), 3);
        h.line(1, "MESSAGE B still here");
        assert_eq!(h.to(3), vec!["MSG 1 direct A still here"]);
        // A user leaves: room again.
        h.line(5, "LOGOUT");
        assert_eq!(arrive(&mut h, 6, here), Admit::Accept);
    }

    #[test]
    fn an_address_at_its_share_is_refused_while_another_connects() {
        let mut h = admission(100, 2, 1000);
        let (one, two) = ([127, 0, 0, 2], [127, 0, 0, 3]);
        assert_eq!(arrive(&mut h, 1, one), Admit::Accept);
        assert_eq!(arrive(&mut h, 2, one), Admit::Accept);
        assert_eq!(arrive(&mut h, 3, one), Admit::Refuse(ByeReason::TooManyConnections));
        assert_eq!(arrive(&mut h, 3, two), Admit::Accept);
        h.take();
        h.line(3, "LOGIN A 1 A_pwd");
        assert_eq!(h.to(3), vec!["WELCOME A"]);
        // Logged in or not, a connection counts; a closed one no longer.
        h.line(1, "LOGIN B 1 B_pwd");
        assert_eq!(arrive(&mut h, 4, one), Admit::Refuse(ByeReason::TooManyConnections));
        h.core.disconnected(2);
        h.advance(Duration::from_millis(1)); // the rate's burst is the share: 2
        assert_eq!(arrive(&mut h, 4, one), Admit::Accept);
    }

    #[test]
    fn an_address_opening_connections_too_fast_is_refused_while_another_connects() {
        // A burst of 3 (the share), then 2 a second.
        let mut h = admission(100, 3, 2);
        let (one, two) = ([127, 0, 0, 2], [127, 0, 0, 3]);
        for conn in 1..=3 {
            assert_eq!(arrive(&mut h, conn, one), Admit::Accept);
            h.core.disconnected(conn);
        }
        assert_eq!(arrive(&mut h, 4, one), Admit::Refuse(ByeReason::TooManyConnections));
        assert_eq!(arrive(&mut h, 4, two), Admit::Accept);
        h.advance(Duration::from_millis(500));
        assert_eq!(arrive(&mut h, 5, one), Admit::Accept, "half a second earns one");
        assert_eq!(arrive(&mut h, 6, one), Admit::Refuse(ByeReason::TooManyConnections));
    }

    #[test]
    fn an_evicted_connection_id_reused_is_a_new_arrival() {
        let mut h = admission(2, 100, 1000);
        let here = [127, 0, 0, 1];
        let tick = Duration::from_millis(1);
        assert_eq!(arrive(&mut h, 1, here), Admit::Accept);
        assert_eq!(arrive(&mut h, 2, here), Admit::Accept);
        h.advance(tick);
        assert_eq!(arrive(&mut h, 3, here), Admit::Evict(1));
        // The event loop freed id 1 and gives it to the next newcomer,
        // which must not be mistaken for the old, oldest one.
        h.core.disconnected(1);
        assert_eq!(arrive(&mut h, 1, here), Admit::Evict(2));
        h.advance(tick);
        assert_eq!(arrive(&mut h, 2, here), Admit::Evict(3));
        assert_eq!(arrive(&mut h, 4, here), Admit::Evict(1));
    }

    #[test]
    fn a_connection_is_not_closed_for_a_newcomer_of_the_same_batch() {
        let mut h = admission(2, 100, 1000);
        let here = [127, 0, 0, 1];
        assert_eq!(arrive(&mut h, 1, here), Admit::Accept);
        h.advance(Duration::from_millis(1));
        // A batch of accepts at one time: 2 fills the table, 3 takes the
        // place of 1 (from an earlier batch), 4 finds only 2 and 3, which
        // have not had their input read yet.
        assert_eq!(arrive(&mut h, 2, here), Admit::Accept);
        assert_eq!(arrive(&mut h, 3, here), Admit::Evict(1));
        assert_eq!(arrive(&mut h, 4, here), Admit::Refuse(ByeReason::ServerFull));
        h.line(2, "LOGIN A 1 A_pwd");
        h.advance(Duration::from_millis(1));
        assert_eq!(arrive(&mut h, 4, here), Admit::Evict(3), "2 logged in meanwhile");
    }

    #[test]
    fn a_closed_connections_timers_are_no_longer_wanted() {
        let mut h = Harness::new();
        h.connect(1);
        h.take();
        let armed: Vec<Timer> = h.armed.iter().map(|(_, t)| *t).collect();
        assert_eq!(armed.len(), 2, "a heartbeat and a login deadline");
        assert!(armed.iter().all(|t| h.core.timer_wanted(t)));
        h.line(1, "LOGIN A 1 A_pwd");
        let login = armed.iter().find(|t| matches!(t, Timer::Login { .. })).unwrap();
        assert!(!h.core.timer_wanted(login), "logged in: the deadline is moot");
        h.core.disconnected(1);
        assert!(armed.iter().all(|t| !h.core.timer_wanted(t)));
    }

    const TTL: Duration = Duration::from_secs(60);

    fn with_ttl() -> Harness {
        // A heartbeat timeout longer than the test, so no one times out.
        let quiet = Duration::from_secs(3600);
        let config =
            CoreConfig { durable: true, message_ttl: TTL, ..CoreConfig::new(quiet, BLOCK) };
        Harness::with_config(Harness::accounts(&["A", "B", "C", "D"]), config)
    }

    /// The acknowledgements journalled since the last call, by user name.
    fn acked(h: &mut Harness) -> Vec<Record> {
        let mut acked: Vec<Record> = h
            .core
            .records()
            .map(|(_, r)| r)
            .filter(|r| matches!(r, Record::Acked { .. }))
            .collect();
        acked.sort_by_key(|r| format!("{r:?}"));
        acked
    }

    #[test]
    fn messages_for_an_offline_user_expire_oldest_first_and_online_senders_are_told() {
        let mut h = with_ttl();
        h.login(1, "A");
        h.login(3, "C");
        h.line(1, "MESSAGE B one");
        h.advance(TTL / 2);
        h.line(1, "MESSAGE B two");
        h.line(3, "MESSAGE B three");
        h.line(1, "MESSAGE D other");
        h.line(1, "LOGOUT");
        h.take();
        h.core.records().for_each(drop);
        h.advance(TTL / 2 - Duration::from_secs(1));
        assert_eq!(h.take(), vec![], "not yet");
        h.advance(Duration::from_secs(1));
        // A is offline now: nobody to tell, but the message is gone.
        assert_eq!(h.take(), vec![]);
        assert_eq!(acked(&mut h), vec![Record::Acked { user: "B".into(), seq: 1 }]);
        h.login(5, "A");
        h.advance(TTL / 2);
        let mut told = h.take();
        told.sort();
        assert_eq!(
            told,
            vec![
                (3, "EXPIRED B 1 60".into()),
                (5, "EXPIRED B 1 60".into()),
                (5, "EXPIRED D 1 60".into())
            ]
        );
        assert_eq!(
            acked(&mut h),
            vec![
                Record::Acked { user: "B".into(), seq: 3 },
                Record::Acked { user: "D".into(), seq: 1 }
            ]
        );
        h.connect(6);
        h.take();
        h.line(6, "LOGIN B 1 B_pwd");
        assert_eq!(h.to(6), vec!["WELCOME B"], "nothing left to deliver");
        assert_eq!(h.core.outboxes.text_bytes(), 0);
    }

    #[test]
    fn an_online_user_keeps_their_messages_and_their_lifetime_resumes_when_they_leave() {
        let mut h = with_ttl();
        h.login(1, "A");
        h.line(1, "MESSAGE B waiting");
        h.advance(TTL / 2);
        h.connect(2);
        h.line(2, "LOGIN B 1 B_pwd");
        assert!(h.to(2).contains(&"MSG 1 offline A waiting".to_string()));
        // B never acknowledges; while B is online nothing expires.
        h.advance(TTL * 3);
        h.line(2, "PING");
        h.line(1, "PING");
        assert_eq!(h.take(), vec![(2, "PONG".into()), (1, "PONG".into())]);
        h.core.disconnected(2);
        h.advance(Duration::ZERO);
        assert_eq!(h.to(1), vec!["EXPIRED B 1 60"]);
    }

    #[test]
    fn after_a_restart_messages_expire_by_when_they_were_accepted() {
        let mut h = with_ttl();
        h.login(1, "A");
        h.line(1, "MESSAGE B from before the restart");
        let records: Vec<Record> = h.core.records().map(|(_, r)| r).collect();
        let mut fresh = with_ttl();
        fresh.now = h.now + TTL - Duration::from_secs(5);
        fresh.core.restore(records, fresh.now);
        fresh.advance(Duration::from_secs(4));
        assert!(acked(&mut fresh).is_empty());
        fresh.advance(Duration::from_secs(1));
        assert_eq!(acked(&mut fresh), vec![Record::Acked { user: "B".into(), seq: 1 }]);
    }

    #[test]
    fn shutdown_says_bye_to_everyone() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.connect(2);
        h.take();
        h.core.shutdown(h.now);
        let mut sent = h.take();
        sent.sort();
        assert_eq!(sent, vec![(1, "BYE shutdown".into()), (2, "BYE shutdown".into())]);
        assert_eq!(h.core.connections(), 0);
    }
}
