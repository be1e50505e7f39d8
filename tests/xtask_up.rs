//! `cargo xtask up` as a user runs it: a real process that prints its URLs, serves requests,
//! and on Ctrl-C (SIGINT) stops every child it started.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testkit::http::get_json;
use testkit::project_bin;

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

#[test]
fn xtask_up_serves_and_ctrl_c_leaves_nothing_behind() {
    let xtask = project_bin("xtask").unwrap();
    let state = tempfile_dir();
    let mut child = Command::new(xtask)
        .args(["up", "--free-ports", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let guard = KillOnDrop(pid);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The table: `name pid address` per service; the hmac key row ends it.
    let (mut proxy, mut pids) = (None, Vec::<(String, u32)>::new());
    let mut table_done = false;
    let deadline = Instant::now() + Duration::from_secs(240);
    while !table_done {
        assert!(
            Instant::now() < deadline,
            "xtask up printed no URL table in time"
        );
        let line = lines.next().expect("xtask up output").unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [name, pid, place, ..] = words[..]
            && let Ok(pid) = pid.parse::<u32>()
        {
            if name == "proxy" {
                proxy = Some(place.to_string());
            }
            pids.push((name.to_string(), pid));
        }
        table_done = line.trim_start().starts_with("hmac key");
    }
    // Drain the rest of the output so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let proxy = proxy.unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids = rt.block_on(async {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..60 {
            let v: serde_json::Value = get_json(&http, format!("{proxy}/whoami")).await;
            ids.insert(v["id"].as_str().unwrap().to_string());
        }
        ids
    });
    assert_eq!(
        ids.len(),
        3,
        "requests reached all three data servers: {ids:?}"
    );
    // Each service on its row with a live pid: a data server can be picked by its id.
    let names: Vec<&str> = pids.iter().map(|(name, _)| name.as_str()).collect();
    for name in [
        "proxy",
        "nsqadmin",
        "nsqlookupd",
        "nsqd0",
        "nsqd1",
        "archiver",
    ] {
        assert!(names.contains(&name), "{name} has a pid: {pids:?}");
    }
    for id in &ids {
        assert!(names.contains(&id.as_str()), "{id} has a pid: {pids:?}");
    }
    let mut pids: Vec<u32> = pids.into_iter().map(|(_, pid)| pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert!(pids.len() >= 9, "{pids:?}");
    assert!(pids.iter().all(|p| alive(*p)));

    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("xtask up stops within 60s of SIGINT")
        .unwrap();
    drop(guard);
    assert!(status.success(), "xtask up exits 0 after Ctrl-C: {status}");
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "children left behind: {left:?}");
    let _ = std::fs::remove_dir_all(state);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kills `xtask up` if the test fails before its Ctrl-C.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}
