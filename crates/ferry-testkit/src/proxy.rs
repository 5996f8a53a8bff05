//! A TCP proxy that cuts its clients off from their server the way a
//! network partition does (nothing is closed, nothing gets through), or the
//! way a server restart does (every connection closed, new ones refused for
//! a while).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    Partitioned,
    Down,
}

/// Forwards `127.0.0.1:<random port>` to an upstream address. Dropping it
/// closes every connection.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    tasks: JoinSet<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Open);
        let mut tasks = JoinSet::new();
        let watch = mode.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                if *watch.borrow() != Mode::Down {
                    conns.spawn(pump(client, upstream, watch.subscribe()));
                }
            }
        });
        TcpProxy { addr, mode, tasks }
    }

    /// A proxy in front of the server of `url` (`scheme://[user@]host[:port]/…`,
    /// port 5432 when none is given), and `url` pointed at the proxy.
    pub async fn in_front_of(url: &str) -> (TcpProxy, String) {
        use std::net::ToSocketAddrs;
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let (user, server) = authority.rsplit_once('@').map_or(("", authority), |(u, h)| (u, h));
        let with_port = if server.contains(':') { server.to_string() } else { format!("{server}:5432") };
        let addr = with_port.to_socket_addrs().ok().and_then(|mut a| a.next()).expect("a reachable host");
        let proxy = TcpProxy::start(addr).await;
        let at = if user.is_empty() { String::new() } else { format!("{user}@") };
        let proxied = format!("{scheme}://{at}{}{}", proxy.addr(), &rest[authority.len()..]);
        (proxy, proxied)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop forwarding, in both directions, on every connection and on the
    /// ones made from now on. Sockets stay open on both sides: each peer
    /// learns only by its own timeouts.
    pub fn partition(&self) {
        self.mode.send_replace(Mode::Partitioned);
    }

    /// Forward again, on new connections. The ones caught by the partition
    /// are closed now: their peers gave up on them meanwhile.
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Open);
    }

    /// As a server restart looks to its clients: every connection is closed
    /// now, and new ones are closed at once for `down`.
    pub async fn restart(&self, down: Duration) {
        self.mode.send_replace(Mode::Down);
        tokio::time::sleep(down).await;
        self.mode.send_replace(Mode::Open);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// One client connection: forwarded while the network is whole; held,
/// silent, through a partition and closed once it heals; closed at once by
/// a restart.
async fn pump(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let mut server = None;
    if *mode.borrow_and_update() == Mode::Open {
        let Ok(mut up) = TcpStream::connect(upstream).await else { return };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut up) => return,
            _ = mode.wait_for(|m| *m != Mode::Open) => {}
        }
        if *mode.borrow() == Mode::Down {
            return;
        }
        server = Some(up);
    }
    // Partitioned: hold both sockets without a byte either way until healed.
    let _ = mode.wait_for(|m| *m != Mode::Partitioned).await;
    let _ = client.shutdown().await;
    drop(server);
}
