//! [`ConnectionCounter`]: a loopback TCP forwarder that counts the connections it accepts, to
//! measure how many new connections a client opens per call to any upstream.
//!
//! Point an endpoint at [`ConnectionCounter::addr`] instead of the upstream's own address, make
//! a few calls to warm up, then N calls: `(connections after − connections after the warm-up)
//! / N` is the number of new TCP connections per call. The upstream is not touched: it sees one
//! connection from the counter for each the client opened.
//!
//! The counter forwards bytes and never looks at them, so it counts TLS the same way: a client
//! of `https://localhost:{port}/` through the counter (the certificate names `localhost`)
//! opens one TCP connection per handshake without resumption.
//!
//! ```no_run
//! # async fn example(upstream: std::net::SocketAddr) -> std::io::Result<()> {
//! use mcp_pool_conformance::tcp_counter::ConnectionCounter;
//!
//! let counter = ConnectionCounter::start(upstream).await?;
//! let url = format!("http://{}/mcp", counter.addr());
//! // … warm up through `url`, then:
//! let before = counter.connections();
//! // … N calls …
//! let per_call = (counter.connections() - before) as f64 / 100.0;
//! # let _ = (url, per_call);
//! # Ok(())
//! # }
//! ```

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::{AbortHandle, JoinSet},
};

/// A loopback TCP forwarder that counts the client connections it accepts and pipes each to a
/// target address. See the [module docs](self).
///
/// A connection is counted when it is accepted, before any of its bytes are forwarded: once a
/// client has an answer over a connection, [`connections`](Self::connections) includes it.
/// Dropping the counter stops accepting and closes every forwarded connection (both sides).
#[derive(Debug)]
pub struct ConnectionCounter {
    addr: SocketAddr,
    target: SocketAddr,
    accepted: Arc<AtomicU64>,
    accept: AbortHandle,
}

impl ConnectionCounter {
    /// Listens on a free port of 127.0.0.1 and forwards every connection accepted there to
    /// `target`. Must be called within a tokio runtime, which runs the forwarding.
    ///
    /// A client connection whose target connection fails is closed at once (and still
    /// counted).
    ///
    /// # Errors
    /// When the listening socket cannot be bound.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(listener, target, accepted.clone())).abort_handle();
        Ok(Self {
            addr,
            target,
            accepted,
            accept,
        })
    }

    /// The address clients connect to: 127.0.0.1 and the counter's port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address every connection is forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectionCounter {
    fn drop(&mut self) {
        // The accept loop owns the connections' JoinSet: aborting it drops the set, which
        // aborts (and so closes) every forwarded connection.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, accepted: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            next = listener.accept() => match next {
                Ok((client, _)) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(forward(client, target));
                }
                // A connection that failed before it was accepted (reset in the backlog), or
                // out of descriptors for a moment: the listener itself is fine.
                Err(error) => tracing::debug!("connection counter: accept failed: {error}"),
            },
            // Reap finished connections so the set does not grow with every one.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    let _ = client.set_nodelay(true);
    let mut upstream = match TcpStream::connect(target).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!("connection counter: connecting to {target} failed: {error}");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    // Ends when both sides have closed, or either fails.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A target that answers each connection's bytes with the same bytes, until it closes.
    async fn echo_target() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) {
        stream.write_all(bytes).await.unwrap();
        let mut back = vec![0; bytes.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, bytes);
    }

    #[tokio::test]
    async fn counts_each_connection_and_forwards_both_ways() {
        let counter = ConnectionCounter::start(echo_target().await).await.unwrap();
        assert_eq!(counter.connections(), 0);
        let mut first = TcpStream::connect(counter.addr()).await.unwrap();
        round_trip(&mut first, b"ping").await;
        round_trip(&mut first, b"again").await;
        assert_eq!(counter.connections(), 1, "one connection, two round trips");
        let mut second = TcpStream::connect(counter.addr()).await.unwrap();
        round_trip(&mut second, b"pong").await;
        assert_eq!(counter.connections(), 2);

        // A close is forwarded: the target closes its side in turn.
        second.shutdown().await.unwrap();
        assert_eq!(second.read(&mut [0; 1]).await.unwrap(), 0, "closed");
        round_trip(&mut first, b"still open").await;
    }

    #[tokio::test]
    async fn dropping_the_counter_closes_its_connections() {
        let counter = ConnectionCounter::start(echo_target().await).await.unwrap();
        let mut client = TcpStream::connect(counter.addr()).await.unwrap();
        round_trip(&mut client, b"ping").await;
        let addr = counter.addr();
        drop(counter);
        assert_eq!(client.read(&mut [0; 1]).await.unwrap(), 0, "closed");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }
}
