//! A TCP proxy in front of moto that a test stops and starts again on the
//! same port, to take one AWS service away from a server process (pointed
//! at it with `AWS_ENDPOINT_URL_SQS` or `AWS_ENDPOINT_URL_DYNAMODB`). While
//! stopped, new connections are refused and open ones are cut: what a
//! client sees of a stopped service. Stopping moto itself would look the
//! same but also delete every queue and table (moto keeps them only in
//! memory), which SQS and DynamoDB never do.
#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A proxy to one upstream address.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, the address clients use.
    pub endpoint: String,
    address: SocketAddr,
    upstream: SocketAddr,
    accepting: Option<JoinHandle<()>>,
    connections: Arc<AtomicUsize>,
}

impl FaultProxy {
    /// A running proxy on a free port to `upstream` (`http://HOST:PORT`).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream is http://IP:PORT");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let mut proxy = FaultProxy {
            endpoint: format!("http://{address}"),
            address,
            upstream,
            accepting: None,
            connections: Arc::new(AtomicUsize::new(0)),
        };
        proxy.resume();
        proxy
    }

    /// Connections proxied so far (proof the client went through here).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Takes the service away: the listener closes and every open
    /// connection is cut.
    pub fn stop(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            // Its JoinSet of connections goes with it, aborting each.
            accepting.abort();
        }
    }

    /// Brings the service back on the same port.
    pub fn resume(&mut self) {
        self.stop();
        let listener = bind_reusing(self.address);
        let upstream = self.upstream;
        let connections = Arc::clone(&self.connections);
        self.accepting = Some(tokio::spawn(async move {
            let mut open = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                open.spawn(pipe(client, upstream));
                while open.try_join_next().is_some() {}
            }
        }));
    }
}

/// A listener on `address`, waiting for the port to be free again.
fn bind_reusing(address: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        if socket.bind(address).is_ok() {
            return socket.listen(1024).expect("listen");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("could not bind {address} again");
}

async fn pipe(client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut client = client;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
