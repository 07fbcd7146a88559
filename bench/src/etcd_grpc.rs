//! etcd's native client API: `etcdserverpb.KV/Put` over gRPC (HTTP/2), as
//! etcd's own clients call it. Only the fields the load uses are declared
//! (field numbers from etcd's `rpc.proto`); protobuf skips the others.

use anyhow::{bail, Context};
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// One client: its own HTTP/2 connection, as each Apiary client has its
/// own keep-alive connection.
pub struct Kv {
    grpc: Grpc<Channel>,
}

impl Kv {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to etcd's gRPC API at {addr}"))?;
        Ok(Self {
            grpc: Grpc::new(channel),
        })
    }

    /// Puts `key`; the revision etcd committed it at.
    pub async fn put(&mut self, key: &str, value: &str) -> anyhow::Result<i64> {
        self.grpc.ready().await.context("etcd's connection")?;
        let req = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        };
        let resp: tonic::Response<PutResponse> = self
            .grpc
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static("/etcdserverpb.KV/Put"),
                tonic_prost::ProstCodec::default(),
            )
            .await?;
        match resp.into_inner().header {
            Some(h) if h.revision > 0 => Ok(h.revision),
            _ => bail!("etcd answered a put without a revision"),
        }
    }
}
