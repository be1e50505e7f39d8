//! WebSocket endpoints, for tests and the walkthrough of upgrades through the api-server: `/ws` echoes every
//! message, `/ws/ticks?every=100ms` sends a counter at that pace until the client closes.

use std::time::Duration;

use axum::extract::Query;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use svc::HumanDuration;

/// Shortest tick interval accepted.
const MIN_TICK: Duration = Duration::from_millis(1);

/// `GET /ws`: every text or binary message comes back as it was sent.
pub(crate) async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo_socket)
}

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(_) | Message::Binary(_) => message,
            // Pings are answered by the library; a close ends the loop on the next receive.
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

/// The query of `/ws/ticks`.
#[derive(Debug, Deserialize)]
pub(crate) struct Ticks {
    /// Pause between ticks, e.g. `100ms` (default 1 s).
    every: Option<HumanDuration>,
}

/// `GET /ws/ticks?every=100ms`: text messages `0`, `1`, `2`, ... at that pace until the client closes.
pub(crate) async fn ticks(Query(query): Query<Ticks>, upgrade: WebSocketUpgrade) -> Response {
    let every = query.every.map_or(Duration::from_secs(1), Duration::from);
    if every < MIN_TICK {
        return (
            StatusCode::BAD_REQUEST,
            format!("expected every of at least {MIN_TICK:?}, found {every:?}"),
        )
            .into_response();
    }
    upgrade.on_upgrade(move |socket| tick_socket(socket, every))
}

async fn tick_socket(mut socket: WebSocket, every: Duration) {
    let mut tick = tokio::time::interval(every);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if socket.send(Message::Text(n.to_string().into())).await.is_err() {
                    return;
                }
                n += 1;
            }
            received = socket.recv() => match received {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
