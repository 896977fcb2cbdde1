//! Every transcript of the original system's document, replayed with the
//! real binaries: several clients driven through stdin, their stdout
//! checked line by line.

mod support;

use support::{signal, Server};

/// A, B and C log in one after the other, each seeing the later ones arrive.
fn three_users(server: &Server) -> (support::Client, support::Client, support::Client) {
    let mut a = server.login("A");
    let mut b = server.login("B");
    a.out.expect_next("User B has logged on.");
    let c = server.login("C");
    a.out.expect_next("User C has logged on.");
    b.out.expect_next("User C has logged on.");
    (a, b, c)
}

#[test]
fn login_is_announced_to_users_already_online() {
    let server = Server::start("login", &[]);
    let (mut a, mut b, mut c) = three_users(&server);
    // Nobody saw anything else: the next line each sees is this broadcast.
    c.send("broadcast done");
    a.out.expect_next("C: done");
    b.out.expect_next("C: done");
}

#[test]
fn messages_go_live_or_wait_for_the_next_login() {
    let server = Server::start("message", &[]);
    let (mut a, mut b, mut c) = three_users(&server);
    a.send("message B hi there!");
    b.out.expect_next("A: hi there!");
    // Once B's client acknowledges, the sender hears of it.
    a.out.expect_next("Message delivered to B.");
    c.send("message B it's user C.");
    b.out.expect_next("C: it's user C.");
    c.out.expect_next("Message delivered to B.");
    a.send("logout");
    a.out.expect_next("Logging out. Bye for now!");
    assert_eq!(a.wait_exit(), Some(0));
    b.out.expect_next("User A has logged out.");
    c.out.expect_next("User A has logged out.");
    b.send("message A hi there!");
    b.send("message A second");
    let saved = "User A is offline. The message will be delivered when A logs in.";
    b.out.expect_next(saved);
    b.out.expect_next(saved);
    let mut a = server.login("A");
    a.out.expect_next("B: hi there!");
    a.out.expect_next("B: second");
    b.out.expect("User A has logged on.");
    c.out.expect_next("User A has logged on.");
}

#[test]
fn broadcast_reaches_online_users_but_not_the_sender_or_offline_users() {
    let server = Server::start("broadcast", &[]);
    let (mut a, mut b, mut c) = three_users(&server);
    c.send("logout");
    c.out.expect_next("Logging out. Bye for now!");
    a.out.expect_next("User C has logged out.");
    b.out.expect_next("User C has logged out.");
    a.send("broadcast hello all");
    b.out.expect_next("A: hello all");
    // A's next line is B's reply, not its own broadcast.
    b.send("message A got it");
    a.out.expect_next("B: got it");
    // Broadcasts are not stored for offline users.
    let mut c = server.login("C");
    c.send("online");
    c.out.expect_next("A");
    c.out.expect_next("B");
    c.out.expect_next("(Warning: Users that have blocked you will not be listed)");
}

#[test]
fn online_lists_others_but_not_those_who_blocked_you() {
    let server = Server::start("online", &[]);
    let (mut a, mut b, mut c) = three_users(&server);
    b.send("online");
    b.out.expect_next("A");
    b.out.expect_next("C");
    b.out.expect_next("(Warning: Users that have blocked you will not be listed)");
    c.send("block B");
    c.out.expect_next("User B has been blocked.");
    b.send("online");
    b.out.expect_next("A");
    b.out.expect_next("(Warning: Users that have blocked you will not be listed)");
    a.send("online");
    a.out.expect_next("B");
    a.out.expect_next("C");
    a.out.expect_next("(Warning: Users that have blocked you will not be listed)");
}

#[test]
fn blocking_is_one_way_and_unblocking_restores_delivery() {
    let server = Server::start("block", &[]);
    let (mut a, mut b, mut c) = three_users(&server);
    a.send("block B");
    a.out.expect_next("User B has been blocked.");
    a.send("block C");
    a.out.expect_next("User C has been blocked.");
    b.send("message A hi");
    b.out.expect_next("Your message could not be delivered as the recipient has blocked you.");
    c.send("broadcast hello all");
    c.out.expect_next("Your message could not be received by some recipients.");
    b.out.expect_next("C: hello all");
    a.send("message B don't reply");
    b.out.expect_next("A: don't reply");
    a.out.expect_next("Message delivered to B.");
    a.send("broadcast don't reply");
    b.out.expect_next("A: don't reply");
    c.out.expect_next("A: don't reply");

    a.send("unblock B");
    a.out.expect_next("User B has been unblocked.");
    b.send("message A hi");
    a.out.expect_next("B: hi");
    b.out.expect_next("Message delivered to A.");
    a.send("unblock C");
    a.out.expect_next("User C has been unblocked.");
    c.send("broadcast hello all");
    a.out.expect_next("C: hello all");
    b.out.expect_next("C: hello all");
}

#[test]
fn getaddress_consent_and_private_messages() {
    let server = Server::start("p2p", &[]);
    let (mut a, mut b, mut c) = three_users(&server);
    b.send("getaddress A");
    b.out.expect_next("consent asked from User B.");
    a.out.expect_next("User B is asking for consent.");
    a.out.expect_next("To ignore, do nothing. To give consent, enter: consent <user>");
    a.send("consent B");
    let address = b.out.next_line().expect("address line");
    assert!(address.starts_with("User A ip: 127.0.0.1, port: "), "got {address:?}");
    let port = address.rsplit(' ').next().expect("port");

    c.send("block B");
    c.out.expect_next("User B has been blocked.");
    b.send("getaddress C");
    b.out.expect_next("getaddress request for C failed.");

    c.send("private B hi there");
    c.out.expect_next("Please request user address first (getaddress <user>).");
    b.send("private A hello");
    a.out.expect_next("B: hello");
    b.send("private A and again");
    a.out.expect_next("B: and again");

    signal(a.pid(), "INT");
    a.out.expect_next("Client is terminating. Bye!");
    assert_eq!(a.wait_exit(), Some(0));
    b.send("private A hello again");
    b.out.expect_next(&format!(
        "User A is no longer available at ('127.0.0.1', {port}). \
         You can send an offline message through the server."
    ));
    b.out.expect_next("Private message to A was not confirmed: hello again");
    b.out.expect_next("To send them through the server instead, enter: resend");
    // The stale address was forgotten.
    b.send("private A still there?");
    b.out.expect_next("Please request user address first (getaddress <user>).");
    // The unconfirmed message goes through the server instead.
    b.send("resend");
    b.out.expect_next("User A is offline. The message will be delivered when A logs in.");
    b.send("resend");
    b.out.expect_next("There are no unconfirmed private messages to resend.");
    let mut a = server.login("A");
    a.out.expect_next("B: hello again");
}

#[test]
fn getaddress_fails_for_offline_users() {
    let server = Server::start("p2p-offline", &[]);
    let mut b = server.login("B");
    b.send("getaddress A");
    b.out.expect_next("getaddress request for A failed.");
}

#[test]
fn logout_is_not_announced_to_users_the_leaver_blocked() {
    let server = Server::start("logout", &[]);
    let (mut a, mut b, mut c) = three_users(&server);
    c.send("block B");
    c.out.expect_next("User B has been blocked.");
    c.send("logout");
    c.out.expect_next("Logging out. Bye for now!");
    assert_eq!(c.wait_exit(), Some(0));
    a.out.expect_next("User C has logged out.");
    // B's next line is A's message, not a logout notice.
    a.send("message B after");
    b.out.expect_next("A: after");
}

#[test]
fn ctrl_c_is_not_announced_and_later_messages_wait_for_the_next_login() {
    let server = Server::start("ctrl-c", &[]);
    let (mut a, mut b, _c) = three_users(&server);
    signal(a.pid(), "INT");
    a.out.expect_next("Client is terminating. Bye!");
    a.out.expect_end();
    assert_eq!(a.wait_exit(), Some(0));
    b.send("message A hi");
    b.send("broadcast hi all");
    b.send("online");
    b.out.expect_next("User A is offline. The message will be delivered when A logs in.");
    b.out.expect_next("C");
    b.out.expect_next("(Warning: Users that have blocked you will not be listed)");
    let mut a = server.login("A");
    a.out.expect_next("B: hi");
    // The broadcast was not for offline users; A's next line is this one.
    b.send("message A next");
    a.out.expect_next("B: next");
    // B heard no logout notice for A, only the new logon. A logged on
    // again within a second of its last notice, so that notice is held to
    // the end of the second (presence coalescing) and may come after the
    // delivery confirmation.
    let mut next_two = [b.out.next_line(), b.out.next_line()];
    next_two.sort();
    assert_eq!(
        next_two,
        [Some("Message delivered to A.".to_string()), Some("User A has logged on.".to_string())]
    );
}

#[test]
fn server_shutdown_is_announced_and_clients_exit_by_themselves() {
    let mut server = Server::start("shutdown", &[]);
    let (mut a, mut b, _c) = three_users(&server);
    signal(server.pid(), "INT");
    server.out.expect_next("Notifying clients of server shutdown...");
    server.out.expect_next("Server is shutting down.");
    assert!(server.wait_exit().success());
    for client in [&mut a, &mut b] {
        client.out.expect_next("Server is shutting down. Press Enter or CTRL-c to exit.");
        client.out.expect_next("Client is terminating. Bye!");
        assert_eq!(client.wait_exit(), Some(6));
    }
}

#[test]
fn sigterm_also_shuts_the_server_down_cleanly() {
    let mut server = Server::start("sigterm", &[]);
    let mut a = server.login("A");
    signal(server.pid(), "TERM");
    server.out.expect_next("Notifying clients of server shutdown...");
    a.out.expect_next("Server is shutting down. Press Enter or CTRL-c to exit.");
    assert!(server.wait_exit().success());
}

#[test]
fn a_second_login_replaces_the_first_and_address_holders_are_told() {
    let server = Server::start("relogin", &[]);
    let (mut a, mut b, mut c) = three_users(&server);
    support::grant_address(&mut a, &mut b);

    let mut a2 = server.login("A");
    a.out.expect_next("You have logged in from another client. This session has ended.");
    assert_eq!(a.wait_exit(), Some(7));
    b.out.expect_next("User A has changed IP addresses. Ask for the address again.");
    b.send("private A hello");
    b.out.expect_next("Please request user address first (getaddress <user>).");
    // The new session works, and no second logon notice went out.
    c.send("message A to the new one");
    a2.out.expect_next("C: to the new one");
    c.out.expect_next("Message delivered to A.");
    c.send("online");
    c.out.expect_next("A");
}

#[test]
fn end_of_input_logs_out_after_everything_sent_was_handled() {
    let server = Server::start("eof", &[]);
    let mut b = server.login("B");
    let mut a = server.login("A");
    b.out.expect_next("User A has logged on.");
    a.send("message B one");
    a.send("message B two");
    a.send("online");
    a.close_stdin();
    // Delivery notices may come at any point among these.
    a.out.expect("B");
    a.out.expect("(Warning: Users that have blocked you will not be listed)");
    // Logging out waits for nothing: delivery notices may or may not come
    // before the goodbye, but the messages themselves are safe.
    a.out.expect("Logging out. Bye for now!");
    a.out.expect_end();
    assert_eq!(a.wait_exit(), Some(0));
    b.out.expect_next("A: one");
    b.out.expect_next("A: two");
    b.out.expect_next("User A has logged out.");
}
