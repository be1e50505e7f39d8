//! What an operator reads from the binaries themselves: `--help` names the logging variables, the
//! environment override scheme and only the binary's own keys; `-V` has one form in all three;
//! `LOG_FORMAT=json` makes every log line a JSON object, and the api-server's access log carries its
//! fields as values a log collector can compute with.

use std::process::Command;
use std::time::Duration;

use testkit::{DataServer, DataServerOptions, ManagedProcess, NsqCluster, eventually, project_bin};

fn output(binary: &str, args: &[&str]) -> String {
    let out = Command::new(project_bin(binary).unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{binary} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_names_logging_the_environment_and_only_own_keys() {
    for (binary, prefix, own, foreign) in [
        (
            "api-server",
            "API_SERVER__",
            "discovery.ttl",
            "announce.interval",
        ),
        (
            "data-server",
            "DATA_SERVER__",
            "announce.interval",
            "discovery.",
        ),
        (
            "archiver",
            "ARCHIVER__",
            "archive.batch_size",
            "announce.interval",
        ),
    ] {
        let mut helps = vec![output(binary, &["--help"])];
        if binary == "archiver" {
            helps.push(output(binary, &["run", "--help"]));
        }
        for help in helps {
            for needed in ["RUST_LOG", "LOG_FORMAT", "json", prefix, "--set", own] {
                assert!(
                    help.contains(needed),
                    "{binary} --help lacks {needed}:\n{help}"
                );
            }
            assert!(
                !help.contains(foreign),
                "{binary} --help names {foreign}:\n{help}"
            );
        }
        let version = output(binary, &["-V"]);
        let long = output(binary, &["--version"]);
        assert_eq!(version, long, "{binary}");
        let rest = version
            .strip_prefix(&format!("{binary} 0."))
            .unwrap_or_else(|| panic!("{binary} -V: {version:?}"));
        assert!(
            rest.trim_end().ends_with(" build)"),
            "{binary} -V: {version:?}"
        );
    }
}

/// The JSON objects of a log, failing on any line that is not one.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        // The binaries' own lines on stdout (the bound addresses) are not log lines.
        .filter(|l| !(l.contains(" listening on http://") || l.starts_with("listening on ")))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{log}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_the_access_log_fields() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let nsqd = cluster.nsqd_tcp_addresses()[0].to_string();
    let mut data_opts = DataServerOptions::new([&nsqd]);
    data_opts
        .envs
        .push(("LOG_FORMAT".to_owned(), "json".to_owned()));
    let data = DataServer::start_with(data_opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        "server.listen=127.0.0.1:0".to_owned(),
        "server.admin_listen=127.0.0.1:0".to_owned(),
        format!("discovery.nsqd_tcp_addresses={nsqd}"),
        "proxy.access_log=true".to_owned(),
    ];
    let args = sets
        .iter()
        .flat_map(|s| ["--set".to_owned(), s.clone()])
        .collect();
    let envs = vec![
        ("LOG_FORMAT".to_owned(), "json".to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    let mut api = ManagedProcess::spawn(
        "api-server",
        project_bin("api-server").unwrap(),
        args,
        envs,
        dir.path().join("api-server.log"),
    )
    .unwrap();
    let proxy = api
        .wait_log(Duration::from_secs(30), "the proxy address", |log| {
            let at = log.find("proxy listening on http://")? + "proxy listening on http://".len();
            Some(log[at..].lines().next()?.to_owned())
        })
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{proxy}/kv/answer");
    eventually(
        Duration::from_secs(30),
        "a request answered by the data server",
        || async {
            let resp = http.put(&url).body("42").send().await.ok()?;
            resp.status().is_success().then_some(())
        },
    )
    .await;
    let access = eventually(
        Duration::from_secs(10),
        "an access log line of a PUT",
        || async {
            json_lines(&api.log()).into_iter().find(|l| {
                l["target"] == "api_server::access"
                    && l["method"] == "PUT"
                    && l["status"].as_u64().is_some_and(|s| s < 300)
            })
        },
    )
    .await;
    assert_eq!(access["path"], "/kv/answer", "{access}");
    assert_eq!(access["upstream"], data.id(), "{access}");
    assert_eq!(access["tries"], 1, "{access}");
    assert!(
        access["elapsed_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{access}"
    );
    assert!(
        access["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{access}"
    );
    assert!(
        access["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{access}"
    );
    // The head and its 2-byte body came in; a response head went out.
    assert!(
        access["bytes_in"].as_u64().is_some_and(|n| n > 40),
        "{access}"
    );
    assert!(
        access["bytes_out"].as_u64().is_some_and(|n| n > 20),
        "{access}"
    );
    // Every line of both logs is one JSON object, with a level and a time.
    let data_log = json_lines(&data.log());
    assert!(!data_log.is_empty());
    for line in json_lines(&api.log()).into_iter().chain(data_log) {
        assert!(
            line["level"].is_string() && line["timestamp"].is_string(),
            "{line}"
        );
    }
}
