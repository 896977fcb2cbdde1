//! The accounts: each user's name and password, the state the server keeps
//! for them, and the index that finds a user by name.
//!
//! [`Users`] owns two invariants: the index finds exactly the users in the
//! list, each under its own name (users are only ever added, never removed
//! or renamed, so the two cannot drift apart); and an account costs only
//! what it uses. A user who has never logged in, been blocked or asked for
//! anything is a name, a password and one empty pointer: everything else
//! ([`UserState`]) is allocated the first time it is changed. So a
//! credentials file of a thousand accounts costs little more than the file.
//! The session (the connection a user is logged in on) is not part of that
//! state but a word per account beside the list: logging in changes
//! nothing else, so an idle logged-in user allocates nothing here.
//!
//! It knows nothing of what the state means: the core keeps it consistent
//! (block counts in step with block lists, sessions with connections).

use std::ops::{Index, IndexMut};
use std::time::Instant;

use hashbrown::HashTable;
// FxHash, not SipHash: every key here is a user id or a name from the
// credentials file or the journal, never chosen by a client (a client's
// name is only looked up), so no one can pick colliding keys; and these
// lookups run for every message.
use rustc_hash::{FxBuildHasher, FxHashSet};

use super::send_rate::SendRate;
use super::{ConnId, UserId};
use crate::server::credentials::Secret;

/// Everything the server knows about one account.
#[derive(Debug)]
pub struct User {
    pub name: String,
    /// `None` while the account is not in the credentials file (removed on
    /// reload, or known only from the journal): it cannot log in or be
    /// found by name, but its state is kept for when it is listed again.
    pub password: Option<Secret>,
    /// `None` until something about the user changes.
    state: Option<Box<UserState>>,
}

/// What the server keeps about a user beyond their name and password.
#[derive(Debug, Default)]
pub struct UserState {
    /// Users this user has blocked. Changed only by the core's
    /// `set_block`, which keeps `blocked_by` of the target in step.
    pub blocked: FxHashSet<UserId>,
    /// How many users have blocked this one (listed or not, online or not).
    pub blocked_by: u32,
    /// The user's MESSAGE and BROADCAST tokens.
    pub send_rate: SendRate,
    /// Due time of the user's live expiry timer, if one is armed.
    pub expiry_due: Option<Instant>,
    pub failures: u8,
    pub locked_until: Option<Instant>,
    /// The operator disabled the account (`chat-server ctl disable`): it
    /// cannot log in until enabled again.
    pub disabled: bool,
    /// Users waiting for this user's consent.
    pub asked_by: FxHashSet<UserId>,
    /// Users whose consent this user is waiting for.
    pub asking: FxHashSet<UserId>,
    /// Users who were given this user's peer-to-peer address.
    pub address_holders: FxHashSet<UserId>,
}

/// The state of a user of whom nothing is known yet.
static UNTOUCHED: UserState = UserState {
    blocked: FxHashSet::with_hasher(FxBuildHasher),
    blocked_by: 0,
    send_rate: SendRate::FULL,
    expiry_due: None,
    failures: 0,
    locked_until: None,
    disabled: false,
    asked_by: FxHashSet::with_hasher(FxBuildHasher),
    asking: FxHashSet::with_hasher(FxBuildHasher),
    address_holders: FxHashSet::with_hasher(FxBuildHasher),
};

impl UserState {
    /// Whether this says no more than [`UNTOUCHED`] does at `now`.
    fn is_untouched(&self, now: Instant) -> bool {
        self.blocked.is_empty()
            && self.blocked_by == 0
            && self.send_rate.is_full(now)
            && self.expiry_due.is_none()
            && self.failures == 0
            && self.locked_until.is_none()
            && !self.disabled
            && self.asked_by.is_empty()
            && self.asking.is_empty()
            && self.address_holders.is_empty()
    }
}

impl User {
    fn new(name: String, password: Option<Secret>) -> Self {
        User { name, password, state: None }
    }

    /// The user's state, to read.
    #[inline]
    pub fn state(&self) -> &UserState {
        self.state.as_deref().unwrap_or(&UNTOUCHED)
    }

    /// The user's state, to change (allocated on first use).
    #[inline]
    pub fn state_mut(&mut self) -> &mut UserState {
        self.state.get_or_insert_with(Box::default)
    }

    /// Whether any state is allocated (for tests).
    #[cfg(test)]
    pub fn has_state(&self) -> bool {
        self.state.is_some()
    }

    /// Frees the state once it says nothing any more at `now` (a user with
    /// nothing pending).
    pub fn tidy(&mut self, now: Instant) {
        if self.state.as_deref().is_some_and(|state| state.is_untouched(now)) {
            self.state = None;
        }
    }
}

/// Every account, by id (ids are dense and never reused), and by name.
#[derive(Debug, Default)]
pub struct Users {
    list: Vec<User>,
    /// Ids, found by the hash of their user's name: the names live in the
    /// list only, not a second time as keys.
    index: HashTable<u32>,
    /// Each user's session by id, in step with `list`: the connection they
    /// are logged in on, or [`NO_SESSION`]. Four bytes an account rather
    /// than a [`UserState`] allocated at every login.
    sessions: Vec<u32>,
}

/// In [`Users::sessions`]: not logged in. Connection ids are the event
/// loop's slab keys, bounded by the connection limit, far below it.
const NO_SESSION: u32 = u32::MAX;

fn hash(name: &str) -> u64 {
    use std::hash::BuildHasher;
    FxBuildHasher.hash_one(name)
}

impl Users {
    /// The accounts `(name, password)`, in that order; later duplicates of
    /// a name are skipped (the credentials file has none).
    pub fn new(accounts: impl IntoIterator<Item = (String, Secret)>) -> Self {
        let mut users = Users::default();
        for (name, password) in accounts {
            if users.find(&name).is_none() {
                users.add(name, Some(password));
            }
        }
        users.list.shrink_to_fit();
        users.sessions.shrink_to_fit();
        users.index.shrink_to_fit(|&id| hash(&users.list[id as usize].name));
        users
    }

    /// The id of the account `name`, listed in the credentials file or not.
    #[inline]
    pub fn find(&self, name: &str) -> Option<UserId> {
        let list = &self.list;
        let found = self.index.find(hash(name), |&id| list[id as usize].name == name);
        found.map(|&id| id as UserId)
    }

    /// Adds an account; the caller has made sure `name` is new. Returns
    /// its id.
    pub fn add(&mut self, name: String, password: Option<Secret>) -> UserId {
        let id = self.list.len();
        // More than four thousand million accounts cannot be read in.
        let key = u32::try_from(id).unwrap_or(u32::MAX);
        let list = &self.list;
        self.index.insert_unique(hash(&name), key, |&id| hash(&list[id as usize].name));
        self.list.push(User::new(name, password));
        self.sessions.push(NO_SESSION);
        id
    }

    /// The connection `id` is logged in on.
    #[inline]
    pub fn session(&self, id: UserId) -> Option<ConnId> {
        let conn = *self.sessions.get(id)?;
        (conn != NO_SESSION).then_some(conn as ConnId)
    }

    /// Records `id`'s session (`None`: logged out). A connection id that
    /// does not fit (never, see [`NO_SESSION`]) is kept as none.
    pub fn set_session(&mut self, id: UserId, conn: Option<ConnId>) {
        if let Some(slot) = self.sessions.get_mut(id) {
            *slot = conn.and_then(|c| u32::try_from(c).ok()).unwrap_or(NO_SESSION);
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, User> {
        self.list.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, User> {
        self.list.iter_mut()
    }

    pub fn get(&self, id: UserId) -> Option<&User> {
        self.list.get(id)
    }
}

impl Index<UserId> for Users {
    type Output = User;

    #[inline]
    fn index(&self, id: UserId) -> &User {
        &self.list[id]
    }
}

impl IndexMut<UserId> for Users {
    #[inline]
    fn index_mut(&mut self, id: UserId) -> &mut User {
        &mut self.list[id]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(p: &str) -> Secret {
        Secret::Plain(p.into())
    }

    #[test]
    fn every_user_is_found_by_name_and_only_by_their_own() {
        let mut users = Users::new((0..500).map(|i| (format!("u{i}"), plain("pw"))));
        for i in 0..500 {
            assert_eq!(users.find(&format!("u{i}")), Some(i));
        }
        assert_eq!(users.find("u500"), None);
        assert_eq!(users.find(""), None);
        let id = users.add("late".into(), None);
        assert_eq!((id, users.find("late")), (500, Some(500)));
        assert_eq!(users.len(), 501);
        assert_eq!(users[id].name, "late");
    }

    #[test]
    fn a_repeated_name_keeps_the_first() {
        let users = Users::new([("A".into(), plain("one")), ("A".into(), plain("two"))]);
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].password, Some(plain("one")));
    }

    #[test]
    fn state_is_allocated_when_changed_and_freed_when_it_says_nothing() {
        let mut users = Users::new([("A".into(), plain("pw"))]);
        assert!(users[0].state.is_none());
        assert_eq!(users[0].state().failures, 0, "reading allocates nothing");
        assert!(users[0].state.is_none());
        users[0].state_mut().failures = 1;
        assert!(users[0].state.is_some());
        let now = Instant::now();
        users[0].tidy(now);
        assert!(users[0].state.is_some(), "still says something");
        users[0].state_mut().failures = 0;
        users[0].tidy(now);
        assert!(users[0].state.is_none());
    }

    #[test]
    fn a_session_allocates_no_state() {
        let mut users = Users::new([("A".into(), plain("pw")), ("B".into(), plain("pw"))]);
        let late = users.add("late".into(), None);
        assert_eq!(users.session(0), None);
        users.set_session(0, Some(3));
        users.set_session(late, Some(7));
        assert_eq!(
            (users.session(0), users.session(1), users.session(late)),
            (Some(3), None, Some(7))
        );
        assert!(!users[0].has_state(), "logging in changes no UserState");
        users.set_session(0, None);
        assert_eq!(users.session(0), None);
        assert_eq!(users.session(99), None, "no such user");
    }
}
