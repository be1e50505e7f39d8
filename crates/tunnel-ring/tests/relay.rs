//! The relay threads on real loopback sockets: a "user" and a "data server" at the outer ends, the relay between
//! the inner ends (the sockets the proxy accepted and connected).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tunnel_ring::{End, Ended, Limits, Relay, Ticket};

/// Bounds every wait, so a broken relay fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

/// A connected pair: (outer, inner).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let outer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (inner, _) = listener.accept().unwrap();
    outer.set_read_timeout(Some(WAIT)).unwrap();
    (outer, inner)
}

/// A tunnel: (user, data server, ticket), closed when silent for `idle` (sends may stall for [`WAIT`]).
fn tunnel(relay: &Relay, idle: Duration) -> (TcpStream, TcpStream, Ticket) {
    tunnel_with(
        relay,
        Limits {
            idle,
            client_send: WAIT,
            server_send: WAIT,
        },
    )
}

fn tunnel_with(relay: &Relay, limits: Limits) -> (TcpStream, TcpStream, Ticket) {
    let (user, client) = pair();
    let (data_server, server) = pair();
    let ticket = relay
        .relay(client, server, limits)
        .unwrap_or_else(|(err, ..)| panic!("{err}"));
    (user, data_server, ticket)
}

/// The relay, or `None` where the kernel refuses io_uring (the proxy then relays on its workers, which the
/// api-server's tests cover with `proxy.tunnel_io_uring=false`).
fn relay() -> Option<Relay> {
    match Relay::start(2, "test-relay") {
        Ok(relay) => Some(relay),
        Err(err) => {
            eprintln!("io_uring refused on this machine ({err}): nothing to test here");
            None
        }
    }
}

fn read_exact(socket: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    socket.read_exact(&mut buf).unwrap();
    buf
}

/// Whether the socket reads its end (EOF or a reset) within [`WAIT`], all data before it discarded.
fn sees_end(socket: &mut TcpStream) -> bool {
    let mut buf = [0; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Sends a message from `from` to `to` every 100 ms for `lasting`, each checked on arrival: the pace of a tunnel
/// that is never silent for long (the relay's deadlines run on the real clock, so the pace is real time too).
fn keep_talking(from: &mut TcpStream, to: &mut TcpStream, lasting: Duration) {
    let started = Instant::now();
    while started.elapsed() < lasting {
        from.write_all(b"tick").unwrap();
        assert_eq!(read_exact(to, 4), b"tick");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Closes `socket` with a reset (SO_LINGER 0).
fn reset(socket: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // Safety: a valid socket and a pointer to a live `linger` of the size given.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0);
}

async fn ended(ticket: Ticket) -> Ended {
    tokio::time::timeout(WAIT, ticket)
        .await
        .expect("the tunnel ended in time")
}

async fn end_of(ticket: Ticket) -> End {
    ended(ticket).await.end
}

#[tokio::test]
async fn bytes_go_both_ways_in_order_even_when_larger_than_the_buffers() {
    let Some(relay) = relay() else { return };
    let (mut user, mut data_server, ticket) = tunnel(&relay, WAIT);
    assert_eq!(relay.open(), 1);
    // 1 MiB each way at once: sends that the kernel takes in parts, and both directions busy together.
    let up: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..1 << 20).map(|i| (i % 241) as u8).collect();
    let (up2, down2) = (up.clone(), down.clone());
    let mut user_w = user.try_clone().unwrap();
    let mut server_w = data_server.try_clone().unwrap();
    let writers = [
        std::thread::spawn(move || user_w.write_all(&up2).unwrap()),
        std::thread::spawn(move || server_w.write_all(&down2).unwrap()),
    ];
    let got_up = std::thread::spawn(move || (read_exact(&mut data_server, 1 << 20), data_server));
    let got_down = read_exact(&mut user, 1 << 20);
    let (got_up, mut data_server) = got_up.join().unwrap();
    for w in writers {
        w.join().unwrap();
    }
    assert!(
        got_up == up,
        "the data server received the user's bytes in order"
    );
    assert!(
        got_down == down,
        "the user received the data server's bytes in order"
    );

    // The user closes: the data server sees the close, and closes too.
    user.shutdown(Shutdown::Write).unwrap();
    assert!(sees_end(&mut data_server));
    drop(data_server);
    assert_eq!(end_of(ticket).await, End::ClientClosed);
    assert_eq!(relay.open(), 0);
}

#[tokio::test]
async fn a_half_close_is_passed_on_and_the_other_side_may_still_send() {
    let Some(relay) = relay() else { return };
    let (mut user, mut data_server, ticket) = tunnel(&relay, WAIT);
    data_server.shutdown(Shutdown::Write).unwrap();
    assert!(sees_end(&mut user));
    user.write_all(b"still here").unwrap();
    assert_eq!(read_exact(&mut data_server, 10), b"still here");
    user.shutdown(Shutdown::Write).unwrap();
    assert_eq!(end_of(ticket).await, End::ServerClosed);
}

#[tokio::test]
async fn a_silent_tunnel_closes_after_its_idle_timeout_and_a_busy_one_does_not() {
    let Some(relay) = relay() else { return };
    let idle = Duration::from_millis(400);
    let (mut user, mut data_server, ticket) = tunnel(&relay, idle);
    let (mut busy_user, mut busy_server, busy) = tunnel(&relay, idle);
    // The busy one carries a message every 100 ms for three idle timeouts.
    keep_talking(&mut busy_user, &mut busy_server, idle * 3);
    assert_eq!(end_of(ticket).await, End::Idle);
    assert!(sees_end(&mut user));
    assert!(sees_end(&mut data_server));
    assert_eq!(relay.open(), 1, "the busy tunnel is still open");
    drop(busy_user);
    assert_eq!(end_of(busy).await, End::ClientClosed);
}

#[tokio::test]
async fn after_a_half_close_the_other_side_may_go_on_while_it_is_not_silent() {
    let Some(relay) = relay() else { return };
    // The grace is the idle timeout when that is shorter.
    let idle = Duration::from_millis(400);
    let (mut user, mut data_server, ticket) = tunnel(&relay, idle);
    user.shutdown(Shutdown::Write).unwrap();
    assert!(sees_end(&mut data_server));
    keep_talking(&mut data_server, &mut user, idle * 3);
    // Silent now: closed within the grace, as the side that closed first.
    assert_eq!(end_of(ticket).await, End::ClientClosed);
}

#[tokio::test]
async fn the_side_that_closed_first_is_the_end_even_if_the_other_then_resets() {
    let Some(relay) = relay() else { return };
    let (mut user, mut data_server, ticket) = tunnel(&relay, WAIT);
    user.shutdown(Shutdown::Write).unwrap();
    assert!(sees_end(&mut data_server));
    // The user's close reached the data server; now the data server resets rather than close in turn.
    reset(data_server);
    assert_eq!(end_of(ticket).await, End::ClientClosed);
    assert!(sees_end(&mut user));
}

#[tokio::test]
async fn a_reset_is_blamed_on_the_side_that_reset() {
    let Some(relay) = relay() else { return };
    let (mut user, data_server, ticket) = tunnel(&relay, WAIT);
    reset(data_server);
    assert_eq!(end_of(ticket).await, End::ServerClosed);
    assert!(sees_end(&mut user));
}

#[tokio::test]
async fn a_ticket_closed_or_dropped_closes_its_tunnel() {
    let Some(relay) = relay() else { return };
    let (mut user, mut data_server, ticket) = tunnel(&relay, WAIT);
    ticket.close();
    let Ended { end, client } = ended(ticket).await;
    assert_eq!(end, End::Closed);
    // The data server's side is closed; the client's comes back for the caller's lingering close.
    assert!(sees_end(&mut data_server));
    let client = client.expect("the client's socket is given back");
    client.shutdown(Shutdown::Write).unwrap();
    assert!(sees_end(&mut user));

    let (mut user, mut data_server, ticket) = tunnel(&relay, WAIT);
    drop(ticket);
    assert!(sees_end(&mut user));
    assert!(sees_end(&mut data_server));
    let deadline = Instant::now() + WAIT;
    while relay.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(relay.open(), 0);
}

#[tokio::test]
async fn stopping_the_relay_closes_every_tunnel() {
    let Some(relay) = relay() else { return };
    let mut tunnels: Vec<_> = (0..20).map(|_| tunnel(&relay, WAIT)).collect();
    // One in the middle of a send the user does not read: the data server filled the user's buffers.
    let (_, data_server, _) = &mut tunnels[0];
    data_server.set_nonblocking(true).unwrap();
    while data_server.write(&[0; 65536]).is_ok() {}
    data_server.set_nonblocking(false).unwrap();
    drop(relay);
    for (_, mut data_server, ticket) in tunnels {
        assert_eq!(end_of(ticket).await, End::Closed);
        assert!(sees_end(&mut data_server));
    }
}

/// Writes to `socket` until a write fails (its peer is gone: `true`) or [`WAIT`] passes (`false`).
fn flood(mut socket: TcpStream) -> bool {
    socket.set_write_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    while started.elapsed() < WAIT {
        match socket.write(&[7; 65536]) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test]
async fn a_user_who_stops_reading_loses_the_tunnel_and_the_data_server_is_freed() {
    let Some(relay) = relay() else { return };
    let (_user, data_server, ticket) = tunnel_with(
        &relay,
        Limits {
            idle: WAIT,
            client_send: Duration::from_millis(300),
            server_send: WAIT,
        },
    );
    // The data server sends without pause; the user reads nothing. Once every buffer on the way is full the data
    // server is blocked behind the user, and silent: only the stalled send to the user tells.
    let flooding = std::thread::spawn(move || flood(data_server));
    assert_eq!(end_of(ticket).await, End::ClientStalled);
    assert!(
        flooding.join().unwrap(),
        "the data server's side was closed, so its blocked write failed"
    );
}

#[tokio::test]
async fn a_data_server_that_stops_reading_is_a_server_stall() {
    let Some(relay) = relay() else { return };
    let (user, _data_server, ticket) = tunnel_with(
        &relay,
        Limits {
            idle: WAIT,
            client_send: WAIT,
            server_send: Duration::from_millis(300),
        },
    );
    let flooding = std::thread::spawn(move || flood(user));
    assert_eq!(end_of(ticket).await, End::ServerStalled);
    // The user's side is given back to the caller for its lingering close; here it is dropped with the ticket's
    // answer, so the user's blocked write fails too.
    assert!(flooding.join().unwrap());
}

#[tokio::test]
async fn a_slow_but_steady_reader_is_not_a_stall() {
    let Some(relay) = relay() else { return };
    let stall = Duration::from_secs(1);
    // Small buffers between the relay and the user (64 KiB each way once the kernel doubles them), so that a few
    // hundred KiB fill them and the relay's sends to the user wait on the user's reads.
    let (mut user, client) = pair();
    set_buffer(&user, libc::SO_RCVBUF, 32 << 10);
    set_buffer(&client, libc::SO_SNDBUF, 32 << 10);
    let (data_server, server) = pair();
    let limits = Limits {
        idle: WAIT,
        client_send: stall,
        server_send: stall,
    };
    let ticket = relay
        .relay(client, server, limits)
        .unwrap_or_else(|(err, ..)| panic!("{err}"));
    // 1 MiB read 64 KiB at a time with a pause of a tenth of the limit: the sends to the user wait most of the
    // time, but never for the whole limit.
    const TOTAL: usize = 1 << 20;
    let sending = std::thread::spawn(move || {
        let mut data_server = data_server;
        data_server.write_all(&vec![5; TOTAL]).unwrap();
        data_server
    });
    let mut got = 0;
    let mut buf = vec![0; 65536];
    while got < TOTAL {
        std::thread::sleep(stall / 10);
        match user.read(&mut buf) {
            Ok(0) | Err(_) => panic!("the tunnel closed after {got} bytes"),
            Ok(n) => got += n,
        }
    }
    let _data_server = sending.join().unwrap();
    assert_eq!(relay.open(), 1, "the slow reader keeps its tunnel");
    drop(user);
    assert_eq!(end_of(ticket).await, End::ClientClosed);
}

/// Sets a socket's `SO_RCVBUF` or `SO_SNDBUF`.
fn set_buffer(socket: &TcpStream, option: libc::c_int, bytes: libc::c_int) {
    // Safety: a valid socket and a pointer to a live `c_int` of the size given.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            option,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0);
}
