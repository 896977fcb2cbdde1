//! chat-bench runs every scenario end to end (short, small) and the chat
//! server loses and repeats nothing under its load. Figures are printed,
//! never asserted: speed is measured by chat-bench itself, not by tests.

use std::process::Command;

#[test]
fn every_scenario_runs_and_nothing_is_lost_or_repeated() {
    let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(["all", "--smoke", "--json"])
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run chat-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chat-bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let scenarios = [
        "direct",
        "fanout",
        "latency",
        "loginflood",
        "flood",
        "idle",
        "rest",
        "login",
        "spawn",
        "scale",
        "compaction",
        "churn",
    ];
    assert_eq!(lines.len(), scenarios.len(), "one JSON object per scenario: {stdout}");
    for (line, scenario) in lines.iter().zip(scenarios) {
        assert!(line.starts_with(&format!("{{\"scenario\":\"{scenario}\"")), "{line}");
        if line.contains("\"lost\"") {
            assert!(line.contains("\"lost\":0,"), "{line}");
            assert!(line.contains("\"duplicated\":0"), "{line}");
        }
    }
}
