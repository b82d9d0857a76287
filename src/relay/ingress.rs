//! The ingress relay: a pod port forwarded to the guest, in place of the
//! research's haproxy.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::proxy::Destination;

pub struct IngressDestination {
    pub guest: SocketAddr,
}

impl Destination for IngressDestination {
    fn destination(&self, _client: &TcpStream) -> Result<SocketAddr, String> {
        Ok(self.guest)
    }
}
