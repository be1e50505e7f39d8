//! The client's socket, counting the bytes read from and written to it, for the access log's `bytes_in` and
//! `bytes_out`. Counting at the socket catches every path (heads, buffered and streamed bodies, the proxy's own
//! answers) without each of them reporting what it moved; it costs an addition per read or write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// A client connection and its byte counts so far.
#[derive(Debug)]
pub(crate) struct ClientStream {
    io: TcpStream,
    read: u64,
    written: u64,
}

impl ClientStream {
    pub(crate) fn new(io: TcpStream) -> ClientStream {
        ClientStream {
            io,
            read: 0,
            written: 0,
        }
    }

    /// Bytes read from the client and written to it since the connection opened.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.read, self.written)
    }

    /// The socket itself, for a tunnel (whose bytes are not in the access log: it logs the 101).
    pub(crate) fn socket(&mut self) -> &mut TcpStream {
        &mut self.io
    }

    /// The socket, the stream given up (a connection parked out of its task).
    pub(crate) fn into_socket(self) -> TcpStream {
        self.io
    }

    /// Borrowed halves that keep counting, for a body that goes up while the response comes back.
    pub(crate) fn split(&mut self) -> (Counted<'_, ReadHalf<'_>>, Counted<'_, WriteHalf<'_>>) {
        let (r, w) = self.io.split();
        (
            Counted {
                io: r,
                count: &mut self.read,
            },
            Counted {
                io: w,
                count: &mut self.written,
            },
        )
    }
}

/// One half of [`ClientStream::split`].
#[derive(Debug)]
pub(crate) struct Counted<'a, T> {
    io: T,
    count: &'a mut u64,
}

impl ClientStream {
    /// The socket's read side as a [`Counted`] on `read`: the stream's own reads count through the same code as a
    /// split half's.
    fn reading(&mut self) -> Counted<'_, &mut TcpStream> {
        Counted {
            io: &mut self.io,
            count: &mut self.read,
        }
    }

    /// The socket's write side as a [`Counted`] on `written`.
    fn writing(&mut self) -> Counted<'_, &mut TcpStream> {
        Counted {
            io: &mut self.io,
            count: &mut self.written,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reading()).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writing()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writing()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        *this.count += (buf.filled().len() - before) as u64;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        *this.count += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        *this.count += n as u64;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_ways_and_through_the_halves() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"hello").await.unwrap();
            let mut got = vec![0; 7];
            s.read_exact(&mut got).await.unwrap();
            got
        });
        let mut client = ClientStream::new(TcpStream::connect(addr).await.unwrap());
        let mut got = [0; 5];
        client.read_exact(&mut got).await.unwrap();
        client.write_all(b"abc").await.unwrap();
        {
            let (_r, mut w) = client.split();
            w.write_all(b"defg").await.unwrap();
        }
        assert_eq!(peer.await.unwrap(), b"abcdefg");
        assert_eq!(client.counts(), (5, 7));
    }
}
