//! The server's state machine fed an arbitrary sequence of events: lines
//! (any bytes) on a few connections, connects, disconnects and clock jumps
//! that fire timers. It must never panic, every effect must concern a
//! connection it knows of at that moment, and every line it sends must be
//! a frame a client can parse.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat::protocol::ServerMsg;
use chat::server::core::{Core, CoreConfig, Effect, PasswordCheck, SnapshotCursor};
use chat::server::credentials::{Account, Secret};
use libfuzzer_sys::fuzz_target;

const CONNS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let accounts = ["A", "B", "C"]
        .iter()
        .map(|n| Account { name: (*n).into(), password: Secret::Plain(format!("{n}_pwd")) })
        .collect();
    let config = CoreConfig {
        max_queued: 8,
        window_bytes: 600,
        durable: true,
        ..CoreConfig::new(Duration::from_secs(5), Duration::from_secs(3))
    };
    let mut core = Core::new(accounts, config);
    let mut now = Instant::now();
    let mut timers = Vec::new();
    let mut open = [false; CONNS];
    for op in data.split(|&b| b == b'\n') {
        let Some((&head, rest)) = op.split_first() else { continue };
        let conn = usize::from(head) % CONNS;
        match head / CONNS as u8 % 8 {
            0 if !open[conn] => {
                core.connected(conn, SocketAddr::from(([127, 0, 0, 1], 4000)), now);
                open[conn] = true;
            }
            1 if open[conn] => {
                core.disconnected(conn);
                open[conn] = false;
            }
            2 => {
                now += Duration::from_millis(u64::from(rest.first().copied().unwrap_or(1)) * 50);
                let (due, later): (Vec<_>, Vec<_>) =
                    timers.drain(..).partition(|(at, _)| *at <= now);
                timers = later;
                for (_, timer) in due {
                    core.timer_fired(timer, now);
                }
            }
            3 if open[conn] => core.line_too_long(conn, now),
            _ if open[conn] => core.received(conn, rest, now),
            _ => {}
        }
        let mut checks = Vec::new();
        let mut effects = core.effects();
        while let Some(effect) = effects.next() {
            match effect {
                Effect::Send { start, end, .. } => {
                    // Several lines for one connection in a row share an effect.
                    let lines = std::str::from_utf8(effects.bytes(start, end)).unwrap();
                    assert!(lines.ends_with('\n'), "unterminated output {lines:?}");
                    for line in lines.lines() {
                        assert!(ServerMsg::parse(line).is_ok(), "unparsable frame {line:?}");
                    }
                }
                Effect::Close { conn } => open[conn] = false,
                Effect::Arm { at, timer } => timers.push((at, timer)),
                // Plain passwords are checked at once; a hash would come here.
                Effect::Verify(job) => checks.push((job.conn, job.serial)),
            }
        }
        drop(effects);
        for (conn, serial) in checks {
            core.verified(conn, serial, PasswordCheck::Wrong, now);
        }
        let _ = core.records().count();
        // A snapshot in small steps, as a journal rewrite takes it.
        let (mut snapshot, mut cursor) = (Vec::new(), Some(SnapshotCursor::default()));
        while let Some(at) = cursor {
            cursor = core.snapshot_step(at, 512, now, &mut snapshot);
        }
    }
});
