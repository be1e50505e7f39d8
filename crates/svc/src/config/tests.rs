//! The loader end to end, with real files: every message shape a user can meet.

use std::io::Write;
use std::net::SocketAddr;

use serde::Deserialize;
use tempfile::NamedTempFile;

use super::*;
use crate::{Fraction, HostPort, HumanDuration};

/// A cut-down data-server config, shaped like the real one: every section defaulted.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Config {
    server: Server,
    announce: Announce,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Server {
    listen: SocketAddr,
    id: Option<String>,
    port_hint: u16,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Announce {
    topic: String,
    nsqd_tcp_addresses: Vec<HostPort>,
    interval: HumanDuration,
    jitter: Fraction,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: Server {
                listen: "127.0.0.1:8080".parse().unwrap(),
                id: None,
                port_hint: 1,
            },
            announce: Announce::default(),
        }
    }
}

impl Default for Server {
    fn default() -> Self {
        Config::default().server
    }
}

impl Default for Announce {
    fn default() -> Self {
        Announce {
            topic: "data_server_addr".into(),
            nsqd_tcp_addresses: Vec::new(),
            interval: HumanDuration::from_secs(5),
            jitter: Fraction::clamped(0.1),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        self.announce.interval.require_positive("announce.interval")
    }
}

/// A config with a required key (no serde default), like an archiver's database path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Required {
    #[allow(dead_code)]
    archive: Archive,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Archive {
    #[allow(dead_code)]
    database: String,
}

impl Validate for Required {}

fn file(text: &str) -> NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

/// A loader for `file` that sees only `env`, not the test process's environment.
fn loader(file: &NamedTempFile, env: &[(&str, &str)]) -> ConfigLoader {
    ConfigLoader::new("DATA_SERVER")
        .file(file.path())
        .with_env(env.iter().copied())
}

/// No environment variables at all.
const NO_ENV: [(&str, &str); 0] = [];

/// What an error about `file` says: its path, then `rest`.
fn in_file(file: &NamedTempFile, rest: &str) -> String {
    format!("{}: {rest}", file.path().display())
}

fn error(loader: ConfigLoader) -> ConfigError {
    loader.load::<Config>().expect_err("the config is bad")
}

/// A config file holding `text`, and the error that loading it alone gives.
fn file_error(text: &str) -> (NamedTempFile, ConfigError) {
    let f = file(text);
    let err = error(loader(&f, &[]));
    (f, err)
}

#[test]
fn file_values_override_defaults() {
    let f = file("[announce]\ninterval = \"1m30s\"\nnsqd_tcp_addresses = [\"nsqd:4150\"]\n");
    let config: Config = loader(&f, &[]).load().unwrap();
    assert_eq!(config.announce.interval, HumanDuration::from_secs(90));
    assert_eq!(
        config.announce.nsqd_tcp_addresses[0].to_string(),
        "nsqd:4150"
    );
    assert_eq!(config.announce.topic, "data_server_addr");
    assert_eq!(config.server, Config::default().server);
}

#[test]
fn env_override_beats_file_and_flag_beats_env() {
    let f = file("[server]\nlisten = \"127.0.0.1:1000\"\n[announce]\ninterval = \"1s\"\n");
    let env = [
        ("DATA_SERVER__SERVER__LISTEN", "127.0.0.1:9000"),
        ("DATA_SERVER__ANNOUNCE__INTERVAL", "2s"),
    ];
    let config: Config = loader(&f, &env).load().unwrap();
    assert_eq!(config.server.listen, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(config.announce.interval, HumanDuration::from_secs(2));

    let config: Config = loader(&f, &env)
        .set(["announce.interval=3s", "announce.interval=4s"])
        .load()
        .unwrap();
    assert_eq!(
        config.announce.interval,
        HumanDuration::from_secs(4),
        "last flag wins"
    );
    assert_eq!(config.server.listen, "127.0.0.1:9000".parse().unwrap());
}

#[test]
fn arrays_from_env_as_toml_or_comma_separated() {
    let f = file("");
    let toml_array = [(
        "DATA_SERVER__ANNOUNCE__NSQD_TCP_ADDRESSES",
        r#"["a:1","[::1]:2"]"#,
    )];
    let config: Config = loader(&f, &toml_array).load().unwrap();
    let addrs: Vec<String> = config
        .announce
        .nsqd_tcp_addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(addrs, ["a:1", "[::1]:2"]);

    let commas = [("DATA_SERVER__ANNOUNCE__NSQD_TCP_ADDRESSES", "a:1, b:2")];
    let config: Config = loader(&f, &commas).load().unwrap();
    assert_eq!(config.announce.nsqd_tcp_addresses.len(), 2);

    let one = [("DATA_SERVER__ANNOUNCE__NSQD_TCP_ADDRESSES", "a:1")];
    let config: Config = loader(&f, &one).load().unwrap();
    assert_eq!(config.announce.nsqd_tcp_addresses[0].to_string(), "a:1");
}

#[test]
fn override_values_are_retried_as_strings() {
    let f = file("");
    let config: Config = loader(&f, &[("DATA_SERVER__SERVER__ID", "123")])
        .set(["announce.topic=true", "announce.jitter=0.25"])
        .load()
        .unwrap();
    assert_eq!(config.server.id.as_deref(), Some("123"));
    assert_eq!(config.announce.topic, "true");
    assert_eq!(config.announce.jitter.get(), 0.25);
    // And quoted TOML strings stay strings.
    let config: Config = loader(&f, &[]).set([r#"server.id="007""#]).load().unwrap();
    assert_eq!(config.server.id.as_deref(), Some("007"));
}

#[test]
fn unknown_key_names_file_table_and_allowed_keys() {
    let (f, err) = file_error("[announce]\nintervall = \"5s\"\n");
    assert_eq!(err.kind(), ConfigErrorKind::UnknownKey);
    assert_eq!(err.key(), Some("announce.intervall"));
    assert_eq!(
        err.to_string(),
        in_file(
            &f,
            r#"unknown key "intervall" in [announce] (expected one of: topic, nsqd_tcp_addresses, interval, jitter)"#
        )
    );
    let err = error(loader(&file(""), &[]).set(["serve.listen=x"]));
    assert!(
        err.to_string()
            .starts_with("--set serve.listen: unknown key \"serve\" at the top level"),
        "{err}"
    );
}

#[test]
fn wrong_type_says_expected_and_found() {
    let (f, err) = file_error("[server]\nport_hint = \"eighty\"\n");
    assert_eq!(err.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(
        err.to_string(),
        in_file(
            &f,
            r#"server.port_hint: expected u16, found string "eighty""#
        )
    );
    let err = error(loader(
        &file(""),
        &[("DATA_SERVER__SERVER__PORT_HINT", "70000")],
    ));
    assert_eq!(
        err.to_string(),
        "environment variable DATA_SERVER__SERVER__PORT_HINT: server.port_hint: expected u16, found integer 70000"
    );
}

#[test]
fn bad_duration_from_file_and_from_env() {
    let (f, err) = file_error("[announce]\ninterval = \"5 parsecs\"\n");
    let rest = r#"announce.interval: expected a duration like "5s" or "250ms", found "5 parsecs" (unknown time unit "parsecs", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations))"#;
    assert_eq!(err.to_string(), in_file(&f, rest));
    let err = error(loader(&f, &[("DATA_SERVER__ANNOUNCE__INTERVAL", "5")]));
    assert_eq!(
        err.to_string(),
        r#"environment variable DATA_SERVER__ANNOUNCE__INTERVAL: announce.interval: expected a duration like "5s" or "250ms", found the number 5 (a unit is required, e.g. "5s")"#
    );
}

#[test]
fn zero_interval_is_rejected_by_validate() {
    let (f, err) = file_error("[announce]\ninterval = \"0s\"\n");
    assert_eq!(err.kind(), ConfigErrorKind::Validation);
    assert_eq!(err.origin(), &Origin::File(f.path().to_owned()));
    assert_eq!(
        err.to_string(),
        in_file(
            &f,
            r#"announce.interval: expected a duration like "5s" or "250ms", found "0s" (must be > 0)"#
        )
    );
    let err = error(loader(&f, &[]).set(["announce.interval=0ms"]));
    assert_eq!(err.origin(), &Origin::Flag("announce.interval".into()));
    assert!(
        err.to_string()
            .starts_with("--set announce.interval: announce.interval: expected")
    );
}

#[test]
fn bad_host_port_in_a_list_names_the_element() {
    let (f, err) = file_error("[announce]\nnsqd_tcp_addresses = [\"nsqd:4150\", \"nsqd\"]\n");
    let rest = r#"announce.nsqd_tcp_addresses[1]: expected host:port like "127.0.0.1:4150", "[::1]:4150" or "nsqd:4150", found "nsqd" (missing ":port")"#;
    assert_eq!(err.to_string(), in_file(&f, rest));
    let err = error(loader(&file(""), &[]).set(["announce.nsqd_tcp_addresses=a:1,b:0"]));
    assert_eq!(err.key(), Some("announce.nsqd_tcp_addresses[1]"));
    assert!(
        err.to_string().starts_with(
            "--set announce.nsqd_tcp_addresses: announce.nsqd_tcp_addresses[1]: expected host:port"
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with(r#"found "b:0" (the port must be from 1 to 65535, not 0)"#),
        "{err}"
    );
}

#[test]
fn fraction_out_of_range() {
    let err = error(loader(&file("[announce]\njitter = 1.5\n"), &[]));
    assert!(
        err.to_string().ends_with(
            r#"announce.jitter: expected a fraction from 0 to 1, like 0.1 or "10%", found 1.5"#
        ),
        "{err}"
    );
}

#[test]
fn syntax_errors_are_one_line_with_line_and_column() {
    let (f, err) = file_error("[server]\nlisten = \"127.0.0.1:1\"\nid = = 2\n");
    assert_eq!(err.kind(), ConfigErrorKind::Syntax);
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    let prefix = in_file(&f, "line 3, column 6: ");
    assert!(text.starts_with(&prefix), "{text}");
}

#[test]
fn missing_files_fail_unless_optional() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.toml");
    let err = ConfigLoader::new("X")
        .file(&absent)
        .with_env([("A", "B")])
        .load::<Config>()
        .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Read);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{}: cannot read the config file (",
            absent.display()
        )),
        "{text}"
    );

    let config: Config = ConfigLoader::new("X")
        .optional_file(&absent)
        .with_env(NO_ENV)
        .load()
        .unwrap();
    assert_eq!(config, Config::default());
    let config: Config = ConfigLoader::new("X").with_env(NO_ENV).load().unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn missing_required_key() {
    let err = ConfigLoader::new("ARCHIVER")
        .with_env(NO_ENV)
        .load::<Required>()
        .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::MissingKey);
    assert_eq!(
        err.to_string(),
        "config (no file given): archive: missing required key"
    );
    let err = ConfigLoader::new("ARCHIVER")
        .with_env([("ARCHIVER__ARCHIVE__DATABSE", "x.db")])
        .load::<Required>()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"environment variable ARCHIVER__ARCHIVE__DATABSE: unknown key "databse" in [archive] (expected one of: database)"#
    );
    let f = file("[archive]\n");
    let err = loader(&f, &[]).load::<Required>().unwrap_err();
    assert_eq!(
        err.to_string(),
        in_file(&f, "archive.database: missing required key")
    );
}

#[test]
fn override_into_a_non_table_is_reported() {
    let f = file("server = 5\n");
    let err = error(loader(
        &f,
        &[("DATA_SERVER__SERVER__LISTEN", "127.0.0.1:1")],
    ));
    assert_eq!(err.kind(), ConfigErrorKind::Override);
    assert_eq!(
        err.to_string(),
        "environment variable DATA_SERVER__SERVER__LISTEN: server.listen: expected server to be a table, found integer 5"
    );
}

#[test]
fn config_args_build_the_loader() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ConfigArgs,
    }
    // What the loader the flags build gives, with no environment.
    let load = |cli: &Cli| -> Config {
        let loader = cli.config.loader("DATA_SERVER");
        loader.with_env(NO_ENV).load().unwrap()
    };
    let f = file("[announce]\ntopic = \"from_file\"\n");
    let path = f.path().to_str().unwrap();
    let cli = Cli::try_parse_from([
        "bin",
        "-c",
        path,
        "--set",
        "announce.interval=2s",
        "--set",
        "server.id=x",
    ])
    .unwrap();
    let config = load(&cli);
    assert_eq!(config.announce.topic, "from_file");
    assert_eq!(config.announce.interval, HumanDuration::from_secs(2));
    assert_eq!(config.server.id.as_deref(), Some("x"));

    let cli = Cli::try_parse_from(["bin"]).unwrap();
    assert!(cli.config.config.is_none());
    let config = load(&cli);
    assert_eq!(config, Config::default());
}

#[test]
fn helpers() {
    assert_eq!(line_and_column("ab\ncde\nf", 5), (2, 3));
    assert_eq!(line_and_column("", 0), (1, 1));
    let all = overrides::from_flags(&["a.b=1".to_owned()]).unwrap();
    let base = Origin::Defaults;
    assert_eq!(
        origin_for("a.b[2]", &all, &base),
        Origin::Flag("a.b".into())
    );
    assert_eq!(origin_for("a.b.c", &all, &base), Origin::Flag("a.b".into()));
    assert_eq!(origin_for("a", &all, &base), Origin::Flag("a.b".into()));
    assert_eq!(origin_for("a.bc", &all, &base), Origin::Defaults);
    assert_eq!(origin_for("a.c", &all, &base), Origin::Defaults);
}

#[test]
fn load_str_reads_text_like_a_file_and_overrides_still_apply() {
    let loader = ConfigLoader::new("").set(["server.port_hint=7"]);
    let config: Config = loader
        .load_str("[announce]\ninterval = \"2s\"\n[server]\nport_hint = 3\n")
        .unwrap();
    assert_eq!(config.announce.interval, HumanDuration::from_secs(2));
    assert_eq!(config.server.port_hint, 7);

    let err = loader.load_str::<Config>("id = = 2").err().unwrap();
    assert_eq!(err.kind(), ConfigErrorKind::Syntax);
    assert_eq!(err.origin(), &Origin::Text);
    assert!(
        err.to_string()
            .starts_with("config text: line 1, column 6: "),
        "{err}"
    );
    let err = loader
        .load_str::<Config>("[announce]\ninterval = \"0s\"\n")
        .err()
        .unwrap();
    assert_eq!(err.origin(), &Origin::Text);
    assert_eq!(err.key(), Some("announce.interval"));
}
