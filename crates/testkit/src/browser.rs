//! A real headless Chromium, driven over the DevTools protocol (CDP) on a WebSocket: a test opens a page, polls
//! its live DOM until what a person would see is there (or a deadline passes), and takes screenshots.
//!
//! Why not Chromium's one-shot `--dump-dom` / `--screenshot` with `--virtual-time-budget`: those decide by
//! themselves when the page is "done", and on a page with an open event stream they hung in about one run of two
//! here (the page loaded, its stream ended, and no dump or screenshot ever came). Over CDP the test decides: it
//! asks for the DOM as often as it likes, and each command has its own timeout.
//!
//! Why by hand: the CDP crates (`chromiumoxide`, `headless_chrome`) bring a generated protocol of thousands of
//! types and their own process handling; a test needs six commands, which are a few lines of JSON each.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ManagedProcess;

/// Debian's Chromium (`.ci/run` installs the package).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long Chromium may take to open its DevTools port before a start counts as hung.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Starts tried before [`Browser::open`] gives up: Chromium sometimes hangs at start-up.
const STARTS: u32 = 3;

/// One Chromium process with one page, killed (with all its helper processes) on drop.
pub struct Browser {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The page's session on the browser's socket (CDP "flat" sessions).
    session: Option<String>,
    next_id: u64,
    process: ManagedProcess,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a 1200x800 page open at `url`, loaded (its scripts may still be fetching).
    pub async fn open(url: &str) -> Result<Browser> {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
        );
        let mut failures = Vec::new();
        for attempt in 1..=STARTS {
            match Browser::start().await {
                Ok(mut browser) => {
                    browser.navigate(url).await?;
                    return Ok(browser);
                }
                Err(e) => failures.push(format!("start {attempt}: {e:#}")),
            }
        }
        bail!(
            "Chromium did not start in {STARTS} tries:\n{}",
            failures.join("\n")
        )
    }

    async fn start() -> Result<Browser> {
        // A fresh profile each start, so no run can hand over to what is left of another.
        let profile = tempfile::tempdir()?;
        let mut process = ManagedProcess::spawn(
            "chromium",
            CHROMIUM,
            [
                "--headless",
                "--enable-logging=stderr",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.path().display()),
                "--window-size=1200,800",
                "about:blank",
            ]
            .map(str::to_owned)
            .to_vec(),
            Vec::new(),
            profile.path().join("chromium.log"),
        )?;
        match Browser::connect(profile.path()).await {
            Ok(socket) => {
                let mut browser = Browser {
                    socket,
                    session: None,
                    next_id: 0,
                    process,
                    _profile: profile,
                };
                let target = browser
                    .call("Target.createTarget", json!({"url": "about:blank"}))
                    .await?;
                let target = target["targetId"].clone();
                let attached = browser
                    .call(
                        "Target.attachToTarget",
                        json!({"targetId": target, "flatten": true}),
                    )
                    .await?;
                browser.session = Some(
                    attached["sessionId"]
                        .as_str()
                        .context("attachToTarget without a sessionId")?
                        .to_owned(),
                );
                browser
                    .call(
                        "Emulation.setDeviceMetricsOverride",
                        json!({"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
                    )
                    .await?;
                Ok(browser)
            }
            Err(e) => {
                process.kill_group();
                Err(e.context(process.log_tail(20)))
            }
        }
    }

    /// Waits for the port Chromium writes into its profile (`DevToolsActivePort`: the port, then the browser's
    /// WebSocket path) and connects to it.
    async fn connect(profile: &Path) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
        let file: PathBuf = profile.join("DevToolsActivePort");
        let endpoint = crate::try_eventually(START_TIMEOUT, "Chromium's DevTools port", || {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            async move {
                let mut lines = text.lines();
                Ok(match (lines.next(), lines.next()) {
                    (Some(port), Some(path)) if !port.is_empty() && path.starts_with('/') => {
                        Some(format!("ws://127.0.0.1:{port}{path}"))
                    }
                    _ => None,
                })
            }
        })
        .await?;
        let (socket, _) =
            tokio::time::timeout(COMMAND_TIMEOUT, tokio_tungstenite::connect_async(&endpoint))
                .await
                .with_context(|| format!("connecting to {endpoint}"))??;
        Ok(socket)
    }

    /// Sends one command (to the page once attached) and returns its `result`; events in between are skipped.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        tokio::time::timeout_at(
            deadline,
            self.socket.send(Message::text(command.to_string())),
        )
        .await
        .with_context(|| format!("sending {method}"))??;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .with_context(|| format!("no answer to {method} in {COMMAND_TIMEOUT:?}"))?
                .with_context(|| {
                    format!("Chromium closed the DevTools socket during {method}")
                })??;
            let Message::Text(text) = message else {
                continue;
            };
            let mut answer: Value = serde_json::from_str(&text)?;
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                bail!("{method}: {error}");
            }
            return Ok(answer["result"].take());
        }
    }

    /// Loads `url` in the page and waits until the new document has loaded (its `load` event fired).
    pub async fn navigate(&mut self, url: &str) -> Result<()> {
        let answer = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = answer["errorText"].as_str() {
            bail!("navigating to {url}: {error}");
        }
        let loaded = format!(
            "location.href === {} && document.readyState === 'complete'",
            json!(url)
        );
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while self.eval(&loaded).await? != json!(true) {
            if Instant::now() >= deadline {
                bail!("{url} did not load in {COMMAND_TIMEOUT:?}");
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
        Ok(())
    }

    /// The value of a JavaScript expression in the page (promises awaited); an exception is an error.
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        let mut answer = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(exception) = answer.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(answer["result"]["value"].take())
    }

    /// The page's DOM as it is now, serialised.
    pub async fn dom(&mut self) -> Result<String> {
        // No document element while a navigation swaps documents.
        let dom = self
            .eval("document.documentElement ? document.documentElement.outerHTML : ''")
            .await?;
        dom.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("outerHTML is not a string: {dom}"))
    }

    /// Polls the DOM every 20 ms until `check` finds what it wants in it; after `timeout`, an error naming
    /// `what` with the last DOM seen.
    pub async fn wait_dom<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let dom = self.dom().await?;
            if let Some(found) = check(&dom) {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}; the page:\n{dom}");
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }

    /// Saves a PNG of the page's viewport at `path`.
    pub async fn screenshot(&mut self, path: &Path) -> Result<()> {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().context("a screenshot without data")?)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The renderer, GPU and zygote processes too.
        self.process.kill_group();
    }
}
