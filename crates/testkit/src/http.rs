//! Short forms of the HTTP requests tests make, for when any failure to get an answer (or to
//! read it) should fail the test: `get_json(&client, url)` instead of the five-step reqwest chain.

use reqwest::{Client, IntoUrl, RequestBuilder, Response};
use serde::de::DeserializeOwned;

/// Sends `request` and returns the response, whatever its status.
///
/// # Panics
/// When no response arrives (connection refused, timeout, ...).
pub async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("the request gets a response")
}

/// Sends `request` and parses the response body as JSON, whatever the status.
///
/// # Panics
/// When no response arrives or its body is not JSON of type `T`.
pub async fn send_json<T: DeserializeOwned>(request: RequestBuilder) -> T {
    send(request)
        .await
        .json()
        .await
        .expect("the response body is the expected JSON")
}

/// `GET url`: the response, whatever its status.
///
/// # Panics
/// When no response arrives.
pub async fn get(client: &Client, url: impl IntoUrl) -> Response {
    send(client.get(url)).await
}

/// `GET url`: the response body parsed as JSON, whatever the status.
///
/// # Panics
/// When no response arrives or its body is not JSON of type `T`.
pub async fn get_json<T: DeserializeOwned>(client: &Client, url: impl IntoUrl) -> T {
    send_json(client.get(url)).await
}

/// `GET url`: the response body as text, whatever the status.
///
/// # Panics
/// When no response arrives or its body cannot be read.
pub async fn get_text(client: &Client, url: impl IntoUrl) -> String {
    get(client, url)
        .await
        .text()
        .await
        .expect("the response body can be read")
}
