//! A connection to a logd client port.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::protocol::{Request, Response, MAX_CLIENT_FRAME};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach logd at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("logd at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("logd at {addr} closed the connection")]
    Closed { addr: SocketAddr },
    #[error("logd at {addr} sent an undecodable response: {detail}")]
    Decode { addr: SocketAddr, detail: String },
    #[error("logd at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_CLIENT_FRAME)
        .new_codec()
}

pub struct Client {
    addr: SocketAddr,
    framed: Framed<TcpStream, LengthDelimitedCodec>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = s.set_nodelay(true);
        Ok(Client {
            addr,
            framed: Framed::new(s, codec()),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and waits for its response.
    pub async fn call(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let addr = self.addr;
        let body = postcard::to_stdvec(req).map_err(|e| ClientError::Decode {
            addr,
            detail: e.to_string(),
        })?;
        let exchange = async {
            self.framed
                .send(Bytes::from(body))
                .await
                .map_err(|source| ClientError::Io { addr, source })?;
            match self.framed.next().await {
                None => Err(ClientError::Closed { addr }),
                Some(Err(source)) => Err(ClientError::Io { addr, source }),
                Some(Ok(b)) => postcard::from_bytes(&b).map_err(|e| ClientError::Decode {
                    addr,
                    detail: e.to_string(),
                }),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout { addr, timeout })?
    }
}
