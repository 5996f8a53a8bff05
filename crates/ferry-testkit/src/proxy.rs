//! A TCP proxy that can cut its clients off from their server the way a
//! network partition does: nothing is closed, nothing gets through.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Forwards `127.0.0.1:<random port>` to an upstream address until
/// [`TcpProxy::partition`]. Dropping it closes every connection.
pub struct TcpProxy {
    addr: SocketAddr,
    /// True while partitioned.
    cut: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let watch = cut.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                conns.spawn(pump(client, upstream, watch.subscribe()));
            }
        });
        TcpProxy { addr, cut, tasks }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop forwarding, in both directions, on every connection and on the
    /// ones made from now on. Sockets stay open on both sides: each peer
    /// learns only by its own timeouts.
    pub fn partition(&self) {
        self.cut.send_replace(true);
    }

    /// Forward again, on new connections. The ones caught by the partition
    /// are closed now: their peers gave up on them meanwhile.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// One client connection: forwarded while the network is whole; held,
/// silent, through a partition; closed once it heals.
async fn pump(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    let mut server = None;
    if !*cut.borrow_and_update() {
        let Ok(mut up) = TcpStream::connect(upstream).await else { return };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut up) => return,
            _ = cut.wait_for(|cut| *cut) => {}
        }
        server = Some(up);
    }
    // Partitioned: hold both sockets without a byte either way until healed.
    let _ = cut.wait_for(|cut| !*cut).await;
    let _ = client.shutdown().await;
    drop(server);
}
