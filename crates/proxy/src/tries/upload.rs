//! A try whose request body is still arriving when its head goes up: the body streams to the server while the
//! response is awaited and relayed, each side timed by its own pauses.

use tokio::time::Instant;

use super::*;

/// Rewrites a response head in `out` to end the connection after it (for a response that came before the whole
/// request body went up: the rest of that body cannot be told from a next request).
fn force_close(out: &mut Vec<u8>, req: &Req) {
    const KEEP_ALIVE: &[u8] = b"connection: keep-alive\r\n";
    let end = out.len().saturating_sub(2);
    let cut = if req.http10 && out[..end].ends_with(KEEP_ALIVE) {
        end - KEEP_ALIVE.len()
    } else {
        end
    };
    out.truncate(cut);
    out.extend_from_slice(b"connection: close\r\n\r\n");
}

/// A try whose request body is still arriving: the body streams to the server while its response is awaited, and
/// keeps streaming while the response goes back (a server may answer before it has read the whole body).
///
/// The upload is timed by its own pauses only (the client's by `server.body_read_timeout`, the server's reading by
/// `proxy.try_timeout`), however long the whole takes; the wait for the response head is timed from the moment
/// the body is all sent (or the server stopped reading it). Until then a silent server is waiting for the body,
/// which is not its fault.
pub(super) async fn stream_exchange(
    w: &Worker,
    c: &mut Conn,
    req: &Req,
    backend: &Backend,
    mut up: Upstream,
    in_flight: InFlightGuard,
    times: Times,
) -> Result<TryOk, TryError> {
    let pauses = pauses(w);
    if req.expect_continue
        && !req.http10
        && write_paced(
            &mut c.stream,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            pauses.client_write,
            "the client read nothing",
        )
        .await
        .is_err()
    {
        return Err(TryError::of(TryFailure::ClientGone));
    }
    let draining = w.draining.load(Ordering::Acquire);
    let up_pooled = up.reused;
    let max_body = w.p.max_body_bytes;
    // In place while the body is still going up: the server's silence is then not timed.
    let uploading = Hold::uploading();
    let (resp, relayed, body_done) = {
        let Conn {
            stream, buf, out, ..
        } = &mut *c;
        let (mut client_r, mut client_w) = stream.split();
        let Upstream {
            stream: up_stream,
            buf: up_buf,
            ..
        } = &mut up;
        let (mut up_r, mut up_w) = up_stream.split();
        let send = send_body(&mut client_r, buf, &mut up_w, req.framing, pauses, max_body);
        tokio::pin!(send);
        let mut sent: Option<Result<BodySent, BodyError>> = None;
        // The server's latency runs from the end of the upload (or this try's start when it answers first): the
        // client's upload time is not the server's.
        let mut waited_from = times.try_started;
        let head = {
            let head = read_response_head(&mut up_r, up_buf, out, req, draining);
            tokio::pin!(head);
            // Armed once the upload ends.
            let head_timer = tokio::time::sleep(UNARMED);
            tokio::pin!(head_timer);
            loop {
                tokio::select! {
                    biased;
                    head = &mut head => break Some(head),
                    result = &mut send, if sent.is_none() => {
                        match result {
                            Err(BodyError::Upstream(e)) => {
                                // The server stopped reading: it may still answer (say, 413).
                                tracing::debug!(request_id = %req.id.as_str(), upstream = %backend.id(), "server stopped reading the request body: {e}");
                                sent = Some(Err(BodyError::Upstream(e)));
                            }
                            Err(err) => return Err(TryError::from_body(err)),
                            Ok(done) => sent = Some(Ok(done)),
                        }
                        uploading.release();
                        waited_from = Instant::now();
                        head_timer.as_mut().reset(waited_from + times.head_wait);
                    }
                    () = &mut head_timer, if sent.is_some() => break None,
                }
            }
        };
        let mut resp = match head {
            None => return Err(TryError::of(TryFailure::TimedOut)),
            Some(Err(HeadError::Closed)) => {
                return Err(TryError::new(
                    TryFailure::ClosedBeforeResponse { pooled: up_pooled },
                    HeadError::Closed.to_string(),
                ));
            }
            Some(Err(e)) => return Err(TryError::new(TryFailure::BadResponse, e.to_string())),
            Some(Ok(resp)) => resp,
        };
        // An answer that came before the whole body went up. If the upload already failed, or the answer is an error
        // (a 413 or 401 says the server will not read the rest), the client is told now that the connection ends.
        // A success (a server that streams its answer while it reads, like an echo) is relayed as it comes while the
        // body keeps going up, and the connection is kept if the body was all sent by the end; closing it then
        // needs no announcement. Announcing it here, when the head happened to arrive first, closed connections at
        // random under load.
        if !resp.close_client
            && !matches!(sent, Some(Ok(_)))
            && (sent.is_some() || resp.status >= 400)
        {
            force_close(out, req);
            resp.close_client = true;
        }
        // The answer is relayed whatever it is: part of the body has gone up and cannot be sent elsewhere.
        server_status(w, backend, resp.status, facts(req, Body::Streaming));
        w.p.metrics
            .latency
            .observe_duration(times.started.elapsed());
        super::observe_upstream(&w.p, backend, waited_from.elapsed());
        let relay = relay_body(
            &mut up_r,
            up_buf,
            &mut client_w,
            out,
            resp.framing,
            req.http10 && resp.framing == Framing::Chunked,
            pauses,
            &uploading,
        );
        tokio::pin!(relay);
        let relayed = loop {
            tokio::select! {
                biased;
                relayed = &mut relay => break relayed.map_err(RelayEnd::Relay),
                result = &mut send, if sent.is_none() => {
                    uploading.release();
                    match result {
                        // The client's body failed under a response still coming: the exchange ends, the
                        // client's fault.
                        Err(err @ (BodyError::ClientGone(_)
                        | BodyError::ClientStalled(_)
                        | BodyError::Malformed(_)
                        | BodyError::TooLarge(_))) => {
                            break Err(RelayEnd::ClientBody(ClientFault::from_body(err)));
                        }
                        result => sent = Some(result),
                    }
                }
            }
        };
        // The body may have been finished in the same turn as the answer (a server answers once it has it all).
        if sent.is_none() {
            sent = futures::FutureExt::now_or_never(&mut send);
        }
        if matches!(&sent, Some(Ok(done)) if done.trailers_dropped) {
            w.p.metrics.trailers_dropped.inc();
        }
        // The whole request body must have gone up for either connection to be reused.
        (resp, relayed, matches!(sent, Some(Ok(_))))
    };
    drop(in_flight);
    let relayed = relay_outcome(w, backend, &req.id, relayed);
    if relayed.ok && body_done && resp.reusable && up.buf.is_empty() {
        w.pool.borrow_mut().put(backend.addr(), up, Instant::now());
    }
    // A response that came before the whole body was sent was marked close above.
    Ok(TryOk::Done(
        finish(
            w,
            c,
            req,
            resp.status,
            resp.close_client || !body_done,
            relayed,
        )
        .await,
    ))
}
