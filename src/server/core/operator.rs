//! What the operator can see and do through the control socket: a census
//! of connections and messages, the list of sessions, and kicking,
//! disabling and enabling users.
//!
//! A disabled account is refused at login (`DENIED disabled`) until it is
//! enabled; disabling ends its session (`BYE disabled`), and both changes
//! are journal records, so they survive a restart with `--state-dir`. A
//! kick ends a session (`BYE kicked`) and changes nothing else: the user
//! may log in again.
//!
//! Not here: the control protocol, its formatting, or the socket; nor any
//! counting, which [`super::Stats`] does.

use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use log::info;

use super::{ConnId, Core, Effect, Refused, UserId, SNAPSHOT_RECORD_BYTES};
use crate::protocol::{ByeReason, ServerMsg};
use crate::server::journal::Record;

/// Connections and messages now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Connections that have not logged in (and are not being checked).
    pub logging_in: usize,
    /// Connections whose password is being checked.
    pub verifying: usize,
    /// Connections with a logged-in user.
    pub online: usize,
    /// Messages waiting in outboxes (in flight or not).
    pub queued_messages: usize,
    /// Bytes of their text.
    pub queued_bytes: usize,
}

/// One logged-in user, as `chat-server ctl sessions` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub user: String,
    /// The event loop's connection (for its address and buffers).
    pub conn: ConnId,
    pub ip: IpAddr,
    pub logged_in: Instant,
    /// Messages waiting in the user's outbox, in flight included.
    pub queued: usize,
    /// Of those, sent and not yet acknowledged.
    pub in_flight: usize,
}

/// Why an operator's command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorError {
    /// No account has this name.
    UnknownUser(String),
    /// The user has no session to end.
    NotOnline(String),
    /// The journal has no room for the change (`--state-dir` on a full disk).
    Storage,
}

impl fmt::Display for OperatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperatorError::UnknownUser(name) => write!(f, "no user named {name}"),
            OperatorError::NotOnline(name) => write!(f, "{name} is not logged in"),
            OperatorError::Storage => {
                f.write_str("the journal has no room for the change (is the disk full?)")
            }
        }
    }
}

impl std::error::Error for OperatorError {}

/// What a disable or enable changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// The account changed; `ended`: a session was ended with it.
    Yes { ended: bool },
    /// It already was that way.
    Already,
}

impl Core {
    /// The counters since start.
    pub fn stats(&self) -> &super::Stats {
        &self.stats
    }

    /// Users logged in now.
    pub fn users_online(&self) -> usize {
        self.online.len()
    }

    /// Counts connections by phase and the messages waiting: a walk over
    /// connections and accounts, for a request now and then, not per message.
    pub fn census(&self) -> Census {
        let mut census = Census { queued_bytes: self.outboxes.text_bytes(), ..Census::default() };
        for conn in self.conns.slots.iter().flatten() {
            match (conn.user(), &conn.verifying) {
                (Some(_), _) => census.online += 1,
                (None, Some(_)) => census.verifying += 1,
                (None, None) => census.logging_in += 1,
            }
        }
        census.queued_messages = (0..self.users.len()).map(|id| self.outboxes.get(id).len()).sum();
        census
    }

    /// Up to `max` logged-in users, by name, and how many there are in all.
    pub fn sessions(&self, max: usize) -> (Vec<SessionInfo>, usize) {
        // Names sorted as `ONLINE` sorts them (the same sort, so the
        // binary carries one), each found again by name.
        let mut names: Vec<&str> = self.online.iter().map(|user| self.name(user)).collect();
        names.sort_unstable();
        let total = names.len();
        let list = names
            .into_iter()
            .take(max)
            .filter_map(|name| {
                let user = self.users.find(name)?;
                let conn = self.users.session(user)?;
                let state = self.conns.get(&conn)?;
                let outbox = self.outboxes.get(user);
                Some(SessionInfo {
                    user: self.name(user).to_owned(),
                    conn,
                    ip: state.ip,
                    logged_in: state.connected,
                    queued: outbox.len(),
                    in_flight: outbox.in_flight(),
                })
            })
            .collect();
        (list, total)
    }

    /// Whether a connection to the metrics endpoint from `ip` may stay:
    /// held to the same share and rate per address as chat connections,
    /// and counted with them until [`Core::scrape_closed`]. A refusal is
    /// counted as `BYE too-many-connections` (the endpoint just closes it).
    pub fn admit_scrape(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.addresses.check(ip, now).is_err() {
            self.stats.refused(Refused::Bye, ByeReason::TooManyConnections.as_str());
            return false;
        }
        self.addresses.opened(ip, now);
        true
    }

    /// A metrics connection admitted by [`Core::admit_scrape`] closed.
    pub fn scrape_closed(&mut self, ip: IpAddr) {
        self.addresses.closed(ip);
    }

    /// Any account, listed in the credentials file or kept from the
    /// journal (a user removed from the file may still have a session).
    fn account(&self, name: &str) -> Result<UserId, OperatorError> {
        self.users.find(name).ok_or_else(|| OperatorError::UnknownUser(name.to_owned()))
    }

    /// Ends `user`'s session on `conn` with `msg`, as the operator asked.
    fn end_session(&mut self, user: UserId, conn: ConnId, msg: &ServerMsg<'_>, now: Instant) {
        // What was delivered is said before goodbye.
        self.confirm_now(conn);
        self.send(conn, msg);
        self.effects.push(Effect::Close { conn });
        self.forget(conn);
        self.presence_changed(user, false, now);
        self.stats.kicked();
    }

    /// Ends `name`'s session (`BYE kicked [reason]`); they may log in again.
    pub fn kick(&mut self, name: &str, reason: &str, now: Instant) -> Result<(), OperatorError> {
        let user = self.account(name)?;
        let Some(conn) = self.users.session(user) else {
            return Err(OperatorError::NotOnline(name.to_owned()));
        };
        let who = self.describe(conn);
        match reason {
            "" => info!("the operator kicked {who}"),
            reason => info!("the operator kicked {who}: {reason}"),
        }
        self.end_session(user, conn, &ServerMsg::Kicked { reason }, now);
        Ok(())
    }

    /// Disables `name`: their session ends (`BYE disabled`) and their
    /// logins are refused (`DENIED disabled`) until [`Core::enable`].
    pub fn disable(&mut self, name: &str, now: Instant) -> Result<Changed, OperatorError> {
        let user = self.account(name)?;
        if self.users[user].state().disabled {
            return Ok(Changed::Already);
        }
        if !self.take_storage(SNAPSHOT_RECORD_BYTES) {
            return Err(OperatorError::Storage);
        }
        self.users[user].state_mut().disabled = true;
        self.record(user, |core| Record::Disabled { user: core.name(user).to_owned() });
        let session = self.users.session(user);
        match session {
            Some(conn) => {
                info!("the operator disabled {}; ending the session", self.describe(conn));
                let msg = ServerMsg::Bye { reason: ByeReason::Disabled };
                self.end_session(user, conn, &msg, now);
            }
            None => info!("the operator disabled user {name}"),
        }
        Ok(Changed::Yes { ended: session.is_some() })
    }

    /// Lets `name` log in again after [`Core::disable`].
    pub fn enable(&mut self, name: &str, now: Instant) -> Result<Changed, OperatorError> {
        let user = self.account(name)?;
        if !self.users[user].state().disabled {
            return Ok(Changed::Already);
        }
        if !self.take_storage(SNAPSHOT_RECORD_BYTES) {
            return Err(OperatorError::Storage);
        }
        self.users[user].state_mut().disabled = false;
        self.record(user, |core| Record::Enabled { user: core.name(user).to_owned() });
        self.users[user].tidy(now);
        info!("the operator enabled user {name}");
        Ok(Changed::Yes { ended: false })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Harness;
    use super::*;

    #[test]
    fn kick_ends_the_session_with_the_reason_and_the_user_may_come_back() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.core.kick("A", "flooding", h.now).unwrap();
        let to_a = h.to(1);
        assert_eq!(to_a, vec!["BYE kicked flooding"]);
        assert!(h.closed.contains(&1));
        assert_eq!(h.core.users_online(), 1);
        assert_eq!(h.core.stats().kicks(), 1);
        assert_eq!(h.core.kick("A", "", h.now), Err(OperatorError::NotOnline("A".into())));
        assert_eq!(h.core.kick("Zed", "", h.now), Err(OperatorError::UnknownUser("Zed".into())));
        h.connect(3);
        h.line(3, "LOGIN A 5003 A_pwd");
        assert_eq!(h.to(3), vec!["HELLO 1 35", "WELCOME A"]);
    }

    #[test]
    fn a_disabled_user_is_logged_out_refused_and_journalled_until_enabled() {
        let mut h = Harness::new();
        h.login(1, "A");
        assert_eq!(h.core.disable("A", h.now), Ok(Changed::Yes { ended: true }));
        assert_eq!(h.to(1), vec!["BYE disabled"]);
        assert_eq!(h.core.disable("A", h.now), Ok(Changed::Already));
        h.connect(2);
        h.line(2, "LOGIN A 5002 A_pwd");
        assert_eq!(h.to(2), vec!["HELLO 1 35", "DENIED disabled"]);
        assert_eq!(h.core.stats().failed_logins(), 1);
        let records: Vec<Record> = h.core.records().map(|(_, r)| r).collect();
        assert_eq!(records, vec![Record::Disabled { user: "A".into() }]);
        // A snapshot keeps it; replaying it into a fresh core disables A.
        let snapshot: Vec<Record> = h.core.snapshot(h.now).collect();
        assert!(snapshot.contains(&Record::Disabled { user: "A".into() }));
        let mut fresh = Harness::new();
        fresh.core.restore(snapshot, fresh.now);
        fresh.connect(1);
        fresh.line(1, "LOGIN A 5001 A_pwd");
        assert_eq!(fresh.to(1), vec!["HELLO 1 35", "DENIED disabled"]);
        // Enabled again: logins work, and the journal says so.
        assert_eq!(h.core.enable("A", h.now), Ok(Changed::Yes { ended: false }));
        assert_eq!(h.core.enable("A", h.now), Ok(Changed::Already));
        let records: Vec<Record> = h.core.records().map(|(_, r)| r).collect();
        assert_eq!(records, vec![Record::Enabled { user: "A".into() }]);
        h.connect(3);
        h.line(3, "LOGIN A 5003 A_pwd");
        assert_eq!(h.to(3), vec!["HELLO 1 35", "WELCOME A"]);
    }

    #[test]
    fn a_login_being_checked_when_the_account_is_disabled_is_refused() {
        use crate::server::credentials::{Account, Secret};
        let accounts = vec![Account {
            name: "H".into(),
            password: Secret::Argon2id("$argon2id$secret".into()),
        }];
        let config =
            super::super::CoreConfig::new(super::super::tests::TIMEOUT, super::super::tests::BLOCK);
        let mut h = Harness::with_config(accounts, config);
        h.connect(1);
        h.line(1, "LOGIN H 5001 secret");
        h.core.disable("H", h.now).unwrap();
        assert!(h.answer_check());
        assert_eq!(h.to(1), vec!["HELLO 1 35", "DENIED disabled"]);
    }

    #[test]
    fn census_and_sessions_count_connections_by_phase_and_messages_waiting() {
        let mut h = Harness::new();
        h.login(1, "B");
        h.login(2, "A");
        h.connect(3);
        h.line(2, "MESSAGE C hello");
        h.line(2, "MESSAGE B hi");
        h.take();
        let census = h.core.census();
        assert_eq!(
            census,
            Census {
                logging_in: 1,
                verifying: 0,
                online: 2,
                queued_messages: 2,
                queued_bytes: "hello".len() + "hi".len(),
            }
        );
        let (sessions, total) = h.core.sessions(10);
        assert_eq!(total, 2);
        let names: Vec<&str> = sessions.iter().map(|s| s.user.as_str()).collect();
        assert_eq!(names, ["A", "B"], "by name");
        assert_eq!((sessions[1].conn, sessions[1].queued, sessions[1].in_flight), (1, 1, 1));
        let (first, total) = h.core.sessions(1);
        assert_eq!((first.len(), total), (1, 2));
        let stats = h.core.stats();
        assert_eq!((stats.logins(), stats.messages_accepted(), stats.messages_queued()), (2, 2, 1));
        h.line(1, "ACK 1");
        assert_eq!(h.core.stats().messages_delivered(), 1);
        // The login time is the login's, not the connection's.
        h.connect(4);
        h.advance(std::time::Duration::from_secs(5));
        h.line(4, "LOGIN D 5004 D_pwd");
        let (sessions, _) = h.core.sessions(10);
        let d = sessions.iter().find(|s| s.user == "D").unwrap();
        assert_eq!(d.logged_in, h.now);
    }
}
