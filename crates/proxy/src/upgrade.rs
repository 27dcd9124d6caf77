//! HTTP/1.1 Upgrade (WebSocket) pass-through: once the upstream answers
//! `101`, both upgraded connections are spliced byte for byte.

use std::net::SocketAddr;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::server::Shared;

/// Spawns the tunnel between the client's and the upstream's upgraded
/// connections. It ends when either side closes, or when a shutdown's drain
/// timeout expires.
pub(crate) fn splice(shared: &Shared, addr: SocketAddr, client: OnUpgrade, upstream: OnUpgrade) {
    let mut stop = shared.tunnel_stop();
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(io) => io,
            Err(error) => {
                debug!(upstream = %addr, %error, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                Ok((up, down)) => debug!(upstream = %addr, up, down, "tunnel closed"),
                Err(error) => debug!(upstream = %addr, %error, "tunnel failed"),
            },
            _ = stop.wait_for(|stop| *stop) => debug!(upstream = %addr, "tunnel closed by shutdown"),
        }
    });
}
