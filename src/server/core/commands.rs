//! The command table and the chat commands a logged-in user can run.
//!
//! [`Core::before_login`] and [`Core::command`] are the table: for every
//! frame a client may send, what it does before login and after, each an
//! exhaustive match, so handlers can rely on a logged-in user and a new
//! frame cannot be ignored by accident. Argument counts and formats are
//! enforced earlier still, by the protocol parser.
//!
//! Handlers only update state and queue replies; they never touch sockets.

use std::time::Instant;

use super::outbox::Full;
use super::{emit, ConnId, Core, UserId, SNAPSHOT_RECORD_BYTES};
use crate::protocol::{
    ClientMsg, Failure, MsgKind, QueueReason, ServerMsg, MAX_TEXT, ONLINE_NAMES_PER_FRAME,
};
use crate::server::journal::Record;

/// What became of a message put in an outbox.
enum Delivery {
    /// Sent now (or when the send window has room) to an online user.
    Live,
    /// Saved for an offline user.
    Saved,
    /// Refused: the recipient's outbox is full, or holds the sender's
    /// full share.
    QueueFull,
    /// Refused: the server holds its most bytes of messages.
    ServerFull,
    /// Refused: the journal has no room for it.
    NoStorage,
}

impl Core {
    /// The command table for a connection that has not logged in: which
    /// frames are allowed (with their handlers) and which are refused.
    /// Every frame is named here and in [`Core::command`], so a new frame
    /// cannot compile until both say what it does.
    pub(super) fn before_login(&mut self, conn: ConnId, msg: ClientMsg<'_>, now: Instant) {
        match msg {
            ClientMsg::Hello { version } => self.hello(conn, version),
            ClientMsg::Login { user, p2p_port, password, cert } => {
                self.note_p2p_cert(conn, cert);
                self.login(conn, user, p2p_port, password, now)
            }
            // Arriving resets the heartbeat; the answer, in order with the
            // answers to earlier frames, tells the client the server lives.
            ClientMsg::Ping => self.send(conn, &ServerMsg::Pong),
            ClientMsg::Message { .. }
            | ClientMsg::Broadcast { .. }
            | ClientMsg::Online
            | ClientMsg::Block { .. }
            | ClientMsg::Unblock { .. }
            | ClientMsg::GetAddress { .. }
            | ClientMsg::Consent { .. }
            | ClientMsg::Logout
            | ClientMsg::Ack { .. } => self.refuse(conn, Failure::NotLoggedIn),
        }
    }

    /// The command table for `user`, logged in on `conn`.
    pub(super) fn command(&mut self, conn: ConnId, user: UserId, msg: ClientMsg<'_>, now: Instant) {
        match msg {
            ClientMsg::Hello { .. } | ClientMsg::Login { .. } => {
                self.refuse(conn, Failure::AlreadyLoggedIn)
            }
            ClientMsg::Ping => self.send(conn, &ServerMsg::Pong),
            ClientMsg::Message { to, text } => self.message(conn, user, to, text, now),
            ClientMsg::Broadcast { text } => self.broadcast(conn, user, text, now),
            ClientMsg::Online => self.list_online(conn, user),
            ClientMsg::Block { user: target } => self.block(conn, user, target),
            ClientMsg::Unblock { user: target } => self.unblock(conn, user, target),
            ClientMsg::GetAddress { user: target } => self.get_address(conn, user, target),
            ClientMsg::Consent { user: target } => self.consent(conn, user, target),
            ClientMsg::Logout => self.logout(conn, user, now),
            ClientMsg::Ack { seq } => self.acknowledge(user, seq, now),
        }
    }

    /// Resolves `name` to another existing user, or answers the failure.
    fn other_user(&mut self, conn: ConnId, me: UserId, name: &str) -> Option<UserId> {
        // Most lines name the same user as the one before (a conversation,
        // a script sending many messages): compare with that one before
        // hashing the name.
        let recent = self.conns.get(&conn).and_then(|c| c.recent_user());
        if let Some(id) = recent.filter(|&id| id != me && self.listed_as(id, name)) {
            return Some(id);
        }
        let found = self.user_id(name);
        if let (Some(id), Some(state)) = (found, self.conns.get_mut(&conn)) {
            state.set_recent_user(id);
        }
        match found {
            None => self.refuse(conn, Failure::UnknownUser { user: name }),
            Some(target) if target == me => self.refuse(conn, Failure::NotYourself),
            Some(target) => return Some(target),
        }
        None
    }

    /// Refuses text that would not fit in a `MSG` frame: a message its
    /// recipient's client could not read would block its outbox forever.
    fn text_fits(&mut self, conn: ConnId, text: &str) -> bool {
        let fits = text.len() <= MAX_TEXT;
        if !fits {
            self.refuse(conn, Failure::TextTooLong);
        }
        fits
    }

    /// Takes one of `me`'s send tokens (a MESSAGE or a BROADCAST), or
    /// tells them they are past their send rate.
    fn within_send_rate(&mut self, conn: ConnId, me: UserId, now: Instant) -> bool {
        let bucket = &mut self.users[me].state_mut().send_rate;
        let allowed = bucket.take(&self.rate_limit, now);
        if !allowed {
            let next = bucket.next_token(&self.rate_limit, now);
            if let Some(state) = self.conns.get_mut(&conn) {
                state.read_hold = next;
            }
            self.refuse(conn, Failure::RateLimited);
        }
        allowed
    }

    /// Puts a message accepted at `now` in `to`'s outbox, where it stays
    /// until acknowledged (or expired), and sends it now if `to` is online
    /// and its send window has room, or says why it cannot (the caller
    /// tells the sender).
    fn deliver(
        &mut self,
        to: UserId,
        from: UserId,
        live_kind: MsgKind,
        text: &str,
        now: Instant,
    ) -> Delivery {
        let caps = self.config().caps();
        // Checked before journal space is taken for it; pushed below.
        match self.outboxes.admits(to, from, text.len(), &caps) {
            Ok(()) => {}
            Err(Full::Recipient) => return Delivery::QueueFull,
            Err(Full::Server) => {
                if !self.server_full_logged {
                    self.server_full_logged = true;
                    log::warn!(
                        "outboxes hold {} bytes of messages (--max-queued-bytes {}): \
                         refusing new messages (FAIL server-queue-full) until more are delivered",
                        self.outboxes.text_bytes(),
                        caps.max_bytes
                    );
                }
                return Delivery::ServerFull;
            }
        }
        if self.server_full_logged && self.outboxes.text_bytes() < caps.max_bytes / 2 {
            self.server_full_logged = false;
            log::warn!("outboxes are down to half of --max-queued-bytes; accepting new messages");
        }
        if !self.take_storage(SNAPSHOT_RECORD_BYTES + text.len()) {
            return Delivery::NoStorage;
        }
        let online = self.users.session(to).is_some();
        let kind = if online { live_kind } else { MsgKind::Offline };
        let notify = online && live_kind == MsgKind::Direct;
        let accepted = self.wall.accepted(now);
        let pushed = self.outboxes.push(to, &caps, kind, from, text, notify, accepted);
        let Ok(seq) = pushed else {
            return Delivery::QueueFull; // Not reached: admitted just above.
        };
        self.stats.accepted(!online);
        self.record(to, |core| Record::Queued {
            user: core.name(to).to_owned(),
            seq,
            kind,
            from: core.name(from).to_owned(),
            text: text.to_owned(),
            at: now,
        });
        if online {
            self.pump(to);
            Delivery::Live
        } else {
            self.arm_expiry(to);
            Delivery::Saved
        }
    }

    /// A direct message: delivered live (the sender hears `DELIVERED` once
    /// it is acknowledged), saved for an offline recipient (`QUEUED`), or
    /// refused.
    fn message(&mut self, conn: ConnId, me: UserId, to: &str, text: &str, now: Instant) {
        if !self.within_send_rate(conn, me, now) || !self.text_fits(conn, text) {
            return;
        }
        let Some(to) = self.other_user(conn, me, to) else {
            return;
        };
        if self.has_blocked(to, me) {
            let name = self.name(to).to_owned();
            self.refuse(conn, Failure::BlockedBy { user: &name });
            return;
        }
        log::debug!("message {} -> {}", self.name(me), self.name(to));
        let delivery = self.deliver(to, me, MsgKind::Direct, text, now);
        if matches!(delivery, Delivery::Live) {
            return; // The common case: nothing to say until acknowledged.
        }
        let name = self.name(to).to_owned();
        match delivery {
            Delivery::Live => {}
            Delivery::Saved => {
                self.send(conn, &ServerMsg::Queued { user: &name, reason: QueueReason::Offline })
            }
            Delivery::QueueFull => self.refuse(conn, Failure::QueueFull { user: &name }),
            Delivery::ServerFull => self.refuse(conn, Failure::ServerQueueFull),
            Delivery::NoStorage => self.refuse(conn, Failure::Storage),
        }
    }

    /// A copy to every online user but those who blocked the sender and
    /// those whose outbox is full or holds the sender's share (the sender
    /// hears `queue-full` for each). If the server's total is reached on
    /// the way, the remaining copies are not made and the sender hears
    /// `server-queue-full` once.
    /// The sender hears `partial-broadcast` (as in the seed) whenever anyone
    /// has blocked them, online or not: deciding it from online blockers
    /// only would tell a blocked user when the blocker is online. The
    /// sentence stays true, as no offline user receives a broadcast.
    fn broadcast(&mut self, conn: ConnId, me: UserId, text: &str, now: Instant) {
        if !self.within_send_rate(conn, me, now) || !self.text_fits(conn, text) {
            return;
        }
        let recipients: Vec<UserId> = self.online.iter().filter(|&u| u != me).collect();
        let mut no_storage = false;
        for to in recipients {
            if self.has_blocked(to, me) {
                continue;
            }
            match self.deliver(to, me, MsgKind::Broadcast, text, now) {
                Delivery::Live | Delivery::Saved => {}
                Delivery::QueueFull => {
                    let name = self.name(to).to_owned();
                    self.refuse(conn, Failure::QueueFull { user: &name });
                }
                Delivery::ServerFull => {
                    self.refuse(conn, Failure::ServerQueueFull);
                    break;
                }
                Delivery::NoStorage => no_storage = true,
            }
        }
        if no_storage {
            self.refuse(conn, Failure::Storage);
        }
        if self.blocked_by_anyone(me) {
            self.fail(conn, Failure::PartialBroadcast);
        }
    }

    fn list_online(&mut self, conn: ConnId, me: UserId) {
        let mut users: Vec<&str> = self
            .online
            .iter()
            .filter(|&u| u != me && !self.has_blocked(u, me))
            .map(|u| self.users[u].name.as_str())
            .collect();
        // Ids follow name order only until a reload adds users.
        users.sort_unstable();
        let (out, effects) = (&mut self.out, &mut self.effects);
        let mut chunks = users.chunks(ONLINE_NAMES_PER_FRAME).peekable();
        if chunks.peek().is_none() {
            emit(out, effects, conn, &ServerMsg::Online { users: Vec::new(), more: false });
        }
        while let Some(chunk) = chunks.next() {
            let more = chunks.peek().is_some();
            emit(out, effects, conn, &ServerMsg::Online { users: chunk.to_vec(), more });
        }
    }

    fn block(&mut self, conn: ConnId, me: UserId, name: &str) {
        let Some(target) = self.other_user(conn, me, name) else {
            return;
        };
        if !self.has_blocked(me, target) && !self.take_storage(SNAPSHOT_RECORD_BYTES) {
            self.refuse(conn, Failure::Storage);
            return;
        }
        // Logged only when it changes something: repeating it must not
        // fill the log.
        if self.set_block(me, target, true) {
            self.record(me, |core| Record::Blocked {
                user: core.name(me).to_owned(),
                target: name.to_owned(),
            });
            log::info!("user {} blocked {name}", self.name(me));
        }
        self.send(conn, &ServerMsg::Blocked { user: name });
        self.revoke_grants(me, target);
    }

    fn unblock(&mut self, conn: ConnId, me: UserId, name: &str) {
        let Some(target) = self.other_user(conn, me, name) else {
            return;
        };
        if self.has_blocked(me, target) && !self.take_storage(SNAPSHOT_RECORD_BYTES) {
            self.refuse(conn, Failure::Storage);
            return;
        }
        if self.set_block(me, target, false) {
            self.record(me, |core| Record::Unblocked {
                user: core.name(me).to_owned(),
                target: name.to_owned(),
            });
            log::info!("user {} unblocked {name}", self.name(me));
            self.send(conn, &ServerMsg::Unblocked { user: name });
        } else {
            self.refuse(conn, Failure::NotBlocked { user: name });
        }
    }

    /// `me` asks `name` for their peer-to-peer address.
    fn get_address(&mut self, conn: ConnId, me: UserId, name: &str) {
        let Some(target) = self.other_user(conn, me, name) else {
            return;
        };
        if !self.online.contains(target) || self.has_blocked(target, me) {
            self.refuse(conn, Failure::GetAddress { user: name });
            return;
        }
        self.users[target].state_mut().asked_by.insert(me);
        self.users[me].state_mut().asking.insert(target);
        self.send(conn, &ServerMsg::ConsentAsked { user: name });
        let asker = self.name(me).to_owned();
        self.send_to_user(target, &ServerMsg::ConsentRequest { user: &asker });
    }

    /// `me` grants `name`, who asked earlier, their peer-to-peer address.
    fn consent(&mut self, conn: ConnId, me: UserId, name: &str) {
        let Some(asker) = self.other_user(conn, me, name) else {
            return;
        };
        if !self.users[me].state_mut().asked_by.remove(&asker) {
            self.refuse(conn, Failure::NoRequest { user: name });
            return;
        }
        self.users[asker].state_mut().asking.remove(&me);
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        let (ip, port, cert) = (state.ip, state.p2p_port, state.p2p_cert.clone());
        let Some(token) = self.new_token() else {
            log::error!("no randomness for a grant token; refusing consent");
            self.refuse(conn, Failure::NoRequest { user: name });
            return;
        };
        self.users[me].state_mut().address_holders.insert(asker);
        log::info!("user {} gave their address to {name}", self.name(me));
        let granter = self.name(me).to_owned();
        self.send(conn, &ServerMsg::Granted { user: name, token: &token });
        let cert = cert.as_deref();
        let address = ServerMsg::Address { user: &granter, ip, port, token: &token, cert };
        self.send_to_user(asker, &address);
    }

    /// Withdraws every peer-to-peer grant and pending consent request
    /// between `a` and `b`, telling both clients: the grantor's client then
    /// refuses the other's connections, whatever that client does.
    fn revoke_grants(&mut self, a: UserId, b: UserId) {
        let mut granted = false;
        for (x, y) in [(a, b), (b, a)] {
            granted |= self.users[x].state_mut().address_holders.remove(&y);
            self.users[x].state_mut().asked_by.remove(&y);
            self.users[x].state_mut().asking.remove(&y);
        }
        if !granted {
            return;
        }
        let (name_a, name_b) = (self.name(a).to_owned(), self.name(b).to_owned());
        self.send_to_user(a, &ServerMsg::Revoked { user: &name_b });
        self.send_to_user(b, &ServerMsg::Revoked { user: &name_a });
    }

    /// Drops every sent outbox entry up to and including `seq`, then
    /// refills the send window. Entries not yet sent cannot be acknowledged:
    /// a confused or hostile ACK must not discard them unseen. Senders
    /// waiting for news of a live message hear `DELIVERED`, gathered for a
    /// moment with the next acknowledgements (see [`super::confirm`]).
    fn acknowledge(&mut self, me: UserId, seq: u64, now: Instant) {
        // Senders to tell, with how many of their messages this covers.
        let mut senders = std::mem::take(&mut self.delivered_scratch);
        let last = self.outboxes.acknowledge(me, seq, |stored| {
            self.stats.delivered(1);
            if !stored.notify {
                return;
            }
            match senders.iter_mut().find(|(sender, _)| *sender == stored.from) {
                Some((_, count)) => *count += 1,
                None => senders.push((stored.from, 1)),
            }
        });
        if let Some(seq) = last {
            self.record(me, |core| Record::Acked { user: core.name(me).to_owned(), seq });
        }
        for &(sender, count) in &senders {
            if let Some(conn) = self.users.session(sender) {
                self.confirmations.add(conn, me, count, now);
            }
        }
        senders.clear();
        self.delivered_scratch = senders;
        self.pump(me);
    }
}

#[cfg(test)]
mod tests {
    use super::super::presence::COALESCE;
    use super::super::tests::{Harness, BLOCK, TIMEOUT};
    use super::super::{CoreConfig, CONFIRM_DELAY, SEND_WINDOW};
    use std::time::Duration;

    #[test]
    fn message_live_then_acknowledged_is_not_sent_again() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, "MESSAGE B hi there!");
        assert_eq!(h.take(), vec![(2, "MSG 1 direct A hi there!".into())]);
        h.line(2, "ACK 1");
        h.line(2, "LOGOUT");
        h.connect(3);
        h.take();
        h.line(3, "LOGIN B 1 B_pwd");
        assert_eq!(h.to(3), vec!["WELCOME B"]);
    }

    #[test]
    fn offline_messages_arrive_in_order_at_login() {
        let mut h = Harness::new();
        h.login(1, "B");
        h.line(1, "MESSAGE A one");
        h.line(1, "MESSAGE A two");
        assert_eq!(h.to(1), vec!["QUEUED A offline", "QUEUED A offline"]);
        h.connect(2);
        h.take();
        h.line(2, "LOGIN A 1 A_pwd");
        assert_eq!(
            h.take(),
            vec![
                (2, "WELCOME A".into()),
                (2, "MSG 1 offline B one".into()),
                (2, "MSG 2 offline B two".into()),
                (1, "PRESENCE A on".into()),
            ]
        );
    }

    #[test]
    fn identity_comes_from_the_connection_not_the_frame() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        // There is no sender field to forge: whatever the text says, the
        // message is from the connection's user.
        h.line(1, "MESSAGE B C: I am C");
        assert_eq!(h.take(), vec![(2, "MSG 1 direct A C: I am C".into())]);
    }

    #[test]
    fn blocking_is_one_way() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, "BLOCK B");
        assert_eq!(h.to(1), vec!["BLOCKED B"]);
        h.line(2, "MESSAGE A hi");
        assert_eq!(h.take(), vec![(2, "FAIL blocked-by A".into())]);
        h.line(1, "MESSAGE B don't reply");
        assert_eq!(h.take(), vec![(2, "MSG 1 direct A don't reply".into())]);
        h.line(1, "UNBLOCK B");
        assert_eq!(h.to(1), vec!["UNBLOCKED B"]);
        h.line(2, "MESSAGE A hi");
        assert_eq!(h.take(), vec![(1, "MSG 1 direct B hi".into())]);
    }

    #[test]
    fn block_and_unblock_errors() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.line(1, "BLOCK A");
        h.line(1, "BLOCK Zed");
        h.line(1, "UNBLOCK B");
        h.line(1, "MESSAGE A me");
        h.line(1, "MESSAGE Zed hi");
        assert_eq!(
            h.to(1),
            vec![
                "FAIL not-yourself",
                "FAIL unknown-user Zed",
                "FAIL not-blocked B",
                "FAIL not-yourself",
                "FAIL unknown-user Zed"
            ]
        );
    }

    #[test]
    fn broadcast_skips_blockers_and_tells_the_sender() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.login(3, "C");
        h.line(1, "BLOCK C");
        h.take();
        h.line(3, "BROADCAST hello all");
        assert_eq!(
            h.take(),
            vec![(2, "MSG 1 broadcast C hello all".into()), (3, "FAIL partial-broadcast".into())]
        );
        h.line(2, "BROADCAST hi");
        let mut sent = h.take();
        sent.sort();
        assert_eq!(
            sent,
            vec![(1, "MSG 1 broadcast B hi".into()), (3, "MSG 1 broadcast B hi".into())]
        );
    }

    #[test]
    fn partial_broadcast_does_not_tell_whether_a_blocker_is_online() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, "BLOCK B");
        h.line(1, "LOGOUT");
        h.take();
        // A, who blocked B, is offline: B hears the same as when A is online.
        h.line(2, "BROADCAST hello");
        assert_eq!(h.to(2), vec!["FAIL partial-broadcast"]);
        h.login(3, "A");
        h.line(2, "BROADCAST hello");
        assert_eq!(h.to(2), vec!["FAIL partial-broadcast"]);
        h.line(3, "UNBLOCK B");
        h.take();
        h.line(2, "BROADCAST hello");
        assert_eq!(h.take(), vec![(3, "MSG 1 broadcast B hello".into())], "no notice left");
    }

    #[test]
    fn broadcast_is_not_stored_for_offline_users() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.line(1, "BROADCAST anyone?");
        assert_eq!(h.take(), vec![]);
        h.connect(2);
        h.take();
        h.line(2, "LOGIN B 1 B_pwd");
        assert_eq!(h.to(2), vec!["WELCOME B"]);
    }

    #[test]
    fn online_lists_others_sorted_without_blockers() {
        let mut h = Harness::new();
        h.login(3, "C");
        h.login(1, "A");
        h.login(2, "B");
        h.login(4, "D");
        h.line(4, "BLOCK B");
        h.take();
        h.line(2, "ONLINE");
        assert_eq!(h.to(2), vec!["ONLINE A C"]);
        h.line(4, "LOGOUT");
        h.line(3, "LOGOUT");
        h.line(1, "LOGOUT");
        h.take();
        h.line(2, "ONLINE");
        assert_eq!(h.to(2), vec!["ONLINE"]);
    }

    #[test]
    fn logout_is_announced_except_to_users_the_leaver_blocked() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.login(3, "C");
        h.line(3, "BLOCK B");
        h.advance(COALESCE);
        h.take();
        h.line(3, "LOGOUT");
        assert_eq!(h.take(), vec![(3, "BYE logout".into()), (1, "PRESENCE C off".into())]);
        assert_eq!(h.closed, vec![3]);
    }

    #[test]
    fn login_is_not_announced_to_users_the_newcomer_blocked() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(2, "BLOCK A");
        h.line(2, "LOGOUT");
        h.login(3, "C");
        // B's logout notice comes at the end of its coalescing second; the
        // next change is announced at once a second after that.
        h.advance(COALESCE);
        h.advance(COALESCE);
        h.connect(4);
        h.take();
        h.line(4, "LOGIN B 1 B_pwd");
        assert_eq!(h.take(), vec![(4, "WELCOME B".into()), (3, "PRESENCE B on".into())]);
    }

    #[test]
    fn a_user_who_blocked_someone_does_not_hear_them_come_and_go() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.line(1, "BLOCK B");
        h.take();
        h.login(3, "C");
        h.advance(COALESCE);
        h.connect(2);
        h.take();
        h.line(2, "LOGIN B 1 B_pwd");
        assert_eq!(h.take(), vec![(2, "WELCOME B".into()), (3, "PRESENCE B on".into())]);
        h.advance(COALESCE);
        h.line(2, "LOGOUT");
        assert_eq!(h.take(), vec![(2, "BYE logout".into()), (3, "PRESENCE B off".into())]);
    }

    #[test]
    fn a_login_loop_is_coalesced_into_at_most_one_notice_a_second() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.advance(COALESCE);
        h.take();
        // B logs in and out 50 times within a second.
        for n in 0..50 {
            h.connect(10 + n);
            h.line(10 + n, "LOGIN B 1 B_pwd");
            h.line(10 + n, "LOGOUT");
            h.advance(Duration::from_millis(10));
        }
        let notices: Vec<String> =
            h.to(1).into_iter().filter(|l| l.starts_with("PRESENCE")).collect();
        assert_eq!(notices, vec!["PRESENCE B on"], "the first change at once, the rest held");
        h.advance(COALESCE);
        assert_eq!(h.to(1), vec!["PRESENCE B off"], "then the state B is in");
        // A quick off-and-on says nothing at all.
        h.connect(99);
        h.line(99, "LOGIN B 1 B_pwd");
        h.advance(Duration::from_millis(10));
        h.line(99, "LOGOUT");
        h.advance(COALESCE);
        assert_eq!(h.to(1), Vec::<String>::new());
    }

    #[test]
    fn disconnect_without_logout_is_silent() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.core.disconnected(1);
        assert_eq!(h.take(), vec![]);
        h.line(2, "MESSAGE A saved");
        assert_eq!(h.take(), vec![(2, "QUEUED A offline".into())]);
        assert_eq!(h.core.outboxes.get(0).len(), 1);
    }

    #[test]
    fn address_is_given_only_after_consent() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(2, "GETADDRESS A");
        assert_eq!(h.take(), vec![(2, "CONSENT-ASKED A".into()), (1, "CONSENT-REQUEST B".into())]);
        h.line(1, "CONSENT B");
        let sent = h.take();
        let token = sent[0].1.strip_prefix("GRANTED B ").expect("grantor told the token");
        assert_eq!(token.len(), 32);
        assert_eq!(sent[1], (2, format!("ADDRESS A 127.0.0.1 5001 {token}")));
        h.line(1, "CONSENT B");
        assert_eq!(h.take(), vec![(1, "FAIL no-request B".into())], "consent is used up");
    }

    #[test]
    fn blocking_revokes_grants_both_ways_and_pending_requests() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.login(3, "C");
        h.line(2, "GETADDRESS A");
        h.line(1, "CONSENT B");
        h.line(3, "GETADDRESS A");
        h.take();
        // B blocks A: the grant A gave B is revoked, on both clients; C's
        // pending request to A is not between the two and stays.
        h.line(2, "BLOCK A");
        assert_eq!(
            h.take(),
            vec![(2, "BLOCKED A".into()), (2, "REVOKED A".into()), (1, "REVOKED B".into())]
        );
        h.line(1, "CONSENT C");
        assert!(h.to(1)[0].starts_with("GRANTED C "), "C's request was not between A and B");
        // A pending request between the two lapses too.
        h.line(3, "GETADDRESS B");
        h.take();
        h.line(3, "BLOCK B");
        h.take();
        h.line(2, "CONSENT C");
        assert_eq!(h.to(2), vec!["FAIL no-request C"]);
    }

    #[test]
    fn getaddress_fails_when_blocked_offline_or_unknown() {
        let mut h = Harness::new();
        h.login(2, "B");
        h.login(3, "C");
        h.line(3, "BLOCK B");
        h.take();
        h.line(2, "GETADDRESS C");
        h.line(2, "GETADDRESS A");
        h.line(2, "GETADDRESS Zed");
        h.line(2, "GETADDRESS B");
        assert_eq!(
            h.to(2),
            vec![
                "FAIL getaddress C",
                "FAIL getaddress A",
                "FAIL unknown-user Zed",
                "FAIL not-yourself"
            ]
        );
    }

    #[test]
    fn a_request_lapses_when_the_asker_leaves() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(2, "GETADDRESS A");
        h.core.disconnected(2);
        h.take();
        h.line(1, "CONSENT B");
        assert_eq!(h.to(1), vec!["FAIL no-request B"]);
    }

    #[test]
    fn address_holders_hear_of_a_new_login() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(2, "GETADDRESS A");
        h.line(1, "CONSENT B");
        h.core.disconnected(1);
        h.advance(COALESCE);
        h.connect(3);
        h.take();
        h.line(3, "LOGIN A 7 A_pwd");
        assert_eq!(
            h.take(),
            vec![
                (3, "WELCOME A".into()),
                (2, "ADDRESS-CHANGED A".into()),
                (2, "PRESENCE A on".into())
            ]
        );
        h.core.disconnected(3);
        h.advance(COALESCE);
        h.connect(4);
        h.take();
        h.line(4, "LOGIN A 8 A_pwd");
        assert_eq!(h.take(), vec![(4, "WELCOME A".into()), (2, "PRESENCE A on".into())]);
    }

    #[test]
    fn at_most_a_window_of_messages_is_in_flight() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        let total = SEND_WINDOW + 10;
        for i in 0..total {
            h.line(1, &format!("MESSAGE B m{i}"));
        }
        assert_eq!(h.to(2).len(), SEND_WINDOW);
        h.line(2, "ACK 3");
        assert_eq!(
            h.to(2),
            vec!["MSG 65 direct A m64", "MSG 66 direct A m65", "MSG 67 direct A m66"]
        );
        h.line(2, &format!("ACK {total}"));
        assert_eq!(h.to(2).len(), 7);
    }

    #[test]
    fn text_too_long_for_a_msg_frame_is_refused() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        let longest = "x".repeat(crate::protocol::MAX_TEXT);
        h.line(1, &format!("MESSAGE B {longest}y"));
        h.line(1, &format!("BROADCAST {longest}y"));
        assert_eq!(
            h.take(),
            vec![(1, "FAIL text-too-long".into()), (1, "FAIL text-too-long".into())]
        );
        h.line(1, &format!("MESSAGE B {longest}"));
        let sent = h.to(2);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].len() < crate::protocol::MAX_LINE, "the frame fits a line");
    }

    #[test]
    fn the_byte_window_keeps_big_messages_in_the_outbox() {
        let mut h = Harness::with_config(
            Harness::accounts(&["A", "B"]),
            CoreConfig { window_bytes: 3000, ..CoreConfig::new(TIMEOUT, BLOCK) },
        );
        h.login(1, "A");
        h.login(2, "B");
        let big = "x".repeat(1400);
        for _ in 0..5 {
            h.line(1, &format!("MESSAGE B {big}"));
        }
        assert_eq!(h.to(2).len(), 2, "two fit in 3000 bytes, the rest wait");
        h.line(2, "ACK 2");
        assert_eq!(h.to(2).len(), 2);
        h.line(2, "ACK 4");
        assert_eq!(h.to(2).len(), 1);
    }

    #[test]
    fn a_huge_message_is_sent_alone_when_nothing_is_in_flight() {
        let mut h = Harness::with_config(
            Harness::accounts(&["A", "B"]),
            CoreConfig { window_bytes: 100, ..CoreConfig::new(TIMEOUT, BLOCK) },
        );
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, &format!("MESSAGE B {}", "y".repeat(1000)));
        h.line(1, "MESSAGE B small");
        assert_eq!(h.to(2).len(), 1);
        h.line(2, "ACK 1");
        assert_eq!(h.to(2), vec!["MSG 2 direct A small"]);
    }

    #[test]
    fn a_message_carries_when_the_server_accepted_it_not_when_it_was_sent_on() {
        use super::super::tests::WALL_AT_START;
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.advance(Duration::from_millis(1500));
        h.line(1, "MESSAGE B live");
        h.line(1, "MESSAGE C saved");
        h.take();
        assert_eq!(h.times(), vec![WALL_AT_START + 1500], "B's copy");
        h.advance(Duration::from_secs(3600));
        h.login(3, "C");
        assert_eq!(h.times(), vec![WALL_AT_START + 1500], "an hour later, the same time");
    }

    #[test]
    fn the_sender_hears_delivered_once_the_recipient_acknowledges() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, "MESSAGE B one");
        h.line(1, "MESSAGE B two");
        assert_eq!(h.to(1), Vec::<String>::new(), "nothing until acknowledged");
        h.line(2, "ACK 1");
        h.advance(CONFIRM_DELAY / 2);
        h.line(2, "ACK 2");
        assert_eq!(h.to(1), Vec::<String>::new(), "gathered for a moment");
        h.advance(CONFIRM_DELAY / 2);
        assert_eq!(h.to(1), vec!["DELIVERED B 2"], "one frame for both");
        h.line(1, "MESSAGE B three");
        h.line(2, "ACK 3");
        h.advance(CONFIRM_DELAY);
        assert_eq!(h.to(1), vec!["DELIVERED B"]);
    }

    #[test]
    fn confirmations_come_before_a_goodbye() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, "MESSAGE B one");
        h.line(2, "ACK 1");
        h.line(1, "LOGOUT");
        assert_eq!(h.to(1), vec!["DELIVERED B", "BYE logout"]);
        h.login(3, "A");
        h.advance(CONFIRM_DELAY);
        assert_eq!(h.take(), vec![], "said once, to the session that sent it");
    }

    #[test]
    fn one_acknowledgement_tells_each_sender_its_own_count() {
        let mut h = Harness::with_users(&["A", "B", "C"]);
        h.login(1, "A");
        h.login(2, "B");
        h.login(3, "C");
        h.line(1, "MESSAGE B one");
        h.line(3, "MESSAGE B two");
        h.line(1, "MESSAGE B three");
        h.line(3, "BROADCAST everyone");
        h.take();
        h.line(2, "ACK 4");
        h.advance(CONFIRM_DELAY);
        // C's broadcast is not confirmed: broadcasts never are.
        let confirmations = vec![(1, "DELIVERED B 2".into()), (3, "DELIVERED B".into())];
        let mut told = h.take();
        told.sort();
        assert_eq!(told, confirmations);
    }

    #[test]
    fn the_sender_hears_when_the_recipient_vanishes_with_messages_in_flight() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, "MESSAGE B one");
        h.line(1, "MESSAGE B two");
        h.line(2, "ACK 1");
        h.take();
        h.core.disconnected(2);
        // The first was delivered: that is said first, without waiting.
        let told = vec![(1, "DELIVERED B".into()), (1, "QUEUED B unreachable".into())];
        assert_eq!(h.take(), told);
        h.connect(3);
        h.take();
        h.line(3, "LOGIN B 1 B_pwd");
        assert_eq!(h.to(3), vec!["WELCOME B", "MSG 2 direct A two"]);
        h.line(3, "ACK 2");
        assert_eq!(h.to(1), Vec::<String>::new(), "the sender was already told");
    }

    #[test]
    fn a_full_outbox_refuses_and_says_so() {
        let mut h = Harness::with_config(
            Harness::accounts(&["A", "B", "C"]),
            CoreConfig { max_queued: 2, ..CoreConfig::new(TIMEOUT, BLOCK) },
        );
        h.login(1, "A");
        h.login(3, "C");
        h.line(1, "MESSAGE B one");
        h.line(3, "MESSAGE B two");
        h.line(1, "MESSAGE B three");
        assert_eq!(
            h.take(),
            vec![
                (1, "QUEUED B offline".into()),
                (3, "QUEUED B offline".into()),
                (1, "FAIL queue-full B".into())
            ]
        );
        h.login(2, "B");
        h.line(3, "BROADCAST hi");
        assert_eq!(
            h.take(),
            vec![(1, "MSG 1 broadcast C hi".into()), (3, "FAIL queue-full B".into())]
        );
        h.line(2, "ACK 2");
        // With room for 2, each sender's share is 1: A acknowledges C's
        // first broadcast, so C may send A another.
        h.line(1, "ACK 1");
        h.line(3, "BROADCAST hi");
        let mut sent = h.take();
        sent.sort();
        assert_eq!(
            sent,
            vec![(1, "MSG 2 broadcast C hi".into()), (2, "MSG 3 broadcast C hi".into())]
        );
    }

    #[test]
    fn one_sender_takes_at_most_half_of_an_outbox_and_others_still_get_through() {
        let mut h = Harness::with_config(
            Harness::accounts(&["A", "B", "C", "D"]),
            CoreConfig { max_queued: 4, ..CoreConfig::new(TIMEOUT, BLOCK) },
        );
        h.login(1, "A");
        h.login(3, "C");
        h.login(4, "D");
        for text in ["one", "two", "three"] {
            h.line(1, &format!("MESSAGE B {text}"));
        }
        assert_eq!(
            h.to(1),
            vec!["QUEUED B offline", "QUEUED B offline", "FAIL queue-full B"],
            "A's share is half of B's outbox"
        );
        h.line(3, "MESSAGE B four");
        h.line(3, "MESSAGE B five");
        h.line(4, "MESSAGE B six");
        assert_eq!(
            h.take(),
            vec![
                (3, "QUEUED B offline".into()),
                (3, "QUEUED B offline".into()),
                (4, "FAIL queue-full B".into())
            ],
            "C got the other half; now the outbox is full for everyone"
        );
        h.login(2, "B");
        h.line(2, "ACK 2");
        // The flooding broadcaster is held to its share of B's outbox too.
        h.line(3, "BROADCAST hi");
        h.line(4, "BROADCAST hey");
        let mut sent = h.take();
        sent.sort();
        assert_eq!(
            sent,
            vec![
                (1, "MSG 1 broadcast C hi".into()),
                (1, "MSG 2 broadcast D hey".into()),
                (2, "MSG 5 broadcast D hey".into()),
                (3, "FAIL queue-full B".into()),
                (3, "MSG 1 broadcast D hey".into()),
                (4, "MSG 1 broadcast C hi".into())
            ]
        );
    }

    #[test]
    fn the_servers_total_of_queued_bytes_refuses_new_messages_and_acks_make_room() {
        let mut h = Harness::with_config(
            Harness::accounts(&["A", "B", "C", "D"]),
            CoreConfig { max_queued_bytes: 250, ..CoreConfig::new(TIMEOUT, BLOCK) },
        );
        let text = "x".repeat(100);
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, &format!("MESSAGE C {text}"));
        h.line(1, &format!("MESSAGE D {text}"));
        h.line(2, &format!("MESSAGE D {text}"));
        assert_eq!(
            h.take(),
            vec![
                (1, "QUEUED C offline".into()),
                (1, "QUEUED D offline".into()),
                (2, "FAIL server-queue-full".into())
            ]
        );
        h.line(2, &format!("BROADCAST {text}"));
        assert_eq!(h.take(), vec![(2, "FAIL server-queue-full".into())]);
        h.login(3, "C");
        h.line(3, "ACK 1");
        h.line(2, &format!("MESSAGE D {text}"));
        assert_eq!(h.take(), vec![(2, "QUEUED D offline".into())], "room again");
    }

    #[test]
    fn past_the_send_rate_messages_and_broadcasts_are_refused_and_the_sender_told() {
        let mut h = Harness::with_config(
            Harness::accounts(&["A", "B", "C"]),
            CoreConfig { send_rate: 2, send_burst: 3, ..CoreConfig::new(TIMEOUT, BLOCK) },
        );
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, "MESSAGE B one");
        h.line(1, "BROADCAST two");
        h.line(1, "MESSAGE C three");
        h.line(1, "MESSAGE B four");
        h.line(1, "BROADCAST five");
        assert_eq!(
            h.take(),
            vec![
                (2, "MSG 1 direct A one".into()),
                (2, "MSG 2 broadcast A two".into()),
                (1, "QUEUED C offline".into()),
                (1, "FAIL rate-limited".into()),
                (1, "FAIL rate-limited".into())
            ]
        );
        // Others are not affected.
        h.line(2, "MESSAGE A hi");
        assert_eq!(h.to(1), vec!["MSG 1 direct B hi"]);
        // The event loop is asked to read no more from A until then.
        let half = std::time::Duration::from_millis(500);
        assert_eq!(h.core.read_hold(1, h.now), Some(h.now + half));
        assert_eq!(h.core.read_hold(2, h.now), None, "only the refused connection");
        // Half a second gives one token back.
        h.advance(half);
        assert_eq!(h.core.read_hold(1, h.now), None);
        h.line(1, "MESSAGE B six");
        h.line(1, "MESSAGE B seven");
        assert_eq!(
            h.take(),
            vec![(2, "MSG 3 direct A six".into()), (1, "FAIL rate-limited".into())]
        );
    }

    #[test]
    fn without_journal_space_new_messages_and_blocks_are_refused_and_acks_go_through() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, "MESSAGE B one");
        assert_eq!(h.to(2), vec!["MSG 1 direct A one"]);
        // The journal has room for one more message of this size.
        h.core.set_storage_budget(Some(200));
        h.line(1, "MESSAGE C two");
        h.line(1, "MESSAGE C three");
        h.line(1, "BROADCAST everyone");
        h.line(1, "BLOCK D");
        assert_eq!(
            h.to(1),
            vec!["QUEUED C offline", "FAIL storage", "FAIL storage", "FAIL storage"]
        );
        // Acknowledgements only shrink the state: they always go through.
        h.line(2, "ACK 1");
        h.advance(CONFIRM_DELAY);
        assert_eq!(h.to(1), vec!["DELIVERED B"]);
        let records: Vec<_> = h.core.records().map(|(_, r)| r).collect();
        assert!(
            records.contains(&crate::server::journal::Record::Acked { user: "B".into(), seq: 1 })
        );
        h.core.set_storage_budget(None);
        h.line(1, "MESSAGE C four");
        assert_eq!(h.to(1), vec!["QUEUED C offline"], "room again, accepted again");
    }

    #[test]
    fn journal_records_rebuild_the_same_state() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.line(1, "MESSAGE B one");
        h.line(1, "MESSAGE B two");
        h.line(1, "BLOCK C");
        h.line(1, "BLOCK D");
        h.line(1, "UNBLOCK D");
        h.login(2, "B");
        h.line(2, "ACK 1");
        h.connect(3);
        for _ in 0..3 {
            h.line(3, "LOGIN D 1 wrong");
        }
        let records: Vec<_> = h.core.records().map(|(_, record)| record).collect();
        let snapshot: Vec<_> = h.core.snapshot(h.now).collect();
        for replay in [records, snapshot] {
            let mut fresh = Harness::new();
            assert_eq!(fresh.core.restore(replay, h.now), Vec::<String>::new());
            fresh.connect(5);
            fresh.line(5, "LOGIN B 1 B_pwd");
            assert_eq!(fresh.to(5), vec!["HELLO 1 35", "WELCOME B", "MSG 2 offline A two"]);
            fresh.line(5, "MESSAGE A three");
            fresh.connect(6);
            fresh.line(6, "LOGIN A 1 A_pwd");
            assert_eq!(fresh.to(6), vec!["HELLO 1 35", "WELCOME A", "MSG 1 offline B three"]);
            fresh.line(5, "MESSAGE A hi");
            assert_eq!(fresh.take(), vec![(6, "MSG 2 direct B hi".into())]);
            fresh.connect(7);
            fresh.line(7, "LOGIN D 1 D_pwd");
            assert_eq!(fresh.to(7), vec!["HELLO 1 35", "DENIED locked"]);
            fresh.login(8, "C");
            fresh.line(8, "MESSAGE A hi");
            assert_eq!(fresh.to(8), vec!["FAIL blocked-by A"]);
        }
    }

    #[test]
    fn sequence_numbers_never_go_back_after_a_restart() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        h.line(1, "MESSAGE B one");
        h.line(2, "ACK 1");
        let snapshot: Vec<_> = h.core.snapshot(h.now).collect();
        let mut fresh = Harness::new();
        fresh.core.restore(snapshot, h.now);
        fresh.login(1, "A");
        fresh.login(2, "B");
        fresh.line(1, "MESSAGE B two");
        assert_eq!(fresh.to(2), vec!["MSG 2 direct A two"]);
    }

    #[test]
    fn state_of_users_missing_from_the_credentials_file_is_kept_not_dropped() {
        // The regression: a start whose credentials file lacked a user
        // dropped that user's queued messages at the next compaction.
        let mut h = Harness::with_users(&["A", "B", "Zed"]);
        h.login(1, "A");
        h.line(1, "MESSAGE Zed kept one");
        h.line(1, "MESSAGE Zed kept two");
        h.line(1, "BLOCK Zed");
        let records: Vec<_> = h.core.records().map(|(_, record)| record).collect();
        // Zed is not in this start's credentials file.
        let mut fresh = Harness::with_users(&["A", "B"]);
        assert_eq!(fresh.core.restore(records, h.now), vec!["Zed".to_string()]);
        fresh.connect(2);
        fresh.line(2, "LOGIN Zed 1 Zed_pwd");
        assert_eq!(fresh.to(2), vec!["HELLO 1 35", "DENIED unknown-user"], "not listed");
        fresh.login(3, "B");
        fresh.line(3, "MESSAGE Zed hi");
        assert_eq!(fresh.to(3), vec!["FAIL unknown-user Zed"]);
        // Compaction keeps the state: restore a third core from the snapshot.
        let snapshot: Vec<_> = fresh.core.snapshot(fresh.now).collect();
        let mut third = Harness::with_users(&["A", "B"]);
        assert_eq!(third.core.restore(snapshot, h.now), vec!["Zed".to_string()]);
        // Listed again: the messages and the block are there.
        third.core.reload(Harness::accounts(&["A", "B", "Zed"]));
        third.connect(4);
        third.line(4, "LOGIN Zed 1 Zed_pwd");
        assert_eq!(
            third.to(4),
            vec![
                "HELLO 1 35",
                "WELCOME Zed",
                "MSG 1 offline A kept one",
                "MSG 2 offline A kept two"
            ]
        );
        third.line(4, "MESSAGE A hello");
        assert_eq!(third.to(4), vec!["FAIL blocked-by A"]);
    }

    #[test]
    fn an_ack_beyond_what_was_sent_discards_nothing_unsent() {
        let mut h = Harness::new();
        h.login(1, "B");
        h.line(1, "MESSAGE A one");
        h.connect(2);
        h.line(2, "LOGIN A 1 A_pwd");
        h.line(2, "ACK 99");
        h.line(1, "MESSAGE A two");
        h.core.disconnected(2);
        h.connect(3);
        h.take();
        h.line(3, "LOGIN A 1 A_pwd");
        assert_eq!(h.to(3), vec!["WELCOME A", "MSG 2 direct B two"], "ACK 99 covered only one");
    }

    #[test]
    fn a_long_online_list_comes_in_several_frames() {
        let names: Vec<String> = (0..150).map(|i| format!("u{i:03}")).collect();
        let mut h = Harness::with_users(&names.iter().map(String::as_str).collect::<Vec<_>>());
        for (conn, name) in names.iter().enumerate() {
            h.login(conn, name);
        }
        h.line(0, "ONLINE");
        let frames = h.to(0);
        assert_eq!(frames.len(), 3);
        assert!(frames[0].starts_with("ONLINE-MORE u001 u002 "));
        assert!(frames[1].starts_with("ONLINE-MORE u065 "));
        assert!(frames[2].starts_with("ONLINE u129 ") && frames[2].ends_with(" u149"));
    }

    #[test]
    fn ack_drops_only_what_it_covers() {
        let mut h = Harness::new();
        h.login(1, "A");
        h.login(2, "B");
        for text in ["one", "two", "three"] {
            h.line(1, &format!("MESSAGE B {text}"));
        }
        h.line(2, "ACK 2");
        h.core.disconnected(2);
        h.connect(3);
        h.take();
        h.line(3, "LOGIN B 1 B_pwd");
        assert_eq!(h.to(3), vec!["WELCOME B", "MSG 3 direct A three"]);
    }
}

#[cfg(test)]
mod incremental_snapshot_tests {
    use super::super::tests::Harness;
    use super::super::SnapshotCursor;
    use crate::server::journal::Record;
    use std::time::Duration;

    /// A deterministic stream of pseudo-random numbers.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const NAMES: [&str; 4] = ["A", "B", "C", "D"];

    /// One random thing a user might do that changes durable state.
    fn act(h: &mut Harness, dice: &mut Dice, online: &mut [bool; 4], acked: &mut [u64; 4]) {
        let who = dice.roll(4);
        let conn = who + 1;
        if !online[who] {
            h.connect(conn);
            let password =
                if dice.roll(5) == 0 { "wrong".to_string() } else { format!("{}_pwd", NAMES[who]) };
            h.line(conn, &format!("LOGIN {} 1 {password}", NAMES[who]));
            online[who] = h.to(conn).iter().any(|l| l.starts_with("WELCOME"));
            return;
        }
        let other = NAMES[(who + 1 + dice.roll(3)) % 4];
        match dice.roll(6) {
            0 | 1 => h.line(conn, &format!("MESSAGE {other} m{}", dice.roll(1000))),
            2 => h.line(conn, &format!("BLOCK {other}")),
            3 => h.line(conn, &format!("UNBLOCK {other}")),
            4 => {
                // Acknowledge whatever this user was sent so far.
                let seqs: Vec<u64> = h
                    .to(conn)
                    .iter()
                    .filter_map(|l| l.strip_prefix("MSG ")?.split(' ').next()?.parse().ok())
                    .collect();
                if let Some(&last) = seqs.iter().max() {
                    acked[who] = acked[who].max(last);
                    h.line(conn, &format!("ACK {last}"));
                }
            }
            _ => {
                h.line(conn, "LOGOUT");
                online[who] = false;
            }
        }
        h.take();
    }

    fn normalised(records: impl Iterator<Item = Record>) -> Vec<String> {
        let mut lines: Vec<String> = records.map(|r| format!("{r:?}")).collect();
        lines.sort();
        lines
    }

    #[test]
    fn a_snapshot_written_in_steps_while_state_changes_rebuilds_the_final_state() {
        for seed in 1..40u64 {
            let mut h = Harness::new();
            let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (mut online, mut acked) = ([false; 4], [0u64; 4]);
            for _ in 0..60 {
                act(&mut h, &mut dice, &mut online, &mut acked);
            }
            h.core.records().for_each(drop);
            // The rewrite: small steps, with changes in between; a change
            // goes into the new file only if the cursor covers it.
            let mut new_file = Vec::new();
            let mut cursor = Some(SnapshotCursor::default());
            while let Some(at) = cursor {
                for _ in 0..dice.roll(4) {
                    act(&mut h, &mut dice, &mut online, &mut acked);
                }
                for (user, record) in h.core.records() {
                    if at.covers(user, &record) {
                        new_file.push(record);
                    }
                }
                cursor = h.core.snapshot_step(at, 1 + dice.roll(300), h.now, &mut new_file);
            }
            // Changes after the switch are appended as usual.
            for _ in 0..10 {
                act(&mut h, &mut dice, &mut online, &mut acked);
            }
            new_file.extend(h.core.records().map(|(_, record)| record));
            h.advance(Duration::ZERO);
            let mut fresh = Harness::new();
            assert!(fresh.core.restore(new_file, h.now).is_empty());
            assert_eq!(
                normalised(fresh.core.snapshot(h.now)),
                normalised(h.core.snapshot(h.now)),
                "seed {seed}"
            );
        }
    }
}
