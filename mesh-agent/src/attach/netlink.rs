//! The netlink steps of attaching a task, each run on a thread inside the
//! right network namespace with its own small runtime.

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{new_connection, Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{step}: {source}")]
    Netlink {
        step: String,
        source: rtnetlink::Error,
    },
    #[error("{step}: {source}")]
    Io {
        step: String,
        source: std::io::Error,
    },
    #[error("no link named {0}")]
    NoLink(String),
}

fn nl(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let step = step.into();
    move |source| NetlinkError::Netlink { step, source }
}

/// Runs `f` with a netlink handle, on a thread inside the network namespace
/// at `netns` (or the current one).
pub fn run<R, F, Fut>(netns: Option<&Path>, f: F) -> Result<R, NetlinkError>
where
    R: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<R, NetlinkError>>,
{
    let netns: Option<PathBuf> = netns.map(Path::to_path_buf);
    let thread = std::thread::spawn(move || -> Result<R, NetlinkError> {
        if let Some(path) = &netns {
            let io = |source| NetlinkError::Io {
                step: format!("entering network namespace {}", path.display()),
                source,
            };
            let file = File::open(path).map_err(io)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io(e.into()))?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetlinkError::Io {
                step: "starting a runtime".into(),
                source,
            })?;
        rt.block_on(async move {
            let (conn, handle, _) = new_connection().map_err(|source| NetlinkError::Io {
                step: "opening netlink".into(),
                source,
            })?;
            tokio::spawn(conn);
            f(handle).await
        })
    });
    thread
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

pub async fn index_of(h: &Handle, name: &str) -> Result<u32, NetlinkError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) => Err(NetlinkError::NoLink(name.to_string())),
        // The kernel answers ENODEV for an unknown name.
        Err(_) => Err(NetlinkError::NoLink(name.to_string())),
    }
}

/// Host side: the veth pair, the gateway address on the host end, the
/// peer moved into the task's namespace.
pub async fn host_side(
    h: Handle,
    host_if: String,
    peer: String,
    gateway: Ipv4Addr,
    mtu: u32,
    netns: PathBuf,
) -> Result<(), NetlinkError> {
    h.link()
        .add(LinkVeth::new(&host_if, &peer).mtu(mtu).build())
        .execute()
        .await
        .map_err(nl(format!("creating veth pair {host_if}/{peer}")))?;
    let host_idx = index_of(&h, &host_if).await?;
    let peer_idx = index_of(&h, &peer).await?;
    h.address()
        .add(host_idx, IpAddr::V4(gateway), 32)
        .execute()
        .await
        .map_err(nl(format!("adding {gateway}/32 to {host_if}")))?;
    h.link()
        .set(LinkUnspec::new_with_index(host_idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {host_if} up")))?;
    let ns = File::open(&netns).map_err(|source| NetlinkError::Io {
        step: format!("opening {}", netns.display()),
        source,
    })?;
    h.link()
        .set(
            LinkUnspec::new_with_index(peer_idx)
                .mtu(mtu)
                .setns_by_fd(ns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("moving {peer} into {}", netns.display())))?;
    Ok(())
}

/// Task side: `eth0` with the task's address, a route to the gateway and
/// the default route through it.
pub async fn task_side(
    h: Handle,
    peer: String,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<(), NetlinkError> {
    let idx = index_of(&h, &peer).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).name("eth0").build())
        .execute()
        .await
        .map_err(nl(format!("renaming {peer} to eth0")))?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl("setting eth0 up"))?;
    if let Ok(lo) = index_of(&h, "lo").await {
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("setting lo up"))?;
    }
    h.address()
        .add(idx, IpAddr::V4(addr), 32)
        .execute()
        .await
        .map_err(nl(format!("adding {addr}/32 to eth0")))?;
    let to_gw = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gateway, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .build();
    h.route()
        .add(to_gw)
        .execute()
        .await
        .map_err(nl(format!("route to {gateway} on eth0")))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(idx)
        .build();
    h.route()
        .add(default)
        .execute()
        .await
        .map_err(nl(format!("default route via {gateway}")))?;
    Ok(())
}

/// Host side, last: the route to the task's address through its link.
pub async fn host_route(h: Handle, host_if: String, addr: Ipv4Addr) -> Result<(), NetlinkError> {
    let idx = index_of(&h, &host_if).await?;
    let r = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(addr, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .build();
    h.route()
        .add(r)
        .execute()
        .await
        .map_err(nl(format!("route to {addr} on {host_if}")))
}

/// Deletes a link (and with a veth, its peer); absent is fine.
pub async fn delete_link(h: Handle, name: String) -> Result<bool, NetlinkError> {
    match index_of(&h, &name).await {
        Ok(idx) => match h.link().del(idx).execute().await {
            Ok(()) => Ok(true),
            // Gone meanwhile: a veth goes with its peer's namespace when
            // the task ends at the same moment.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(e) => Err(nl(format!("deleting {name}"))(e)),
        },
        Err(NetlinkError::NoLink(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Names of the links in this namespace that start with `prefix`.
pub async fn links_with_prefix(h: Handle, prefix: String) -> Result<Vec<String>, NetlinkError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut out = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(l) = links.try_next().await.map_err(nl("listing links"))? {
        for a in l.attributes {
            if let LinkAttribute::IfName(n) = a {
                if n.starts_with(&prefix) {
                    out.push(n);
                }
            }
        }
    }
    Ok(out)
}
